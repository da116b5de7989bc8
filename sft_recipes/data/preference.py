"""Data that is not SFT data: preference pairs (chosen/rejected) and KTO-style labelled answers.

A preference row holds a good and a bad answer; SFT trains on one. It is refused unless the recipe says which
answer to train on (`preference_column: chosen`), then trained as prompt-completion on the chosen answer. A row
with a boolean `label` (KTO's unpaired layout) whose label is false is a bad answer: it is never trained.
"""

from __future__ import annotations

import logging
from typing import Any

from sft_recipes.data.rows import alpaca_prompt_completion, sharegpt_messages
from sft_recipes.errors import Problem

logger = logging.getLogger(__name__)

PREFERENCE_COLUMNS = ("chosen", "rejected")

PREFERENCE_CHOICES = ("chosen",)

LABEL = "label"


def is_preference(columns) -> bool:
    return set(PREFERENCE_COLUMNS) <= set(columns)


def refusal(columns, first: dict | None, source: str) -> Problem:
    """The one problem a preference data set gets when the recipe has not said which answer to train on."""
    prompt = next((c for c in ("prompt", "conversations", "messages", "instruction") if c in columns), None)
    chosen = (first or {}).get("chosen")
    layout = "plain-text" if isinstance(chosen, str) else "conversational"
    where = f"an explicit prompt in {prompt!r}" if prompt else "an implicit prompt (the shared start of both)"
    return Problem(
        source,
        f"this is {layout} preference data ('chosen' and 'rejected' answers, with {where}), not SFT data: SFT "
        "trains on one answer per prompt",
        fix="set preference_column: chosen to train on the chosen answers (the rejected ones are dropped), or "
        "train with a preference trainer (trl's DPOTrainer, `trl dpo`)",
    )


def chosen_as_prompt_completion(row: dict) -> dict:
    """A preference row as a prompt-completion row on its chosen answer; its other columns (images, tools) kept."""
    prompt = _prompt(row)
    chosen = _answer(row.get("chosen"))
    if prompt is None:  # TRL's implicit prompt: the longest shared start of chosen and rejected
        from trl.data_utils import extract_prompt

        split = extract_prompt({"chosen": chosen, "rejected": _answer(row.get("rejected"))})
        prompt, chosen = split["prompt"], split["chosen"]
    if isinstance(prompt, list) and isinstance(chosen, str):
        chosen = [{"role": "assistant", "content": chosen}]
    elif isinstance(prompt, str) and isinstance(chosen, list):
        prompt = [{"role": "user", "content": prompt}]
    rest = {k: v for k, v in row.items() if k not in (*PREFERENCE_COLUMNS, "prompt", "conversations", "messages")}
    return {**rest, "prompt": prompt, "completion": chosen}


def without_rejected_labels(dataset, columns: list[str], source: str):
    """`dataset` without its `label: false` rows when `label` holds booleans; the count is logged."""
    from datasets import Dataset, Value

    if LABEL not in columns:
        return dataset
    feature = (dataset.features or {}).get(LABEL)
    if not isinstance(dataset, Dataset):
        if feature is not None and feature != Value("bool"):
            return dataset
        logger.warning("%s: rows with label: false (bad answers, KTO-style) are skipped as the stream is read", source)
        return dataset.filter(lambda row: row.get(LABEL) is not False)
    if feature != Value("bool"):
        return dataset
    kept = dataset.filter(_good, input_columns=[LABEL], batched=True, desc=f"Dropping label: false rows of {source}")
    if len(kept) < len(dataset):
        logger.warning(
            "%s: excluded %d of %d rows with label: false (KTO-style bad answers, never trained as good ones); "
            "%d rows left",
            source,
            len(dataset) - len(kept),
            len(dataset),
            len(kept),
        )
    return kept


def _good(labels: list) -> list[bool]:
    return [label is not False for label in labels]


def _prompt(row: dict) -> Any:
    if "prompt" in row:
        return row["prompt"]
    if "conversations" in row:  # LLaMA-Factory's ShareGPT preference layout
        return sharegpt_messages(row)
    if "messages" in row:
        return row["messages"]
    if "instruction" in row:
        return alpaca_prompt_completion(row)["prompt"]
    return None


def _answer(answer: Any) -> Any:
    """An answer as a string or a message list: LLaMA-Factory keeps one message ({from, value} or {role, content})."""
    if isinstance(answer, dict):
        answer = [answer]
    if isinstance(answer, list) and any(isinstance(m, dict) and "from" in m for m in answer):
        return sharegpt_messages({"conversations": answer})
    return answer
