"""The recipe schema (TRL's dataclasses plus ours), the recipe file as written, and their strict parser."""

from __future__ import annotations

import difflib
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import trl

from sft_recipes.errors import Problem, RecipeError
from sft_recipes.renames import hint

SECRET_PATTERN = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)


def option(default: Any, doc: str, choices: list[str] | None = None) -> Any:
    """A recipe field: `doc` is its help in `--help`, `choices` what argparse and validate accept."""
    return field(default=default, metadata={"help": doc, **({"choices": choices} if choices else {})})


@dataclass
class ModelConfig(trl.ModelConfig):
    # TRL defaults to float32, which silently doubles memory and runs QLoRA compute in fp32.
    dtype: str | None = option(
        "auto",
        "Weights dtype: auto (the checkpoint's own dtype), bfloat16, float16 or float32.",
        ["auto", "bfloat16", "float16", "float32"],
    )
    attn_implementation: str | None = option(
        None,
        "auto (or unset): the fastest this machine allows, logged at load: flash_attention_3/2 when installed on a "
        "GPU of compute capability 9.x/8.0+ with 16-bit weights, else sdpa (eager for models without sdpa). Or name "
        "one: sdpa, eager, flash_attention_2, flash_attention_3, kernels-community/...",
    )
    model_kind: str = option(
        "auto",
        "auto (from config.json), causal_lm or image_text_to_text.",
        ["auto", "causal_lm", "image_text_to_text"],
    )
    cache_dir: str | None = option(None, "Hugging Face cache directory for model files.")
    attn_strict: bool = option(False, "Fail instead of falling back to sdpa when the requested flash-attn is missing.")
    tokenizer_name_or_path: str | None = option(None, "Tokenizer/processor to load instead of the model's own.")
    use_slow_tokenizer: bool = option(False, "Load the slow (Python) tokenizer.")
    pad_token_policy: str = option(
        "auto",
        "When the tokenizer has no pad token: auto (unk, else eos), unk, eos, or add a new <|pad|>. Padding positions "
        "are masked by position, so a pad equal to eos never masks the real EOS.",
        ["auto", "unk", "eos", "add"],
    )
    model_max_length: int | None = option(None, "Tokenizer model_max_length (defaults to max_length).")
    rope_scaling_policy: str = option(
        "auto",
        "auto: linear RoPE scaling by ceil(max_length / max_position_embeddings) when max_length exceeds the "
        "context; off: never scale (a longer max_length is then an error).",
        ["auto", "off"],
    )
    low_cpu_mem_usage: bool = option(
        True, "Load weights lazily. Always true in transformers 5; kept so Open-Instruct style recipes parse."
    )
    allow_pickle_weights: bool = option(
        False, "Allow loading pickle (.bin) weights, which can execute code. Safetensors only otherwise."
    )


@dataclass
class ScriptArguments(trl.ScriptArguments):
    dataset_format: str = option(
        "auto",
        "Format of the rows: auto-detected from the columns, or forced. Rows with a boolean `label` column "
        "(KTO-style) are trained only where it is true: label: false rows are bad answers, so they are excluded and "
        "their count is logged.",
        ["auto", "text", "messages", "prompt_completion", "sharegpt", "alpaca", "preference"],
    )
    preference_column: str | None = option(
        None,
        "Preference data ('chosen' and 'rejected' columns) is not SFT data and is refused. Set `chosen` to train on "
        "the chosen answers as prompt-completion (the rejected ones are dropped); to learn from both, use a "
        "preference trainer (trl's DPOTrainer).",
        ["chosen"],
    )
    merge_adapter: bool = option(False, "After LoRA training, also save the adapter merged into a 16-bit base.")
    overwrite_output_dir: bool = option(False, "Train again into an output_dir that already holds a finished run.")
    prepared: str | None = option(
        None,
        "A folder `sft-recipes preprocess --out` wrote: train on its rows as they are (no rank reads or tokenizes the "
        "raw data), once the recipe is checked to give the same fingerprint (data keys, tokenizer, chat template, "
        "max_length, packing, masks).",
    )


SFTConfig = trl.SFTConfig
DatasetMixtureConfig = trl.DatasetMixtureConfig
DATACLASSES = (ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)


@dataclass
class Recipe:
    script: ScriptArguments
    training: Any  # trl.SFTConfig
    model: ModelConfig
    mixture: Any  # trl.DatasetMixtureConfig
    path: str | None = None
    explicit: set[str] = field(default_factory=set)
    raw: dict[str, Any] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # the command line after --config, as given


class _Parser(trl.TrlParser):
    """TrlParser whose argparse errors become RecipeError instead of SystemExit."""

    def error(self, message: str) -> typing.NoReturn:
        match = re.search(r"argument --(\w+)", message)
        raise RecipeError(Problem(match.group(1) if match else "command line", message))


def _parser() -> _Parser:
    return _Parser(typing.cast(Any, DATACLASSES))  # HfArgumentParser's stub does not accept a tuple of types


def field_types() -> dict[str, Any]:
    """Every recipe key mapped to its type hint."""
    hints: dict[str, Any] = {}
    for cls in DATACLASSES:
        resolved = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.init:
                hints.setdefault(f.name, resolved.get(f.name, f.type))
    return hints


def key_locator(path: str | None) -> Callable[[str], str]:
    """Where a key is: `recipe.yaml:LINE (key)` when it is a top-level key of the recipe file, else the key itself."""
    lines: dict[str, int] = {}
    if path and os.path.isfile(path):
        for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
            match = re.match(r"^([A-Za-z_][\w.-]*)\s*:", line)
            if match:
                lines.setdefault(match.group(1), number)
    return lambda key: f"{path}:{lines[key]} ({key})" if key in lines else key


def load_yaml(path: str) -> dict[str, Any]:
    import yaml

    if not os.path.isfile(path):
        raise RecipeError(Problem(path, "recipe file not found", "check the path given to --config"))
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise RecipeError(
            Problem(where, f"invalid YAML: {getattr(err, 'problem', err)}", "fix the YAML syntax")
        ) from None
    if not isinstance(config, dict | None):
        raise RecipeError(Problem(path, "a recipe must be a YAML mapping of key: value", "see recipes/ for examples"))
    return config or {}


def scalar_kind(hint: Any) -> type | None:
    """The scalar type a hint boils down to (int/float/bool/str), or None for containers and unions of several."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return scalar_kind(args[0]) if len(args) == 1 else None
    return hint if hint in (int, float, bool, str) else None


def _fits(kind: type, value: Any) -> bool:
    """Whether the YAML value passes as it is: an int for a float, "true" for a bool, a number for a str."""
    if isinstance(value, bool):
        return kind in (bool, str)
    if kind is bool:
        return isinstance(value, str) and value.lower() in ("true", "false")
    if kind is str:
        return isinstance(value, (str, int, float))
    if kind is int:
        return isinstance(value, int)
    return isinstance(value, (int, float))  # an int for a float key (learning_rate: 1)


def check_types(config: dict[str, Any], hints: dict[str, Any], where: Callable[[str], str]) -> list[Problem]:
    """Type problems in YAML values. Strings that argparse converts (a YAML `1e-5`) are warnings, not errors."""
    problems = []
    for key, value in config.items():
        kind = scalar_kind(hints.get(key))
        if kind is None or value is None or _fits(kind, value):
            continue
        try:
            converted = kind(value) if isinstance(value, str) and kind in (int, float) else None
        except ValueError:
            converted = None
        if converted is None:
            got = f"{type(value).__name__} {value!r}"
            problems.append(
                Problem(where(key), f"expected {kind.__name__}, got {got}", f"set `{key}` to a {kind.__name__}")
            )
            continue
        fix = f"write it without quotes: `{key}: {value}`"
        if kind is float:
            fix = f"write it as a float, e.g. `{key}: {float(value):.1e}`"
        message = f"{value!r} was read by YAML as a string and converted to {converted!r}"
        problems.append(Problem(where(key), message, fix, severity="warning"))
    return problems


def did_you_mean(key: str, known: typing.Iterable[str], value: Any = None) -> str:
    """The fix for an unknown key: the rename table's advice (sft_recipes.renames), else the closest known key.
    `value`, the key's YAML value when known, tailors the advice (`use_flash_attention_2: false` means sdpa)."""
    advice = hint(key, value, has_value=value is not None)
    if advice:
        return advice
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    return f"did you mean `{match[0]}`?" if match else "remove it, or see `sft-recipes train --help-all` for the keys"


def _explicit_cli_keys(args: list[str]) -> set[str]:
    return {a[2:].split("=", 1)[0] for a in args if a.startswith("--")}


def _unknown_flags(args: list[str], hints: dict[str, Any]) -> set[str]:
    return {a for a in _explicit_cli_keys(args) if a not in hints and a.removeprefix("no_") not in hints}


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def parse_recipe(argv: list[str], keep_going: bool = False) -> Recipe:
    """Parse `--config R.yaml [--key value ...]` strictly: unknown keys and wrong types are RecipeErrors. keep_going
    (validate): drop the offending keys instead, parse the rest, and return their errors among `recipe.warnings`,
    so that every problem of the recipe is reported at once."""
    args, path = list(argv), None
    if "--config" in args:
        index = args.index("--config")
        if index + 1 >= len(args):
            raise RecipeError(Problem("--config", "missing the recipe path", "--config recipes/<model>/<method>.yaml"))
        path = args.pop(index + 1)
        del args[index]
    config = load_yaml(path) if path is not None else {}
    overrides = list(args)
    hints, where = field_types(), key_locator(path)
    env = config.pop("env", None) or {}
    problems = _key_problems(config, args, hints, where)
    if not isinstance(env, dict):
        problems.insert(0, Problem(where("env"), "`env` must be a mapping of VARIABLE: value"))
        env = {}
    errors = [p for p in problems if p.severity == "error"]
    if errors and not keep_going:
        raise RecipeError(errors)
    if errors:  # the recipe minus unknown keys and wrongly typed values, the command line minus unknown flags
        config = {
            k: v
            for k, v in config.items()
            if k in hints and all(p.severity != "error" for p in check_types({k: v}, hints, where))
        }
        args = _without_flags(args, _unknown_flags(args, hints))

    for key, value in env.items():
        os.environ[str(key)] = str(value)
    explicit = set(config) | _explicit_cli_keys(args)
    defaults: dict[str, Any] = {}
    if "use_cpu" not in explicit and not _has_accelerator():
        defaults["use_cpu"] = True  # no accelerator here: train on CPU instead of failing in TrainingArguments

    script, training, model, mixture = _dataclasses(config, args, defaults, where, path)
    resolved = {
        key: _plain(getattr(obj, key))
        for key in sorted(explicit)
        for obj in (script, training, model, mixture)
        if hasattr(obj, key)
    }
    if env:
        resolved["env"] = {k: ("<redacted>" if SECRET_PATTERN.search(str(k)) else v) for k, v in env.items()}
    if resolved.get("hub_token"):
        resolved["hub_token"] = "<redacted>"
    if training.hub_token:
        # On the args, a token is pickled into training_args.bin with every checkpoint; the hub client reads HF_TOKEN.
        os.environ.setdefault("HF_TOKEN", training.hub_token)
        training.hub_token = None
    kept = problems if keep_going else [p for p in problems if p.severity == "warning"]
    return Recipe(script, training, model, mixture, path, explicit, resolved, kept, overrides)


def _key_problems(
    config: dict[str, Any], args: list[str], hints: dict[str, Any], where: Callable[[str], str]
) -> list[Problem]:
    """Unknown keys and flags (with the renamed-key or did-you-mean hint) and wrongly typed YAML values."""
    problems = [
        Problem(where(k), f"unknown key `{k}`", did_you_mean(k, hints, config[k])) for k in config if k not in hints
    ]
    for arg in _unknown_flags(args, hints) - {"help", "help-all"}:
        problems.append(Problem(f"--{arg}", f"unknown flag `--{arg}`", did_you_mean(arg, hints)))
    return problems + check_types({k: v for k, v in config.items() if k in hints}, hints, where)


def _dataclasses(
    config: dict[str, Any], args: list[str], defaults: dict[str, Any], where: Callable[[str], str], path: str | None
) -> tuple[Any, Any, Any, Any]:
    """(ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig), their __post_init__ errors named by key."""
    parser = _parser()
    parser.set_defaults_with_config(**defaults, **config)
    try:
        return tuple(parser.parse_args_into_dataclasses(args=args))  # type: ignore[return-value]
    except (ValueError, TypeError) as err:
        if "support bf16" in str(err):  # transformers' message names no fix; bf16 is on by default in TRL
            raise RecipeError(
                Problem(
                    where("bf16"),
                    "bf16 needs a GPU with bfloat16 support and this machine has none (use_cpu is false)",
                    "on GPUs without bf16 (T4, V100) set bf16: false and fp16: true; to train on CPU, use_cpu: true",
                )
            ) from None
        culprits = _culprits(config, args, defaults)
        names = [k.removeprefix("--") for k in culprits]
        fix = f"fix {' or '.join(f'`{k}`' for k in names)}" if names else "fix the value named above"
        raise RecipeError(
            Problem(", ".join(where(k) for k in culprits) or path or "command line", str(err), fix)
        ) from None


def _culprits(config: dict[str, Any], args: list[str], defaults: dict[str, Any]) -> list[str]:
    """The recipe keys and flags without which the dataclasses accept the recipe: what a __post_init__ error is
    about (TRL's "You can't use 8 bit and 4 bit precision at the same time" names no key). Flags as `--name`."""
    trials = [(key, {k: v for k, v in config.items() if k != key}, args) for key in config]
    trials += [(f"--{flag}", config, _without_flags(args, {flag})) for flag in sorted(_explicit_cli_keys(args))]
    found = []
    for name, trial_config, trial_args in trials:
        parser = _parser()
        parser.set_defaults_with_config(**defaults, **trial_config)
        try:
            parser.parse_args_into_dataclasses(args=trial_args)
        except (ValueError, TypeError, RecipeError):
            continue
        found.append(name)
    return found


def _without_flags(args: list[str], names: set[str]) -> list[str]:
    """The command line minus the flags `names`, with their values (`--flag value`, `--flag=value` or bare)."""
    kept: list[str] = []
    skip = False  # the last flag was dropped and may be followed by its value
    for arg in args:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if (name is None and not skip) or (name is not None and name not in names):
            kept.append(arg)
        skip = name in names and "=" not in arg
    return kept


def _plain(value: Any) -> Any:
    """A YAML-safe rendering of a parsed value (enums and dataclasses flattened)."""
    import enum

    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value) if getattr(value, f.name) is not None}
    return value


def print_help_all() -> None:
    _parser().print_help(sys.stdout)
