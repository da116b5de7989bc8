"""The fix search: the largest batch that fits, and the cheapest recipe changes that make a run fit a GPU."""

from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import Any

from sft_recipes.plan.formula import Plan, estimate
from sft_recipes.plan.gpus import GiB
from sft_recipes.plan.inputs import PlanInput

Fix = tuple[str, dict[str, Any]] | None  # (the recipe change, the PlanInput changes), or None when it does not apply


def max_micro_batch(plan: Plan, gpu_memory_gib: float, limit: int = 4096) -> int:
    """The largest per-device batch that fits (0: not even 1); memory grows with the batch, so bisect."""
    low, high = 0, 1
    while high <= limit and _fits(plan.input, gpu_memory_gib, micro_batch_size=high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if _fits(plan.input, gpu_memory_gib, micro_batch_size=mid) else (low, mid)
    return low


def find_fixes(plan: Plan, gpu_memory_gib: float) -> list[tuple[str, dict[str, Any]]]:
    """(recipe change, PlanInput changes) that make the run fit, cheapest first; [] if it already fits.
    Single changes when any is enough, else the first stack of them, in order, that is."""
    if plan.fits(gpu_memory_gib):
        return []
    inp, gib = plan.input, gpu_memory_gib
    singles = [fix for fix in (make(inp, gib) for make in FIXES) if fix and _fits(inp, gib, **fix[1])]
    if singles:
        return singles
    texts, current = [], inp
    for make in FIXES:
        if fix := make(current, gib):
            texts.append(fix[0])
            current = replace(current, **fix[1])
            if estimate(current).fits(gib):
                changes = {f.name: getattr(current, f.name) for f in fields(inp)}
                return [(" + ".join(texts), {k: v for k, v in changes.items() if v != getattr(inp, k)})]
    return []


def suggestions(plan: Plan, gpu_memory_gib: float) -> list[str]:
    """The fixes as lines, each with the peak it re-estimates to."""
    return [
        f"{text} ({estimate(replace(plan.input, **changes)).total / GiB:.1f} GiB)"
        for text, changes in find_fixes(plan, gpu_memory_gib)
    ]


def verdict_line(plan: Plan, gpu_memory_gib: float | None) -> str:
    """One line for `train` and `plan`: fits or not on this GPU size, and the cheapest fix."""
    peak = plan.total / GiB
    if gpu_memory_gib is None:
        return f"peak {peak:.1f} GiB per GPU (no GPU here: `sft-recipes plan --gpu-memory GiB` gives a verdict)"
    share = plan.total / (gpu_memory_gib * GiB)
    if plan.fits(gpu_memory_gib):
        return f"fits on {gpu_memory_gib:g} GiB: {peak:.1f} GiB peak per GPU ({share:.0%})"
    found = suggestions(plan, gpu_memory_gib)
    fix = f"; cheapest fix: {found[0]}" if found else "; no single change found that makes it fit"
    return f"does NOT fit on {gpu_memory_gib:g} GiB: {peak:.1f} GiB peak per GPU ({share:.0%}){fix}"


def _fits(inp: PlanInput, gib: float, **changes: Any) -> bool:
    return estimate(replace(inp, **changes)).fits(gib)


def _checkpointing(inp: PlanInput, gib: float) -> Fix:
    return None if inp.gradient_checkpointing else ("gradient_checkpointing: true", {"gradient_checkpointing": True})


def _batch(inp: PlanInput, gib: float) -> Fix:
    """The largest micro-batch that fits (1 at least), with more accumulation to keep the effective batch."""
    best = max(max_micro_batch(estimate(inp), gib), 1)
    if best >= inp.micro_batch_size:
        return None
    steps = inp.gradient_accumulation_steps * math.ceil(inp.micro_batch_size / best)
    text = f"per_device_train_batch_size: {best}, gradient_accumulation_steps: {steps}"
    return text, {"micro_batch_size": best, "gradient_accumulation_steps": steps}


def _length(inp: PlanInput, gib: float) -> Fix:
    for length in (inp.seq_len // 2, inp.seq_len // 4):
        if length >= 256 and _fits(inp, gib, seq_len=length):
            return f"max_length: {length}", {"seq_len": length}
    return None


def _optimizer(inp: PlanInput, gib: float) -> Fix:
    if inp.method != "full" or "8bit" in inp.optimizer:
        return None
    return "optim: adamw_8bit", {"optimizer": "adamw_8bit"}


def _lora(inp: PlanInput, gib: float) -> Fix:
    return ("use_peft: true (LoRA)", {"method": "lora"}) if inp.method == "full" else None


def _qlora(inp: PlanInput, gib: float) -> Fix:
    return None if inp.method == "qlora" else ("load_in_4bit: true, use_peft: true (QLoRA)", {"method": "qlora"})


def _zero3(inp: PlanInput, gib: float) -> Fix:
    if inp.world_size == 1 or inp.parallelism in ("zero3", "zero3_offload", "fsdp2"):
        return None
    return f"--accelerate_config zero3 (on the same {inp.world_size} GPUs)", {"parallelism": "zero3"}


def _more_gpus(inp: PlanInput, gib: float) -> Fix:
    parallel = inp.parallelism if inp.parallelism in ("zero3", "fsdp2") else "zero3"
    for world in (2, 4, 8, 16, 32, 64):
        changes = {"world_size": world, "parallelism": parallel}
        if world > inp.world_size and _fits(inp, gib, **changes):
            return f"--accelerate_config {parallel} --num_processes {world}", changes
    return None


def _offload(inp: PlanInput, gib: float) -> Fix:
    if inp.parallelism == "zero3_offload":
        return None
    return "--accelerate_config zero3_offload (optimizer and weights in host memory)", {"parallelism": "zero3_offload"}


# Cheapest first: nothing that changes what is learned, then the method, then the hardware.
FIXES = (_checkpointing, _batch, _length, _optimizer, _lora, _qlora, _zero3, _more_gpus, _offload)
