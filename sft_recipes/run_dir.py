"""Where a run stands in its output_dir: checkpoints and their completion marker, the one-run lock, resume, summary."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sft_recipes.errors import error

COMPLETE_MARKER = "sft_recipes_complete"  # written into a checkpoint once every file of it is on disk
SUMMARY = "run_summary.json"
RESOLVED_RECIPE = "recipe.yaml"
LOCK = ".sft_recipes.lock"  # flock'ed by filelock while a run writes here
LOCK_HOLDER = ".sft_recipes.lock.pid"  # the holder's pid, for the refusal message


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Every checkpoint-N folder, by step (checkpoint-10 after checkpoint-9), complete or not."""
    root = Path(output_dir)
    matches = [(re.fullmatch(r"checkpoint-(\d+)", p.name), p) for p in root.iterdir()] if root.is_dir() else []
    return [path for _, path in sorted((int(match[1]), path) for match, path in matches if match and path.is_dir())]


def completed_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoints whose every file was written, oldest first. One cut off by a crash has no marker (ours) and
    a partial trainer_state.json (plain HF runs): it is never picked."""
    return [path for path in checkpoints(output_dir) if (path / COMPLETE_MARKER).exists()]


def mark_complete(checkpoint: Path) -> None:
    """The marker, fsynced so a crash never leaves a marker without its files."""
    with open(checkpoint / COMPLETE_MARKER, "w") as marker:
        marker.write(checkpoint.name.removeprefix("checkpoint-") + "\n")
        marker.flush()
        os.fsync(marker.fileno())


def rotate_checkpoints(output_dir: str, limit: int | None, current: Path, best: str | None) -> None:
    """save_total_limit, once `current` is marked: checkpoints cut off by a kill go first, then the oldest complete
    ones (by time, as transformers orders them); `current` and the best one always stay."""
    if not limit or limit <= 0:
        return
    from transformers.trainer_utils import sort_checkpoints

    ordered = [Path(p) for p in sort_checkpoints(output_dir, use_mtime=True)]
    keep = {current.name} | ({Path(best).name} if best else set())
    # sorted() is stable: unmarked (False) before marked, each group still oldest first
    candidates = sorted((p for p in ordered if p.name not in keep), key=lambda p: (p / COMPLETE_MARKER).exists())
    for path in candidates[: max(0, len(ordered) - max(limit, len(keep)))]:
        shutil.rmtree(path, ignore_errors=True)


def checkpoint_marker(training_args: Any) -> Any:
    """The callback that marks each checkpoint complete once the trainer wrote all of it (on_save runs after
    _save_checkpoint), then applies save_total_limit in transformers' stead: transformers rotates before any callback,
    so with save_total_limit 1 a kill between its rotation and our marker left no complete checkpoint."""
    from transformers import TrainerCallback

    limit, training_args.save_total_limit = training_args.save_total_limit, None

    class CheckpointMarker(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if args.should_save and path.is_dir():
                mark_complete(path)
                rotate_checkpoints(args.output_dir, limit, path, state.best_model_checkpoint)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # what transformers does at the end of train() for save_total_limit 1: only the best checkpoint stays
            best = state.best_model_checkpoint
            if args.should_save and limit == 1 and best is not None:
                for path in checkpoints(args.output_dir):
                    if path.name != Path(best).name:
                        shutil.rmtree(path, ignore_errors=True)

    return CheckpointMarker()


def resume_checkpoint(output_dir: str, requested: str | bool | None, overwrite: bool) -> str | None:
    """The checkpoint to resume from: the requested one, else the last complete one in output_dir."""
    if isinstance(requested, str) and requested not in ("True", "true"):
        if not (Path(requested) / "trainer_state.json").is_file():
            raise error(
                "resume_from_checkpoint",
                f"{requested} is not a complete checkpoint",
                "point it at a checkpoint-N folder, or leave it unset to resume automatically",
            )
        return requested
    if overwrite:
        return None
    if finished(output_dir) and not requested:
        raise error(
            "output_dir",
            f"{output_dir} already holds a finished run ({SUMMARY})",
            "pick a new output_dir, or pass --overwrite_output_dir true to train again",
        )
    done = completed_checkpoints(output_dir)
    return str(done[-1]) if done else None


@contextmanager
def output_lock(output_dir: str) -> Iterator[None]:
    """Refuse a second concurrent run into the same output_dir. Rank 0 holds an flock (filelock) for the whole job;
    the OS drops it when a run is killed, so what a killed run leaves behind never blocks the rerun."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    from filelock import FileLock, Timeout

    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        pid = _recorded_pid(root)
        who = f"another run (pid {pid})" if pid is not None and _alive(pid) else "another run"
        raise error(
            str(root), f"{who} is writing to this output_dir", "wait for it, or choose another output_dir"
        ) from None
    try:
        (root / LOCK_HOLDER).write_text(f"{os.getpid()}\n")
        yield
    finally:
        (root / LOCK_HOLDER).unlink(missing_ok=True)
        # Unlinked while still held: a run that opened this inode meanwhile sees it gone and retries on a new one.
        (root / LOCK).unlink(missing_ok=True)
        lock.release()


def lock_holder(output_dir: str) -> int | None:
    """The pid of a live run holding output_dir's lock, None when free or left by a killed run."""
    root = Path(output_dir)
    pid = _recorded_pid(root)
    if pid is None or not _alive(pid):
        return None
    from filelock import FileLock, Timeout

    try:
        with FileLock(root / LOCK, timeout=0):
            return None  # a reused pid: nobody holds the lock
    except Timeout:
        return pid


def _recorded_pid(root: Path) -> int | None:
    try:
        return int((root / LOCK_HOLDER).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def finished(output_dir: str | Path) -> bool:
    """Whether a run ran to its end here (it wrote its summary last)."""
    return (Path(output_dir) / SUMMARY).is_file()


def read_summary(output_dir: str | Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((Path(output_dir) / SUMMARY).read_text()))
    except (OSError, ValueError):
        return None


def write_run_record(output_dir: str, resolved_recipe: dict[str, Any], summary: dict[str, Any]) -> None:
    """recipe.yaml (how the run was made: every resolved key) and run_summary.json (what it did)."""
    import yaml

    from sft_recipes.environment import package_versions

    out = Path(output_dir)
    header = f"# Resolved recipe of this run (sft-recipes {package_versions()['sft-recipes']}).\n"
    (out / RESOLVED_RECIPE).write_text(header + yaml.safe_dump(resolved_recipe, sort_keys=True))
    temporary = out / f"{SUMMARY}.partial"
    temporary.write_text(json.dumps({**summary, "versions": package_versions()}, indent=2) + "\n")
    os.replace(temporary, out / SUMMARY)  # whole or absent: its presence means "finished"


def run_summary(trainer: Any, result: Any, seconds: float) -> dict[str, Any]:
    """What a finished run did: steps, epochs, tokens, losses, wall time, world size."""
    state = trainer.state
    history = [h for h in state.log_history if "loss" in h]
    return {
        "steps": state.global_step,
        "epochs": state.epoch,
        "tokens_seen": _tokens_seen(state),
        "final_loss": history[-1]["loss"] if history else None,
        "train_loss": getattr(result, "training_loss", None),
        "wall_time_s": round(seconds, 2),
        "world_size": trainer.accelerator.num_processes,
    }


def _tokens_seen(state: Any) -> int | None:
    seen = getattr(state, "num_input_tokens_seen", 0)
    if seen:
        return int(seen)
    tokens = [h["num_tokens"] for h in state.log_history if "num_tokens" in h]
    return int(tokens[-1]) if tokens else None
