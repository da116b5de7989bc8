"""Checks of the recipe alone and of this machine: choices, quantization, distribution, hardware, attention."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sft_recipes.validate.validation import Validation


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

    m, t = v.recipe.model, v.recipe.training  # both bit widths at once: trl.ModelConfig refuses it in the parser
    if not (m.load_in_4bit or m.load_in_8bit):
        return
    which = "load_in_4bit" if m.load_in_4bit else "load_in_8bit"
    if not m.use_peft:
        v.add(
            v.key(which),
            "a quantized model cannot be fine-tuned directly: its weights are frozen integers",
            "set use_peft: true (QLoRA), or drop the quantization for a full fine-tune",
        )
    from sft_recipes.environment import has_package

    if not has_package("bitsandbytes"):
        v.add(
            v.key(which),
            "quantized loading needs bitsandbytes, not installed",
            "pip install 'sft-recipes[quantization]'",
        )
    else:
        _build_quantization_config(v)
    compute = compute_dtype_name(t)
    if m.load_in_4bit and m.dtype in (None, "auto"):
        v.add(
            v.key("dtype") if "dtype" in v.recipe.explicit else "dtype",
            f"`auto` with 4-bit: the 4-bit compute dtype resolves to {compute} (from bf16/fp16)"
            + (", so QLoRA computes in fp32: slow and memory-hungry" if compute == "float32" else ""),
            "set dtype explicitly (bfloat16 on GPUs that have it) to make the choice visible",
            warning=True,
        )


def _build_quantization_config(v: Validation) -> None:
    """transformers' BitsAndBytesConfig from the recipe, as the loader builds it: its checks name their own key."""
    from sft_recipes.model.kind import compute_dtype
    from sft_recipes.model.loading import build_quantization_config

    try:
        build_quantization_config(v.recipe.model, compute_dtype(v.recipe.training), v.topology)
    except (ValueError, TypeError, AttributeError) as err:
        message = str(err).strip().splitlines()[0]
        keys = [f.name for f in fields(v.recipe.model) if f.name.startswith("bnb_") and f.name in message]
        key = keys[0] if keys else "load_in_4bit" if v.recipe.model.load_in_4bit else "load_in_8bit"
        v.add(v.key(key), f"transformers' BitsAndBytesConfig refuses it: {message}", f"fix {key}")


def check_distribution(v: Validation) -> None:
    """What the run's topology rules out: a device_map that would place weights ZeRO-3/FSDP must shard, or spread
    one model over GPUs under data parallelism; 4-bit storage that cannot be sharded; mismatched precision."""
    t, m, topology = v.recipe.training, v.recipe.model, v.topology
    if topology.config_path is not None:
        _check_mixed_precision(v)
    init_kwargs = t.model_init_kwargs
    if isinstance(init_kwargs, str):
        try:
            init_kwargs = json.loads(init_kwargs)
        except json.JSONDecodeError:
            init_kwargs = {}
    device_map = (init_kwargs or {}).get("device_map")
    if device_map is not None and not topology.allows_device_map(device_map):
        v.add(
            v.key("model_init_kwargs"),
            f"device_map={device_map!r} with {topology.mode}: the model must load unplaced so {topology.mode} can "
            "shard it (peft#306)"
            if topology.sharded
            else f"device_map='auto' spreads layers over GPUs and cannot train under {topology.mode}",
            "remove device_map from model_init_kwargs",
        )
    elif device_map is not None:
        v.add(
            v.key("model_init_kwargs"),
            "device_map is ignored: sft-recipes loads and places the model itself",
            "remove device_map from model_init_kwargs",
            warning=True,
        )
    if m.load_in_4bit and topology.sharded:
        _check_quant_storage(v)


def _check_quant_storage(v: Validation) -> None:
    from sft_recipes.model.kind import compute_dtype_name

    m = v.recipe.model
    compute = compute_dtype_name(v.recipe.training)
    storage = m.bnb_4bit_quant_storage
    if compute == "float32":
        v.add(
            "bf16",
            f"QLoRA under {v.topology.mode} with fp32 compute: the 4-bit weights are stored as float32 to be "
            "sharded, "
            "which erases most of the memory saving",
            "set bf16: true and bnb_4bit_quant_storage: bfloat16",
            warning=True,
        )
    elif storage is not None and storage != compute:
        # Unset, our loader stores the 4-bit weights in the compute dtype under FSDP and ZeRO-3; an explicit other
        # value is a misunderstanding worth stopping for.
        v.add(
            v.key("bnb_4bit_quant_storage"),
            f"QLoRA under {v.topology.mode} needs the 4-bit weights stored as the compute dtype ({compute}), got "
            f"{storage or 'uint8 (the default)'}: {v.topology.mode} shards floating-point tensors only, so uint8 "
            "storage stays unsharded on every GPU",
            f"set bnb_4bit_quant_storage: {compute}",
        )


def _check_mixed_precision(v: Validation) -> None:
    """`sft-recipes train --accelerate_config` passes the recipe's precision to accelerate launch; a plain
    `accelerate launch --config_file` does not, and DeepSpeed then refuses the mismatch."""
    from sft_recipes.topology import recipe_precision

    t, wanted = v.recipe.training, v.topology.mixed_precision
    recipe = recipe_precision(t)
    if wanted and wanted != recipe and not (t.use_cpu and wanted != "no"):
        v.add(
            str(v.topology.config_path),
            f"mixed_precision: {wanted} here, but the recipe trains with {recipe}",
            "launch with `sft-recipes train --accelerate_config`, which passes the recipe's precision; with a plain "
            f"`accelerate launch`, set mixed_precision: {recipe} in the accelerate config",
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
    if (
        v.topology.num_processes > count
        and v.topology.mode != "single"
        and int(os.environ.get("WORLD_SIZE", "1")) == 1
    ):
        v.add(
            "--num_processes",
            f"{v.topology.num_processes} processes but {count} GPU(s) on this machine",
            "lower num_processes, or launch on the machines the accelerate config is for",
            warning=True,
        )


def check_attention(v: Validation) -> None:
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
    elif requested and "/" in requested and not has_package("kernels"):
        v.add(
            v.key("attn_implementation"), f"hub kernel {requested} needs the `kernels` package", "pip install kernels"
        )
    else:
        v.summary["attention"] = requested or "transformers' default (sdpa where supported)"
