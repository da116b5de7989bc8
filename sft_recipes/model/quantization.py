"""Quantization and weight placement under each distributed mode: bitsandbytes config, device map, sharding rules."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from sft_recipes.errors import Problem, RecipeError
from sft_recipes.topology import Topology

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig


def get_kbit_device_map(topology: Topology) -> dict[str, int] | None:
    """Where a quantized model's weights go: this rank's GPU, or nowhere under ZeRO-3/FSDP (peft#306). Never "auto":
    it spreads layers over GPUs and cannot train distributed (TRL removed its own in 1.8, PR #6158)."""
    import torch

    if topology.sharded or not torch.cuda.is_available():
        return None
    return {"": int(os.environ.get("LOCAL_RANK", "0"))}


def check_sharded_combination(model_args: Any, training_args: Any, topology: Topology) -> None:
    """Refuse, before any weight loads, what ZeRO-3/FSDP cannot do or would leave without usable weights."""
    plugin = getattr(training_args, "deepspeed_plugin", None)
    zero = (getattr(plugin, "deepspeed_config", None) or {}).get("zero_optimization", {})
    # Whether ZeRO-3 gathers the full weights on save; "auto" counts as no, as accelerate fills it with false.
    gathers = zero.get("stage3_gather_16bit_weights_on_model_save") is True
    if topology.mode == "zero3" and not model_args.use_peft and not gathers:
        raise RecipeError(
            Problem(
                "zero3_save_16bit_model",
                "full fine-tuning under ZeRO-3 without gathering the weights on save ends with no "
                "model.safetensors, only per-rank DeepSpeed shards that need zero_to_fp32.py",
                "set zero3_save_16bit_model: true in the accelerate config "
                "(stage3_gather_16bit_weights_on_model_save: true in a DeepSpeed JSON)",
            )
        )


def build_quantization_config(
    model_args: Any, compute: torch.dtype, topology: Topology | None = None
) -> BitsAndBytesConfig | None:
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    from sft_recipes.environment import require_extra

    require_extra("bitsandbytes", "quantization", "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit")
    from transformers import BitsAndBytesConfig

    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    storage = model_args.bnb_4bit_quant_storage
    if topology is not None and topology.sharded:
        # FSDP and ZeRO-3 shard only floating-point tensors of one dtype: the packed 4-bit weights must be stored
        # in the compute dtype, or they stay whole on every rank (bitsandbytes FSDP-QLoRA guide, PEFT ZeRO-3 QLoRA).
        storage = str(compute).removeprefix("torch.")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=storage or "uint8",
    )
