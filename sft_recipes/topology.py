"""How a run is distributed: one object, built once from the launch environment or from an accelerate config."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_recipes.errors import error
from sft_recipes.resources import accelerate_config, accelerate_config_names


@dataclass(frozen=True)
class Topology:
    """How a run is distributed; offload: ZeRO-3 or FSDP keeps weights or optimizer states in host memory."""

    mode: str = "single"  # single | ddp | zero2 | zero3 | fsdp2
    offload: bool = False
    num_processes: int = 1
    num_machines: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16 (| fp8, from an accelerate config)
    config_path: str | None = None

    @property
    def sharded(self) -> bool:
        """ZeRO-3 and FSDP shard the weights themselves, after loading: nothing may place them first (peft#306)."""
        return self.mode in ("zero3", "fsdp2")

    @property
    def parallelism(self) -> str:
        """The memory planner's name for it: the mode, with ZeRO-3's offload as its own case."""
        return "zero3_offload" if self.mode == "zero3" and self.offload else self.mode

    def allows_device_map(self, device_map: Any) -> bool:
        """Whether a model may load with this device_map: none if sharded; "auto" (layers over GPUs) in one process."""
        if device_map is None:
            return True
        return not self.sharded and (device_map != "auto" or self.mode == "single")

    @classmethod
    def from_env(cls, training_args: Any = None) -> Topology:
        """This process's topology: what `accelerate launch` / torchrun exported, else the recipe's deepspeed/fsdp."""
        env = os.environ
        processes = int(env.get("WORLD_SIZE", "1"))
        per_machine = int(env.get("LOCAL_WORLD_SIZE", processes) or processes)
        deepspeed, fsdp = getattr(training_args, "deepspeed", None), getattr(training_args, "fsdp", None)
        precision = recipe_precision(training_args)  # what TrainingArguments trains in, whatever accelerate exported
        offload = False
        if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" or deepspeed is not None:
            stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
            devices = [env.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{part}_DEVICE") for part in ("OPTIMIZER", "PARAM")]
            source = deepspeed if deepspeed is not None else env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
            if stage is None and source:
                stage, devices = _deepspeed_json(source)
            mode = _zero_mode(stage)
            offload = any(d not in (None, "", "none") for d in devices)
        elif env.get("ACCELERATE_USE_FSDP", "").lower() == "true" or fsdp:
            mode = "fsdp2"
            offload = env.get("FSDP_OFFLOAD_PARAMS", "").lower() == "true" or "offload" in str(fsdp or "")
        else:
            mode = "ddp" if processes > 1 else "single"
        machines = max(1, processes // max(per_machine, 1))
        mixed = env.get("ACCELERATE_MIXED_PRECISION", "no") if training_args is None else precision
        return cls(mode, offload, processes, machines, mixed)

    @classmethod
    def from_accelerate_config(cls, name_or_path: str, overrides: dict[str, str] | None = None) -> Topology:
        """A bundled accelerate config (by name) or a YAML file, read by accelerate's loader; launch flags override."""
        path = resolve_accelerate_config(name_or_path)
        config = _load_accelerate_config(path)
        kind = config.distributed_type
        kind = "NO" if kind is False else str(getattr(kind, "value", kind)).upper()  # YAML 1.1 reads NO as false
        overrides = overrides or {}
        processes = int(overrides.get("num_processes") or (config.num_processes if config.num_processes > 0 else 1))
        machines = int(overrides.get("num_machines") or config.num_machines or 1)
        offload = False
        if kind == "DEEPSPEED":
            ds = config.deepspeed_config or {}
            stage, devices = ds.get("zero_stage"), [ds.get("offload_optimizer_device"), ds.get("offload_param_device")]
            if ds.get("deepspeed_config_file"):
                stage, devices = _deepspeed_json(ds["deepspeed_config_file"])
            mode = _zero_mode(stage)
            offload = any(d not in (None, "none") for d in devices)
        elif kind == "FSDP":
            mode = "fsdp2"
            offload = bool((config.fsdp_config or {}).get("fsdp_offload_params"))
        elif kind == "NO":
            mode = "ddp" if processes > 1 else "single"
        elif kind.startswith("MULTI_"):
            mode = "ddp"
        else:
            fix = "NO, MULTI_GPU, DEEPSPEED or FSDP"
            raise error(f"{path} (distributed_type)", f"unsupported distributed_type {kind!r}", fix)
        mixed = config.mixed_precision
        return cls(mode, offload, processes, machines, "no" if mixed in (None, False) else str(mixed), str(path))


def recipe_precision(training_args: Any) -> str:
    """The precision a recipe trains in, as accelerate names it: bf16, fp16 or no."""
    return next((name for name in ("bf16", "fp16") if getattr(training_args, name, False)), "no")


def resolve_accelerate_config(name_or_path: str) -> Path:
    """A shipped config by name (zero3, fsdp2, ...) or a path to one."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        return path
    shipped = accelerate_config(name_or_path)
    if shipped is None:
        fix = f"use one of {accelerate_config_names()} or a path to a YAML file"
        raise error("--accelerate_config", f"no accelerate config {name_or_path!r}", fix)
    return shipped


def _load_accelerate_config(path: Path) -> Any:
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        return load_config_from_file(str(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise error(where, f"invalid YAML: {getattr(err, 'problem', err)}", "fix the YAML") from None
    except (ValueError, TypeError, AttributeError) as err:
        raise error(str(path), f"not an accelerate config: {err}", "compare with `accelerate config`") from None


def _deepspeed_json(source: str | dict[str, Any]) -> tuple[str | None, list[str | None]]:
    """(ZeRO stage, offload devices) of a DeepSpeed JSON config, given as a path or as the parsed dict."""
    config = source if isinstance(source, dict) else json.loads(Path(source).read_text())
    zero = config.get("zero_optimization", {})
    devices = [(zero.get(key) or {}).get("device") for key in ("offload_optimizer", "offload_param")]
    return (None if zero.get("stage") is None else str(zero["stage"])), devices


def _zero_mode(stage: object) -> str:
    # ZeRO-1 counts as ZeRO-2 (sharded optimizer states, fp32 master weights, whole weights); stage 0 is plain DDP
    return {"3": "zero3", "2": "zero2", "1": "zero2"}.get(str(stage), "ddp")
