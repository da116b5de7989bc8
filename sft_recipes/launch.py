"""Hand a run to `accelerate launch` when the recipe asks for an accelerate config (as `trl sft` does)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sft_recipes.errors import Problem, RecipeError

# Flags for accelerate launch, not for the recipe.
LAUNCH_FLAGS = (
    "accelerate_config",
    "num_processes",
    "num_machines",
    "machine_rank",
    "main_process_ip",
    "main_process_port",
)
CONFIG_DIRS = (Path.cwd() / "accelerate_configs", Path(__file__).resolve().parent.parent / "accelerate_configs")


def resolve_accelerate_config(name_or_path: str) -> Path:
    """A bundled config by name (zero3, fsdp2, ...) or a path to one."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    for directory in CONFIG_DIRS:
        candidate = directory / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in CONFIG_DIRS if d.is_dir() for p in d.glob("*.yaml")})
    raise RecipeError(
        Problem(
            "--accelerate_config",
            f"no accelerate config {name_or_path!r}",
            f"use one of {known} or a path to a YAML file",
        )
    )


def split_launch_flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Separate `--num_processes 8`-style launcher flags from the recipe's arguments."""
    flags: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        key = argv[i][2:].split("=", 1)[0] if argv[i].startswith("--") else None
        if key in LAUNCH_FLAGS:
            if "=" in argv[i]:
                flags[key] = argv[i].split("=", 1)[1]
                i += 1
            else:
                if i + 1 >= len(argv):
                    raise RecipeError(Problem(argv[i], "missing its value"))
                flags[key] = argv[i + 1]
                i += 2
        else:
            rest.append(argv[i])
            i += 1
    return flags, rest


def launch_command(command: str, argv: list[str]) -> list[str] | None:
    """The `accelerate launch ... -m sft_recipes <command>` line, or None when no accelerate config was asked for."""
    flags, rest = split_launch_flags(argv)
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


def launch_if_requested(command: str, argv: list[str]) -> int | None:
    """Run through accelerate launch if asked; None means: run here, in this process."""
    line = launch_command(command, argv)
    if line is None:
        return None
    print("launching:", " ".join(line), file=sys.stderr, flush=True)
    return subprocess.call(line, env=os.environ.copy())
