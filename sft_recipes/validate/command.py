"""Check a recipe, its model's config.json, tokenizer, data, accelerate config and hardware without loading weights.

Usage: sft-recipes validate --config recipes/<model>/<method>.yaml [--key value ...] [--accelerate_config NAME|PATH]"""

from __future__ import annotations

import argparse
import sys

from sft_recipes.arguments import add_launch_flags, command_parser, launch_flags, parse_with_recipe
from sft_recipes.errors import Problem, RecipeError
from sft_recipes.validate.rules import validate
from sft_recipes.validate.validation import Validation

SUMMARY_ORDER = (
    "model", "dtype", "attention", "quantization", "LoRA", "trainable", "max_length", "packing", "chat template",
    "data", "trained tokens", "distributed", "hardware", "resume", "disk",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("validate", __doc__, recipe=True)
    add_launch_flags(parser)
    return parser


def main(argv: list[str]) -> int:
    import datasets

    from sft_recipes.config import parse_recipe
    from sft_recipes.topology import Topology

    datasets.disable_progress_bars()  # validate prints a summary, not the loading of a 64-row sample
    args, rest = parse_with_recipe(build_parser(), argv)
    flags = launch_flags(args)
    problems: list[Problem] = []
    topology = None
    if "accelerate_config" in flags:
        try:
            topology = Topology.from_accelerate_config(flags.pop("accelerate_config"), flags)
        except RecipeError as err:
            problems += err.problems
    recipe = parse_recipe(rest, keep_going=True)
    v = validate(recipe, topology)
    v.problems = problems + v.problems
    for problem in v.problems:
        if problem.severity == "warning":
            print(f"warning: {problem}".replace("\n", "\n  "), file=sys.stderr)
    if v.errors:
        raise RecipeError(v.errors)
    print_summary(v)
    return 0


def print_summary(v: Validation) -> None:
    """`recipe: OK`, then what the run will be, one line per subject in SUMMARY_ORDER."""
    warnings = len(v.problems)
    print(f"{v.recipe.path or 'recipe'}: OK" + (f" ({warnings} warning(s) above)" if warnings else ""))
    width = max(len(k) for k in v.summary) if v.summary else 0
    for label in sorted(v.summary, key=lambda k: SUMMARY_ORDER.index(k) if k in SUMMARY_ORDER else len(SUMMARY_ORDER)):
        print(f"  {label:<{width}}  {v.summary[label]}")
