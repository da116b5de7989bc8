"""Predict peak GPU memory per device for a recipe, from config.json alone; the formula is in plan.md.

Usage: sft-recipes plan --config recipes/<model>/<method>.yaml [--accelerate_config zero3] [--num_processes N]
       [--gpu-memory GiB|NAME] [--json] [--key value ...]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sft_recipes.arguments import add_launch_flags, command_parser, launch_flags, parse_with_recipe
from sft_recipes.errors import error
from sft_recipes.model.kind import load_config_or_snapshot, resolve_dtype_name
from sft_recipes.plan.fixes import max_micro_batch, suggestions, verdict_line
from sft_recipes.plan.formula import estimate
from sft_recipes.plan.gpus import KNOWN_GPUS, gpu_spec, local_gpu_memory_gib
from sft_recipes.plan.inputs import PlanInput
from sft_recipes.topology import Topology, recipe_precision

DEFAULT_SEQ_LEN = 2048  # assumed per row when max_length is None (VLM recipes), since the data decides it


def launched_topology(flags: dict[str, str]) -> Topology:
    """The topology the launch flags describe: the accelerate config's, else one machine with --num_processes."""
    if "accelerate_config" in flags:
        flags = dict(flags)
        return Topology.from_accelerate_config(flags.pop("accelerate_config"), flags)
    processes = int(flags.get("num_processes", 1))
    return Topology(mode="ddp" if processes > 1 else "single", num_processes=processes)


def plan_input_from_recipe(recipe: Any, config: dict[str, Any], topology: Topology | None = None) -> PlanInput:
    """The PlanInput of a parsed Recipe and its model's config.json, as launched on `topology` (None: one process)."""
    model, training, topology = recipe.model, recipe.training, topology or Topology()
    method = (
        "qlora" if model.load_in_4bit else "8bit-lora" if model.load_in_8bit else "lora" if model.use_peft else "full"
    )
    optim = getattr(training.optim, "value", training.optim)
    targets = model.lora_target_modules
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing (the old name mirrors the new one)
    checkpointing = getattr(training, "activation_checkpointing", None)
    checkpointing = training.gradient_checkpointing if checkpointing is None else checkpointing
    kwargs = getattr(training, "activation_checkpointing_kwargs", None)
    kwargs = kwargs or getattr(training, "gradient_checkpointing_kwargs", None)
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    return PlanInput(
        config=config,
        method=method,
        lora_r=model.lora_r,
        lora_targets=targets if isinstance(targets, str) or targets is None else tuple(targets),
        lora_dropout=model.lora_dropout,
        dtype=resolve_dtype_name(model.dtype, training, config),
        micro_batch_size=training.per_device_train_batch_size,
        seq_len=training.max_length or DEFAULT_SEQ_LEN,
        gradient_checkpointing=bool(checkpointing),
        checkpoint_every_n_layers=int(kwargs.get("every_n_layers", 1)),
        checkpoint_offload=bool(kwargs.get("offload", False)),
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        optimizer=str(optim),
        parallelism=topology.parallelism,
        world_size=topology.num_processes,
        mixed_precision=recipe_precision(training),
        attn_implementation=model.attn_implementation or "sdpa",
        liger=bool(getattr(training, "use_liger_kernel", False)),
        nested_quant=bool(getattr(model, "use_bnb_nested_quant", True)),
    )


def print_report(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Column, Table

    inp = data["input"]
    checkpointing = "on" if inp["gradient_checkpointing"] else "off"
    title = (
        f"{inp['method']} · {inp['dtype']} · {inp['micro_batch_size']} x {inp['seq_len']} tokens · "
        f"{inp['parallelism']} x {inp['world_size']} · gradient checkpointing {checkpointing}"
    )
    table = Table("component", Column("GiB", justify="right"), "note", title=title, title_justify="left")
    for row in data["breakdown"]:
        table.add_row(row["component"], f"{row['gib']:.2f}", row["note"])
    table.add_row("peak per GPU", f"{data['total_gib']:.2f}", f"at {data['peak_phase']}", style="bold")
    console = Console()
    console.print(table)
    for warning in data["warnings"]:
        console.print(f"warning: {warning}", style="yellow", markup=False)
    console.print(data["verdict"], style="bold", markup=False)
    if (gib := data["gpu_memory_gib"]) is not None:
        best = data["max_micro_batch"] or "none (1 does not fit)"
        console.print(f"max per_device_train_batch_size on {gib:g} GiB: {best}", markup=False)
        for fix in data["suggestions"][1:]:
            console.print(f"  or: {fix}", markup=False)


def _gpu_memory_arg(value: str) -> float:
    """--gpu-memory: GiB, or a GPU of KNOWN_GPUS ("A10G", "H100 SXM")."""
    try:
        return float(value)
    except ValueError:
        spec = gpu_spec(value)
        if spec is None:
            raise error("--gpu-memory", f"neither GiB nor a known GPU: {value!r}", ", ".join(KNOWN_GPUS)) from None
        return spec.memory_gib


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("plan", __doc__, recipe=True)
    add_launch_flags(parser)
    gpu_help = "memory per GPU for the verdict, or a GPU name (default: the local GPU)"
    parser.add_argument("--gpu-memory", metavar="GiB|NAME", help=gpu_help)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser


def main(argv: list[str]) -> int:
    from sft_recipes.config import parse_recipe

    own, rest = parse_with_recipe(build_parser(), argv)
    gpu_memory = _gpu_memory_arg(own.gpu_memory) if own.gpu_memory else None
    recipe = parse_recipe(rest)
    config = load_config_or_snapshot(recipe.model, recipe.training.trust_remote_code, recipe.path)[0]
    plan = estimate(plan_input_from_recipe(recipe, config, launched_topology(launch_flags(own))))
    if recipe.training.max_length is None:
        plan.warnings.append(f"max_length is null: sized for {DEFAULT_SEQ_LEN} tokens per row")
    if gpu_memory is None:
        gpu_memory = local_gpu_memory_gib()
    # what --json prints and the table shows: the plan with its verdict
    data = plan.to_dict() | {"gpu_memory_gib": gpu_memory, "verdict": verdict_line(plan, gpu_memory)}
    if gpu_memory is not None:
        data["fits"] = plan.fits(gpu_memory)
        data["max_micro_batch"] = max_micro_batch(plan, gpu_memory)
        data["suggestions"] = suggestions(plan, gpu_memory)
    if own.json:
        print(json.dumps(data, indent=1))
    else:
        print_report(data)
    return 0
