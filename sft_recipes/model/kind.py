"""What a checkpoint is, from its config.json alone: causal LM or VLM, its language-model part, its dtype."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sft_recipes.errors import RecipeError, error

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("sft_recipes")

CAUSAL_LM = "causal_lm"
IMAGE_TEXT_TO_TEXT = "image_text_to_text"
DTYPES = {  # a recipe's dtype name -> torch's
    **dict.fromkeys(("bfloat16", "bf16"), "bfloat16"),
    **dict.fromkeys(("float16", "fp16", "half"), "float16"),
    **dict.fromkeys(("float32", "fp32", "float"), "float32"),
}


def detect_model_kind(config: dict[str, Any], override: str = "auto") -> str:
    """causal_lm or image_text_to_text, from config.json alone. The image-text map is checked first: 14 model types
    (gemma3, llama4, mllama, ...) are in both maps."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL_LM_TYPES
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES as VLM_TYPES

    if override != "auto":
        return override
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    # A checkpoint saved as *ForCausalLM is text-only even when its model_type is in both maps.
    if architectures and architectures[0].endswith("ForCausalLM") and model_type in CAUSAL_LM_TYPES:
        return CAUSAL_LM
    if model_type in VLM_TYPES or "vision_config" in config:
        return IMAGE_TEXT_TO_TEXT
    if model_type in CAUSAL_LM_TYPES:
        return CAUSAL_LM
    if "auto_map" in config:
        return IMAGE_TEXT_TO_TEXT if "AutoModelForImageTextToText" in config["auto_map"] else CAUSAL_LM
    raise error(
        "model_name_or_path",
        f"model_type {model_type!r} is unknown to transformers {transformers.__version__}",
        "upgrade transformers, or check config.json",
    )


def load_config_dict(model_args: Any, trust_remote_code: bool = False) -> dict[str, Any]:
    """config.json of a local directory or hub id (only that file is fetched, never the weights)."""
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    name = model_args.model_name_or_path
    if not name:
        raise error("model_name_or_path", "no model given", "set model_name_or_path in the recipe")
    if os.path.isdir(name) and not os.path.isfile(os.path.join(name, "config.json")):
        raise error(name, "directory has no config.json", "point model_name_or_path at a model folder")
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1
    if looks_local and not os.path.exists(os.path.expanduser(name)):
        raise error(name, "model path does not exist", "check model_name_or_path")
    try:
        config, _ = PretrainedConfig.get_config_dict(
            name, revision=model_args.model_revision, cache_dir=model_args.cache_dir
        )
    except (OSError, ValueError) as err:
        raise error(
            name,
            f"cannot read config.json: {str(err).splitlines()[0]}",
            "check model_name_or_path and model_revision, and hub access (HF_HUB_OFFLINE)",
        ) from None
    if "auto_map" in config and not trust_remote_code and config.get("model_type") not in CONFIG_MAPPING_NAMES:
        raise error(
            "trust_remote_code",
            f"{name} needs its own modelling code (auto_map)",
            "set trust_remote_code: true after reading that code; it is off by default because "
            "it runs arbitrary Python from the model repository",
        )
    return config


def load_config_or_snapshot(
    model_args: Any, trust_remote_code: bool, recipe_path: str | None
) -> tuple[dict[str, Any], Path | None]:
    """config.json as load_config_dict reads it, else (hub unreachable) the architecture snapshot beside the recipe
    (recipes/<model>/config.json), so planning and checks work offline; and the snapshot's path when it was used."""
    try:
        return load_config_dict(model_args, trust_remote_code), None
    except RecipeError:
        snapshot = Path(recipe_path).parent / "config.json" if recipe_path else None
        name = model_args.model_name_or_path or ""
        if snapshot is None or not snapshot.is_file() or os.path.exists(os.path.expanduser(name)):
            raise
        logger.warning("%s: config.json unreachable, using the architecture snapshot %s", name, snapshot)
        return json.loads(snapshot.read_text()), snapshot


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language-model part of a config.json (itself for text models)."""
    return config.get("text_config") or config


def resolve_dtype_name(dtype: str | None, training_args: Any, config: dict[str, Any]) -> str:
    """bfloat16, float16 or float32: "auto" follows the checkpoint, then the training precision. No torch needed."""
    if dtype in (None, "auto"):
        text = text_config(config)
        saved = config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
        return DTYPES[saved] if saved in DTYPES else compute_dtype_name(training_args)
    if dtype not in DTYPES:
        raise error("dtype", f"unknown dtype {dtype!r}", "use auto, bfloat16, float16 or float32")
    return DTYPES[dtype]


def compute_dtype_name(training_args: Any) -> str:
    """The precision training computes in; the QLoRA compute dtype follows it (FastChat)."""
    if getattr(training_args, "bf16", False):
        return "bfloat16"
    return "float16" if getattr(training_args, "fp16", False) else "float32"


def resolve_dtype(dtype: str | None, training_args: Any, config: dict[str, Any]) -> torch.dtype:
    import torch

    return getattr(torch, resolve_dtype_name(dtype, training_args, config))


def compute_dtype(training_args: Any) -> torch.dtype:
    import torch

    return getattr(torch, compute_dtype_name(training_args))
