"""Overhead of sft-recipes over plain TRL: the same recipe through `python -m sft_recipes train` and TRL's own
`trl sft` script (`python -m trl.scripts.sft`), on CPU: time to the first optimizer step, steady steps/s, peak RSS.

Usage: python benchmarks/overhead.py [--repeats 3] [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_tiny_llama, machine, median, steady_steps_per_second, timed_child, write_result  # noqa: E402

# Both sides: the same fields, every one a TRL field, so one YAML serves both (a `trl sft` YAML runs unchanged).
RECIPE = """\
model_name_or_path: {model}
dtype: float32
attn_implementation: sdpa
dataset_name: {data}
max_length: 128
use_cpu: true
bf16: false
gradient_checkpointing: false
max_steps: {steps}
per_device_train_batch_size: 8
learning_rate: 1.0e-3
logging_steps: 10
save_strategy: "no"
report_to: none
seed: 0
output_dir: {output_dir}
"""
SKIP = 5  # warm-up steps left out of steps/s
# Phase boundaries, wrapped from outside identically on both sides (benchmarks/common.py HARNESS).
WRAP = ["trl:SFTTrainer.__init__:trainer_init", "transformers:Trainer.train:train"]
OURS_ONLY = ["sft_recipes.validate.rules:preflight:preflight"]
# One compute thread per side: no OpenMP spin-waiting, whose CPU time swings with the machine's load.
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_side(side: str, root: Path, model: Path, data: Path, steps: int, index: int) -> dict:
    work = root / f"{side}-{index}"
    recipe = work / "recipe.yaml"
    work.mkdir(parents=True)
    recipe.write_text(RECIPE.format(model=model, data=data, steps=steps, output_dir=work / "out"))
    if side == "sft-recipes":
        result = timed_child("sft_recipes", ["train", "--config", str(recipe)], work, WRAP + OURS_ONLY, THREADS)
    else:
        result = timed_child("trl.scripts.sft", ["--config", str(recipe)], work, WRAP, THREADS)
    wall, cpu = result["step_end_s"], result["step_end_cpu_s"]
    assert len(wall) == steps, f"{side}: {len(wall)} steps, expected {steps}"
    marks = result["marks_s"]
    phases = {"interpreter_start": marks["harness_start"]}
    if "preflight_end" in marks:
        phases["preflight"] = round(marks["preflight_end"] - marks["preflight_start"], 3)
    phases["spawn_to_trainer_init"] = marks["trainer_init_start"]
    phases["trainer_init_incl_tokenization"] = round(marks["trainer_init_end"] - marks["trainer_init_start"], 3)
    phases["train_call_to_first_step"] = round(wall[0] - marks["train_start"], 3)
    return {
        "time_to_first_step_s": wall[0],
        "cpu_to_first_step_s": cpu[0],
        "steps_per_second": round(steady_steps_per_second(wall, SKIP), 3),
        "steps_per_cpu_second": round(steady_steps_per_second(cpu, SKIP), 3),
        "peak_rss_mib": result["peak_rss_mib"],
        "wall_s": result["wall_s"],
        "cpu_s": result["cpu_s"],
        "startup_phases_wall_s": phases,
    }


KEYS = (
    "time_to_first_step_s",
    "cpu_to_first_step_s",
    "steps_per_second",
    "steps_per_cpu_second",
    "peak_rss_mib",
    "wall_s",
    "cpu_s",
)


def summarize(runs: list[dict]) -> dict:
    return {k: round(median([r[k] for r in runs]), 3) for k in KEYS}


def ratios(ours: dict, trl: dict) -> dict:
    """ours / trl: above 1 means sft-recipes is slower or bigger."""
    return {
        "step_time_cpu": round(trl["steps_per_cpu_second"] / ours["steps_per_cpu_second"], 3),
        "step_time_wall": round(trl["steps_per_second"] / ours["steps_per_second"], 3),
        "time_to_first_step_cpu": round(ours["cpu_to_first_step_s"] / trl["cpu_to_first_step_s"], 3),
        "time_to_first_step_wall": round(ours["time_to_first_step_s"] / trl["time_to_first_step_s"], 3),
        "peak_rss": round(ours["peak_rss_mib"] / trl["peak_rss_mib"], 3),
        "total_cpu": round(ours["cpu_s"] / trl["cpu_s"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    from sft_recipes.tiny import write_demo_dataset

    info = machine()
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        root = Path(tmp)
        model = build_tiny_llama(root / "model", hidden_size=64, num_layers=2, max_position_embeddings=256)
        # a directory: TRL's script hands dataset_name to load_dataset, which takes folders, not .jsonl paths
        data = write_demo_dataset(root / "capitals" / "train.jsonl", n=480).parent
        runs: dict[str, list[dict]] = {"sft-recipes": [], "trl": []}
        for i in range(args.repeats):  # interleaved, so a change in machine load hits both sides alike
            for side in runs:
                runs[side].append(run_side(side, root, model, data, args.steps, i))
                print(f"{side} run {i}: {runs[side][-1]}", file=sys.stderr)
    ours, trl = summarize(runs["sft-recipes"]), summarize(runs["trl"])
    result = {
        "what": "sft-recipes train vs trl sft (python -m trl.scripts.sft): same YAML, tiny llama (hidden 64, 2 "
        f"layers), 480 chats, max_length 128, batch 8, {args.steps} steps, fp32 sdpa, CPU, 1 thread; "
        f"median of {args.repeats}",
        "command": f"python benchmarks/overhead.py --repeats {args.repeats} --steps {args.steps}",
        "machine": info | {"loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "median": {"sft-recipes": ours, "trl": trl},
        "ratios_ours_over_trl": ratios(ours, trl),
        "target": "step time ratio <= 1.03 (steady state); start-up reported separately. On a shared machine the "
        "CPU-time ratios are the comparable ones: wall time includes whatever other jobs took from the 2 cores.",
        "runs": runs,
    }
    write_result("overhead", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
