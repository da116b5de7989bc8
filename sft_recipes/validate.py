"""Check a recipe, its model's config.json, tokenizer, data and hardware without loading weights.

Usage: sft-recipes validate --config recipes/<model>/<method>.yaml [--key value ...] [--accelerate_config NAME]
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from sft_recipes.errors import Problem, RecipeError

logger = logging.getLogger("sft_recipes")
DEFAULT_MAX_LENGTH = 1024  # trl.SFTConfig's default, which truncates silently


def collect_problems(recipe: Any) -> tuple[list[Problem], dict[str, Any]]:
    """Every problem that can be found without weights, and the model's config.json (empty if unreadable)."""
    from sft_recipes.model import detect_model_kind, load_config_dict, rope_scaling_plan, text_config

    problems = list(recipe.warnings)
    model_args, training_args = recipe.model, recipe.training
    try:
        config = load_config_dict(model_args, training_args.trust_remote_code)
        kind = detect_model_kind(config, model_args.model_kind)
    except RecipeError as err:
        return problems + err.problems, {}
    if "max_length" not in recipe.explicit and kind != "image_text_to_text":
        problems.append(
            Problem(
                "max_length",
                f"not set: TRL truncates every example to {DEFAULT_MAX_LENGTH} tokens",
                "set max_length explicitly in the recipe",
                severity="warning",
            )
        )
    try:
        rope_scaling_plan(config, training_args.max_length, model_args.rope_scaling_policy)
    except RecipeError as err:
        problems += err.problems
    context = text_config(config).get("max_position_embeddings")
    if model_args.load_in_4bit and model_args.load_in_8bit:
        problems.append(Problem("load_in_4bit", "both load_in_4bit and load_in_8bit are set", "choose one"))
    logger.debug("validated %s (%s, context %s)", model_args.model_name_or_path, kind, context)
    return problems, config


def preflight(recipe: Any) -> dict[str, Any]:
    """What `train` runs before loading weights: report warnings, stop on errors; returns config.json."""
    problems, config = collect_problems(recipe)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise RecipeError(errors)
    for warning in problems:
        logger.warning("%s", warning)
    return config


def main(argv: list[str]) -> int:
    from sft_recipes.config import parse_recipe

    recipe = parse_recipe(argv)
    problems, _ = collect_problems(recipe)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        print(f"{problem.severity}: {problem}", file=sys.stderr)
    if errors:
        raise RecipeError(errors)
    print(f"{recipe.path or 'recipe'}: OK")
    return 0
