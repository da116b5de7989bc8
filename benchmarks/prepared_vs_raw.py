"""Time to the first optimizer step: `train` from raw data vs `train --prepared` on the set `preprocess` saved.

Usage: python benchmarks/prepared_vs_raw.py [--examples 100000]
100k synthetic conversations as benchmarks/data_prep.py builds them (packed, assistant-only, max_length 1024, tiny
llama). Each of the three runs (train from raw, preprocess, train --prepared) is a fresh process with its own, empty
datasets cache, so neither side reads the other's tokenization. Tokenizing runs in the main process (train's CPU
default), so CPU seconds measure the work on this shared machine. Prints JSON and writes
benchmarks/results/prepared_vs_raw.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, timed_child, write_result  # noqa: E402
from data_prep import conversation  # noqa: E402

RECIPE = {
    "assistant_only_loss": True,
    "max_length": 1024,
    "packing": True,
    "per_device_train_batch_size": 1,
    "max_steps": 1,
    "logging_steps": 1,
    "save_strategy": "no",
    "gradient_checkpointing": False,
    "use_cpu": True,
    "bf16": False,
    "dtype": "float32",
    "report_to": "none",
    "seed": 0,
}
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_inputs(root: Path, examples: int) -> Path:
    from sft_recipes.tiny import build_causal_lm

    rng = random.Random(0)
    data = root / "conversations.jsonl"
    with data.open("w") as f:
        for _ in range(examples):
            f.write(json.dumps(conversation(rng)) + "\n")
    model = build_causal_lm("llama", root / "model")
    recipe = {"model_name_or_path": str(model), "dataset_name": str(data), **RECIPE, "output_dir": str(root / "out")}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def first_loss(output_dir: Path) -> float:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return next(entry["loss"] for entry in state["log_history"] if "loss" in entry)


def phase(name: str, args: list[str], root: Path) -> dict:
    before = os.getloadavg()[0]
    result = timed_child("sft_recipes", args, root / name, env=THREADS)
    result["load_average_before_after"] = [round(before, 2), round(os.getloadavg()[0], 2)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sft-recipes-prepared-") as tmp:
        root = Path(tmp)
        recipe = str(write_inputs(root, args.examples))
        raw = phase("raw", ["train", "--config", recipe, "--output_dir", str(root / "raw-out")], root)
        prepared = root / "prepared"
        made = phase("preprocess", ["preprocess", "--config", recipe, "--out", str(prepared)], root)
        command = ["train", "--config", recipe, "--prepared", str(prepared), "--output_dir", str(root / "prep-out")]
        from_prepared = phase("from-prepared", command, root)
        manifest = json.loads((prepared / "prepared.json").read_text())
        losses = [first_loss(root / "raw-out"), first_loss(root / "prep-out")]
    to_first = [raw["step_end_s"][0], from_prepared["step_end_s"][0]]
    cpu_to_first = [raw["step_end_cpu_s"][0], from_prepared["step_end_cpu_s"][0]]
    result = {
        "what": __doc__.splitlines()[0],
        "command": "python benchmarks/prepared_vs_raw.py"
        + ("" if args.examples == 100_000 else f" --examples {args.examples}"),
        "machine": machine(),
        "examples": args.examples,
        "packed_training_rows": manifest["rows"]["train"],
        "recipe": {
            k: RECIPE[k] for k in ("max_length", "packing", "assistant_only_loss", "per_device_train_batch_size")
        },
        "raw": {"seconds_to_first_step": to_first[0], "cpu_seconds_to_first_step": cpu_to_first[0], **_load(raw)},
        "preprocess": {"wall_s": made["wall_s"], "cpu_s": made["cpu_s"], **_load(made)},
        "prepared": {
            "seconds_to_first_step": to_first[1],
            "cpu_seconds_to_first_step": cpu_to_first[1],
            **_load(from_prepared),
        },
        "speedup_to_first_step": round(to_first[0] / to_first[1], 1),
        "speedup_cpu_to_first_step": round(cpu_to_first[0] / cpu_to_first[1], 1),
        "first_step_loss_raw_vs_prepared": losses,
        "first_step_losses_equal": losses[0] == losses[1],
    }
    write_result("prepared_vs_raw", result)


def _load(run: dict) -> dict:
    return {"load_average_before_after": run["load_average_before_after"], "peak_rss_mib": run["peak_rss_mib"]}


if __name__ == "__main__":
    main()
