"""The run directory on its own (no training): which checkpoints count, rotation after the marker, the one-run lock
across processes, the resume decision and the summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sft_recipes import run_dir
from sft_recipes.errors import RecipeError
from sft_recipes.run_dir import (
    COMPLETE_MARKER,
    LOCK,
    LOCK_HOLDER,
    SUMMARY,
    checkpoint_marker,
    checkpoints,
    completed_checkpoints,
    lock_holder,
    output_lock,
    resume_checkpoint,
)

HOLD = "import sys, time\nfrom sft_recipes.run_dir import output_lock\nwith output_lock(sys.argv[1]):\n"
HOLD += "    print('held', flush=True)\n    time.sleep(600)\n"


def checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        run_dir.mark_complete(path)
    return path


def names(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def test_checkpoints_sort_by_step_and_only_marked_ones_are_complete(tmp_path):
    for step, complete in ((9, True), (10, True), (11, False)):
        checkpoint(tmp_path, step, complete)
    (tmp_path / "checkpoint-12").write_text("a file, not a checkpoint")
    assert names(checkpoints(tmp_path)) == ["checkpoint-9", "checkpoint-10", "checkpoint-11"]
    assert names(completed_checkpoints(tmp_path)) == ["checkpoint-9", "checkpoint-10"]
    assert (tmp_path / "checkpoint-10" / COMPLETE_MARKER).read_text() == "10\n"


@pytest.mark.parametrize(
    ("limit", "best", "left"),
    [
        (None, None, [4, 8, 12]),
        (2, None, [4, 12]),  # the unmarked checkpoint-8 (cut off by a kill) goes before any complete one
        (1, None, [12]),
        (1, 4, [4, 12]),  # the best one stays too
    ],
)
def test_rotation_runs_after_the_marker_and_keeps_the_new_and_the_best_checkpoint(tmp_path, limit, best, left):
    checkpoint(tmp_path, 4)
    checkpoint(tmp_path, 8, complete=False)
    checkpoint(tmp_path, 12, complete=False)  # saved by the trainer; the callback marks it
    args = SimpleNamespace(save_total_limit=limit, output_dir=str(tmp_path), should_save=True)
    callback = checkpoint_marker(args)
    assert args.save_total_limit is None  # taken over: transformers must not rotate before the marker
    best_path = str(tmp_path / f"checkpoint-{best}") if best else None
    callback.on_save(args, SimpleNamespace(global_step=12, best_model_checkpoint=best_path), None)
    assert names(checkpoints(tmp_path)) == [f"checkpoint-{step}" for step in left]
    assert (tmp_path / "checkpoint-12" / COMPLETE_MARKER).is_file()


def test_the_end_of_training_leaves_only_the_best_checkpoint_under_a_limit_of_one(tmp_path):
    for step in (4, 8):
        checkpoint(tmp_path, step)
    args = SimpleNamespace(save_total_limit=1, output_dir=str(tmp_path), should_save=True)
    checkpoint_marker(args).on_train_end(
        args, SimpleNamespace(best_model_checkpoint=str(tmp_path / "checkpoint-4")), None
    )
    assert names(checkpoints(tmp_path)) == ["checkpoint-4"]


def test_a_live_run_holds_the_lock_and_a_killed_one_leaves_nothing_that_blocks(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert lock_holder(str(out)) == holder.pid
        with pytest.raises(RecipeError, match=f"another run \\(pid {holder.pid}\\) is writing"), output_lock(str(out)):
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (out / LOCK).exists() and (out / LOCK_HOLDER).read_text() == f"{holder.pid}\n"
    assert lock_holder(str(out)) is None
    with output_lock(str(out)):
        assert (out / LOCK_HOLDER).read_text() == f"{os.getpid()}\n"
        assert lock_holder(str(out)) == os.getpid()
    assert sorted(p.name for p in out.iterdir()) == []  # a finished run leaves no lock files


def test_a_recorded_pid_that_is_alive_but_holds_no_lock_is_not_a_holder(tmp_path):
    (tmp_path / LOCK).write_text("")
    (tmp_path / LOCK_HOLDER).write_text(f"{os.getppid()}\n")  # alive, reused by another process: no flock held
    assert lock_holder(str(tmp_path)) is None


def test_resume_picks_the_last_complete_checkpoint_and_refuses_a_finished_run(tmp_path):
    out = str(tmp_path)
    assert resume_checkpoint(out, None, False) is None
    checkpoint(tmp_path, 4)
    checkpoint(tmp_path, 8, complete=False)
    assert resume_checkpoint(out, None, False) == str(tmp_path / "checkpoint-4")
    assert resume_checkpoint(out, None, True) is None  # overwrite_output_dir
    with pytest.raises(RecipeError, match="not a complete checkpoint"):
        resume_checkpoint(out, str(tmp_path / "checkpoint-99"), False)
    (tmp_path / SUMMARY).write_text("{}")
    with pytest.raises(RecipeError, match="already holds a finished run"):
        resume_checkpoint(out, None, False)
    assert resume_checkpoint(out, True, False) == str(tmp_path / "checkpoint-4")  # resume asked for explicitly


def test_resume_picks_the_highest_step_of_several_complete_checkpoints(tmp_path):
    for step in (4, 10, 8):
        checkpoint(tmp_path, step)
    checkpoint(tmp_path, 12, complete=False)
    assert resume_checkpoint(str(tmp_path), None, False) == str(tmp_path / "checkpoint-10")


def test_only_global_rank_0_takes_the_lock_not_the_first_rank_of_every_node(tmp_path, monkeypatch):
    """On a shared filesystem, node 2's LOCAL_RANK 0 taking the lock would find it held by node 1 and refuse."""
    monkeypatch.setenv("RANK", "8")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with output_lock(str(tmp_path / "out")):
        assert not (tmp_path / "out" / LOCK_HOLDER).exists() and lock_holder(str(tmp_path / "out")) is None
    monkeypatch.setenv("RANK", "0")
    with output_lock(str(tmp_path / "out")):
        assert lock_holder(str(tmp_path / "out")) == os.getpid()


def test_the_run_record_is_the_resolved_recipe_and_a_whole_summary(tmp_path):
    import yaml

    assert run_dir.read_summary(tmp_path) is None and not run_dir.finished(tmp_path)
    run_dir.write_run_record(str(tmp_path), {"lora_r": 4, "model_name_or_path": "m"}, {"steps": 3})
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text()) == {"lora_r": 4, "model_name_or_path": "m"}
    summary = run_dir.read_summary(tmp_path)
    assert summary is not None and summary["steps"] == 3 and "transformers" in summary["versions"]
    assert run_dir.finished(tmp_path) and sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml", SUMMARY]
