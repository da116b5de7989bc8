"""The rule table: which checks run, in what order and on what they need, collected into one Validation."""

from __future__ import annotations

import logging
from typing import Any

from sft_recipes.errors import RecipeError
from sft_recipes.topology import Topology
from sft_recipes.validate.data_checks import check_data
from sft_recipes.validate.integration_checks import check_hub, check_kernels, check_trackers
from sft_recipes.validate.model_checks import check_context, check_meta_model, check_model_files, check_vlm
from sft_recipes.validate.output_checks import check_output_dir
from sft_recipes.validate.range_checks import check_ranges
from sft_recipes.validate.recipe_checks import (
    check_attention,
    check_choices,
    check_distribution,
    check_hardware,
    check_quantization,
)
from sft_recipes.validate.tokenizer_checks import check_tokenizer
from sft_recipes.validate.validation import Validation

logger = logging.getLogger("sft_recipes")
RECIPE_STAGES = (
    check_ranges, check_choices, check_distribution, check_hardware, check_quantization, check_hub, check_trackers,
    check_kernels, check_model_files,
)  # fmt: skip
CONFIG_STAGES = (check_context, check_vlm, check_attention, check_meta_model, check_tokenizer)  # need config.json


def validate(recipe: Any, topology: Topology | None = None, data: bool = True) -> Validation:
    """Run every check that needs no weights; problems are collected, never raised, so all are reported at once.
    `topology`: the launch to check against (--accelerate_config); None reads this process's (Topology.from_env)."""
    v = Validation(recipe, problems=list(recipe.warnings))
    if topology is not None:
        v.topology = topology
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
            _run(check_data, v)
    _run(check_output_dir, v)
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
