"""Hand a run to `accelerate launch` when the recipe asks for an accelerate config (as `trl sft` does)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Any

from sft_recipes.errors import error
from sft_recipes.topology import Topology, recipe_precision

LAUNCH_ENV = "SFT_RECIPES_LAUNCH"  # the topology flags as given, for the ranks' model card to name in its command


def launch_command(command: str, flags: dict[str, str], rest: list[str]) -> list[str] | None:
    """The `accelerate launch ... -m sft_recipes <command> REST` line, or None when no topology flag was given."""
    from sft_recipes.config import parse_recipe

    flags = dict(flags)
    if not flags:
        return None
    if "accelerate_config" not in flags:
        fix = "add --accelerate_config single_gpu|multi_gpu|zero2|zero3|fsdp2|... or a path"
        raise error("--" + next(iter(flags)), "launcher flags need --accelerate_config", fix)
    topology = Topology.from_accelerate_config(flags.pop("accelerate_config"), flags)
    line = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(topology.config_path)]
    # from the recipe (REST parsed as the ranks will), so that the accelerate config's own mixed_precision can never
    # disagree with the recipe's bf16/fp16: DeepSpeed refuses that
    line += ["--mixed_precision", launch_precision(parse_recipe(rest).training)]
    for key, value in flags.items():
        line += [f"--{key}", value]
    return line + ["-m", "sft_recipes", command, *rest]


def launch_precision(training_args: Any) -> str:
    """accelerate's --mixed_precision for a recipe's TrainingArguments: its bf16/fp16, or no for a CPU run."""
    return "no" if training_args.use_cpu else recipe_precision(training_args)


def launch_if_requested(command: str, flags: dict[str, str], rest: list[str]) -> int | None:
    """Run through accelerate launch if asked; None means: run here, in this process."""
    line = launch_command(command, flags, rest)
    if line is None:
        return None
    print("launching:", " ".join(line), file=sys.stderr, flush=True)
    given = shlex.join(arg for key, value in flags.items() for arg in (f"--{key}", value))
    return subprocess.call(line, env={**os.environ, LAUNCH_ENV: given})
