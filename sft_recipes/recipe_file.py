"""The recipe file as written: its YAML, where each top-level key is (file:line), its types against the schema."""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sft_recipes.errors import Problem, RecipeError


def key_locator(path: str | None) -> Callable[[str], str]:
    """Where a key is: `recipe.yaml:LINE (key)` when it is a top-level key of the recipe file, else the key itself."""
    lines: dict[str, int] = {}
    if path and os.path.isfile(path):
        for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
            match = re.match(r"^([A-Za-z_][\w.-]*)\s*:", line)
            if match:
                lines.setdefault(match.group(1), number)
    return lambda key: f"{path}:{lines[key]} ({key})" if key in lines else key


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
    if not isinstance(config, dict | None):
        raise RecipeError(Problem(path, "a recipe must be a YAML mapping of key: value", "see recipes/ for examples"))
    return config or {}


def scalar_kind(hint: Any) -> type | None:
    """The scalar type a hint boils down to (int/float/bool/str), or None for containers and unions of several."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return scalar_kind(args[0]) if len(args) == 1 else None
    return hint if hint in (int, float, bool, str) else None


def _fits(kind: type, value: Any) -> bool:
    """Whether the YAML value passes as it is: an int for a float, "true" for a bool, a number for a str."""
    if isinstance(value, bool):
        return kind in (bool, str)
    if kind is bool:
        return isinstance(value, str) and value.lower() in ("true", "false")
    if kind is str:
        return isinstance(value, (str, int, float))
    if kind is int:
        return isinstance(value, int)
    return isinstance(value, (int, float))  # an int for a float key (learning_rate: 1)


def check_types(config: dict[str, Any], hints: dict[str, Any], where: Callable[[str], str]) -> list[Problem]:
    """Type problems in YAML values. Strings that argparse converts (a YAML `1e-5`) are warnings, not errors."""
    problems = []
    for key, value in config.items():
        kind = scalar_kind(hints.get(key))
        if kind is None or value is None or _fits(kind, value):
            continue
        try:
            converted = kind(value) if isinstance(value, str) and kind in (int, float) else None
        except ValueError:
            converted = None
        if converted is None:
            got = f"{type(value).__name__} {value!r}"
            problems.append(
                Problem(where(key), f"expected {kind.__name__}, got {got}", f"set `{key}` to a {kind.__name__}")
            )
            continue
        fix = f"write it without quotes: `{key}: {value}`"
        if kind is float:
            fix = f"write it as a float, e.g. `{key}: {float(value):.1e}`"
        message = f"{value!r} was read by YAML as a string and converted to {converted!r}"
        problems.append(Problem(where(key), message, fix, severity="warning"))
    return problems
