"""Two-process runs of `sft-recipes train` on CPU (gloo) and the single-process runs they must reproduce.

Every comparison uses the same tiny model, data, seed and GLOBAL batch: 2 ranks x PER_DEVICE rows against
1 process x 2*PER_DEVICE rows, in fp32 with no dropout, so the two runs see the same rows at every step.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from helpers.runs import CPU_DEFAULTS, write_recipe

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIGS = ROOT / "accelerate_configs"
WORLD_SIZE = 2
PER_DEVICE = CPU_DEFAULTS["per_device_train_batch_size"]
# Measured on this stack (4 steps, fp32, DDP/ZeRO-2/ZeRO-3 alike): weights differ from the single-process run by
# <= 1.2e-7 (full) and <= 1.5e-8 (LoRA; 3.3e-7 at lr 1e-2), while training moves them by > 1e-3, so a wrong batch
# or a lost gradient cannot hide under the tolerance.
WEIGHT_ATOL = 1e-6
MIN_TRAINED_CHANGE = 1e-4
LOSS_RTOL = 1e-5
LORA = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
ABORT = "terminate called"  # what a gloo worker thread left alive at interpreter exit prints before SIGABRT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_accelerate_config(name: str, directory: Path, **overrides: object) -> Path:
    """A shipped accelerate config made runnable on this CPU box: 2 processes, fp32, a free port. Everything
    else (ZeRO stage, saving, offload) stays as shipped, so the shipped config is what gets tested."""
    config = yaml.safe_load((SHIPPED_CONFIGS / f"{name}.yaml").read_text())
    config.pop("gpu_ids", None)
    config.update(
        {
            "num_machines": 1,
            "num_processes": WORLD_SIZE,
            "machine_rank": 0,
            "mixed_precision": "no",  # bf16 on CPU would make the comparison loose; fp32 keeps it tight
            "main_process_port": free_port(),
            **overrides,
        }
    )
    path = directory / f"{name}-cpu.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class Run:
    """A finished `sft-recipes train` run: its output_dir and everything it printed."""

    out: Path
    log: str
    returncode: int = 0

    @property
    def summary(self) -> dict:
        return json.loads((self.out / "run_summary.json").read_text())

    def steps(self) -> list[dict]:
        """The per-step log entries (loss, num_tokens, ...) from trainer_state.json."""
        state = json.loads((self.out / "trainer_state.json").read_text())
        return [entry for entry in state["log_history"] if "loss" in entry]

    def weights(self) -> dict[str, torch.Tensor]:
        name = (
            "adapter_model.safetensors" if (self.out / "adapter_model.safetensors").is_file() else "model.safetensors"
        )
        return load_file(self.out / name)


def launch(recipe: Path, accelerate_config: Path, out: Path) -> Run:
    """`python -m sft_recipes train --accelerate_config C --num_processes 2`: the real entry point and launcher."""
    command = [sys.executable, "-m", "sft_recipes", "train", "--config", str(recipe), "--accelerate_config"]
    command += [str(accelerate_config), "--num_processes", str(WORLD_SIZE), "--output_dir", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    return Run(out, done.stdout + done.stderr, done.returncode)


def launched_ok(run: Run, mode: str) -> Run:
    """Assert the launch exited cleanly and really ran WORLD_SIZE ranks in `mode`."""
    assert run.returncode == 0 and ABORT not in run.log, run.log[-4000:]
    # Each rank logs its own Topology mode; `accelerate launch --cpu` would silently run only one.
    assert run.log.count(f"distributed mode: {mode}") == WORLD_SIZE, run.log[-4000:]
    assert run.summary["world_size"] == WORLD_SIZE
    return run


@dataclass
class Bench:
    """The tiny model, data and recipes of the distributed tests, and their single-process references."""

    root: Path
    model_dir: Path
    data_path: Path
    references: dict[str, Run] = field(default_factory=dict)

    def recipe(self, method: str, tag: str = "", **keys: object) -> Path:
        """The recipe of `method` (full or lora); `use_cpu` explicit so a GPU box runs the same CPU processes."""
        base = {"model_name_or_path": str(self.model_dir), "dataset_name": str(self.data_path), "use_cpu": True}
        path = self.root / f"{method}{tag}.yaml"
        return write_recipe(path, **base, **(LORA if method == "lora" else {}), **keys)

    def reference(self, method: str) -> Run:
        """One process, PER_DEVICE * WORLD_SIZE rows per step: computed once per session per method."""
        if method not in self.references:
            out = self.root / f"single-{method}"
            command = [sys.executable, "-m", "sft_recipes", "train", "--config", str(self.recipe(method))]
            command += ["--per_device_train_batch_size", str(PER_DEVICE * WORLD_SIZE), "--output_dir", str(out)]
            done = subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
            self.references[method] = Run(out, done.stdout + done.stderr)
        return self.references[method]

    def assert_reproduces_reference(self, run: Run, method: str) -> float:
        """Same rows, losses and final weights as the single-process run; returns the largest weight difference."""
        reference = self.reference(method)
        ours, theirs = run.steps(), reference.steps()
        assert [s["num_tokens"] for s in ours] == [s["num_tokens"] for s in theirs]  # same global batch per step
        for mine, single in zip(ours, theirs, strict=True):
            assert abs(mine["loss"] - single["loss"]) <= LOSS_RTOL * abs(single["loss"])
        weights, expected = run.weights(), reference.weights()
        assert weights and set(weights) == set(expected)
        assert all(weights[k].numel() > 0 and weights[k].shape == expected[k].shape for k in expected)
        difference = max((weights[k] - expected[k]).abs().max().item() for k in expected)
        assert difference <= WEIGHT_ATOL
        assert max(self.trained_change(expected).values()) > MIN_TRAINED_CHANGE  # the comparison is not vacuous
        return difference

    def trained_change(self, weights: dict[str, torch.Tensor]) -> dict[str, float]:
        """How far training moved each tensor: from the base checkpoint (full) or from zero (LoRA B)."""
        base = load_file(self.model_dir / "model.safetensors")
        return {
            name: (tensor - base[name]).abs().max().item() if name in base else tensor.abs().max().item()
            for name, tensor in weights.items()
            if name in base or "lora_B" in name
        }


_BENCHES: dict[Path, Bench] = {}


def bench(root: Path, model_dir: Path, data_path: Path) -> Bench:
    """One Bench per pytest session (keyed by its temp root), so every test module shares the references."""
    if root not in _BENCHES:
        directory = root / "distributed-bench"
        directory.mkdir(exist_ok=True)
        _BENCHES[root] = Bench(directory, model_dir, data_path)
    return _BENCHES[root]
