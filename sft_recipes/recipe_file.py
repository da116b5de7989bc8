"""The recipe file as written: its YAML, the line of each top-level key (for file:line problems), and the types of
its values against the schema's hints."""

from __future__ import annotations

import os
import re
import types
import typing
from pathlib import Path
from typing import Any

from sft_recipes.errors import Problem, RecipeError


def key_lines(path: str) -> dict[str, int]:
    """Top-level key -> line number, so problems can point at file:line."""
    lines: dict[str, int] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        match = re.match(r"^([A-Za-z_][\w.-]*)\s*:", line)
        if match:
            lines.setdefault(match.group(1), number)
    return lines


def load_yaml(path: str) -> dict[str, Any]:
    import yaml

    if not os.path.isfile(path):
        raise RecipeError(Problem(path, "recipe file not found", "check the path given to --config"))
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise RecipeError(
            Problem(where, f"invalid YAML: {getattr(err, 'problem', err)}", "fix the YAML syntax")
        ) from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise RecipeError(Problem(path, "a recipe must be a YAML mapping of key: value", "see recipes/ for examples"))
    return config


def scalar_kind(hint: Any) -> type | None:
    """The scalar type a hint boils down to (int/float/bool/str), or None for containers and unions of several."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return scalar_kind(args[0]) if len(args) == 1 else None
    return hint if hint in (int, float, bool, str) else None


def check_types(config: dict[str, Any], hints: dict[str, Any], where: typing.Callable[[str], str]) -> list[Problem]:
    """Type problems in YAML values. Strings that argparse converts (a YAML `1e-5`) are warnings, not errors."""
    problems = []
    for key, value in config.items():
        kind = scalar_kind(hints.get(key))
        if kind is None or value is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if isinstance(value, str) and kind in (int, float):
            try:
                kind(value)
            except ValueError:
                pass
            else:
                problems.append(
                    Problem(
                        where(key),
                        f"{value!r} was read by YAML as a string and converted to {kind(value)!r}",
                        f"write it as a float, e.g. `{key}: {float(value):.1e}`"
                        if kind is float
                        else f"write it without quotes: `{key}: {value}`",
                        severity="warning",
                    )
                )
                continue
        if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            continue
        if kind is str and isinstance(value, (int, float)):
            continue
        problems.append(
            Problem(
                where(key),
                f"expected {kind.__name__}, got {type(value).__name__} {value!r}",
                f"set `{key}` to a {kind.__name__}",
            )
        )
    return problems
