"""Shared pieces of the benchmark scripts: machine facts, result files, tiny models, and timed child processes."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

# Runs `python -m MODULE ARGS` inside a child after wrapping, from outside the code under test, the few framework
# methods whose start/end times split a run into phases. Both sides of a comparison get the same wrappers, so they pay
# the same (microseconds per step) and neither code path is changed. Writes marks + peak RSS to $BENCH_OUT at exit.
# Each step end is stamped with wall time and with the process's CPU time: on a shared machine, where other jobs take
# the cores away at random, CPU seconds are the comparable measure of the work each side does.
HARNESS = r"""
import atexit, functools, importlib, json, os, resource, runpy, sys, time
marks = {"harness_start": time.time(), "step_end": [], "step_end_cpu": []}

def wrap(module, path, name):
    owner = importlib.import_module(module)
    *parents, attr = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, attr)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        marks.setdefault(name + "_start", time.time())
        try:
            return original(*args, **kwargs)
        finally:
            marks.setdefault(name + "_end", time.time())

    setattr(owner, attr, timed)

import transformers.trainer_callback as callbacks
on_step_end = callbacks.CallbackHandler.on_step_end

def step_end(self, *args, **kwargs):
    marks["step_end"].append(time.time())
    marks["step_end_cpu"].append(time.process_time())
    return on_step_end(self, *args, **kwargs)

callbacks.CallbackHandler.on_step_end = step_end
for spec in filter(None, os.environ.get("BENCH_WRAP", "").split(",")):
    module, path, name = spec.split(":")
    wrap(module, path, name)

def dump():
    marks["max_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    marks["cpu_at_exit"] = time.process_time()
    with open(os.environ["BENCH_OUT"], "w") as out:
        json.dump(marks, out)

atexit.register(dump)
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def machine() -> dict[str, Any]:
    """What the figures were measured on, including how busy the machine was (a shared box skews timings)."""
    import torch
    import transformers
    import trl

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Print the result as JSON and write it to benchmarks/results/<name>.json."""
    text = json.dumps(data, indent=2) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(text)
    return path


def offline_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark child: offline, one tokenizer thread, no progress bars."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        TQDM_DISABLE="1",
        **extra,
    )
    return env


def timed_child(
    module: str, args: list[str], workdir: Path, wrap: list[str] = (), env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `python -m module args` under HARNESS in a fresh process; its marks, relative to the moment it was spawned.

    `wrap` entries are "module:Class.method:name" (see HARNESS). A fresh datasets cache per run keeps runs cold."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "marks.json"
    env = offline_env(
        BENCH_OUT=str(out), BENCH_WRAP=",".join(wrap), HF_DATASETS_CACHE=str(workdir / "datasets"), **(env or {})
    )
    spawned = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS, module, *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    ended = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    marks = json.loads(out.read_text())
    steps, cpu = marks.pop("step_end"), marks.pop("step_end_cpu")
    cpu_at_exit = marks.pop("cpu_at_exit")
    relative = {k: round(v - spawned, 3) for k, v in marks.items() if k != "max_rss_kib"}
    return {
        "marks_s": relative,
        "step_end_s": [round(t - spawned, 4) for t in steps],
        "step_end_cpu_s": [round(t, 4) for t in cpu],
        "wall_s": round(ended - spawned, 3),
        "cpu_s": round(cpu_at_exit, 3),
        "peak_rss_mib": round(marks["max_rss_kib"] / 1024, 1),
    }


def steady_steps_per_second(step_end_s: list[float], skip: int) -> float:
    """Optimizer steps per second after the first `skip` steps (warm-up: allocator, first logging)."""
    if len(step_end_s) <= skip + 1:
        raise ValueError(f"need more than {skip + 1} steps, got {len(step_end_s)}")
    return (len(step_end_s) - 1 - skip) / (step_end_s[-1] - step_end_s[skip])


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def build_tiny_llama(out_dir: Path, hidden_size: int, num_layers: int, max_position_embeddings: int) -> Path:
    """A random-init llama of the given size with the offline ChatML tokenizer of sft_recipes.tiny."""
    from sft_recipes.tiny import build_causal_lm, build_tokenizer

    return build_causal_lm(
        "llama",
        out_dir,
        tokenizer=build_tokenizer(),
        hidden_size=hidden_size,
        num_layers=num_layers,
        max_position_embeddings=max_position_embeddings,
    )
