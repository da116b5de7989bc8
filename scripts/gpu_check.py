"""One CUDA GPU, under 8 minutes: the gpu-marked tests, the throughput benchmark's headline cases and the planner's
calibration, with their JSON in benchmarks/results/. Without a CUDA GPU it says so and exits 0.

Usage: python scripts/gpu_check.py            (make gpu-check)
       python scripts/gpu_check.py --dry-run  (CPU: the same stages at tiny scale; writes no results)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# The whole check on an H100/H200: 8 minutes less Python's start and the summary, whatever each stage takes.
BUDGET_S = 450
# What gpu_throughput runs here: the two figures, MFU of the 1.5B full fine-tune and the QLoRA-8B peak at
# 2048, each with the planner's predicted/measured at a real size. `python benchmarks/gpu_throughput.py` runs them all.
THROUGHPUT_CASES = ("qwen2.5-1.5b/full/4x4096", "llama-3.1-8b/qlora/1x2048/checkpointing")
THROUGHPUT_STEPS = 12  # logged every 2 steps: 5 intervals after the warm-up one


@dataclass(frozen=True)
class Stage:
    name: str
    command: list[str]
    cap_s: float  # the most this stage may take; the caps add up to BUDGET_S at most
    result: str | None = None  # the JSON file it writes into benchmarks/results/


def stages(dry: bool) -> list[Stage]:
    """The check's three stages; --dry-run turns each into its CPU form (collect, or the benchmark's --dry-run)."""
    python = sys.executable
    tests = [python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    throughput = [python, "benchmarks/gpu_throughput.py", "--cases", ",".join(THROUGHPUT_CASES)]
    plan = [python, "benchmarks/plan_accuracy.py", "--device", "cuda", "--quick"]
    if dry:
        return [
            Stage("gpu tests (collected)", [*tests, "--collect-only"], 300),
            Stage("throughput (dry run)", [*throughput, "--dry-run"], 900),
            Stage("planner calibration (dry run)", [*plan, "--dry-run"], 600),
        ]
    return [
        Stage("gpu tests", tests, 90),
        Stage("throughput", [*throughput, "--steps", str(THROUGHPUT_STEPS)], 250, "gpu_throughput.json"),
        Stage("planner calibration", plan, 110, "plan_accuracy_cuda.json"),
    ]


def run_stage(stage: Stage, deadline: float, reserve: float, dry: bool) -> dict:
    """Run one stage within its cap and what the deadline leaves after `reserve` (the later stages' caps); its rc,
    seconds and fresh result file."""
    allowed = min(stage.cap_s, deadline - time.monotonic() - reserve)
    command = list(stage.command)
    if not dry and stage.result is not None:
        command += ["--budget_s", str(int(allowed - 15))]  # the benchmark stops starting cases before it is killed
    print(f"== {stage.name}: {' '.join(command[1:])} (at most {allowed:.0f} s)", flush=True)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # this checkout's package
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    started = time.monotonic()
    before = _mtime(stage.result)
    try:
        rc = subprocess.run(command, cwd=ROOT, env=env, timeout=max(1.0, allowed), check=False).returncode
    except subprocess.TimeoutExpired:
        rc = 124
    record = {"stage": stage.name, "rc": rc, "seconds": round(time.monotonic() - started, 1)}
    if stage.result is not None and _mtime(stage.result) != before:
        record["result"] = f"benchmarks/results/{stage.result}"
    return record


def _mtime(name: str | None) -> float | None:
    path = RESULTS / name if name else None
    return path.stat().st_mtime if path is not None and path.is_file() else None


def figures(records: list[dict]) -> dict:
    """The issue's figures from the results this check wrote, and the planner ratio that narrows train's margin."""
    written = {Path(r["result"]).name for r in records if "result" in r}
    out: dict = {}
    if "gpu_throughput.json" in written:
        throughput = json.loads((RESULTS / "gpu_throughput.json").read_text())
        out["targets"] = throughput.get("targets")
        out["throughput_predicted_over_measured"] = {
            c["case"]: c.get("predicted_over_measured") for c in throughput["cases"] if "case" in c
        }
    if "plan_accuracy_cuda.json" in written:
        plan = json.loads((RESULTS / "plan_accuracy_cuda.json").read_text())
        ratios = {row["case"]: row["ratio"] for row in plan["rows"] if "ratio" in row}
        out["plan_ratios"] = ratios
        if ratios:
            out["gpu_plan_ratio"] = min(ratios.values())
            out["next_step"] = (
                f"commit benchmarks/results/plan_accuracy_cuda.json and set sft_recipes.train.GPU_PLAN_RATIO = "
                f"{min(ratios.values())} to narrow the activation-checkpointing margin"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny scale: every stage's setup; writes nothing")
    args = parser.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu-check needs a CUDA GPU and this machine has none: nothing was run. "
              "`python scripts/gpu_check.py --dry-run` checks the stages on CPU.")  # fmt: skip
        return 0
    deadline = time.monotonic() + (BUDGET_S if not args.dry_run else 3600)
    plan = stages(args.dry_run)
    records = [run_stage(s, deadline, sum(t.cap_s for t in plan[i + 1 :]), args.dry_run) for i, s in enumerate(plan)]
    summary = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)"}
    summary |= {"budget_s": BUDGET_S, "seconds": round(sum(r["seconds"] for r in records), 1), "stages": records}
    summary |= figures(records)
    print(json.dumps(summary, indent=2))
    if not args.dry_run:
        (RESULTS / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if all(r["rc"] == 0 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
