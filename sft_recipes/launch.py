"""Hand a run to `accelerate launch` when the recipe asks for an accelerate config (as `trl sft` does)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sft_recipes.errors import Problem, RecipeError
from sft_recipes.resources import accelerate_config, accelerate_config_names


def resolve_accelerate_config(name_or_path: str) -> Path:
    """A bundled config by name (zero3, fsdp2, ...) or a path to one."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    shipped = accelerate_config(name_or_path)
    if shipped is not None:
        return shipped
    raise RecipeError(
        Problem(
            "--accelerate_config",
            f"no accelerate config {name_or_path!r}",
            f"use one of {accelerate_config_names()} or a path to a YAML file",
        )
    )


def launch_command(command: str, flags: dict[str, str], rest: list[str]) -> list[str] | None:
    """The `accelerate launch ... -m sft_recipes <command> REST` line, or None when no topology flag was given."""
    flags = dict(flags)
    if not flags:
        return None
    if "accelerate_config" not in flags:
        raise RecipeError(
            Problem(
                "--" + next(iter(flags)),
                "launcher flags need --accelerate_config",
                "add --accelerate_config single_gpu|multi_gpu|zero2|zero3|fsdp2|... or a path",
            )
        )
    config = resolve_accelerate_config(flags.pop("accelerate_config"))
    line = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    for key, value in flags.items():
        line += [f"--{key}", value]
    return line + ["-m", "sft_recipes", command, *rest]


def launch_if_requested(command: str, flags: dict[str, str], rest: list[str]) -> int | None:
    """Run through accelerate launch if asked; None means: run here, in this process."""
    line = launch_command(command, flags, rest)
    if line is None:
        return None
    print("launching:", " ".join(line), file=sys.stderr, flush=True)
    return subprocess.call(line, env=os.environ.copy())


def read_accelerate_config(name_or_path: str, overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """What an accelerate config asks for: mode (single, ddp, zero2, zero3, fsdp), parallelism (the planner's finer
    name: zero3_offload, fsdp2), process count and mixed precision."""
    import json

    import yaml

    path = resolve_accelerate_config(name_or_path)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(Problem(where, f"invalid YAML: {getattr(err, 'problem', err)}", "fix the YAML")) from None
    kind = config.get("distributed_type", "NO")
    kind = "NO" if kind is False else str(kind).upper()  # YAML 1.1 reads an unquoted NO as false
    processes = int((overrides or {}).get("num_processes", config.get("num_processes") or 1))
    offload = False
    if kind == "DEEPSPEED":
        ds = config.get("deepspeed_config") or {}
        stage = ds.get("zero_stage")
        devices = [ds.get("offload_optimizer_device"), ds.get("offload_param_device")]
        if ds.get("deepspeed_config_file"):
            zero = json.loads(Path(ds["deepspeed_config_file"]).read_text()).get("zero_optimization", {})
            stage = zero.get("stage", stage)
            devices = [
                (zero.get("offload_optimizer") or {}).get("device"),
                (zero.get("offload_param") or {}).get("device"),
            ]
        mode = {3: "zero3", 2: "zero2", 1: "zero2"}.get(int(stage or 0), "ddp")
        offload = any(d not in (None, "none") for d in devices)
    elif kind == "FSDP":
        mode = "fsdp"
    elif kind == "NO":
        mode = "ddp" if processes > 1 else "single"
    elif kind.startswith("MULTI_"):
        mode = "ddp"
    else:
        raise RecipeError(
            Problem(
                f"{path} (distributed_type)", f"unknown distributed_type {kind!r}", "NO, MULTI_GPU, DEEPSPEED or FSDP"
            )
        )
    parallelism = {"fsdp": "fsdp2", "zero3": "zero3_offload" if offload else "zero3"}.get(mode, mode)
    mixed = config.get("mixed_precision")
    return {
        "path": str(path),
        "mode": mode,
        "parallelism": parallelism,
        "num_processes": processes,
        "mixed_precision": "no" if mixed is False else mixed,
    }
