"""Run `sft-recipes ARGS...` and halt it at a checkpoint, at a point fixed by the code rather than by a timer.

Usage: python tests/helpers/halting_run.py pause-after|kill-before STEP ARGS...
- pause-after STEP: block for good right after checkpoint-STEP is marked complete, holding the output_dir lock
  (the test then does what it needs with a live run and SIGKILLs it).
- kill-before STEP: SIGKILL this process once checkpoint-STEP's files are written, before its completion marker:
  the window in which transformers' own save_total_limit rotation used to have deleted the last complete checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sft_recipes import run_dir
from sft_recipes.cli import main


def halting(how: str, step: int) -> Callable[[Path], None]:
    mark = run_dir.mark_complete

    def mark_then_halt(checkpoint: Path) -> None:
        at = checkpoint.name == f"checkpoint-{step}"
        if at and how == "kill-before":
            os.kill(os.getpid(), signal.SIGKILL)
        mark(checkpoint)
        while at and how == "pause-after":
            time.sleep(60)

    return mark_then_halt


if __name__ == "__main__":
    how, step, *args = sys.argv[1:]
    assert how in ("pause-after", "kill-before"), how
    run_dir.mark_complete = halting(how, int(step))
    sys.exit(main(args))
