"""Crash safety: a run killed with SIGKILL and started again with the same command resumes from its last complete
checkpoint and ends with weights bit-identical to an uninterrupted run (CPU, fixed seed and data_seed, no workers).

Measured: bit for bit (torch.equal on every tensor, max |diff| 0.0) for full fine-tuning and LoRA, so that is what
is asserted. Runs are halted at a checkpoint by tests/halting_run.py, never by a timer, so a loaded machine changes
nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sft_recipes.run_dir import COMPLETE_MARKER, LOCK, LOCK_HOLDER, SUMMARY, completed_checkpoints

STEPS, SAVE_EVERY = 16, 4  # 64 demo rows / batch 4 = 16 steps: one epoch, four checkpoints
DETERMINISTIC = {
    "dtype": "float32",
    "bf16": False,
    "use_cpu": True,
    "max_length": 64,
    "per_device_train_batch_size": 4,
    "max_steps": STEPS,
    "learning_rate": 1.0e-3,
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": SAVE_EVERY,
    "report_to": "none",
    "seed": 0,
    "data_seed": 0,
    "dataloader_num_workers": 0,
    "gradient_checkpointing": False,
}
METHODS = {"full": {}, "lora": {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1}}
WEIGHTS = {"full": "model.safetensors", "lora": "adapter_model.safetensors"}
HALTING_RUN = Path(__file__).parents[1] / "helpers" / "halting_run.py"


def write(tmp_path: Path, name: str, model: Path, data: Path, method: str, **extra: object) -> Path:
    recipe = tmp_path / f"{name}.yaml"
    keys = {**DETERMINISTIC, **METHODS[method], "model_name_or_path": str(model), "dataset_name": str(data), **extra}
    recipe.write_text(yaml.safe_dump({**keys, "output_dir": str(tmp_path / name)}))
    return recipe


def command(recipe: Path) -> list[str]:
    return [sys.executable, "-m", "sft_recipes", "train", "--config", str(recipe)]


def halting(how: str, step: int, recipe: Path) -> list[str]:
    """The same train command, halted at checkpoint-`step` (pause-after or kill-before its marker)."""
    return [sys.executable, str(HALTING_RUN), how, str(step), *command(recipe)[3:]]


def start(line: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(line, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env)


def wait_for(path: Path, process: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    """Until `path` exists; the run being halted at that checkpoint, it cannot end first unless it failed."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended (rc {process.returncode}): {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def half_written_checkpoint(out: Path, step: int) -> Path:
    """What a kill during a save leaves: no completion marker, a trainer_state.json cut mid-way."""
    path = out / f"checkpoint-{step}"
    path.mkdir()
    (path / "trainer_state.json").write_text('{"global_step": ' + str(step) + ', "log_hist')
    (path / WEIGHTS["full"]).write_bytes(b"\0" * 16)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_sigkill_then_rerun_resumes_from_the_last_complete_checkpoint_to_identical_weights(
    method, tmp_path, llama_dir, demo_data_path, capsys
):
    reference_recipe = write(tmp_path, "reference", llama_dir, demo_data_path, method)
    reference = start(command(reference_recipe), tmp_path / "reference.log")
    try:
        killed_then_resumed(method, tmp_path, llama_dir, demo_data_path, capsys)
        assert reference.wait() == 0, (tmp_path / "reference.log").read_text()[-3000:]
    finally:
        if reference.poll() is None:  # a failure above: do not leave it training
            reference.kill()
    expected = load_file(tmp_path / "reference" / WEIGHTS[method])
    got = load_file(tmp_path / "killed" / WEIGHTS[method])
    assert set(got) == set(expected)
    assert all(torch.equal(got[name], expected[name]) for name in expected)  # bit for bit


def killed_then_resumed(method: str, tmp_path: Path, llama_dir: Path, demo_data_path: Path, capsys) -> None:
    from sft_recipes.cli import main

    recipe = write(tmp_path, "killed", llama_dir, demo_data_path, method)
    out = tmp_path / "killed"
    run = start(halting("pause-after", SAVE_EVERY, recipe), tmp_path / "first.log")
    wait_for(out / f"checkpoint-{SAVE_EVERY}" / COMPLETE_MARKER, run, tmp_path / "first.log")

    # Paused mid-training: a second run of the same recipe is refused and names the pid holding output_dir.
    try:
        before = sorted(p.name for p in out.iterdir())
        assert main(["train", "--config", str(recipe)]) == 2
        assert f"pid {run.pid}" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == before
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
    assert run.returncode == -signal.SIGKILL and not (out / SUMMARY).exists()
    assert (out / LOCK).exists() and (out / LOCK_HOLDER).exists()  # left by the kill: the rerun must step over them
    assert completed_checkpoints(out) == [out / f"checkpoint-{SAVE_EVERY}"]  # halted there, not later

    last = completed_checkpoints(str(out))[-1]
    partial = half_written_checkpoint(out, STEPS - 1)
    assert completed_checkpoints(str(out))[-1] == last  # the cut-off checkpoint is never a candidate

    resumed = subprocess.run(
        command(recipe), capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {last}" in resumed.stderr and partial.name not in resumed.stderr
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["steps"] == STEPS and not (out / LOCK).exists() and not (out / LOCK_HOLDER).exists()


@pytest.mark.slow
def test_a_kill_between_a_save_and_its_marker_keeps_the_last_complete_checkpoint(tmp_path, llama_dir, demo_data_path):
    # save_total_limit 1: transformers deletes checkpoint-4 while saving checkpoint-8, before any callback runs.
    steps = 2 * SAVE_EVERY
    recipe = write(tmp_path, "out", llama_dir, demo_data_path, "full", max_steps=steps, save_total_limit=1)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run(halting("kill-before", steps, recipe), capture_output=True, text=True, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / f"checkpoint-{steps}" / "trainer_state.json").is_file()  # killed after the save, before its marker
    assert completed_checkpoints(out) == [out / f"checkpoint-{SAVE_EVERY}"]

    resumed = subprocess.run(command(recipe), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {out / f'checkpoint-{SAVE_EVERY}'}" in resumed.stderr
    assert json.loads((out / SUMMARY).read_text())["steps"] == steps
    # save_total_limit still holds: the one checkpoint left is the last, and it is complete
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{steps}"]
    assert completed_checkpoints(out) == [out / f"checkpoint-{steps}"]


def test_final_save_writes_the_resolved_recipe_and_a_run_summary(tmp_path, llama_dir, demo_data_path):
    from sft_recipes.cli import main

    recipe = write(tmp_path, "out", llama_dir, demo_data_path, "lora")
    keys = yaml.safe_load(recipe.read_text())
    recipe.write_text(yaml.safe_dump({**keys, "max_steps": 3, "save_strategy": "no"}))
    assert main(["train", "--config", str(recipe)]) == 0
    out = tmp_path / "out"
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["model_name_or_path"] == str(llama_dir) and saved["lora_r"] == 4 and saved["max_steps"] == 3
    assert (out / "recipe.yaml").read_text().startswith("# Resolved recipe")
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["steps"] == 3
    assert summary["tokens_seen"] > 0 and summary["final_loss"] > 0 and summary["wall_time_s"] > 0
    assert {"torch", "transformers", "trl", "peft", "sft-recipes"} <= set(summary["versions"])
    assert not (out / LOCK).exists()


def test_a_finished_run_is_not_retrained_without_overwrite(tmp_path, llama_dir, demo_data_path, capsys):
    from sft_recipes.cli import main

    recipe = write(tmp_path, "out", llama_dir, demo_data_path, "full")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / SUMMARY).write_text("{}")
    assert main(["train", "--config", str(recipe)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [SUMMARY]
