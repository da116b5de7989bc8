"""Load a model and its tokenizer for training: dtype, attention, quantization and device map, RoPE, pad token."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sft_recipes.environment import has_package, require_extra
from sft_recipes.errors import error
from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT, compute_dtype, resolve_dtype
from sft_recipes.model.rope import BASE_CONFIG, RopeScaling, rope_scaling_plan
from sft_recipes.topology import Topology

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig, PreTrainedModel

logger = logging.getLogger("sft_recipes")

FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
RESERVED_PAD_TOKENS = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "<|padding|>")


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
    model_config, rope = load_training_config(model_args, training_args)
    if rope is not None:
        described = rope.describe(model_config.get_text_config())
        logger.info("max_length %s > the model's context %s: RoPE %s", rope.max_length, rope.context, described)
    auto_class = AutoModelForImageTextToText if kind == IMAGE_TEXT_TO_TEXT else AutoModelForCausalLM
    logger.info(
        "Loading %s as %s (%s, dtype=%s, attention=%s, quantization=%s, mode=%s)",
        model_args.model_name_or_path,
        auto_class.__name__,
        kind,
        dtype,
        model_args.attn_implementation,
        quantization and quantization.quant_method,
        topology.mode,
    )
    attention = resolve_attn_implementation(model_args.attn_implementation, model_args.attn_strict, config, dtype)
    model = auto_class.from_pretrained(
        model_args.model_name_or_path,
        config=model_config,
        dtype=dtype,
        attn_implementation=attention,
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
    """The transformers config training loads (RoPE-scaled beyond the context), with its scaling (None if unscaled)."""
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
    """Write BASE_CONFIG beside a LoRA adapter: the base's config as training changed it (RoPE scaling), for
    `from_pretrained(base, config=AutoConfig.from_pretrained(path))`; None when training loaded the base as it is."""
    model_config, rope = load_training_config(model_args, training_args)
    if rope is None:
        return None
    path = Path(out_dir) / BASE_CONFIG
    model_config.to_json_file(str(path))
    return path


def embedding_rows(model: Any) -> int:
    return int(model.get_input_embeddings().weight.shape[0])


def load_processing_class(model_args: Any, training_args: Any, kind: str) -> Any:
    """The tokenizer (causal LMs) or processor (VLMs), right-padded, with a pad token and the recipe's template."""
    from transformers import AutoProcessor, AutoTokenizer

    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    kwargs: dict[str, Any] = dict(
        revision=model_args.model_revision,
        cache_dir=model_args.cache_dir,
        trust_remote_code=training_args.trust_remote_code,
    )
    if kind == IMAGE_TEXT_TO_TEXT:
        processing_class = AutoProcessor.from_pretrained(name, **kwargs)
        tokenizer = processing_class.tokenizer
    else:
        processing_class = tokenizer = AutoTokenizer.from_pretrained(
            name, use_fast=not model_args.use_slow_tokenizer, **kwargs
        )
    tokenizer.padding_side = "right"
    max_length = model_args.model_max_length or training_args.max_length
    if max_length:
        tokenizer.model_max_length = max_length
    apply_pad_policy(tokenizer, model_args.pad_token_policy, training_args.pad_token)
    return processing_class


def apply_pad_policy(tokenizer: Any, policy: str, explicit_pad: str | None = None) -> str:
    """Give the tokenizer a pad token and say where it came from: existing, explicit, reserved, unk, eos or added.
    A pad equal to eos is safe here: TRL's collator masks padding by position, so the real EOS stays trained."""
    if explicit_pad is not None:
        return "explicit"  # SFTTrainer sets args.pad_token itself, after checking it is in the vocabulary
    if tokenizer.pad_token is not None and policy != "add":
        return "existing"
    reserved = next((t for t in RESERVED_PAD_TOKENS if t in tokenizer.get_vocab()), None)
    if policy == "auto" and reserved is not None:
        tokenizer.pad_token = reserved  # a token the vocabulary keeps for padding (Llama 3.1), trained by no one
        return "reserved"
    if policy in ("auto", "unk") and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
        return "unk"
    if policy in ("auto", "eos", "unk") and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        return "eos"
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return "added"


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
        raise error(
            "attn_implementation",
            f"{requested} needs the `{package}` package, not installed",
            "pip install 'sft-recipes[flash-attn]', or attn_implementation: sdpa",
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
        raise error(
            "zero3_save_16bit_model",
            "full fine-tuning under ZeRO-3 without gathering the weights on save ends with no "
            "model.safetensors, only per-rank DeepSpeed shards that need zero_to_fp32.py",
            "set zero3_save_16bit_model: true in the accelerate config "
            "(stage3_gather_16bit_weights_on_model_save: true in a DeepSpeed JSON)",
        )


def build_quantization_config(
    model_args: Any, compute: torch.dtype, topology: Topology | None = None
) -> BitsAndBytesConfig | None:
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
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
