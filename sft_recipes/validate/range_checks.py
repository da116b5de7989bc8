"""The numeric ranges of recipe fields, as one table: what TRL, transformers, PEFT or torch would refuse mid-run (or
train into a no-op), caught before anything loads. Checked on the parsed values, so YAML and flags alike."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sft_recipes.validate.validation import Validation

SEED_MAX = 2**32 - 1  # numpy's seed range, which transformers.set_seed feeds


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


POSITIVE_INT = Range(low=1)
FRACTION = Range(low=0, high=1, high_open=True)

RANGES: dict[str, Range] = {
    # LoRA (peft.LoraConfig accepts these; the adapter layers then fail, or learn nothing)
    "lora_r": Range(low=1, why="PEFT cannot build a rank-0 adapter (`r` should be a positive integer)"),
    "lora_alpha": Range(low=0, low_open=True, why="the adapter's scale is alpha / r: 0 makes it a no-op"),
    "lora_dropout": Range(low=0, high=1, high_open=True, why="a dropout probability; 1 drops every input"),
    # batches and steps (torch's sampler, transformers' step arithmetic)
    "per_device_train_batch_size": Range(low=1, why="torch's sampler refuses a batch of 0"),
    "per_device_eval_batch_size": Range(low=1, why="torch's sampler refuses a batch of 0"),
    "gradient_accumulation_steps": Range(low=1, why="transformers divides the steps by it"),
    "eval_accumulation_steps": POSITIVE_INT,
    "num_train_epochs": Range(
        low=0,
        low_open=True,
        why="no step would run",
        when=lambda t: t.max_steps <= 0,
        condition="when max_steps is unset (-1)",
    ),
    "logging_steps": Range(low=0, low_open=True, why="the interval of log lines", when=_steps("logging_strategy")),
    "save_steps": Range(
        low=0, low_open=True, why="transformers takes the step modulo it", when=_steps("save_strategy")
    ),
    "eval_steps": Range(
        low=0, low_open=True, why="transformers takes the step modulo it", when=_steps("eval_strategy")
    ),
    # optimizer (torch.optim's own checks, raised at the first step)
    "learning_rate": Range(low=0, why="torch's optimizers refuse a negative learning rate"),
    "weight_decay": Range(low=0, why="torch's AdamW refuses a negative weight decay"),
    "adam_beta1": Range(low=0, high=1, high_open=True, why="torch's Adam refuses betas outside [0, 1)"),
    "adam_beta2": Range(low=0, high=1, high_open=True, why="torch's Adam refuses betas outside [0, 1)"),
    "adam_epsilon": Range(low=0, why="torch's Adam refuses a negative epsilon"),
    "max_grad_norm": Range(low=0, why="a negative norm silently turns clipping off"),
    "label_smoothing_factor": FRACTION,
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
    """Every field of RANGES whose parsed value lies outside its range, named with its line and the range."""
    r = v.recipe
    for key, allowed in RANGES.items():
        value = next((getattr(obj, key) for obj in (r.training, r.model, r.script) if hasattr(obj, key)), None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if allowed.when is not None and not allowed.when(r.training):
            continue
        if allowed.holds(value):
            continue
        condition = f" {allowed.condition}" if allowed.condition else ""
        why = f": {allowed.why}" if allowed.why else ""
        v.add(
            v.key(key),
            f"{value!r} is outside the allowed range{condition} ({allowed.describe()}){why}",
            f"set {key} {allowed.describe()}",
        )
