"""Padding versus packing on a skewed-length data set (90% short rows, 10% long): real tokens per second and the share
of real tokens in what the model computes, with TRL's SFTTrainer on a tiny llama, CPU, sdpa.

Usage: python benchmarks/padding_vs_packing.py [--rows 1200] [--max-length 512]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_tiny_llama, machine, write_result  # noqa: E402

# Each mode: a name and the SFTConfig keys that differ. "packed" is TRL's packing=True: best-fit-decreasing bins
# flattened into one padding-free row per micro-batch, documents kept apart by position_ids.
MODES = {
    "padded, batch 8": {"packing": False, "per_device_train_batch_size": 8},
    "packed (bfd, padding-free), batch 8": {"packing": True, "per_device_train_batch_size": 8},
    "packed (bfd, padding-free), batch 2": {"packing": True, "per_device_train_batch_size": 2},
}


def skewed_lengths(rows: int, max_length: int, seed: int = 0) -> list[int]:
    """90% short rows (16-96 tokens) and 10% long ones (max_length/2 to max_length), shuffled: chat data in small."""
    rng = random.Random(seed)
    long_rows = rows // 10
    lengths = [rng.randint(16, 96) for _ in range(rows - long_rows)]
    lengths += [rng.randint(max_length // 2, max_length) for _ in range(long_rows)]
    rng.shuffle(lengths)
    return lengths


def token_dataset(lengths: list[int], vocab: int, eos: int, seed: int = 0):
    """Pre-tokenized rows (TRL skips its own tokenization for an `input_ids` column), each ending with EOS."""
    from datasets import Dataset

    rng = random.Random(seed)
    return Dataset.from_dict({"input_ids": [[rng.randrange(8, vocab) for _ in range(n - 1)] + [eos] for n in lengths]})


def batch_shares(trainer, pad_id: int) -> dict[str, float]:
    """Real tokens, tokens computed (padding included) and their ratio over one epoch of the trainer's batches.
    The rows hold no pad id (token_dataset draws ids above the special tokens), so padding is exactly the pad ids."""
    real = computed = 0
    for batch in trainer.get_train_dataloader():
        computed += batch["input_ids"].numel()
        real += int((batch["input_ids"] != pad_id).sum())
    return {"real_tokens": real, "batch_tokens": computed, "real_token_share": round(real / computed, 4)}


def run_mode(name: str, keys: dict, model_dir: Path, dataset, max_length: int, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    args = SFTConfig(
        output_dir=str(out),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        max_length=max_length,
        num_train_epochs=1,
        learning_rate=1.0e-3,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        **keys,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    shares = batch_shares(trainer, tokenizer.pad_token_id)
    assert shares["real_tokens"] == sum(len(ids) for ids in dataset["input_ids"]), "every token trained, once"
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "mode": name,
        **keys,
        **shares,
        "steps": trainer.state.global_step,
        "train_wall_s": round(wall, 2),
        "train_cpu_s": round(cpu, 2),
        "real_tokens_per_second": round(shares["real_tokens"] / wall, 1),
        "real_tokens_per_cpu_second": round(shares["real_tokens"] / cpu, 1),
        "final_loss": round(trainer.state.log_history[-1]["train_loss"], 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import torch

    torch.set_num_threads(1)  # CPU seconds stay comparable on a shared machine when no thread spin-waits
    info = machine()
    lengths = skewed_lengths(args.rows, args.max_length)
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "model", hidden_size=128, num_layers=2, max_position_embeddings=1024)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dataset = token_dataset(lengths, len(tokenizer), tokenizer.eos_token_id)
        results = []
        for i, (name, keys) in enumerate(MODES.items()):
            results.append(run_mode(name, keys, model_dir, dataset, args.max_length, Path(tmp) / f"out{i}"))
            print(results[-1], file=sys.stderr)
    padded = results[0]
    for r in results:
        r["speedup_vs_padded_wall"] = round(r["real_tokens_per_second"] / padded["real_tokens_per_second"], 2)
        r["speedup_vs_padded_cpu"] = round(r["real_tokens_per_cpu_second"] / padded["real_tokens_per_cpu_second"], 2)
    result = {
        "what": f"padding vs packing, {args.rows} pre-tokenized rows (90% 16-96 tokens, 10% {args.max_length // 2}-"
        f"{args.max_length}), max_length {args.max_length}, tiny llama (hidden 128, 2 layers), fp32 sdpa, CPU, "
        "1 thread, one epoch per mode",
        "command": f"python benchmarks/padding_vs_packing.py --rows {args.rows} --max-length {args.max_length}",
        "machine": info | {"loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "dataset": {
            "rows": len(lengths),
            "real_tokens": sum(lengths),
            "mean_length": round(sum(lengths) / len(lengths), 1),
        },
        "modes": results,
    }
    write_result("padding_vs_packing", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
