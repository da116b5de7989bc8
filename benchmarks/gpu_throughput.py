"""GPU throughput at real sizes: Qwen2.5-1.5B- and Llama-3.1-8B-shaped models, random-init from the config snapshots
in recipes/ (no hub), full / LoRA / QLoRA on 2048-4096-token rows through `sft-recipes train`: tokens/s per GPU, MFU,
peak memory, and sft_recipes.plan's prediction for the same run. Needs one CUDA GPU; --dry-run checks it all on CPU.

Usage: python benchmarks/gpu_throughput.py [--cases NAME,...] [--steps 30] [--workdir DIR] [--budget_s S]
       python benchmarks/gpu_throughput.py --dry-run        (CPU, tiny scale; prints, writes no results)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, offline_env, write_result  # noqa: E402

GiB = 2**30
SHAPES = {"qwen2.5-1.5b": "qwen2.5-1.5b-instruct", "llama-3.1-8b": "llama-3.1-8b-instruct"}
# What --dry-run shrinks a shape to: same model_type, rope and vocabulary handling, a CPU-sized body.
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 2048,
}
MFU_TARGET = 0.40  # full fine-tuning of the 1.5B shape on an H100
QLORA_MEMORY_TARGET_GIB = 12.0  # QLoRA of the 8B shape at max_length 2048


@dataclass(frozen=True)
class Case:
    shape: str
    method: str  # full | lora | qlora
    max_length: int
    batch: int  # per device; lowered to what the plan says fits on this GPU
    checkpointing: bool | None = None  # None: left to sft-recipes (on only when the plan says the GPU needs it)

    @property
    def name(self) -> str:
        suffix = {None: "", True: "/checkpointing", False: "/no-checkpointing"}[self.checkpointing]
        return f"{self.shape}/{self.method}/{self.batch}x{self.max_length}{suffix}"


# The memory target: the smallest standard QLoRA setting (one row, activation checkpointing on).
MEMORY_CASE = Case("llama-3.1-8b", "qlora", 2048, 1, checkpointing=True)
CASES = [
    Case("qwen2.5-1.5b", "full", 4096, 4),
    Case("qwen2.5-1.5b", "full", 2048, 8),
    Case("qwen2.5-1.5b", "lora", 4096, 4),
    Case("qwen2.5-1.5b", "qlora", 4096, 4),
    Case("llama-3.1-8b", "lora", 2048, 4),
    Case("llama-3.1-8b", "qlora", 2048, 4),
    MEMORY_CASE,
    Case("llama-3.1-8b", "full", 2048, 1),  # one GPU: run only where the plan says it fits
]
# Distinct (shape, method) pairs for --dry-run: every code path once.
DRY_CASES = [CASES[0], CASES[2], CASES[3], MEMORY_CASE]


def snapshot(shape: str, tiny: bool) -> dict:
    config = json.loads((ROOT / "recipes" / SHAPES[shape] / "config.json").read_text())
    if tiny:
        config.update(TINY)
        config.pop("head_dim", None)
        config["max_position_embeddings"] = min(config["max_position_embeddings"], 8192)
    return config


def build_model(shape: str, out: Path, tiny: bool) -> Path:
    """Random weights in the snapshot's architecture (bf16 on GPU, fp32 on CPU), saved with the offline tokenizer of
    sft_recipes.tiny: its ids all fall inside the model's vocabulary, which is all a throughput run needs."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sft_recipes.tiny import build_tokenizer

    raw = snapshot(shape, tiny)
    raw.pop("_name_or_path", None)
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    cuda = torch.cuda.is_available() and not tiny
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(out)
    build_tokenizer(out)
    return out


def write_text_rows(path: Path, rows: int, words_per_row: int, seed: int = 0) -> Path:
    """Plain-text rows longer than max_length, so that every trained row is max_length tokens of one document."""
    from sft_recipes.tiny import demo_rows

    words = " ".join(m["content"] for row in demo_rows(240) for m in row["messages"]).split()
    rng = random.Random(seed)
    with open(path, "w") as out:
        for _ in range(rows):
            out.write(json.dumps({"text": " ".join(rng.choices(words, k=words_per_row))}) + "\n")
    return path


def recipe_argv(case: Case, model: Path, data: Path, out: Path, steps: int, batch: int, dry: bool) -> list[str]:
    import torch

    from sft_recipes.model.loading import best_attn_implementation

    config = json.loads((model / "config.json").read_text())
    attention, _ = best_attn_implementation(config, torch.bfloat16 if not dry else torch.float32)
    # Padding-free packing is only cheap on flash attention (varlen kernels); on sdpa it attends over the whole
    # flattened micro-batch. Rows here are one document of max_length tokens each, so unpacked rows carry no padding.
    packing = attention.startswith("flash")
    argv = [
        "--model_name_or_path", str(model),
        "--dataset_name", str(data),
        "--attn_implementation", "auto",
        "--max_length", str(case.max_length),
        "--packing", str(packing).lower(),
        "--per_device_train_batch_size", str(batch),
        "--gradient_accumulation_steps", "1",
        "--max_steps", str(steps),
        "--logging_steps", str(max(1, steps // 6)),
        "--learning_rate", "1.0e-5",
        "--save_strategy", "no",
        "--report_to", "none",
        "--output_dir", str(out),
        "--overwrite_output_dir", "true",
        "--seed", "0",
    ]  # fmt: skip
    argv += ["--dtype", "float32", "--bf16", "false", "--use_cpu", "true"] if dry else ["--dtype", "bfloat16"]
    if case.method != "full":
        argv += ["--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32"]
    if case.method == "qlora":
        argv += ["--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4", "--use_bnb_nested_quant", "true"]
    if case.checkpointing is not None:
        argv += ["--gradient_checkpointing", str(case.checkpointing).lower()]
    return argv


def fitting_batch(case: Case, argv: list[str], dry: bool) -> tuple[int, dict]:
    """The case's batch, halved until sft_recipes.plan says it fits this GPU (checkpointing as the run will choose)."""
    from sft_recipes.config import parse_recipe
    from sft_recipes.model.kind import load_config_dict
    from sft_recipes.plan.gpus import local_gpu_memory_gib
    from sft_recipes.train import apply_fast_defaults, memory_plan

    batch = case.batch
    while True:
        recipe = parse_recipe(_with(argv, "--per_device_train_batch_size", str(batch)))
        config = load_config_dict(recipe.model)
        apply_fast_defaults(recipe, config)
        plan = memory_plan(recipe, config)
        gpu = local_gpu_memory_gib()
        if dry or gpu is None or plan is None or plan.fits(gpu) or batch == 1:
            return batch, {
                "plan_total_gib": plan and round(plan.total / GiB, 2),
                "plan_allocated_gib": plan and round(plan.allocated / GiB, 2),
                "plan_fits": None if gpu is None or plan is None else plan.fits(gpu),
                "checkpointing_used": bool(recipe.training.gradient_checkpointing),
            }
        batch //= 2


def _with(argv: list[str], key: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(key) + 1] = value
    return out


def run_case(case: Case, workdir: Path, steps: int, dry: bool) -> dict:
    """One case in this process (a fresh one per case: the CUDA peak and allocator state start from zero)."""
    import torch

    from sft_recipes.config import parse_recipe
    from sft_recipes.train import run

    model = workdir / f"model-{case.shape}"
    rows = steps * case.batch + 16
    data = write_text_rows(workdir / f"text-{case.max_length}-{rows}.jsonl", rows, words_per_row=2 * case.max_length)
    out = workdir / "out" / case.name.replace("/", "-")
    argv = recipe_argv(case, model, data, out, steps, case.batch, dry)
    batch, planned = fitting_batch(case, argv, dry)
    argv = _with(argv, "--per_device_train_batch_size", str(batch))
    packing = argv[argv.index("--packing") + 1] == "true"
    result = {"case": case.name, **asdict(case), "batch": batch, "packing": packing, **planned}
    if not dry and planned["plan_fits"] is False:
        return result | {"skipped": "the plan says it does not fit on this GPU even at batch 1"}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = run(parse_recipe(argv))
    logs = [h for h in trainer.state.log_history if "tokens_per_second" in h][1:]  # the first interval warms up
    logs = logs or [h for h in trainer.state.log_history if "tokens_per_second" in h]
    base = getattr(trainer.model, "get_base_model", lambda: trainer.model)()
    result |= {
        "attention": base.config._attn_implementation,
        "tokens_per_second_per_gpu": round(statistics.median(h["tokens_per_second_per_device"] for h in logs), 1),
        "mfu": round(statistics.median(h["mfu"] for h in logs), 4) if all("mfu" in h for h in logs) else None,
    }
    if torch.cuda.is_available():
        measured = torch.cuda.max_memory_allocated() / GiB
        result |= {
            "device": torch.cuda.get_device_name(0),
            "peak_allocated_gib": round(measured, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GiB, 2),
            "predicted_over_measured": round(planned["plan_allocated_gib"] / measured, 3),
        }
    shutil.rmtree(out, ignore_errors=True)
    return result


def child(argv: list[str], workdir: Path, timeout: float = 3600) -> dict:
    """Run this script again with `argv` in a fresh process; its JSON result."""
    out = workdir / "case.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, *argv, "--workdir", str(workdir), "--out", str(out)]
    if timeout <= 0:
        return {"skipped": "not started: the time budget ran out"}
    try:
        proc = subprocess.run(cmd, env=offline_env(), cwd=ROOT, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"error": f"killed after {timeout:.0f} s: the time budget ran out"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:]}
    return json.loads(out.read_text())


def check_targets(results: list[dict]) -> dict:
    """The issue's two GPU targets against the measured cases."""
    done = [r for r in results if "error" not in r and "skipped" not in r]
    full = [r for r in done if r.get("shape") == "qwen2.5-1.5b" and r.get("method") == "full" and r.get("mfu")]
    best = max(full, key=lambda r: r["mfu"], default={})
    qlora = next((r for r in done if r.get("case") == MEMORY_CASE.name), {})
    return {
        "full_1.5b_mfu": {
            "target": f">= {MFU_TARGET:.0%} on an H100",
            "case": best.get("case"),
            "measured": best.get("mfu"),
            "met": best["mfu"] >= MFU_TARGET if best else None,
        },
        "qlora_8b_memory_2048": {
            "target": f"< {QLORA_MEMORY_TARGET_GIB:g} GiB (reserved, i.e. what nvidia-smi sees less the context)",
            "case": qlora.get("case"),
            "measured_allocated_gib": qlora.get("peak_allocated_gib"),
            "measured_reserved_gib": qlora.get("peak_reserved_gib"),
            "met": qlora["peak_reserved_gib"] < QLORA_MEMORY_TARGET_GIB if qlora else None,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help="comma-separated, default all of: " + ", ".join(c.name for c in CASES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workdir", help="where models and data go (default: a temporary directory)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny scale: every case's setup, plan and 2 steps")
    parser.add_argument("--budget_s", type=float, help="start nothing after S seconds; kill a case outlasting them")
    parser.add_argument("--build", help=argparse.SUPPRESS)  # internal: build one shape's model
    parser.add_argument("--run-case", help=argparse.SUPPRESS)  # internal: run one case
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.build or args.run_case:
        workdir = Path(args.workdir)
        if args.build:
            build_model(args.build, workdir / f"model-{args.build}", tiny=args.dry_run)
            result = {"built": args.build}
        else:
            case = next(c for c in CASES if c.name == args.run_case)
            result = run_case(case, workdir, args.steps, args.dry_run)
        Path(args.out).write_text(json.dumps(result))
        return 0

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_throughput needs a CUDA GPU and this machine has none. `--dry-run` checks the setup on CPU at tiny "
              "scale.", file=sys.stderr)  # fmt: skip
        return 2
    chosen = DRY_CASES if args.dry_run else CASES
    if args.cases:
        wanted = set(args.cases.split(","))
        chosen = [c for c in chosen if c.name in wanted]
    steps = 2 if args.dry_run else args.steps
    info = machine()
    deadline = time.monotonic() + (args.budget_s if args.budget_s is not None else float("inf"))

    def left() -> float:  # what a child may take: an hour at most, and what the budget leaves
        return min(3600.0, deadline - time.monotonic())

    with tempfile.TemporaryDirectory(prefix="bench-gpu-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        flags = ["--dry-run"] if args.dry_run else []
        results = []
        for shape in dict.fromkeys(c.shape for c in chosen):
            built = child(["--build", shape, *flags], workdir, left())
            if "error" in built:
                results.append({"shape": shape, **built})
        for case in chosen:
            results.append(
                {"case": case.name} | child(["--run-case", case.name, "--steps", str(steps), *flags], workdir, left())
            )
            print(json.dumps(results[-1]), file=sys.stderr)
    data = {
        "what": "random-init Qwen2.5-1.5B / Llama-3.1-8B shapes (recipes/*/config.json), rows of max_length tokens "
        "(packed when flash attention is used), sft-recipes train; tokens/s and MFU are medians over the logging "
        "intervals after the first; peak = torch.cuda.max_memory_allocated; plan = sft_recipes.plan (allocated)",
        "command": "python benchmarks/gpu_throughput.py" + (" --dry-run" if args.dry_run else ""),
        "machine": info,
        "steps": steps,
        "cases": results,
        "targets": check_targets(results) if not args.dry_run else None,
    }
    if args.dry_run:
        print(json.dumps(data, indent=2))
    else:
        write_result("gpu_throughput", data)
    errors = [r for r in results if "error" in r]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
