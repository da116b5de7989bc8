"""How close `sft-recipes plan` comes to measured peak memory: trains random-init llama shapes for a few steps.

Usage: python benchmarks/plan_accuracy.py [--device cpu|cuda] [--only NAME] [--quick] [--budget_s S] [--dry-run]
CPU (default, < 10 min): fp32, peak RSS of a fresh process per case (VmHWM, reset after the model is built).
CUDA: bf16 at real sizes, torch.cuda.max_memory_allocated against the plan less CUDA context and fragmentation.
--quick: the cases `make gpu-check` runs (4096-token rows, every method without checkpointing, full with it).
--dry-run: each method of the chosen grid once on a CPU-sized model, 1 step; prints, writes no results.
Prints one JSON line per case and writes benchmarks/results/plan_accuracy_{cpu,cuda}.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sft_recipes.plan.formula import estimate
from sft_recipes.plan.gpus import GiB
from sft_recipes.plan.inputs import PlanInput

RESULTS = Path(__file__).resolve().parent / "results"


def llama(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int) -> dict:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }


CPU_MODELS = {
    "7M": llama(256, 4, 4, 2, 688, 8192),
    "25M-v2k": llama(512, 8, 8, 4, 1376, 2048),  # a small vocabulary: the decoder layers set the peak
    "40M": llama(512, 6, 8, 4, 1376, 16384),
    "100M": llama(768, 12, 12, 4, 2048, 16000),
}
CUDA_MODELS = {  # public shapes, random weights: Qwen2.5-0.5B and Llama-3.2-1B
    "qwen2.5-0.5b": {**llama(896, 24, 14, 2, 4864, 151936), "model_type": "qwen2", "tie_word_embeddings": True},
    "llama-3.2-1b": {**llama(2048, 16, 32, 8, 8192, 128256), "tie_word_embeddings": True},
}


def cases(device: str) -> list[dict]:
    if device == "cpu":
        grid = [
            ("7M", "full", 256, 4, False, "sdpa"),
            ("7M", "lora", 1024, 4, False, "sdpa"),
            ("7M", "qlora", 512, 4, False, "sdpa"),
            ("25M-v2k", "full", 1024, 2, False, "sdpa"),
            ("25M-v2k", "full", 2048, 2, True, "sdpa"),
            ("25M-v2k", "lora", 1024, 4, False, "sdpa"),
            ("25M-v2k", "lora", 512, 2, False, "eager"),
            ("25M-v2k", "qlora", 1024, 4, False, "sdpa"),
            ("40M", "full", 512, 4, True, "sdpa"),
            ("40M", "lora", 512, 4, True, "sdpa"),
            ("40M", "qlora", 1024, 2, True, "sdpa"),
            ("100M", "full", 256, 2, True, "sdpa"),
            ("100M", "lora", 512, 4, False, "sdpa"),
        ]
    else:
        grid = [
            (model, method, seq, batch, ckpt, "sdpa")
            for model in CUDA_MODELS
            for method in ("full", "lora", "qlora")
            for seq, batch in ((1024, 4), (4096, 2))
            for ckpt in (True, False)
        ]
    return [
        {"name": f"{m}-{method}-s{seq}-b{batch}{'-ckpt' if ckpt else ''}{'-eager' if attn == 'eager' else ''}",
         "model": m, "method": method, "seq": seq, "batch": batch, "ckpt": ckpt, "attn": attn, "device": device}
        for m, method, seq, batch, ckpt, attn in grid
    ]  # fmt: skip


def quick(grid: list[dict]) -> list[dict]:
    """The few cases a time-boxed GPU check runs, the ones without checkpointing first: those calibrate the plan that
    sft_recipes.train turns activation checkpointing off on."""
    chosen = [c for c in grid if c["seq"] == max(g["seq"] for g in grid) and (not c["ckpt"] or c["method"] == "full")]
    return sorted(chosen, key=lambda c: c["ckpt"])


def dry(grid: list[dict]) -> list[dict]:
    """Each method of `grid` once, shrunk to the smallest CPU model, 64 tokens, one row: every code path, fast."""
    first: dict[str, dict] = {}
    for case in grid:
        first.setdefault(case["method"], case)
    tiny = {"model": "7M", "seq": 64, "batch": 1, "device": "cpu"}
    return [case | tiny | {"name": f"dry-{case['name']}"} for case in first.values()]


def plan_input(case: dict) -> PlanInput:
    models = CPU_MODELS if case["device"] == "cpu" else CUDA_MODELS
    cpu = case["device"] == "cpu"
    return PlanInput(
        config=models[case["model"]],
        method=case["method"],
        lora_r=16,
        lora_dropout=0.05,
        dtype="float32" if cpu else "bfloat16",
        micro_batch_size=case["batch"],
        seq_len=case["seq"],
        gradient_checkpointing=case["ckpt"],
        optimizer="adamw_torch_fused",
        mixed_precision="no" if cpu else "bf16",
        attn_implementation=case.get("attn", "sdpa"),
        attention_mask=False,  # full-length rows: transformers drops the all-ones mask and sdpa runs causal GQA
        device=case["device"],
    )


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(case: dict, steps: int = 2) -> dict:
    """Train a few steps the way SFTTrainer does (fused LM head, AdamW fused, clipping, zero_grad to None)."""
    import tempfile

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    cuda = case["device"] == "cuda"
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    inp = plan_input(case)
    dtype = getattr(torch, inp.dtype)
    config = AutoConfig.for_model(**inp.config)
    load = {"dtype": dtype, "attn_implementation": inp.attn_implementation}
    ids = torch.randint(0, config.vocab_size, (case["batch"], case["seq"]), device=device)
    import peft  # noqa: F401  (its import, and bitsandbytes', would otherwise count as training memory)

    if case["method"] == "qlora":
        import bitsandbytes  # noqa: F401
    baseline = 0 if cuda else _rss("VmRSS")
    if case["method"] == "qlora":
        from transformers import BitsAndBytesConfig

        folder = tempfile.mkdtemp()
        AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(folder)
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if cuda else dtype,
        )
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, device_map=device, **load)
        for param in model.parameters():  # on CPU unquantized tensors stay views of the mmapped checkpoint file:
            if param.is_floating_point() and not cuda:  # copy them to ordinary memory, as a GPU would hold them
                param.data = param.data.clone()
    else:
        model = AutoModelForCausalLM.from_config(config, **load).to(device)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    if case["method"] != "full":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=inp.lora_r, lora_dropout=inp.lora_dropout, target_modules=list(inp.lora_targets or []) or
                          ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])  # fmt: skip
        model = get_peft_model(model, lora)
        if case["method"] == "qlora":  # as SFTTrainer does for quantized bases
            for param in model.parameters():
                if param.requires_grad:
                    param.data = param.data.to(torch.bfloat16)
    model.train()
    if case["ckpt"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if case["method"] != "full":
            model.enable_input_require_grads()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
    else:
        import ctypes
        import gc

        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # what loading freed goes back to the OS, out of the RSS
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (weights are in it)
        start_bytes = _rss("VmRSS") - baseline
    started = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            out = model(input_ids=ids, labels=ids, fused_lm_head=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if cuda else _rss("VmHWM") - baseline
    return {"measured_bytes": peak, "after_load_bytes": start_bytes, "seconds": round(seconds, 1)}


def run(case: dict, steps: int = 2, timeout: float | None = None) -> dict:
    """One case in a fresh process, so that peaks do not leak between cases."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    # Big blocks through mmap, so freed tensors leave the RSS as they leave torch (glibc would keep them)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    command = [sys.executable, __file__, "--child", json.dumps(case | {"steps": steps})]
    try:
        child = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"killed after {timeout:.0f} s: the time budget ran out"}
    if child.returncode != 0:
        return {"error": child.stderr.strip().splitlines()[-1] if child.stderr.strip() else "failed"}
    return json.loads(child.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--only", help="run the cases whose name contains this")
    parser.add_argument("--quick", action="store_true", help="only the cases `make gpu-check` runs")
    parser.add_argument(
        "--budget_s", type=float, help="start no case after this many seconds; kill one that outlasts it"
    )
    parser.add_argument("--dry-run", action="store_true", help="each method once on a CPU-sized model; writes nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case = json.loads(args.child)
        print(json.dumps(measure(case, case.pop("steps"))))
        return 0
    grid = [c for c in cases(args.device) if not args.only or args.only in c["name"]]
    grid = quick(grid) if args.quick else grid
    grid = dry(grid) if args.dry_run else grid
    started = time.monotonic()
    rows = []
    for case in grid:
        left = None if args.budget_s is None else args.budget_s - (time.monotonic() - started)
        if left is not None and left <= 0:
            rows.append({"case": case["name"], "skipped": "not started: the time budget ran out"})
            continue
        plan = estimate(plan_input(case))
        predicted = plan.allocated
        result = run(case, steps=1 if args.dry_run else 2, timeout=left)
        row = {"case": case["name"], "predicted_bytes": predicted, "peak_phase": plan.peak_phase, **result}
        if "measured_bytes" in result:
            row["ratio"] = round(predicted / result["measured_bytes"], 3)
            row["predicted_gib"] = round(predicted / GiB, 3)
            row["measured_gib"] = round(result["measured_bytes"] / GiB, 3)
        print(json.dumps(row), flush=True)
        rows.append(row)
    ratios = [r["ratio"] for r in rows if "ratio" in r]
    summary = {
        "device": args.device,
        "cases": len(rows),
        "within_20pct": sum(0.8 <= x <= 1.2 for x in ratios),
        "min_ratio": min(ratios, default=None),
        "max_ratio": max(ratios, default=None),
        "mean_abs_error": round(sum(abs(x - 1) for x in ratios) / len(ratios), 3) if ratios else None,
    }
    if args.device == "cuda" and not args.dry_run:
        import torch

        summary["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(summary))
    if args.dry_run:
        return 1 if any("error" in r for r in rows) else 0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"plan_accuracy_{args.device}.json").write_text(
        json.dumps({"summary": summary, "rows": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
