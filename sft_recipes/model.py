"""The model layer: model kind from config.json, tokenizer/processor, quantization, device map, LoRA, loading."""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sft_recipes.errors import Problem, RecipeError

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, PreTrainedModel

logger = logging.getLogger("sft_recipes")

CAUSAL_LM = "causal_lm"
IMAGE_TEXT_TO_TEXT = "image_text_to_text"
# The attention/MLP projections of llama-like decoders, the LoRA default (QLoRA paper: adapt all linear layers).
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Path fragments of the parts of a VLM that are not the language model; LoRA leaves them alone by default.
VISION_PARTS = ("vision", "visual", "image", "multi_modal_projector", "mm_projector", "connector", "patch_embed")
DTYPES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}
RESERVED_PAD_TOKENS = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "<|padding|>")
FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def detect_model_kind(config: dict[str, Any], override: str = "auto") -> str:
    """causal_lm or image_text_to_text, from config.json alone. The image-text map is checked first: 14 model types
    (gemma3, llama4, mllama, ...) are in both maps."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    if override != "auto":
        return override
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    # A checkpoint saved as *ForCausalLM is text-only even when its model_type is in both maps.
    if architectures and architectures[0].endswith("ForCausalLM") and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return CAUSAL_LM
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES or "vision_config" in config:
        return IMAGE_TEXT_TO_TEXT
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return CAUSAL_LM
    if "auto_map" in config:
        auto_map = config["auto_map"]
        return IMAGE_TEXT_TO_TEXT if "AutoModelForImageTextToText" in auto_map else CAUSAL_LM
    raise RecipeError(
        Problem(
            "model_name_or_path",
            f"model_type {model_type!r} is unknown to transformers {_version('transformers')}",
            "upgrade transformers, or check config.json",
        )
    )


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def load_config_dict(model_args: Any, trust_remote_code: bool = False) -> dict[str, Any]:
    """config.json of a local directory or hub id (only that file is fetched, never the weights)."""
    from transformers import PretrainedConfig

    name = model_args.model_name_or_path
    if not name:
        raise RecipeError(Problem("model_name_or_path", "no model given", "set model_name_or_path in the recipe"))
    if os.path.isdir(name) and not os.path.isfile(os.path.join(name, "config.json")):
        raise RecipeError(Problem(name, "directory has no config.json", "point model_name_or_path at a model folder"))
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1
    if looks_local and not os.path.exists(os.path.expanduser(name)):
        raise RecipeError(Problem(name, "model path does not exist", "check model_name_or_path"))
    try:
        config, _ = PretrainedConfig.get_config_dict(
            name, revision=model_args.model_revision, cache_dir=model_args.cache_dir
        )
    except (OSError, ValueError) as err:
        raise RecipeError(
            Problem(
                name,
                f"cannot read config.json: {str(err).splitlines()[0]}",
                "check model_name_or_path and model_revision, and hub access (HF_HUB_OFFLINE)",
            )
        ) from None
    if "auto_map" in config and not trust_remote_code and config.get("model_type") not in _known_model_types():
        raise RecipeError(
            Problem(
                "trust_remote_code",
                f"{name} needs its own modelling code (auto_map)",
                "set trust_remote_code: true after reading that code; it is off by default because "
                "it runs arbitrary Python from the model repository",
            )
        )
    return config


def load_config_or_snapshot(
    model_args: Any, trust_remote_code: bool, recipe_path: str | None
) -> tuple[dict[str, Any], Path | None]:
    """config.json as load_config_dict reads it; when the hub cannot be reached, the architecture snapshot shipped
    beside the recipe (recipes/<model>/config.json) instead, so planning and checks work offline. Returns the
    snapshot's path when it was used."""
    try:
        return load_config_dict(model_args, trust_remote_code), None
    except RecipeError:
        snapshot = Path(recipe_path).parent / "config.json" if recipe_path else None
        name = model_args.model_name_or_path or ""
        if snapshot is None or not snapshot.is_file() or os.path.exists(os.path.expanduser(name)):
            raise
        import json

        logger.warning("%s: config.json unreachable, using the architecture snapshot %s", name, snapshot)
        return json.loads(snapshot.read_text()), snapshot


def _known_model_types() -> set[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return set(CONFIG_MAPPING_NAMES)


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
        raise RecipeError(Problem("dtype", f"unknown dtype {dtype!r}", "use auto, bfloat16, float16 or float32"))
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


def resolve_attn_implementation(
    requested: str | None, strict: bool, config: dict[str, Any] | None = None, dtype: Any = None
) -> str | None:
    """The attention implementation to load with; a missing flash-attn falls back to sdpa (eager for models without
    sdpa support, e.g. Gemma-2) unless strict. "auto" or unset: best_attn_implementation for these weights."""
    from importlib.util import find_spec

    if requested in (None, "auto"):
        choice, why = best_attn_implementation(config or {}, dtype)
        logger.info("Attention: %s (%s)", choice, why)
        return choice
    package = FLASH_PACKAGES.get(requested or "")
    if package is None or find_spec(package) is not None:
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
    """The fastest attention this machine and model allow, and why: flash_attention_3 on Hopper (compute capability
    9.x), flash_attention_2 from Ampere on (8.0+), each only with its package installed and 16-bit weights (the
    kernels have no fp32 path); else sdpa, else eager (models without sdpa support, e.g. Gemma-2). Hub kernels
    (`kernels-community/...`) are never picked by themselves: they are fetched from the hub at load time."""
    from importlib.util import find_spec

    import torch

    fallback = "sdpa" if supports_sdpa(config) else "eager"
    if not torch.cuda.is_available():
        return fallback, "no CUDA GPU"
    if str(dtype).removeprefix("torch.") not in ("bfloat16", "float16"):
        return fallback, f"{str(dtype).removeprefix('torch.')} weights: flash attention needs bfloat16 or float16"
    if not _model_class_flag(config, "_supports_flash_attn"):
        return fallback, f"{config.get('model_type')} has no flash attention support in transformers"
    major, minor = torch.cuda.get_device_capability()
    if major == 9 and find_spec(FLASH_PACKAGES["flash_attention_3"]) is not None:
        return "flash_attention_3", f"flash-attn 3 installed, GPU compute capability {major}.{minor}"
    if major >= 8 and find_spec(FLASH_PACKAGES["flash_attention_2"]) is not None:
        return "flash_attention_2", f"flash-attn installed, GPU compute capability {major}.{minor}"
    if major < 8:
        return fallback, f"GPU compute capability {major}.{minor}: flash attention needs 8.0 or newer"
    return fallback, "flash-attn not installed (pip install 'sft-recipes[flash-attn]')"


def _model_class_flag(config: dict[str, Any], flag: str) -> bool:
    """A class attribute (`_supports_flash_attn`, ...) of the model class config.json maps to; True when unknown."""
    import transformers
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    model_type = config.get("model_type", "")
    names = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(model_type) or MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(
        model_type
    )
    model_class = getattr(transformers, names, None) if isinstance(names, str) else None
    return bool(getattr(model_class, flag, True))


def supports_sdpa(config: dict[str, Any]) -> bool:
    """Whether the model class of this config.json accepts attn_implementation="sdpa" (Gemma-2 does not)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    class_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type", ""))
    model_class = getattr(transformers, class_name, None) if isinstance(class_name, str) else None
    return bool(getattr(model_class, "_supports_sdpa", True))


def distributed_mode(training_args: Any = None) -> str:
    """single, ddp, zero2, zero3 or fsdp: sft_recipes.topology's mode under the name this module still tests."""
    from sft_recipes.topology import Topology

    mode = Topology.from_env(training_args).mode
    return "fsdp" if mode == "fsdp2" else mode


def get_kbit_device_map(mode: str) -> dict[str, int] | None:
    """Where a quantized model's weights go: this rank's GPU, or nowhere under ZeRO-3/FSDP (peft#306).

    TRL removed its own in 1.8 (PR #6158). Never "auto": it spreads layers over GPUs and cannot train distributed.
    """
    import torch

    if mode in ("zero3", "fsdp") or not torch.cuda.is_available():
        return None
    return {"": int(os.environ.get("LOCAL_RANK", "0"))}


def zero3_gathers_weights_on_save(training_args: Any) -> bool:
    """Whether ZeRO-3 gathers the full weights when saving (accelerate's `zero3_save_16bit_model`, DeepSpeed's
    `stage3_gather_16bit_weights_on_model_save`); "auto" counts as no, as accelerate fills it with false."""
    plugin = getattr(training_args, "deepspeed_plugin", None)
    config = getattr(plugin, "deepspeed_config", None) or {}
    return config.get("zero_optimization", {}).get("stage3_gather_16bit_weights_on_model_save") is True


def check_sharded_combination(model_args: Any, training_args: Any, mode: str) -> None:
    """Refuse, before any weight loads, what ZeRO-3/FSDP cannot do or would leave without usable weights."""
    if mode == "zero3" and not model_args.use_peft and not zero3_gathers_weights_on_save(training_args):
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
    model_args: Any, compute: torch.dtype, mode: str = "single"
) -> BitsAndBytesConfig | None:
    if model_args.load_in_4bit and model_args.load_in_8bit:
        raise RecipeError(Problem("load_in_4bit", "both load_in_4bit and load_in_8bit are set", "choose one"))
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    from sft_recipes.environment import require_extra

    require_extra("bitsandbytes", "quantization", "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit")
    from transformers import BitsAndBytesConfig

    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    storage = model_args.bnb_4bit_quant_storage
    if mode in ("fsdp", "zero3"):
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


def rope_scaling_plan(config: dict[str, Any], max_length: int | None, policy: str = "auto") -> dict[str, Any] | None:
    """Linear RoPE scaling by ceil(max_length / max_position_embeddings) when max_length exceeds the context
    (FastChat); None when no scaling is needed."""
    context = text_config(config).get("max_position_embeddings")
    if not max_length or not context or max_length <= context:
        return None
    if policy == "off":
        raise RecipeError(
            Problem(
                "max_length",
                f"max_length {max_length} exceeds the model's context {context} and rope_scaling_policy is off",
                f"set max_length <= {context}, or rope_scaling_policy: auto",
            )
        )
    factor = math.ceil(max_length / context)
    return {"rope_type": "linear", "factor": float(factor)}


def linear_module_names(model: PreTrainedModel) -> list[str]:
    """Full names of the linear layers (plain or bitsandbytes) outside the output head."""
    import torch

    names = []
    output = model.get_output_embeddings()
    for name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")
        if is_linear and module is not output and not name.endswith("lm_head"):
            names.append(name)
    return names


def is_vision_part(name: str) -> bool:
    return any(part in name for part in VISION_PARTS)


def default_lora_targets(model: PreTrainedModel, kind: str) -> list[str] | str:
    """All linear projections of the language model: the llama-style seven when present, else every linear leaf.
    For VLMs a regex that keeps the vision tower and projector out."""
    linear = [n for n in linear_module_names(model) if not (kind == IMAGE_TEXT_TO_TEXT and is_vision_part(n))]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in linear})
    targets = [t for t in DEFAULT_LORA_TARGETS if t in leaves] or leaves
    if kind == IMAGE_TEXT_TO_TEXT:
        parts = "|".join(re.escape(p) for p in VISION_PARTS)
        return rf"^(?!.*({parts})).*\.({'|'.join(targets)})$"
    return targets


def build_lora_config(model_args: Any, model: PreTrainedModel, kind: str) -> LoraConfig | None:
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    targets: list[str] | str = model_args.lora_target_modules or default_lora_targets(model, kind)
    if isinstance(targets, str) and re.fullmatch(r"[\w.]+", targets) and targets != "all-linear":
        targets = [targets]  # trl.ModelConfig turns a one-item list into a string; a plain name is still a name
    if isinstance(targets, list):
        leaves = {n.rsplit(".", 1)[-1] for n in linear_module_names(model)}
        missing = [t for t in targets if t not in leaves and t != "all-linear"]
        if missing:
            raise RecipeError(
                Problem(
                    "lora_target_modules",
                    f"{missing} match no linear layer of this model",
                    f"use some of: {sorted(leaves)}",
                )
            )
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        target_parameters=model_args.lora_target_parameters,
        modules_to_save=model_args.lora_modules_to_save,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        bias="none",
        task_type=model_args.lora_task_type,
    )


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


def load_model(
    model_args: Any, training_args: Any, kind: str, config: dict[str, Any], tokenizer: Any, mode: str | None = None
) -> PreTrainedModel:
    """Load for training: concrete dtype, attention with fallback, quantization + device map, RoPE scaling,
    embeddings grown to a multiple of 8 when the tokenizer grew, use_cache off."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    mode = mode or distributed_mode(training_args)
    check_sharded_combination(model_args, training_args, mode)
    dtype = resolve_dtype(model_args.dtype, training_args, config)
    quantization = build_quantization_config(model_args, compute_dtype(training_args), mode)
    name = model_args.model_name_or_path
    common = dict(
        revision=model_args.model_revision,
        cache_dir=model_args.cache_dir,
        trust_remote_code=training_args.trust_remote_code,
    )
    model_config = AutoConfig.from_pretrained(name, **common)
    rope = rope_scaling_plan(config, training_args.max_length, model_args.rope_scaling_policy)
    if rope is not None:
        target = model_config.get_text_config()
        params = dict(getattr(target, "rope_parameters", None) or {})
        target.rope_parameters = {**params, **rope}
        logger.info(
            "max_length %s > max_position_embeddings %s: linear RoPE scaling, factor %s",
            training_args.max_length,
            text_config(config)["max_position_embeddings"],
            rope["factor"],
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
        mode,
    )
    model = auto_class.from_pretrained(
        name,
        config=model_config,
        dtype=dtype,
        attn_implementation=resolve_attn_implementation(
            model_args.attn_implementation, model_args.attn_strict, config, dtype
        ),
        quantization_config=quantization,
        device_map=get_kbit_device_map(mode) if quantization is not None else None,
        use_safetensors=None if model_args.allow_pickle_weights else True,
        **common,
    )
    embeddings = embedding_rows(model)
    if len(tokenizer) > embeddings:
        # Open-Instruct: a multiple of 8 keeps the embedding matmul on tensor cores.
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)
        logger.info(
            "Resized embeddings %d -> %d for %d tokens",
            embeddings,
            embedding_rows(model),
            len(tokenizer),
        )
    model.config.use_cache = False  # the KV cache is useless while training and breaks gradient checkpointing
    # Not when sharded: it upcasts every non-4-bit weight to fp32, and ZeRO-3/FSDP cannot gather mixed dtypes
    # (DeepSpeed#8072). SFTTrainer still enables input gradients for gradient checkpointing itself.
    if quantization is not None and mode not in ("fsdp", "zero3"):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=training_args.gradient_checkpointing,
            gradient_checkpointing_kwargs=training_args.gradient_checkpointing_kwargs,
        )
    return model


def embedding_rows(model: Any) -> int:
    """Rows of the input embedding matrix (the vocabulary size the model can take)."""
    return int(model.get_input_embeddings().weight.shape[0])
