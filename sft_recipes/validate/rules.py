"""The rule table: which checks run, in what order and on what they need, collected into one Validation."""

from __future__ import annotations

import logging
from typing import Any

from sft_recipes.errors import RecipeError
from sft_recipes.topology import Topology
from sft_recipes.validate import data_checks, model_checks, output_checks, recipe_checks
from sft_recipes.validate.validation import Validation

logger = logging.getLogger("sft_recipes")
RECIPE_STAGES = (
    recipe_checks.check_ranges, recipe_checks.check_choices, recipe_checks.check_distribution,
    recipe_checks.check_hardware, recipe_checks.check_quantization, recipe_checks.check_hub,
    recipe_checks.check_trackers, recipe_checks.check_kernels, model_checks.check_model_files,
)  # fmt: skip
CONFIG_STAGES = (  # need config.json
    model_checks.check_context,
    model_checks.check_vlm,
    model_checks.check_meta_model,
    model_checks.check_tokenizer,
)


def validate(recipe: Any, topology: Topology | None = None, data: bool = True) -> Validation:
    """Run every check that needs no weights; problems are collected, never raised, so all are reported at once.
    `topology`: the launch to check against (--accelerate_config); None reads this process's (Topology.from_env)."""
    v = Validation(recipe, problems=list(recipe.warnings))
    if topology is not None:
        v.topology = topology
        v.summary["distributed"] = f"{topology.mode} x {topology.num_processes} ({topology.config_path})"
    else:
        try:
            v.topology = Topology.from_env(recipe.training)
        except (OSError, ValueError) as err:
            v.add(v.key("deepspeed"), f"cannot read the DeepSpeed config: {err}", "point deepspeed at a JSON file")
    for stage in RECIPE_STAGES:
        _run(stage, v)
    if v.kind is not None:
        for stage in CONFIG_STAGES:
            _run(stage, v)
        if data and v.tokenizer is not None:
            _run(data_checks.check_data, v)
    _run(output_checks.check_output_dir, v)
    return v


def _run(stage: Any, v: Validation) -> None:
    try:
        stage(v)
    except RecipeError as err:
        v.extend(err.problems)


def preflight(recipe: Any) -> dict[str, Any]:
    """What `train` runs before loading weights: report warnings, stop on errors; returns config.json."""
    v = validate(recipe)
    if v.errors:
        raise RecipeError(v.errors)
    for warning in v.problems:
        logger.warning("%s", warning)
    return v.config
