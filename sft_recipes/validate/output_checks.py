"""Checks of output_dir: a finished run (#19), a live run writing there, the disk space checkpoints take (#20)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sft_recipes.validate.validation import Validation


def check_output_dir(v: Validation) -> None:
    from sft_recipes.run_dir import lock_holder, resume_checkpoint

    t, out = v.recipe.training, v.recipe.training.output_dir
    root = _writable_root(v, out)
    if root is None:
        return
    resume = resume_checkpoint(out, t.resume_from_checkpoint, v.recipe.script.overwrite_output_dir)
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
        _check_disk(v, root)


def _writable_root(v: Validation, out: str) -> Path | None:
    """output_dir's nearest existing folder; None when a file there (or above) or permissions stop the first mkdir."""
    path = Path(os.path.abspath(out))
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        where = "is an existing file" if blocking == path else f"is below the file {blocking}"
        v.add(v.key("output_dir"), f"{out} {where}: it must be a folder", "pick another output_dir, or move the file")
        return None
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        v.add(v.key("output_dir"), f"{existing} is not writable by this user", "pick an output_dir you can write to")
        return None
    return existing


def _check_disk(v: Validation, root: Path) -> None:
    from sft_recipes.model.kind import resolve_dtype

    t, m, s = v.recipe.training, v.recipe.model, v.recipe.script
    trainable = v.trainable or 0
    assert v.params is not None
    # PEFT keeps adapters in fp32
    weights = trainable * 4 if m.use_peft else v.params * resolve_dtype(m.dtype, t, v.config).itemsize
    per_save = weights + (0 if t.save_only_model else 8 * trainable)  # Adam: two fp32 moments per trainable param
    saves = _checkpoints_kept(v)
    final = weights + (2 * v.params if s.merge_adapter and m.use_peft else 0)
    need, free = saves * per_save + final, free_space(root)
    sizes = f"x {_size(per_save)} + final {_size(final)}"
    v.summary["disk"] = f"~{_size(need)} ({saves} checkpoint(s) {sizes}), {_size(free)} free at {root}"
    if need > free:
        v.add(
            v.key("output_dir"),
            f"the checkpoints need ~{_size(need)} ({saves} {sizes}) but {root} has {_size(free)} free",
            "free disk space, set save_total_limit (e.g. 2) or save_only_model: true, or pick another output_dir",
        )


def free_space(path: Path) -> int:
    return shutil.disk_usage(path).free


def _checkpoints_kept(v: Validation) -> int:
    """How many checkpoints will sit in output_dir at the end: every save, capped by save_total_limit."""
    t = v.recipe.training
    strategy = str(getattr(t.save_strategy, "value", t.save_strategy))
    if strategy == "no":
        return 0
    steps = t.max_steps
    if steps <= 0 and v.examples:
        per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * max(v.topology.num_processes, 1)
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
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale / 10:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"
