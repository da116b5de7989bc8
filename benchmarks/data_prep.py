"""Data preparation throughput: TRL's tokenization + packing of synthetic conversations, first run and cached run.

Usage: python benchmarks/data_prep.py [--examples 100000] [--num-proc N]
Each run is a fresh process through `sft-recipes inspect`'s trainer (the exact `train` pipeline, meta-device model),
sharing one datasets cache: the second run must read the first one's cache files. Prints JSON and writes
benchmarks/results/data_prep.json. Also: how full packed rows are against padded batches of the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = [
    "the",
    "a",
    "model",
    "data",
    "token",
    "train",
    "answer",
    "question",
    "city",
    "river",
    "house",
    "market",
    "code",
    "number",
    "list",
    "time",
    "world",
    "people",
    "language",
    "learn",
    "write",
    "read",
    "think",
    "small",
    "large",
    "quick",
    "brown",
    "fox",
    "lazy",
    "dog",
    "morning",
    "evening",
    "because",
    "therefore",
]


def conversation(rng: random.Random) -> dict:
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": "You are a helpful assistant."})
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(4, 60))) + "?"})
        answer = " ".join(rng.choices(WORDS, k=int(rng.lognormvariate(3.5, 0.8)) + 2)) + "."
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def write_inputs(root: Path, examples: int, num_proc: int) -> Path:
    import yaml

    from sft_recipes.tiny import build_causal_lm

    rng = random.Random(0)
    data = root / "conversations.jsonl"
    with data.open("w") as f:
        for _ in range(examples):
            f.write(json.dumps(conversation(rng)) + "\n")
    recipe = {
        "model_name_or_path": str(build_causal_lm("llama", root / "model")),
        "dataset_name": str(data),
        "dataset_num_proc": num_proc,
        "assistant_only_loss": True,
        "max_length": 1024,
        "packing": True,
        "per_device_train_batch_size": 8,
        "bf16": False,
        "dtype": "float32",
        "report_to": "none",
        "output_dir": str(root / "out"),
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def padded_tokens(lengths, batch_size: int, seed: int = 0) -> int:
    """Tokens in padded batches of these documents, shuffled as a random sampler would."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(lengths.size)
    return sum(
        int(lengths[order[i : i + batch_size]].max()) * len(order[i : i + batch_size])
        for i in range(0, lengths.size, batch_size)
    )


def child(recipe_path: str) -> None:
    """One data preparation, timed without the imports; prints a JSON line."""
    import numpy as np

    from sft_recipes.config import parse_recipe
    from sft_recipes.inspection.meta_trainer import build_trainer
    from sft_recipes.inspection.statistics import documents_of

    recipe = parse_recipe(["--config", recipe_path])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        trainer, raw, _ = build_trainer(recipe, out)
    seconds = time.perf_counter() - started
    packed = documents_of(trainer.train_dataset)
    rows = packed.row_lengths
    batch_size = recipe.training.per_device_train_batch_size
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "examples": len(raw),
                "examples_per_s": round(len(raw) / seconds),
                "cache_files": sorted(c["filename"] for c in trainer.train_dataset.cache_files),
                "tokens": int(rows.sum()),
                "packed_rows": int(rows.size),
                "packed_fill": float(rows.sum() / (rows.size * recipe.training.max_length)),
                "padded_efficiency": float(packed.lengths.sum() / padded_tokens(packed.lengths, batch_size)),
                "median_tokens": int(np.median(packed.lengths)),
            }
        )
    )


def run(recipe: Path, cache: Path) -> dict:
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(recipe)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory(prefix="sft-recipes-bench-") as tmp:
        root = Path(tmp)
        recipe = write_inputs(root, args.examples, args.num_proc)
        first = run(recipe, root / "cache")
        cached = run(recipe, root / "cache")
    result = {
        "examples": first["examples"],
        "num_proc": args.num_proc,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "first_run_s": first["seconds"],
        "first_run_examples_per_s": first["examples_per_s"],
        "cached_run_s": cached["seconds"],
        "cached_run_examples_per_s": cached["examples_per_s"],
        "speedup_cached": round(first["seconds"] / cached["seconds"], 1),
        "cache_reused": first["cache_files"] == cached["cache_files"] and bool(first["cache_files"]),
        "tokens": first["tokens"],
        "median_tokens_per_example": first["median_tokens"],
        "packed_rows": first["packed_rows"],
        "packing_fill": round(first["packed_fill"], 4),
        "padding_efficiency": round(first["padded_efficiency"], 4),
        "max_length": 1024,
        "batch_size": 8,
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data_prep.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
