"""Check a recipe, its model's config.json, tokenizer, data, accelerate config and hardware without loading weights.

Usage: sft-recipes validate --config recipes/<model>/<method>.yaml [--key value ...] [--accelerate_config NAME|PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sft_recipes.arguments import add_launch_flags, command_parser, launch_flags, parse_with_recipe
from sft_recipes.errors import Problem, RecipeError

logger = logging.getLogger("sft_recipes")
DEFAULT_MAX_LENGTH = 1024  # trl.SFTConfig's default, which truncates silently
SAMPLE_ROWS = 32  # rows tokenized for the trained-token share, truncation and EOS checks
QUANT_STORAGE_MODES = ("fsdp", "zero3")  # these shard float tensors only: 4-bit storage must be the compute dtype
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")
GIB = 1024**3
SUMMARY_ORDER = (
    "model", "dtype", "attention", "quantization", "LoRA", "trainable", "max_length", "packing", "chat template",
    "data", "trained tokens", "distributed", "hardware", "resume", "disk",
)  # fmt: skip


@dataclass
class Validation:
    """What validate found: problems (errors and warnings), the model's config.json and a summary of the run."""

    recipe: Any
    problems: list[Problem] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, str] = field(default_factory=dict)
    kind: str | None = None
    mode: str = "single"
    num_processes: int = 1
    params: int | None = None  # every parameter of the model (meta-device count)
    trainable: int | None = None
    examples: int | None = None
    tokenizer: Any = None
    training_template: str | None = None  # TRL's patched template when assistant_only_loss needs one
    lines: dict[str, int] | None = None  # recipe key -> line in the YAML file

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def add(self, where: str, message: str, fix: str = "", warning: bool = False) -> None:
        self.problems.append(Problem(where, message, fix, "warning" if warning else "error"))

    def key(self, name: str) -> str:
        """`recipe.yaml:LINE (name)` when the key is in the recipe file, else the key itself."""
        from sft_recipes.config import _yaml_lines

        path = self.recipe.path
        if self.lines is None:
            self.lines = _yaml_lines(path) if path and os.path.isfile(path) else {}
        return f"{path}:{self.lines[name]} ({name})" if name in self.lines else name


def validate(recipe: Any, accelerate: dict[str, Any] | None = None, data: bool = True) -> Validation:
    """Run every check that needs no weights; problems are collected, never raised, so all are reported at once."""
    v = Validation(recipe, problems=list(recipe.warnings))
    stages = [check_choices, check_distribution, check_hardware, check_quantization, check_model_files]
    for stage in stages:
        _run(stage, v, accelerate)
    if v.kind is not None:  # the rest needs config.json
        for stage in (check_context, check_vlm, check_attention, check_meta_model, check_tokenizer):
            _run(stage, v, accelerate)
        if data and v.tokenizer is not None:
            _run(check_data, v, accelerate)
    _run(check_output_dir, v, accelerate)
    return v


def _run(stage: Any, v: Validation, accelerate: dict[str, Any] | None) -> None:
    try:
        stage(v, accelerate) if stage is check_distribution else stage(v)
    except RecipeError as err:
        # The model and data layers name bare keys; point at the recipe's line when the key is in it.
        v.problems += [replace(p, where=v.key(p.where)) if p.where in v.recipe.explicit else p for p in err.problems]


def collect_problems(recipe: Any) -> tuple[list[Problem], dict[str, Any]]:
    """Every problem that can be found without weights, and the model's config.json (empty if unreadable)."""
    v = validate(recipe)
    return v.problems, v.config


def preflight(recipe: Any) -> dict[str, Any]:
    """What `train` runs before loading weights: report warnings, stop on errors; returns config.json."""
    problems, config = collect_problems(recipe)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise RecipeError(errors)
    for warning in problems:
        logger.warning("%s", warning)
    return config


# -- recipe-only checks ------------------------------------------------------------------------------------------


def check_choices(v: Validation) -> None:
    """Values outside a field's `choices`: argparse only checks flags, never values that came from the YAML."""
    from sft_recipes.config import DATACLASSES

    r = v.recipe
    for cls, obj in zip(DATACLASSES, (r.script, r.training, r.model, r.mixture), strict=True):
        for f in fields(cls):
            choices = f.metadata.get("choices")
            value = getattr(obj, f.name, None)
            if choices and f.name in r.explicit and value is not None and value not in list(choices):
                v.add(v.key(f.name), f"{value!r} is not one of {list(choices)}", f"set {f.name} to one of those")


def check_quantization(v: Validation) -> None:
    from sft_recipes.model.kind import compute_dtype_name

    m, t = v.recipe.model, v.recipe.training
    if m.load_in_4bit and m.load_in_8bit:
        v.add(v.key("load_in_8bit"), "both load_in_4bit and load_in_8bit are set", "keep one of them")
    if not (m.load_in_4bit or m.load_in_8bit):
        return
    which = "load_in_4bit" if m.load_in_4bit else "load_in_8bit"
    if not m.use_peft:
        v.add(
            v.key(which),
            "a quantized model cannot be fine-tuned directly: its weights are frozen integers",
            "set use_peft: true (QLoRA), or drop the quantization for a full fine-tune",
        )
    from importlib.util import find_spec

    if find_spec("bitsandbytes") is None:
        v.add(
            v.key(which),
            "quantized loading needs bitsandbytes, not installed",
            "pip install 'sft-recipes[quantization]'",
        )
    compute = compute_dtype_name(t)
    if m.load_in_4bit and m.dtype in (None, "auto"):
        v.add(
            v.key("dtype") if "dtype" in v.recipe.explicit else "dtype",
            f"`auto` with 4-bit: the 4-bit compute dtype resolves to {compute} (from bf16/fp16)"
            + (", so QLoRA computes in fp32: slow and memory-hungry" if compute == "float32" else ""),
            "set dtype explicitly (bfloat16 on GPUs that have it) to make the choice visible",
            warning=True,
        )


def check_distribution(v: Validation, accelerate: dict[str, Any] | None) -> None:
    """The distributed mode (from --accelerate_config, else the recipe's deepspeed/fsdp keys) and what it rules out."""
    from sft_recipes.topology import Topology

    t, m = v.recipe.training, v.recipe.model
    if accelerate is not None:
        v.mode, v.num_processes = accelerate["mode"], accelerate["num_processes"]
        _check_mixed_precision(v, accelerate)
    else:
        try:
            mode = Topology.from_env(t).mode
            v.mode = "fsdp" if mode == "fsdp2" else mode
        except (OSError, ValueError) as err:
            v.add(v.key("deepspeed"), f"cannot read the DeepSpeed config: {err}", "point deepspeed at a JSON file")
        v.num_processes = int(os.environ.get("WORLD_SIZE", "1"))
    init_kwargs = t.model_init_kwargs
    if isinstance(init_kwargs, str):
        try:
            init_kwargs = json.loads(init_kwargs)
        except json.JSONDecodeError:
            init_kwargs = {}
    device_map = (init_kwargs or {}).get("device_map")
    if device_map is not None and v.mode in ("zero3", "fsdp"):
        v.add(
            v.key("model_init_kwargs"),
            f"device_map={device_map!r} with {v.mode}: the model must load unplaced so {v.mode} can shard it "
            "(peft#306)",
            "remove device_map from model_init_kwargs",
        )
    elif device_map == "auto" and v.mode != "single":
        v.add(
            v.key("model_init_kwargs"),
            f"device_map='auto' spreads layers over GPUs and cannot train under {v.mode}",
            "remove device_map from model_init_kwargs",
        )
    elif device_map is not None:
        v.add(
            v.key("model_init_kwargs"),
            "device_map is ignored: sft-recipes loads and places the model itself",
            "remove device_map from model_init_kwargs",
            warning=True,
        )
    if m.load_in_4bit and v.mode in QUANT_STORAGE_MODES:
        _check_quant_storage(v)


def _check_quant_storage(v: Validation) -> None:
    from sft_recipes.model.kind import compute_dtype_name

    m = v.recipe.model
    compute = compute_dtype_name(v.recipe.training)
    storage = m.bnb_4bit_quant_storage
    if compute == "float32":
        v.add(
            "bf16",
            f"QLoRA under {v.mode} with fp32 compute: the 4-bit weights are stored as float32 to be sharded, "
            "which erases most of the memory saving",
            "set bf16: true and bnb_4bit_quant_storage: bfloat16",
            warning=True,
        )
    elif storage is not None and storage != compute:
        # Unset, our loader stores the 4-bit weights in the compute dtype under FSDP and ZeRO-3; an explicit other
        # value is a misunderstanding worth stopping for.
        v.add(
            v.key("bnb_4bit_quant_storage"),
            f"QLoRA under {v.mode} needs the 4-bit weights stored as the compute dtype ({compute}), got "
            f"{storage or 'uint8 (the default)'}: {v.mode} shards floating-point tensors only, so uint8 storage "
            "stays unsharded on every GPU",
            f"set bnb_4bit_quant_storage: {compute}",
        )


def _check_mixed_precision(v: Validation, accelerate: dict[str, Any]) -> None:
    t = v.recipe.training
    wanted = accelerate.get("mixed_precision")
    recipe = "bf16" if t.bf16 else "fp16" if t.fp16 else "no"
    if wanted and wanted != recipe and not (t.use_cpu and wanted != "no"):
        v.add(
            accelerate["path"],
            f"mixed_precision: {wanted} here, but the recipe trains with {recipe}",
            f"make them agree: mixed_precision: {recipe} in the accelerate config, or bf16/fp16 in the recipe",
            warning=True,
        )


def check_hardware(v: Validation) -> None:
    """bf16/fp16 against the local GPU. Without a GPU (a laptop before launch) explicit precision is a warning."""
    import torch

    t, explicit = v.recipe.training, v.recipe.explicit
    precision = "bf16" if t.bf16 else "fp16" if t.fp16 else None
    if not torch.cuda.is_available():
        v.summary["hardware"] = "no GPU here: training on this machine would run on CPU"
        if precision and precision in explicit:
            v.add(
                v.key(precision),
                f"no GPU here: {precision} will be checked at launch; on this machine training would run on CPU",
                "nothing to do if you launch elsewhere; set use_cpu: true to train here on purpose",
                warning=True,
            )
        return
    count = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    v.summary["hardware"] = f"{count} x {name}"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        v.add(v.key("bf16"), f"{name} has no bfloat16 support", "set bf16: false and fp16: true")
    if v.num_processes > count and v.mode != "single" and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        v.add(
            "--num_processes",
            f"{v.num_processes} processes but {count} GPU(s) on this machine",
            "lower num_processes, or launch on the machines the accelerate config is for",
            warning=True,
        )


def check_attention(v: Validation) -> None:
    from importlib.util import find_spec

    from sft_recipes.model.attention import FLASH_PACKAGES

    m = v.recipe.model
    requested = m.attn_implementation
    package = FLASH_PACKAGES.get(requested or "")
    if package and find_spec(package) is None:
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
    elif requested and "/" in requested and find_spec("kernels") is None:
        v.add(
            v.key("attn_implementation"), f"hub kernel {requested} needs the `kernels` package", "pip install kernels"
        )
    else:
        v.summary["attention"] = requested or "transformers' default (sdpa where supported)"


# -- config.json ---------------------------------------------------------------------------------------------------


def check_model_files(v: Validation) -> None:
    """config.json, model kind, remote code and pickle weights; sets v.config and v.kind."""
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
    _check_architecture(v)
    _check_pickle_weights(v)
    dtype = str(resolve_dtype(m.dtype, t, v.config)).removeprefix("torch.")
    v.summary["model"] = f"{m.model_name_or_path} ({v.config.get('model_type')}, {v.kind})"
    v.summary["dtype"] = dtype if m.dtype not in (None, "auto") else f"{dtype} (auto: from the checkpoint)"
    quant = "4-bit NF4" if m.load_in_4bit and m.bnb_4bit_quant_type == "nf4" else "4-bit FP4" if m.load_in_4bit else ""
    v.summary["quantization"] = quant or ("8-bit" if m.load_in_8bit else "none")


def _check_architecture(v: Validation) -> None:
    import transformers

    architectures = v.config.get("architectures") or []
    unknown = [a for a in architectures if not hasattr(transformers, a)]
    if unknown and "auto_map" not in v.config:
        v.add(
            v.recipe.model.model_name_or_path,
            f"architecture {unknown[0]} is unknown to transformers {transformers.__version__}; "
            f"the model is built from model_type {v.config.get('model_type')!r} instead",
            "check config.json's `architectures`, or upgrade transformers",
            warning=True,
        )


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
    from sft_recipes.model.loading import rope_scaling_plan

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
    plan = f", RoPE: linear scaling x{rope['factor']:g}" if rope else ""
    v.summary["max_length"] = f"{t.max_length} (model context {context}{plan})"
    v.summary["packing"] = f"{t.packing_strategy}" if t.packing else "off"
    if t.padding_free and not t.packing:
        v.summary["packing"] = "off (padding-free batches)"


def check_vlm(v: Validation) -> None:
    from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT

    if v.kind != IMAGE_TEXT_TO_TEXT:
        return
    import transformers
    from packaging.version import Version

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


# -- the model skeleton (meta device: no memory, no weights) -------------------------------------------------------


def check_meta_model(v: Validation) -> None:
    """Parameter counts, and LoRA targets against the model's real linear layers (Σ r·(in+out) over the targets)."""
    from sft_recipes.inspection import build_meta_model
    from sft_recipes.model.lora import build_lora_config

    m = v.recipe.model
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
    v.params = sum(p.numel() for p in model.parameters())
    if not m.use_peft:
        v.trainable = v.params
        v.summary["trainable"] = f"all {v.params:,} parameters (full fine-tune)"
        return
    lora = build_lora_config(m, model, v.kind or "causal_lm")
    assert lora is not None
    targeted = [module for name, module in model.named_modules() if _is_lora_target(name, module, lora.target_modules)]
    if not targeted:
        v.add(
            v.key("lora_target_modules"),
            f"{lora.target_modules!r} matches no linear layer of this model",
            "use leaf names such as q_proj, or `all-linear`",
        )
        return
    per_module = [
        m.lora_r * (mod.in_features + mod.out_features) + (mod.out_features if m.use_dora else 0) for mod in targeted
    ]
    saved = sum(
        p.numel()
        for name, module in model.named_modules()
        if m.lora_modules_to_save and name.rsplit(".", 1)[-1] in m.lora_modules_to_save
        for p in module.parameters()
    )
    v.trainable = sum(per_module) + saved
    named = lora.target_modules or []
    targets = named if isinstance(named, str) else ", ".join(sorted(named))
    v.summary["LoRA"] = f"r={m.lora_r}, alpha={m.lora_alpha} on {len(targeted)} layers ({targets})"
    v.summary["trainable"] = f"{v.trainable:,} of {v.params:,} parameters ({100 * v.trainable / v.params:.2f}%)"


def _is_lora_target(name: str, module: Any, targets: Any) -> bool:
    """PEFT's matching: a regex string is full-matched, a list matches a name or its dotted suffix."""
    if not hasattr(module, "in_features") or name.endswith("lm_head"):
        return False
    if isinstance(targets, str):
        return targets.lower() == "all-linear" or re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith(f".{t}") or t == "all-linear" for t in targets)


# -- tokenizer and chat template -----------------------------------------------------------------------------------


def check_tokenizer(v: Validation) -> None:
    """Load the tokenizer (small), apply the recipe's template, eos and pad, check assistant-only loss can work."""
    from sft_recipes.model.tokenizer import load_processing_class

    m, t = v.recipe.model, v.recipe.training
    source = m.tokenizer_name_or_path or m.model_name_or_path
    try:
        processing_class = load_processing_class(m, t, v.kind or "causal_lm")
    except (OSError, ValueError, TypeError, KeyError, ImportError) as err:
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
    if path.endswith((".jinja", ".j2")):
        if not os.path.isfile(path):
            v.add(
                v.key("chat_template_path"), f"{path} does not exist", "check the path (relative to the current dir)"
            )
            return None
        return Path(path).read_text(encoding="utf-8")
    from transformers import AutoTokenizer

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
    """#14: assistant_only_loss masks with {% generation %} markers; TRL patches only templates it knows."""
    from trl.chat_template_utils import (
        get_training_chat_template,
        has_generation_markers,
        is_chat_template_stop_token_trained,
    )

    processing_class = v.tokenizer
    patched = None
    if not has_generation_markers(processing_class.chat_template):
        try:
            patched = get_training_chat_template(processing_class)
        except Exception:  # noqa: BLE001 - TRL renders the template to match it; any failure means "cannot patch"
            v.add(
                v.key("assistant_only_loss"),
                "the chat template has no {% generation %} markers (and TRL has no patched version of it), so no "
                "token would be trained",
                "wrap the assistant content and its end-of-turn token in {% generation %}...{% endgeneration %} "
                "(see sft_recipes/chat_templates/chatml.jinja) via chat_template_path, or assistant_only_loss: false",
            )
            return
        v.training_template = patched
        v.summary["chat template"] = "TRL's training version of the model's template (adds generation markers)"
    if not is_chat_template_stop_token_trained(processing_class, chat_template=patched):
        v.add(
            v.key("assistant_only_loss"),
            "the assistant's end-of-turn token falls outside the {% generation %} markers: the model is never "
            "trained to stop",
            "move {% endgeneration %} after the end-of-turn token in the chat template",
            warning=True,
        )


# -- data: the first rows as the trainer will see them -------------------------------------------------------------


def check_data(v: Validation) -> None:
    """Load and check the data as train does (file:line problems, columns, roles, images), then tokenize the first
    rows with the chat template and masks TRL will use: share of trained tokens, truncation, the EOS."""
    from sft_recipes.data.loading import load_training_data
    from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT

    r = v.recipe
    source = r.model.model_name_or_path
    train, _ = load_training_data(r.script, r.mixture, r.training)
    v.examples = len(train) if hasattr(train, "__len__") else None
    first = next(iter(train), None)
    if first is None:
        return
    columns = sorted(first)
    conversational = "messages" in first or isinstance(first.get("prompt"), list)
    v.summary["data"] = (
        f"{v.examples if v.examples is not None else 'streaming'} examples (columns: {', '.join(columns)})"
    )
    if conversational and not getattr(v.tokenizer, "chat_template", None):
        v.add(
            v.key("chat_template_path"),
            f"the data is conversational but the tokenizer of {r.model.tokenizer_name_or_path or source} has no "
            "chat template",
            "set chat_template_path: sft_recipes/chat_templates/chatml.jinja (or another template)",
        )
        return
    if v.kind == IMAGE_TEXT_TO_TEXT:
        v.summary["trained tokens"] = "decided at collation for vision-language data"
        return
    if first.get("images"):
        v.add(
            v.key("dataset_name"),
            f"the data has images but {source} is a text-only model (TRL refuses the pair)",
            "train a vision-language model on it, or drop the images column",
        )
        return
    from jinja2 import TemplateError

    sample = []
    for index, row in zip(range(SAMPLE_ROWS), train, strict=False):
        try:
            sample.append(_trained_tokens(v, row))
        except (TemplateError, ValueError, TypeError, KeyError) as err:
            v.add(
                f"{r.script.dataset_name or 'datasets'}[row {index}]",
                f"the chat template fails on this row: {err}",
                "fix the row (many templates demand strictly alternating user/assistant turns), or the template",
            )
            return
    _check_sample(v, sample)


def _trained_tokens(v: Validation, row: dict[str, Any]) -> tuple[list[int], list[bool]]:
    """(input_ids, trained) of one row, as SFTTrainer._prepare_dataset builds them (before truncation)."""
    t = v.recipe.training
    tokenizer = getattr(v.tokenizer, "tokenizer", v.tokenizer)
    tools = row.get("tools")
    kwargs = {
        "tools": json.loads(tools) if isinstance(tools, str) else tools,
        **(row.get("chat_template_kwargs") or {}),
    }
    if v.training_template:
        kwargs["chat_template"] = v.training_template
    masked = t.assistant_only_loss

    def chat(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs, **extra)

    if "messages" in row:
        out = chat(row["messages"], return_assistant_tokens_mask=masked)
        ids = list(out["input_ids"])
        return ids, [bool(b) for b in out["assistant_masks"]] if masked else [True] * len(ids)
    if "prompt" in row:
        completion_only = t.completion_only_loss is not False  # None means on for prompt-completion data
        if isinstance(row["prompt"], list):
            prompt = list(chat(row["prompt"], add_generation_prompt=True)["input_ids"])
            out = chat(row["prompt"] + row["completion"], return_assistant_tokens_mask=masked)
            ids = list(out["input_ids"])
            assistant = [bool(b) for b in out["assistant_masks"]] if masked else [True] * len(ids)
        else:
            completion = row["completion"]
            if not completion.endswith(tokenizer.eos_token):
                completion += tokenizer.eos_token
            prompt = tokenizer(row["prompt"])["input_ids"]
            ids = tokenizer(row["prompt"] + completion)["input_ids"]
            assistant = [True] * len(ids)
        start = next(
            (i for i, (a, b) in enumerate(zip(prompt, ids, strict=False)) if a != b), min(len(prompt), len(ids))
        )
        return ids, [a and (i >= start or not completion_only) for i, a in enumerate(assistant)]
    text = row[t.dataset_text_field]
    if not text.endswith(tokenizer.eos_token):
        text += tokenizer.eos_token
    ids = tokenizer(text)["input_ids"]
    return ids, [True] * len(ids)


def _check_sample(v: Validation, sample: list[tuple[list[int], list[bool]]]) -> None:
    t = v.recipe.training
    tokenizer = getattr(v.tokenizer, "tokenizer", v.tokenizer)
    limit = None if t.packing else t.max_length
    keep_end = t.truncation_mode == "keep_end"
    total = trained = truncated = without_eos = 0
    longest = max(len(ids) for ids, _ in sample)
    for ids, mask in sample:
        if limit is not None and len(ids) > limit:
            truncated += 1
            ids, mask = (ids[-limit:], mask[-limit:]) if keep_end else (ids[:limit], mask[:limit])
        elif tokenizer.eos_token_id not in [i for i, m in zip(ids, mask, strict=True) if m]:
            without_eos += 1
        total += len(ids)
        trained += sum(mask)
    v.summary["trained tokens"] = (
        f"{100 * trained / max(total, 1):.0f}% of {total:,} tokens in the first {len(sample)} rows"
        + (" (assistant turns only)" if t.assistant_only_loss else "")
    )
    if truncated:
        v.add(
            v.key("max_length"),
            f"{truncated} of the first {len(sample)} rows are longer than max_length {limit} (longest {longest} "
            "tokens) and will be cut, losing their end",
            "raise max_length, or set packing: true",
            warning=True,
        )
    if without_eos:
        _report_untrained_eos(v, without_eos, len(sample) - truncated)
    if trained == 0:
        v.add(v.key("dataset_name"), f"no token of the first {len(sample)} rows is trained", "check the masks")


def _report_untrained_eos(v: Validation, count: int, of: int) -> None:
    """#16: the model learns to stop only from a trained EOS; with pad == eos the usual reason is a base tokenizer."""
    t = v.recipe.training
    tokenizer = getattr(v.tokenizer, "tokenizer", v.tokenizer)
    pad = t.pad_token or tokenizer.pad_token or tokenizer.eos_token
    eos = tokenizer.eos_token
    where = v.key("eos_token") if "eos_token" in v.recipe.explicit else "eos_token"
    fix = "set eos_token to the token that ends an assistant turn in the chat template (e.g. <|im_end|>)" + (
        ", and a pad_token different from it" if pad == eos else ""
    )
    message = f"the EOS {eos!r} is not trained in {count} of {of} sample rows: the model never learns to stop"
    if pad == eos:
        v.add(where, f"pad == eos ({eos!r}) and {message}", fix)
    else:
        v.add(where, message, fix, warning=True)


# -- output_dir: finished runs, concurrent runs, disk space --------------------------------------------------------


def check_output_dir(v: Validation) -> None:
    """#19 a finished run in output_dir, a live run writing there, and #20 the disk space checkpoints will take."""
    from sft_recipes.run_dir import lock_holder, resume_checkpoint

    t, s = v.recipe.training, v.recipe.script
    out = t.output_dir
    resume = resume_checkpoint(out, t.resume_from_checkpoint, s.overwrite_output_dir)
    if resume:
        v.summary["resume"] = f"from {resume}"
    pid = lock_holder(out) if int(os.environ.get("RANK", "0")) == 0 else None
    if pid is not None:
        v.add(
            v.key("output_dir"),
            f"another run (pid {pid}) is writing to {out}",
            "wait for it, or pick another output_dir",
        )
    if v.params is not None:
        _check_disk(v)


def _check_disk(v: Validation) -> None:
    t, m, s = v.recipe.training, v.recipe.model, v.recipe.script
    trainable = v.trainable or 0
    assert v.params is not None
    weights = trainable * 4 if m.use_peft else v.params * _bytes_per_param(v)  # adapters are kept in fp32 by PEFT
    per_save = weights + (0 if t.save_only_model else 8 * trainable)  # Adam: two fp32 moments per trainable param
    saves = _checkpoints_kept(v)
    final = weights + (2 * v.params if s.merge_adapter and m.use_peft else 0)
    need = saves * per_save + final
    root = Path(os.path.abspath(t.output_dir))
    while not root.exists():
        root = root.parent
    free = free_space(root)
    v.summary["disk"] = (
        f"~{_size(need)} ({saves} checkpoint(s) x {_size(per_save)} + final {_size(final)}), {_size(free)} free "
        f"at {root}"
    )
    if need > free:
        v.add(
            v.key("output_dir"),
            f"the checkpoints need ~{_size(need)} ({saves} x {_size(per_save)} + final {_size(final)}) but {root} "
            f"has {_size(free)} free",
            "free disk space, set save_total_limit (e.g. 2) or save_only_model: true, or pick another output_dir",
        )


def free_space(path: Path) -> int:
    return shutil.disk_usage(path).free


def _bytes_per_param(v: Validation) -> int:
    from sft_recipes.model.kind import resolve_dtype

    return resolve_dtype(v.recipe.model.dtype, v.recipe.training, v.config).itemsize


def _checkpoints_kept(v: Validation) -> int:
    """How many checkpoints will sit in output_dir at the end: every save, capped by save_total_limit."""
    t = v.recipe.training
    strategy = str(getattr(t.save_strategy, "value", t.save_strategy))
    if strategy == "no":
        return 0
    steps = t.max_steps
    if steps <= 0 and v.examples:
        per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * max(v.num_processes, 1)
        steps = math.ceil(v.examples / per_step * t.num_train_epochs)
    if strategy == "epoch":
        saves = math.ceil(t.num_train_epochs)
    elif strategy == "steps" and steps > 0:
        interval = math.ceil(t.save_steps * steps) if t.save_steps < 1 else int(t.save_steps)
        saves = steps // max(interval, 1)
    else:
        saves = 1
    return min(saves, t.save_total_limit) if t.save_total_limit else saves


def _size(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale / 10:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


# -- accelerate config -----------------------------------------------------------------------------------------------


# -- the command -----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("validate", __doc__, recipe=True)
    add_launch_flags(parser)
    return parser


def main(argv: list[str]) -> int:
    import datasets

    from sft_recipes.config import parse_recipe
    from sft_recipes.launch import read_accelerate_config

    datasets.disable_progress_bars()  # validate prints a summary, not the loading of a 64-row sample
    args, rest = parse_with_recipe(build_parser(), argv)
    flags = launch_flags(args)
    problems: list[Problem] = []
    accelerate = None
    if "accelerate_config" in flags:
        try:
            accelerate = read_accelerate_config(flags.pop("accelerate_config"), flags)
        except RecipeError as err:
            problems += err.problems
    recipe = parse_recipe(rest, keep_going=True)
    v = validate(recipe, accelerate)
    v.problems = problems + v.problems
    if accelerate is not None:
        v.summary["distributed"] = f"{accelerate['mode']} x {accelerate['num_processes']} ({accelerate['path']})"
    for problem in v.problems:
        if problem.severity == "warning":
            print(f"warning: {problem}".replace("\n", "\n  "), file=sys.stderr)
    if v.errors:
        raise RecipeError(v.errors)
    warnings = len(v.problems)
    print(f"{recipe.path or 'recipe'}: OK" + (f" ({warnings} warning(s) above)" if warnings else ""))
    width = max(len(k) for k in v.summary) if v.summary else 0
    for label in sorted(v.summary, key=lambda k: SUMMARY_ORDER.index(k) if k in SUMMARY_ORDER else len(SUMMARY_ORDER)):
        print(f"  {label:<{width}}  {v.summary[label]}")
    return 0
