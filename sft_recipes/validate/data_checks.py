"""Checks of the training data, loaded as train loads it, and of its first rows as TRL's SFTTrainer prepares them."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sft_recipes.validate.validation import Validation

SAMPLE_ROWS = 32  # rows prepared for the trained-token share, truncation and stop-token checks


def check_data(v: Validation) -> None:
    """The data's file:line problems, columns, roles and images, then its first rows prepared on the meta model
    (inspection's engine): share of trained tokens, truncation, the stop token and the loss mask."""
    from sft_recipes.data.loading import load_training_data
    from sft_recipes.data.rendering import unrendered_tool_use
    from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT

    r = v.recipe
    if r.script.prepared:  # checked when preprocess made it; train checks its fingerprint (the raw data may be gone)
        v.summary["data"] = f"the prepared set in {r.script.prepared}"
        return
    source = r.model.model_name_or_path
    train, _ = load_training_data(r.script, r.mixture, r.training)
    v.examples = len(train) if hasattr(train, "__len__") else None
    first = next(iter(train), None)
    if first is None:
        return
    examples = v.examples if v.examples is not None else "streaming"
    v.summary["data"] = f"{examples} examples (columns: {', '.join(sorted(first))})"
    conversational = "messages" in first or isinstance(first.get("prompt"), list)
    if conversational and not getattr(v.tokenizer, "chat_template", None):
        v.add(
            v.key("chat_template_path"),
            f"the data is conversational but the tokenizer of {r.model.tokenizer_name_or_path or source} has no "
            "chat template",
            "set chat_template_path: sft_recipes/chat_templates/chatml.jinja (or another template)",
        )
        return
    v.extend(unrendered_tool_use(train, v.tokenizer, r.script.dataset_name or "datasets"))
    if v.kind == IMAGE_TEXT_TO_TEXT:
        v.summary["trained tokens"] = "decided at collation for vision-language data"
        if not v.errors and v.model is not None:
            check_vision_batch(v, first_rows_of(train))
        return
    if first.get("images"):
        v.add(
            v.key("dataset_name"),
            f"the data has images but {source} is a text-only model (TRL refuses the pair)",
            "train a vision-language model on it, or drop the images column",
        )
        return
    if v.errors or v.model is None:  # TRL would refuse the recipe for the reasons already reported
        v.summary["trained tokens"] = "unchecked: " + ("fix the errors first" if v.errors else "no model skeleton")
        return
    check_sample(v, first_rows_of(train))


def first_rows_of(train: Any) -> Any:
    """The first SAMPLE_ROWS rows, in memory: preparing them writes nothing to the datasets cache."""
    from datasets import Dataset

    if isinstance(train, Dataset):
        return train.select(range(min(SAMPLE_ROWS, len(train)))).flatten_indices(keep_in_memory=True)
    return Dataset.from_list(list(train.take(SAMPLE_ROWS)))


def check_sample(v: Validation, rows: Any) -> None:
    """Prepare `rows` with the real SFTTrainer (inspection's engine) and report its diagnosis."""
    from sft_recipes.inspection.diagnosis import diagnose, loss_scope
    from sft_recipes.inspection.meta_trainer import build_context, inspection_args, meta_trainer, outside_launch
    from sft_recipes.inspection.statistics import text_statistics

    r = v.recipe
    with tempfile.TemporaryDirectory(prefix="sft-recipes-validate-") as output_dir, outside_launch():
        args = inspection_args(r.training, output_dir, dataset_num_proc=None)  # 32 rows: no worker processes
        trainer, trl_warnings = meta_trainer(v.model, v.tokenizer, rows, args, r.script.dataset_name or "datasets")
        ctx = build_context(r, trainer, rows)
        statistics, counts = text_statistics(ctx)
        statistics["sample"] = len(rows)
        problems, _ = diagnose(ctx, statistics, counts)
        scope = loss_scope(ctx)
    v.statistics = statistics
    v.extend(trl_warnings + problems)
    v.summary["trained tokens"] = (
        f"{statistics['trained_share']:.0%} of {statistics['tokens']:,} tokens in the first {len(rows)} rows"
        + (f" ({scope})" if scope != "every token" else "")
    )


def check_vision_batch(v: Validation, rows: Any) -> None:
    """#10: the first batch through TRL's vision collator on the meta trainer (the processor call of train's first
    step), so that image rows the processor cannot take fail here, not after the weights are loaded."""
    from sft_recipes.data.rendering import first_batch_problems
    from sft_recipes.inspection.meta_trainer import inspection_args, is_vision, meta_trainer, outside_launch

    r = v.recipe
    source = r.script.dataset_name or "datasets"
    if "tools" in rows.column_names and any(rows["tools"]):
        v.add(
            source,
            "TRL's vision-language collator does not pass `tools` to the chat template: the model would learn to "
            "call tools it is never shown",
            "drop the tools column for this model, or train a text model on the tool-calling rows",
        )
        return
    with tempfile.TemporaryDirectory(prefix="sft-recipes-validate-") as output_dir, outside_launch():
        args = inspection_args(r.training, output_dir, dataset_num_proc=None)
        trainer, _ = meta_trainer(v.model, v.tokenizer, rows, args, source)
        prepared = rows if is_vision(trainer) else trainer.train_dataset  # text-only rows are tokenized up front
        v.extend(first_batch_problems(prepared, trainer.data_collator, source, r.training.per_device_train_batch_size))
