"""The attention implementation to load with: the fastest this machine and model allow, or the recipe's choice."""

from __future__ import annotations

import logging
from typing import Any

from sft_recipes.environment import has_package
from sft_recipes.errors import Problem, RecipeError

logger = logging.getLogger("sft_recipes")

FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def resolve_attn_implementation(
    requested: str | None, strict: bool, config: dict[str, Any] | None = None, dtype: Any = None
) -> str | None:
    """The attention implementation to load with; a missing flash-attn falls back to sdpa (eager for models without
    sdpa support, e.g. Gemma-2) unless strict. "auto" or unset: best_attn_implementation for these weights."""
    if requested in (None, "auto"):
        choice, why = best_attn_implementation(config or {}, dtype)
        logger.info("Attention: %s (%s)", choice, why)
        return choice
    package = FLASH_PACKAGES.get(requested or "")
    if package is None or has_package(package):
        return requested
    if strict:
        raise RecipeError(
            Problem(
                "attn_implementation",
                f"{requested} needs the `{package}` package, not installed",
                "pip install 'sft-recipes[flash-attn]', or attn_implementation: sdpa",
            )
        )
    fallback = "sdpa" if supports_sdpa(config or {}) else "eager"
    logger.warning(
        "attn_implementation=%s needs `%s`, which is not installed: falling back to %s "
        "(set attn_strict: true to make this an error).",
        requested,
        package,
        fallback,
    )
    return fallback


def best_attn_implementation(config: dict[str, Any], dtype: Any = None) -> tuple[str, str]:
    """The fastest attention this machine and model allow, and why: flash_attention_3 on Hopper (9.x), 2 from Ampere
    (8.0+), each with its package and 16-bit weights (no fp32 kernels); else sdpa, else eager (e.g. Gemma-2). Hub
    kernels (`kernels-community/...`) are never picked: they are fetched from the hub at load time."""
    import torch

    fallback = "sdpa" if supports_sdpa(config) else "eager"
    if not torch.cuda.is_available():
        return fallback, "no CUDA GPU"
    if str(dtype).removeprefix("torch.") not in ("bfloat16", "float16"):
        return fallback, f"{str(dtype).removeprefix('torch.')} weights: flash attention needs bfloat16 or float16"
    if not _model_class_flag(config, "_supports_flash_attn"):
        return fallback, f"{config.get('model_type')} has no flash attention support in transformers"
    major, minor = torch.cuda.get_device_capability()
    if major == 9 and has_package(FLASH_PACKAGES["flash_attention_3"]):
        return "flash_attention_3", f"flash-attn 3 installed, GPU compute capability {major}.{minor}"
    if major >= 8 and has_package(FLASH_PACKAGES["flash_attention_2"]):
        return "flash_attention_2", f"flash-attn installed, GPU compute capability {major}.{minor}"
    if major < 8:
        return fallback, f"GPU compute capability {major}.{minor}: flash attention needs 8.0 or newer"
    return fallback, "flash-attn not installed (pip install 'sft-recipes[flash-attn]')"


def _model_class_flag(config: dict[str, Any], flag: str, causal_only: bool = False) -> bool:
    """A class attribute (`_supports_flash_attn`, ...) of the model class config.json maps to, the image-text one
    first unless causal_only; True when unknown."""
    import transformers
    from transformers.models.auto import modeling_auto

    model_type = config.get("model_type", "")
    names = None if causal_only else modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(model_type)
    names = names or modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    model_class = getattr(transformers, names, None) if isinstance(names, str) else None
    return bool(getattr(model_class, flag, True))


def supports_sdpa(config: dict[str, Any]) -> bool:
    """Whether the causal-LM class of this config.json accepts attn_implementation="sdpa" (Gemma-2's does not)."""
    return _model_class_flag(config, "_supports_sdpa", causal_only=True)
