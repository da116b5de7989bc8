"""Checks of the recipe alone and of this machine: ranges, choices, quantization, distribution, hardware, and what
the run reaches outside itself (the Hub, trackers, kernels), each failing only after the weights load."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sft_recipes.validate.validation import Validation

SEED_MAX = 2**32 - 1
STEP_MODULO = "transformers takes the step modulo it"


@dataclass(frozen=True)
class Range:
    """[low, high] with either end open or absent; None values always pass (the field's own "unset")."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    why: str = ""  # what fails, or goes wrong, outside the range
    when: Callable[[Any], bool] | None = None  # applies only to recipes where this holds (on SFTConfig)
    condition: str = ""  # `when` in words, for the message

    def holds(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.low == -math.inf:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _steps(strategy: str) -> Callable[[Any], bool]:
    return lambda t: str(getattr(getattr(t, strategy), "value", getattr(t, strategy))) == "steps"


# What TRL, transformers, PEFT or torch would refuse mid-run (or train into a no-op), on parsed values (YAML or flag)
RANGES: dict[str, Range] = {
    # LoRA (peft.LoraConfig accepts these; the adapter layers then fail, or learn nothing)
    "lora_r": Range(low=1, why="PEFT cannot build a rank-0 adapter (`r` should be a positive integer)"),
    "lora_alpha": Range(low=0, low_open=True, why="the adapter's scale is alpha / r: 0 makes it a no-op"),
    "lora_dropout": Range(low=0, high=1, high_open=True, why="a dropout probability; 1 drops every input"),
    # batches and steps (torch's sampler, transformers' step arithmetic)
    "per_device_train_batch_size": Range(low=1, why="torch's sampler refuses a batch of 0"),
    "per_device_eval_batch_size": Range(low=1, why="torch's sampler refuses a batch of 0"),
    "gradient_accumulation_steps": Range(low=1, why="transformers divides the steps by it"),
    "eval_accumulation_steps": Range(low=1),
    "num_train_epochs": Range(
        low=0,
        low_open=True,
        why="no step would run",
        when=lambda t: t.max_steps <= 0,
        condition="when max_steps is unset (-1)",
    ),
    "logging_steps": Range(low=0, low_open=True, why="the interval of log lines", when=_steps("logging_strategy")),
    "save_steps": Range(low=0, low_open=True, why=STEP_MODULO, when=_steps("save_strategy")),
    "eval_steps": Range(low=0, low_open=True, why=STEP_MODULO, when=_steps("eval_strategy")),
    # optimizer (torch.optim's own checks, raised at the first step)
    "learning_rate": Range(low=0, why="torch's optimizers refuse a negative learning rate"),
    "weight_decay": Range(low=0, why="torch's AdamW refuses a negative weight decay"),
    "adam_beta1": Range(low=0, high=1, high_open=True, why="torch's Adam refuses betas outside [0, 1)"),
    "adam_beta2": Range(low=0, high=1, high_open=True, why="torch's Adam refuses betas outside [0, 1)"),
    "adam_epsilon": Range(low=0, why="torch's Adam refuses a negative epsilon"),
    "max_grad_norm": Range(low=0, why="a negative norm silently turns clipping off"),
    "label_smoothing_factor": Range(low=0, high=1, high_open=True),
    "neftune_noise_alpha": Range(low=0, why="the scale of the embedding noise"),
    # data and lengths
    "max_length": Range(low=1, why="every example would be truncated to nothing"),
    "model_max_length": Range(low=1),
    "pad_to_multiple_of": Range(low=1, why="the collator rounds lengths up to a multiple of it"),
    "dataset_num_proc": Range(low=1, why="datasets needs at least one process (unset: the main one)"),
    "dataloader_num_workers": Range(low=0, why="torch's DataLoader refuses a negative number of workers"),
    # process and reproducibility
    "seed": Range(low=0, high=SEED_MAX, why="numpy's seed range, which transformers.set_seed uses"),
    "data_seed": Range(low=0, high=SEED_MAX, why="numpy's seed range"),
    "ddp_timeout": Range(low=0, low_open=True, why="seconds a rank waits for the others"),
}


def check_ranges(v: Validation) -> None:
    r = v.recipe
    for key, allowed in RANGES.items():
        value = next((getattr(obj, key) for obj in (r.training, r.model, r.script) if hasattr(obj, key)), None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if (allowed.when is not None and not allowed.when(r.training)) or allowed.holds(value):
            continue
        condition = f" {allowed.condition}" if allowed.condition else ""
        why = f": {allowed.why}" if allowed.why else ""
        v.add(
            v.key(key),
            f"{value!r} is outside the allowed range{condition} ({allowed.describe()}){why}",
            f"set {key} {allowed.describe()}",
        )


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
    from sft_recipes.environment import has_package
    from sft_recipes.model.kind import compute_dtype, compute_dtype_name
    from sft_recipes.model.loading import build_quantization_config

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
    if not has_package("bitsandbytes"):
        v.add(
            v.key(which),
            "quantized loading needs bitsandbytes, not installed",
            "pip install 'sft-recipes[quantization]'",
        )
    else:
        try:  # transformers' BitsAndBytesConfig, built as the loader builds it: its checks name their own key
            build_quantization_config(m, compute_dtype(t), v.topology)
        except (ValueError, TypeError, AttributeError) as err:
            message = str(err).strip().splitlines()[0]
            key = next((f.name for f in fields(m) if f.name.startswith("bnb_") and f.name in message), which)
            v.add(v.key(key), f"transformers' BitsAndBytesConfig refuses it: {message}", f"fix {key}")
    compute = compute_dtype_name(t)
    if m.load_in_4bit and m.dtype in (None, "auto"):
        v.add(
            v.key("dtype") if "dtype" in v.recipe.explicit else "dtype",
            f"`auto` with 4-bit: the 4-bit compute dtype resolves to {compute} (from bf16/fp16)"
            + (", so QLoRA computes in fp32: slow and memory-hungry" if compute == "float32" else ""),
            "set dtype explicitly (bfloat16 on GPUs that have it) to make the choice visible",
            warning=True,
        )


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

    mode, compute = v.topology.mode, compute_dtype_name(v.recipe.training)
    storage = v.recipe.model.bnb_4bit_quant_storage
    if compute == "float32":
        v.add(
            "bf16",
            f"QLoRA under {mode} with fp32 compute: the 4-bit weights are stored as float32 to be sharded, which "
            "erases most of the memory saving",
            "set bf16: true and bnb_4bit_quant_storage: bfloat16",
            warning=True,
        )
    elif storage is not None and storage != compute:
        # Unset, our loader stores the 4-bit weights in the compute dtype under FSDP and ZeRO-3; an explicit other
        # value is a misunderstanding worth stopping for.
        v.add(
            v.key("bnb_4bit_quant_storage"),
            f"QLoRA under {mode} needs the 4-bit weights stored as the compute dtype ({compute}), got "
            f"{storage or 'uint8 (the default)'}: {mode} shards floating-point tensors only, so uint8 storage stays "
            "unsharded on every GPU",
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
    count, name = torch.cuda.device_count(), torch.cuda.get_device_name(0)
    v.summary["hardware"] = f"{count} x {name}"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        v.add(v.key("bf16"), f"{name} has no bfloat16 support", "set bf16: false and fp16: true")
    single_node = int(os.environ.get("WORLD_SIZE", "1")) == 1
    if v.topology.num_processes > count and v.topology.mode != "single" and single_node:
        v.add(
            "--num_processes",
            f"{v.topology.num_processes} processes but {count} GPU(s) on this machine",
            "lower num_processes, or launch on the machines the accelerate config is for",
            warning=True,
        )


def check_hub(v: Validation) -> None:
    """push_to_hub: the Trainer creates the repo in its __init__, which needs the Hub and a token with write access."""
    if not v.recipe.training.push_to_hub:
        return
    from huggingface_hub import constants, get_token, whoami

    if constants.is_offline_mode():
        v.add(
            v.key("push_to_hub"),
            "the hub is unreachable: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, and the trainer creates the "
            "hub repo before the first step",
            "unset HF_HUB_OFFLINE to push, or set push_to_hub: false and upload output_dir later "
            "(`hf upload REPO output_dir`)",
        )
    elif get_token() is None:
        v.add(
            v.key("push_to_hub"),
            "no Hugging Face token: the trainer cannot create the hub repo",
            "run `hf auth login`, or set HF_TOKEN (or hub_token) to a token with write access",
        )
    elif int(os.environ.get("RANK", "0")) == 0:  # one request per launch: the other ranks of train's preflight skip it
        try:
            whoami()
        except Exception as err:  # noqa: BLE001 - unreachable, refused or rejected: the push would fail the same way
            v.add(
                v.key("push_to_hub"),
                f"cannot reach the hub with this token ({type(err).__name__}: {str(err).splitlines()[0]})",
                "check the network and the token (`hf auth whoami`), or set push_to_hub: false",
            )


def check_trackers(v: Validation) -> None:
    """report_to: each tracker's callback, built as the Trainer builds it (a missing package raises there)."""
    t = v.recipe.training
    wanted = t.report_to if isinstance(t.report_to, list) else [t.report_to] if t.report_to else []
    wanted = [name for name in wanted if name not in ("none", "all")]
    if not wanted:
        return
    from transformers.integrations import get_reporting_integration_callbacks

    try:
        callbacks = get_reporting_integration_callbacks(wanted)
    except ValueError as err:
        v.add(v.key("report_to"), str(err), "use one of those names, or none")
        return
    for name, callback in zip(wanted, callbacks, strict=True):
        try:
            callback()
        except (RuntimeError, ImportError, ValueError) as err:
            v.add(
                v.key("report_to"),
                f"{name}: {str(err).splitlines()[0]}",
                "pip install 'sft-recipes[tracking]' (tensorboard)"
                if name == "tensorboard"
                else f"install {name}'s package, or drop {name} from report_to",
            )


def check_kernels(v: Validation) -> None:
    """use_liger_kernel: transformers patches the model with liger-kernel's triton kernels, which need a GPU."""
    t = v.recipe.training
    if not t.use_liger_kernel:
        return
    from transformers.utils import is_liger_kernel_available

    if not is_liger_kernel_available():
        v.add(
            v.key("use_liger_kernel"),
            "needs liger-kernel >= 0.3.0, which is not installed; TRL 1.16 deprecates use_liger_kernel in favour of "
            "Hub kernels (model_init_kwargs: {use_kernels: true})",
            "pip install 'sft-recipes[liger]' on a GPU machine, or remove use_liger_kernel",
        )
    elif t.use_cpu:
        v.add(
            v.key("use_liger_kernel"),
            "liger-kernel's triton kernels need a GPU, and this run trains on CPU (use_cpu)",
            "remove use_liger_kernel to train on CPU",
        )
