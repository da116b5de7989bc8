"""What a validation found: problems (errors and warnings), the model's config.json and a summary of the run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from sft_recipes.errors import Problem
from sft_recipes.topology import Topology


@dataclass
class Validation:
    """What the checks found, and what later checks read from earlier ones (config.json, kind, tokenizer, model)."""

    recipe: Any
    problems: list[Problem] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, str] = field(default_factory=dict)
    kind: str | None = None
    topology: Topology = field(default_factory=Topology)  # how the run is launched (from_env, or --accelerate_config)
    params: int | None = None  # every parameter of the model (meta-device count)
    trainable: int | None = None
    examples: int | None = None
    tokenizer: Any = None
    model: Any = None  # the model's skeleton on the meta device
    statistics: dict[str, Any] | None = None  # inspection's statistics of the first data rows

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def has_error_on(self, key: str) -> bool:
        """Whether an error names recipe key `key` (bare, or as `file:LINE (key)`)."""
        return any(p.where == key or p.where.endswith(f"({key})") for p in self.errors)

    def add(self, where: str, message: str, fix: str = "", warning: bool = False) -> None:
        self.problems.append(Problem(where, message, fix, "warning" if warning else "error"))

    @cached_property
    def key(self) -> Callable[[str], str]:
        """`v.key(name)`: `recipe.yaml:LINE (name)` when the key is in the recipe file, else the key itself."""
        from sft_recipes.config import key_locator

        return key_locator(self.recipe.path)

    def extend(self, problems: list[Problem]) -> None:
        """Problems from the model, data and inspection layers: a bare key that is in the recipe points at its line."""
        self.problems += [
            replace(p, where=self.key(p.where)) if p.where in self.recipe.explicit else p for p in problems
        ]
