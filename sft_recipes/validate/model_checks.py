"""Checks of the model's config.json, its skeleton on the meta device (no memory, no weights) and its tokenizer: files,
kind, context, vision-language limits, parameter counts, LoRA targets, eos/pad and the chat template."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sft_recipes.validate.validation import Validation

DEFAULT_MAX_LENGTH = 1024  # trl.SFTConfig's default, which truncates silently
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")


def check_model_files(v: Validation) -> None:
    """config.json, model kind, remote code and pickle weights; sets v.config and v.kind."""
    import transformers

    from sft_recipes.model.kind import detect_model_kind, load_config_or_snapshot, resolve_dtype

    m, t = v.recipe.model, v.recipe.training
    v.config, snapshot = load_config_or_snapshot(m, t.trust_remote_code, v.recipe.path)
    if snapshot is not None:
        v.add(
            v.key("model_name_or_path"),
            f"the hub is unreachable: checked against the architecture snapshot {snapshot}; tokenizer and data "
            "checks still need the hub",
            "run validate where the hub (or its cache) is reachable for the full check",
            warning=True,
        )
    v.kind = detect_model_kind(v.config, m.model_kind)
    unknown = [a for a in v.config.get("architectures") or [] if not hasattr(transformers, a)]
    if unknown and "auto_map" not in v.config:
        v.add(
            m.model_name_or_path,
            f"architecture {unknown[0]} is unknown to transformers {transformers.__version__}; "
            f"the model is built from model_type {v.config.get('model_type')!r} instead",
            "check config.json's `architectures`, or upgrade transformers",
            warning=True,
        )
    _check_pickle_weights(v)
    dtype = str(resolve_dtype(m.dtype, t, v.config)).removeprefix("torch.")
    v.summary["model"] = f"{m.model_name_or_path} ({v.config.get('model_type')}, {v.kind})"
    v.summary["dtype"] = dtype if m.dtype not in (None, "auto") else f"{dtype} (auto: from the checkpoint)"
    quant = "4-bit NF4" if m.load_in_4bit and m.bnb_4bit_quant_type == "nf4" else "4-bit FP4" if m.load_in_4bit else ""
    v.summary["quantization"] = quant or ("8-bit" if m.load_in_8bit else "none")


def _check_pickle_weights(v: Validation) -> None:
    """A local model with only pickle weights (.bin/.pt) is refused: unpickling can execute code."""
    m = v.recipe.model
    folder = Path(os.path.expanduser(m.model_name_or_path))
    if not folder.is_dir() or m.allow_pickle_weights:
        return
    found = sorted(p.name for pattern in WEIGHT_FILES for p in folder.glob(pattern))
    if found and not any(name.endswith(".safetensors") for name in found):
        v.add(
            v.key("allow_pickle_weights"),
            f"{folder} has only pickle weights ({', '.join(found[:3])}): loading them can execute arbitrary code",
            "convert them to safetensors, or set allow_pickle_weights: true if you trust their source",
        )


def check_context(v: Validation) -> None:
    """#9 max_length unset, #10 max_length beyond the context, and the RoPE plan."""
    from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT, text_config
    from sft_recipes.model.rope import rope_scaling_plan

    t, m = v.recipe.training, v.recipe.model
    context = text_config(v.config).get("max_position_embeddings")
    if "max_length" not in v.recipe.explicit and v.kind != IMAGE_TEXT_TO_TEXT:
        v.add(
            "max_length",
            f"not set: TRL truncates every example to {DEFAULT_MAX_LENGTH} tokens",
            f"set max_length explicitly (the model's context is {context})",
            warning=True,
        )
    rope = rope_scaling_plan(v.config, t.max_length, m.rope_scaling_policy)
    plan = f", RoPE: {rope.describe()}" if rope else ""
    v.summary["max_length"] = f"{t.max_length} (model context {context}{plan})"
    packing = f"{t.packing_strategy}" if t.packing else "off (padding-free batches)" if t.padding_free else "off"
    v.summary["packing"] = packing


def check_vlm(v: Validation) -> None:
    import transformers
    from packaging.version import Version

    from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT

    if v.kind != IMAGE_TEXT_TO_TEXT:
        return
    t = v.recipe.training
    refused = ["packing", "padding_free"]
    if Version(transformers.__version__) < Version("5.18.0.dev0"):
        refused.append("assistant_only_loss")  # TRL masks VLM assistant turns only from transformers 5.18 on
    for key in refused:
        if getattr(t, key):
            v.add(v.key(key), f"TRL does not support {key} for vision-language models", f"set {key}: false")
    if t.max_length is not None:
        v.add(
            v.key("max_length"),
            f"max_length {t.max_length} on a vision-language model cuts image tokens "
            '("Image features and image tokens do not match")',
            "set max_length: null for VLMs",
        )


def check_meta_model(v: Validation) -> None:
    """The attention implementation (its package, then the model class's own check), parameter counts, and LoRA
    targets against the model's real linear layers (Σ r·(in+out) over the targets)."""
    from sft_recipes.inspection.meta_trainer import build_meta_model, check_attn_implementation

    m = v.recipe.model
    class_check = _check_attention_package(v)
    try:
        model = build_meta_model(m, v.recipe.training, v.kind or "causal_lm", v.config or None)
    except Exception as err:  # noqa: BLE001 - any modelling-code failure: the checks below are skipped, said so
        v.add(
            m.model_name_or_path,
            f"could not build the model from config.json alone ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "LoRA targets and sizes are unchecked",
            "check config.json",
            warning=True,
        )
        return
    v.model, v.params = model, sum(p.numel() for p in model.parameters())
    # transformers' own check of the model class, as from_pretrained runs it: an unknown name, or one the
    # architecture lacks (sdpa on Gemma-2's soft-capping, flex on old models)
    requested = m.attn_implementation
    try:
        if class_check:
            check_attn_implementation(model, requested)
    except (ValueError, ImportError) as err:
        v.add(
            v.key("attn_implementation"),
            f"transformers refuses {requested!r} for {type(model).__name__}: {str(err).splitlines()[0]}",
            "use sdpa or eager, or auto (the fastest this machine allows)",
        )
        v.summary["attention"] = f"{requested} (refused)"
    if m.use_peft:
        _check_lora(v, model)
    else:
        v.trainable = v.params
        v.summary["trainable"] = f"all {v.params:,} parameters (full fine-tune)"


def _check_attention_package(v: Validation) -> bool:
    """attn_implementation's package; whether the model class's own check applies (an explicit, local name)."""
    from sft_recipes.environment import has_package
    from sft_recipes.model.loading import FLASH_PACKAGES

    m = v.recipe.model
    requested = m.attn_implementation
    package = FLASH_PACKAGES.get(requested or "")
    if package and not has_package(package):
        message = f"{requested} needs the `{package}` package, which is not installed"
        if m.attn_strict:
            v.add(
                v.key("attn_implementation"), message, "pip install 'sft-recipes[flash-attn]', or attn_strict: false"
            )
        else:
            v.add(
                v.key("attn_implementation"),
                message + ": falling back to sdpa (same results, more memory on long sequences)",
                "pip install 'sft-recipes[flash-attn]', or set attn_strict: true to make this an error",
                warning=True,
            )
        v.summary["attention"] = f"sdpa (fallback: {requested} not installed)"
        return False
    if requested and "/" in requested and not has_package("kernels"):
        v.add(
            v.key("attn_implementation"), f"hub kernel {requested} needs the `kernels` package", "pip install kernels"
        )
        return False
    v.summary["attention"] = requested or "transformers' default (sdpa where supported)"
    return requested not in (None, "auto") and "/" not in requested


def _check_lora(v: Validation, model: Any) -> None:
    """PEFT's own LoraConfig and adapted copy of the meta model: its errors name the recipe key they come from."""
    from sft_recipes.model.lora import LORA_FIELDS, build_lora_config, lora_copy

    m = v.recipe.model
    if any(v.has_error_on(key) for key in LORA_FIELDS.values()):
        v.summary["LoRA"] = "unchecked: fix the LoRA keys first"
        return
    try:
        lora = build_lora_config(m, model, v.kind or "causal_lm")
    except (TypeError, ValueError) as err:
        message = str(err).splitlines()[0]
        named = (
            k for f, k in LORA_FIELDS.items() if f"`{f}`" in message or "_" in f and f.replace("_", " ") in message
        )
        key = next(named, None)
        v.add(v.key(key or "use_peft"), f"PEFT refuses the LoRA config: {message}", f"fix {key or 'the LoRA keys'}")
        return
    assert lora is not None
    try:
        adapted = lora_copy(model, lora)
    except ValueError as err:  # PEFT: "Target modules ... not found in the base model"
        message = str(err).splitlines()[0]
        if "not found in the base model" not in message:
            v.add(v.key("use_peft"), f"PEFT cannot adapt this model: {message}", "fix the LoRA keys")
        else:
            v.add(
                v.key("lora_target_modules"),
                f"{lora.target_modules!r} matches no linear layer of this model (PEFT: {message})",
                "use leaf names such as q_proj, or `all-linear`",
            )
        return
    layers = sum(1 for module in adapted.modules() if hasattr(module, "lora_A"))
    v.trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    requested = lora.target_modules or []
    targets = requested if isinstance(requested, str) else ", ".join(sorted(requested))
    total = v.params or 1
    v.summary["LoRA"] = f"r={m.lora_r}, alpha={m.lora_alpha} on {layers} layers ({targets})"
    v.summary["trainable"] = f"{v.trainable:,} of {total:,} parameters ({100 * v.trainable / total:.2f}%)"


def check_tokenizer(v: Validation) -> None:
    """Load the tokenizer (small), apply the recipe's template, eos and pad, check assistant-only loss can work."""
    from sft_recipes.model.loading import load_processing_class

    m, t = v.recipe.model, v.recipe.training
    try:
        processing_class = load_processing_class(m, t, v.kind or "causal_lm")
    except (OSError, ValueError, TypeError, KeyError, ImportError) as err:
        source = m.tokenizer_name_or_path or m.model_name_or_path
        v.add(source, f"cannot load the tokenizer: {str(err).splitlines()[0]}", "check the tokenizer files there")
        return
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if t.chat_template_path is not None:
        template = _read_template(v, t.chat_template_path)
        if template is None:
            return
        processing_class.chat_template = template
    vocab = tokenizer.get_vocab()
    for key in ("eos_token", "pad_token"):
        token = getattr(t, key)
        if token is not None and token not in vocab:
            close = [tok for tok in tokenizer.all_special_tokens if tok in vocab]
            v.add(
                v.key(key), f"{token!r} is not in the tokenizer's vocabulary", f"use one of {close} or a known token"
            )
        elif token is not None:
            setattr(tokenizer, key, token)  # what SFTTrainer does with them
    v.tokenizer = processing_class
    if t.assistant_only_loss and getattr(processing_class, "chat_template", None):
        _check_generation_markers(v)


def _read_template(v: Validation, path: str) -> str | None:
    """chat_template_path: a .jinja file, or a tokenizer whose template TRL clones."""
    from transformers import AutoTokenizer

    if path.endswith((".jinja", ".j2")):
        if os.path.isfile(path):
            return Path(path).read_text(encoding="utf-8")
        v.add(v.key("chat_template_path"), f"{path} does not exist", "check the path (relative to the current dir)")
        return None
    try:
        template = AutoTokenizer.from_pretrained(path).chat_template
    except (OSError, ValueError) as err:
        v.add(
            v.key("chat_template_path"),
            f"cannot load a tokenizer from {path}: {str(err).splitlines()[0]}",
            "point it at a .jinja file or a tokenizer folder",
        )
        return None
    if template is None:
        v.add(v.key("chat_template_path"), f"the tokenizer at {path} has no chat template", "use a .jinja file")
    return template


def _check_generation_markers(v: Validation) -> None:
    """#14: assistant_only_loss masks with {% generation %} markers; TRL patches only templates it knows. Whether
    the end of turn falls inside them is the data check's (inspection's stop-token diagnosis)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(v.tokenizer.chat_template):
        return
    try:
        get_training_chat_template(v.tokenizer)
    except Exception:  # noqa: BLE001 - TRL renders the template to match it; any failure means "cannot patch"
        v.add(
            v.key("assistant_only_loss"),
            "the chat template has no {% generation %} markers (and TRL has no patched version of it), so no "
            "token would be trained",
            "wrap the assistant content and its end-of-turn token in {% generation %}...{% endgeneration %} "
            "(see sft_recipes/chat_templates/chatml.jinja) via chat_template_path, or assistant_only_loss: false",
        )
        return
    v.summary["chat template"] = "TRL's training version of the model's template (adds generation markers)"
