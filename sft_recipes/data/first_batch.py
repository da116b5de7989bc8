"""The first batch as the trainer's collator builds it: a row the processor cannot take is named before training."""

from __future__ import annotations

from typing import Any

from sft_recipes.errors import Problem

_FIX = "fix or drop that row: train stops at the first batch that holds it"


def first_batch_problems(dataset, collate: Any, source: str, rows: int) -> list[Problem]:
    """Problems ("<source>[row <i>]") of the first `rows` rows built into one batch by `collate` (TRL's: for vision
    data, the processor call a training step makes: image tokens vs images, truncated image files). When the batch
    fails, each row alone names those that do; rows are fetched afresh, as collators rewrite the rows they get."""
    from datasets import Dataset

    if not isinstance(dataset, Dataset):  # a stream: its head as one batch
        try:
            collate([dict(row) for row in dataset.take(rows)])
        except Exception as err:  # noqa: BLE001 - datasets, PIL and processors raise many types
            return [Problem(f"{source}[rows 0-{rows - 1}]", f"the first batch cannot be built: {_say(err)}", _FIX)]
        return []
    count = min(rows, len(dataset))
    try:
        collate([dataset[i] for i in range(count)])
        return []
    except Exception as batch_error:  # noqa: BLE001
        failed = []
        for index in range(count):
            try:
                collate([dataset[index]])
            except Exception as err:  # noqa: BLE001
                failed.append(Problem(f"{source}[row {index}]", f"the first batch cannot be built: {_say(err)}", _FIX))
        where = f"{source}[rows 0-{count - 1}]"
        return failed or [Problem(where, f"these rows cannot be built into one batch: {_say(batch_error)}", _FIX)]


def _say(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"
