"""User-facing problems: what is wrong, where (key, file:line or path) and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    where: str
    message: str
    fix: str = ""
    severity: str = "error"  # "error" stops the run; "warning" is reported and the run goes on

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}"
        return f"{text}\n    fix: {self.fix}" if self.fix else text


class RecipeError(Exception):
    """Raised for bad user input. The CLI prints the problems without a traceback and exits 2."""

    def __init__(self, problems: Problem | list[Problem]):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def error(where: str, message: str, fix: str = "") -> RecipeError:
    return RecipeError(Problem(where, message, fix))
