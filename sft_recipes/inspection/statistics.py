"""What the prepared training data holds: documents, lengths, trained tokens and batches, counted with Arrow."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sft_recipes.inspection.meta_trainer import image_token_id, prepare_whole

if TYPE_CHECKING:
    import numpy as np

    from sft_recipes.inspection.meta_trainer import Context

VISION_SAMPLE = 64  # vision rows are processed on the fly (images): their statistics come from the first ones
STREAMING_SAMPLE = 1000  # a stream has no end: its statistics come from its head


@dataclass
class Documents:
    """Every document of prepared training data as flat arrays (what the loss sees)."""

    ids: np.ndarray
    trained: np.ndarray  # per token: labelled and not its document's first token (which is never a target)
    starts: np.ndarray  # index of each document's first token
    lengths: np.ndarray  # tokens per document
    row_lengths: np.ndarray  # tokens per training row (a packed row holds several documents)

    def count(self, flags: np.ndarray) -> np.ndarray:  # flagged tokens per document
        import numpy as np

        return np.add.reduceat(flags.astype(np.int64), self.starts) if self.starts.size else self.starts


def documents_of(dataset: Any) -> Documents:
    """Flatten a prepared dataset (input_ids, labels[, seq_lengths]) with Arrow, no Python loop per token."""
    import numpy as np
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    ids_column = table.column("input_ids").combine_chunks()
    ids = ids_column.flatten().to_numpy(zero_copy_only=False)
    labels = table.column("labels").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    row_lengths = pc.list_value_length(ids_column).to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = row_lengths
    if "seq_lengths" in table.column_names:
        lengths = table.column("seq_lengths").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    lengths = lengths[lengths > 0].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    trained = labels != -100
    trained[starts] = False
    return Documents(ids, trained, starts, lengths, row_lengths)


def length_statistics(lengths: np.ndarray, max_length: int | None) -> dict[str, Any]:
    import numpy as np

    points = {"min": 0, "median": 50, "p95": 95, "max": 100}
    too_long = lengths > (max_length or math.inf)
    return {
        "tokens_per_example": {
            name: int(np.percentile(lengths, q) if lengths.size else 0) for name, q in points.items()
        },
        "truncated_examples": int(too_long.sum()),
        "truncated_share": float(too_long.mean()) if too_long.size else 0.0,
    }


def batch_tokens(trainer: Any, row_lengths: np.ndarray) -> tuple[int, int]:
    """(batches per epoch, tokens in them padding included), batched in the real sampler's order."""
    multiple = trainer.args.pad_to_multiple_of or 1
    batches = total = 0
    for indices in trainer.get_train_dataloader().batch_sampler:
        lengths = row_lengths[list(indices)]
        if trainer.padding_free:  # one flat row
            total += math.ceil(int(lengths.sum()) / multiple) * multiple
        else:
            total += math.ceil(int(lengths.max()) / multiple) * multiple * len(lengths)
        batches += 1
    return batches, total


def text_statistics(ctx: Context) -> tuple[dict[str, Any], dict[str, int]]:
    """(statistics, counts for the diagnosis) over the whole prepared training set."""
    from datasets import Dataset

    trainer, raw_train = ctx.trainer, ctx.raw_train
    args, prepared = trainer.args, trainer.train_dataset
    sampled = not isinstance(prepared, Dataset)
    if sampled:
        prepared = Dataset.from_list(list(prepared.take(STREAMING_SAMPLE)))
        raw_train = Dataset.from_list(list(raw_train.take(STREAMING_SAMPLE)))
    full = documents_of(prepare_whole(trainer, raw_train))
    docs = documents_of(prepared)
    max_length = args.max_length or math.inf
    stop_id = ctx.tokenizer.convert_tokens_to_ids(ctx.stop) if ctx.stop else -1
    intact = docs.lengths < max_length
    stop_trained = docs.count(docs.trained & (docs.ids == stop_id)) > 0
    batches, batch_total = (0, int(docs.row_lengths.sum())) if sampled else batch_tokens(trainer, docs.row_lengths)
    tokens, trained = int(docs.row_lengths.sum()), int(docs.trained.sum())
    statistics = {
        "examples": int(full.lengths.size),
        "sampled": sampled,
        **length_statistics(full.lengths, args.max_length),
        "dropped_examples": 0 if args.packing else int(full.lengths.size - docs.lengths.size),
        "training_rows": int(docs.row_lengths.size),
        "documents_per_row": round(docs.lengths.size / max(docs.row_lengths.size, 1), 2),
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_share": trained / max(tokens, 1),
        "batch_tokens": batch_total,
        "packing_efficiency": tokens / max(batch_total, 1),
        "batches_per_epoch": None if sampled else batches,
        "optimizer_steps_per_epoch": None if sampled else math.ceil(batches / args.gradient_accumulation_steps),
    }
    counts = {
        "documents": int(docs.lengths.size),
        "untrained_documents": int((docs.count(docs.trained) == 0).sum()),
        "intact_documents": int(intact.sum()),
        "intact_without_stop": int((intact & ~stop_trained).sum()),
    }
    return statistics, counts


def vision_statistics(ctx: Context) -> tuple[dict[str, Any], dict[str, int]]:
    """Statistics of the first VISION_SAMPLE rows, collated by TRL's vision collator without max_length."""
    import numpy as np

    trainer, args = ctx.trainer, ctx.trainer.args
    whole = dataclasses.replace(trainer.data_collator, max_length=None)
    rows = list(ctx.raw_train.take(VISION_SAMPLE))
    image_id, max_length = image_token_id(trainer), args.max_length
    stop_id = ctx.tokenizer.convert_tokens_to_ids(ctx.stop) if ctx.stop else -1
    names = ("untrained_documents", "intact_documents", "intact_without_stop", "image_cuts", "trained_image_tokens")
    lengths, counts = [], dict.fromkeys(names, 0)
    tokens = trained = 0
    for row in rows:
        batch = whole([dict(row)])
        length = int(batch["attention_mask"][0].sum())
        ids, labels = batch["input_ids"][0][:length], batch["labels"][0][: min(length, max_length or length)]
        lengths.append(length)
        images = (ids == image_id).nonzero().flatten()
        if max_length is not None and images.numel() and int(images.max()) >= max_length:
            counts["image_cuts"] += 1
        targets = labels[1:][labels[1:] != -100]
        tokens, trained = tokens + len(labels), trained + len(targets)
        counts["trained_image_tokens"] += int((targets == image_id).sum())
        counts["untrained_documents"] += int(len(targets) == 0)
        if len(labels) == length:
            counts["intact_documents"] += 1
            counts["intact_without_stop"] += int(not (targets == stop_id).any())
    sized = hasattr(ctx.raw_train, "__len__")
    batches = len(trainer.get_train_dataloader()) if sized else None
    statistics = {
        "examples": len(ctx.raw_train) if sized else None,
        "sampled": True,
        "sample": len(rows),
        **length_statistics(np.array(lengths), max_length),
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_share": trained / max(tokens, 1),
        "batches_per_epoch": batches,
        "optimizer_steps_per_epoch": None
        if batches is None
        else math.ceil(batches / args.gradient_accumulation_steps),
    }
    return statistics, {"documents": len(rows), **counts}
