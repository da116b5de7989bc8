"""Load a model for training: concrete dtype, attention, quantization and device map, RoPE scaling, embeddings."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sft_recipes.model.attention import resolve_attn_implementation
from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT, compute_dtype, resolve_dtype
from sft_recipes.model.quantization import build_quantization_config, check_sharded_combination, get_kbit_device_map
from sft_recipes.model.rope import BASE_CONFIG, RopeScaling, rope_scaling_plan
from sft_recipes.topology import Topology

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger("sft_recipes")


def load_model(
    model_args: Any,
    training_args: Any,
    kind: str,
    config: dict[str, Any],
    tokenizer: Any,
    topology: Topology | None = None,
) -> PreTrainedModel:
    """Load for training: concrete dtype, attention with fallback, quantization + device map, RoPE scaling,
    embeddings grown to a multiple of 8 when the tokenizer grew, use_cache off."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    topology = topology or Topology.from_env(training_args)
    check_sharded_combination(model_args, training_args, topology)
    dtype = resolve_dtype(model_args.dtype, training_args, config)
    quantization = build_quantization_config(model_args, compute_dtype(training_args), topology)
    name = model_args.model_name_or_path
    model_config, rope = load_training_config(model_args, training_args)
    if rope is not None:
        logger.info(
            "max_length %s > the model's context %s: RoPE %s",
            rope.max_length,
            rope.context,
            rope.describe(model_config.get_text_config()),
        )
    auto_class = AutoModelForImageTextToText if kind == IMAGE_TEXT_TO_TEXT else AutoModelForCausalLM
    logger.info(
        "Loading %s as %s (%s, dtype=%s, attention=%s, quantization=%s, mode=%s)",
        name,
        auto_class.__name__,
        kind,
        dtype,
        model_args.attn_implementation,
        quantization and quantization.quant_method,
        topology.mode,
    )
    model = auto_class.from_pretrained(
        name,
        config=model_config,
        dtype=dtype,
        attn_implementation=resolve_attn_implementation(
            model_args.attn_implementation, model_args.attn_strict, config, dtype
        ),
        quantization_config=quantization,
        device_map=get_kbit_device_map(topology) if quantization is not None else None,
        use_safetensors=None if model_args.allow_pickle_weights else True,
        revision=model_args.model_revision,
        cache_dir=model_args.cache_dir,
        trust_remote_code=training_args.trust_remote_code,
    )
    embeddings = embedding_rows(model)
    if len(tokenizer) > embeddings:
        # Open-Instruct: a multiple of 8 keeps the embedding matmul on tensor cores.
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)
        logger.info("Resized embeddings %d -> %d for %d tokens", embeddings, embedding_rows(model), len(tokenizer))
    model.config.use_cache = False  # the KV cache is useless while training and breaks gradient checkpointing
    model.config.get_text_config().use_cache = False  # a VLM's language model reads its own config (text_config)
    # Not when sharded: it upcasts every non-4-bit weight to fp32, and ZeRO-3/FSDP cannot gather mixed dtypes
    # (DeepSpeed#8072). SFTTrainer still enables input gradients for gradient checkpointing itself.
    if quantization is not None and not topology.sharded:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=training_args.gradient_checkpointing,
            gradient_checkpointing_kwargs=training_args.gradient_checkpointing_kwargs,
        )
    return model


def load_training_config(model_args: Any, training_args: Any) -> tuple[Any, RopeScaling | None]:
    """The model's transformers config as training loads it: RoPE-scaled when max_length exceeds the context.
    Returns the scaling too (None when there is none)."""
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        cache_dir=model_args.cache_dir,
        trust_remote_code=training_args.trust_remote_code,
    )
    rope = rope_scaling_plan(model_config, training_args.max_length, model_args.rope_scaling_policy)
    if rope is not None:
        rope.apply(model_config.get_text_config())
    return model_config, rope


def record_base_config(out_dir: str | Path, model_args: Any, training_args: Any) -> Path | None:
    """Write, beside a LoRA adapter, the base's config as training changed it (RoPE scaling) to BASE_CONFIG, so
    that loading base + adapter keeps the change: `from_pretrained(base, config=AutoConfig.from_pretrained(path))`.
    Nothing is written (None) when training loaded the base as it is."""
    model_config, rope = load_training_config(model_args, training_args)
    if rope is None:
        return None
    path = Path(out_dir) / BASE_CONFIG
    model_config.to_json_file(str(path))
    return path


def embedding_rows(model: Any) -> int:
    """Rows of the input embedding matrix (the vocabulary size the model can take)."""
    return int(model.get_input_embeddings().weight.shape[0])
