"""What the prepared training data holds (documents, lengths, trained tokens, batches) and what the model would learn
wrong from it (truncation, stop token, loss mask), as problems `inspect` and `validate` both report."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sft_recipes.errors import Problem
from sft_recipes.inspection.meta_trainer import image_token_id, is_vision, prepare_whole

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


@dataclass
class Findings:
    problems: list[Problem] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # what was verified and holds

    def warn(self, where: str, message: str, fix: str = "", severity: str = "warning") -> None:
        self.problems.append(Problem(where, message, fix, severity))


def diagnose(ctx: Context, statistics: dict[str, Any], counts: dict[str, int]) -> tuple[list[Problem], list[str]]:
    found = Findings()
    _length_problems(found, ctx, statistics, counts)
    _stop_problems(found, ctx, counts)
    _mask_problems(found, ctx, statistics, counts)
    if is_vision(ctx.trainer):
        _vision_problems(found, ctx, statistics, counts)
    return found.problems, found.checks


def _length_problems(found: Findings, ctx: Context, statistics: dict[str, Any], counts: dict[str, int]) -> None:
    args = ctx.trainer.args
    untrained, documents = counts["untrained_documents"], counts["documents"]
    if untrained:
        found.warn(
            "data",
            f"{untrained} of {documents} documents have no trained token: they cost compute and teach nothing",
            "drop them, or raise max_length if truncation left only their prompt",
            "error" if untrained == documents else "warning",
        )
    if statistics.get("dropped_examples"):
        found.warn(
            "max_length",
            f"TRL drops {_count(statistics['dropped_examples'], 'example')} left with no trained token after "
            f"truncation to {args.max_length}",
            "raise max_length, or shorten their prompts",
            "error" if statistics["dropped_examples"] == statistics["examples"] else "warning",
        )
    truncated = statistics["truncated_examples"]
    if truncated:
        lengths, sample = statistics["tokens_per_example"], statistics.get("sample")
        which = f"{truncated} of the first {sample} examples" if sample else _count(truncated, "example")
        outcome, keep = truncation_outcome(args)
        found.warn(
            "max_length",
            f"{which} ({statistics['truncated_share']:.1%}) {'is' if truncated == 1 else 'are'} longer than "
            f"max_length {args.max_length}: {outcome}",
            f"raise max_length (p95 is {lengths['p95']} tokens, max {lengths['max']}), filter long examples{keep}",
        )


def truncation_outcome(args: Any) -> tuple[str, str]:
    """What TRL 1.16 does with an example over max_length, and the advice that keeps its text."""
    split = "packing_strategy: bfd_split (packing: true), which keeps the overflow as separate documents"
    if not args.packing:
        kept = "start" if args.truncation_mode == "keep_start" else "end"
        lost = "the rest, EOS included," if kept == "start" else "the start (prompt and system turn)"
        return f"TRL keeps its {kept} and drops {lost} which is never trained", f", or {split}"
    if args.packing_strategy == "bfd":
        return (
            "`bfd` packing (TRL's default) truncates it to its first max_length tokens: the rest, EOS included, is "
            "never trained",
            f", or {split}",
        )
    if args.packing_strategy == "bfd_split":
        return "`bfd_split` packing splits it: the overflow is trained as a separate document, without its start", ""
    return "`wrapped` packing cuts it across rows with no document boundary: every token is kept, context is not", ""


def _stop_problems(found: Findings, ctx: Context, counts: dict[str, int]) -> None:
    """The model learns to stop only if each document trains its stop token and generation stops at it; with pad ==
    eos (the mark of a base model's tokenizer, #16) either failure is an error."""
    tokenizer, stop, args = ctx.tokenizer, ctx.stop, ctx.trainer.args
    severity = "error" if tokenizer.pad_token is not None and tokenizer.pad_token == tokenizer.eos_token else "warning"
    pad_note = f" (pad == eos {tokenizer.eos_token!r})" if severity == "error" else ""
    if stop and counts["intact_without_stop"]:
        fix = (
            f"put {stop} inside the template's {{% generation %}} block"
            if args.assistant_only_loss
            else f"make sure every example ends with {stop}"
        )
        if tokenizer.pad_token == stop:
            fix += f"; the pad token is also {stop}: mask padding by position (attention mask), never by token id"
        found.warn(
            "loss mask",
            f"{counts['intact_without_stop']} of {counts['intact_documents']} whole documents never train the stop "
            f"token {stop}: the model will not learn to stop{pad_note}",
            fix,
            severity,
        )
    elif stop and counts["intact_documents"]:
        found.checks.append(f"stop token {stop} trained in all {counts['intact_documents']} whole documents")
        if tokenizer.pad_token == stop:
            found.checks.append(f"pad token = {stop}, yet it stays trained: TRL masks padding by position, not by id")
    if not (ctx.conversational and ctx.end_of_turn):
        return
    stops = generation_eos_ids(ctx)
    if tokenizer.convert_tokens_to_ids(ctx.end_of_turn) in stops:
        found.checks.append(f"generation stops at {ctx.end_of_turn}, the template's end of turn")
        return
    names = ", ".join(sorted(str(tokenizer.convert_ids_to_tokens(i)) for i in stops)) or "nothing"
    found.warn(
        "eos_token",
        f"the chat template ends assistant turns with {ctx.end_of_turn} but generation stops at {names}: the "
        f"fine-tuned model will run on past its answer{pad_note}",
        f"set eos_token: {ctx.end_of_turn}",
        severity,
    )


def generation_eos_ids(ctx: Context) -> set[int]:
    """The ids generation stops at after `train`: generation_config's EOS ids plus the tokenizer's (train adds it)."""
    from transformers import GenerationConfig

    model_args = ctx.recipe.model
    try:
        eos = GenerationConfig.from_pretrained(
            model_args.model_name_or_path, revision=model_args.model_revision, cache_dir=model_args.cache_dir
        ).eos_token_id
    except OSError:
        eos = ctx.trainer.model.config.get_text_config().eos_token_id
    ids = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    return ids | ({ctx.tokenizer.eos_token_id} if ctx.tokenizer.eos_token_id is not None else set())


def _mask_problems(found: Findings, ctx: Context, statistics: dict[str, Any], counts: dict[str, int]) -> None:
    from trl.chat_template_utils import has_generation_markers

    trainer, args = ctx.trainer, ctx.trainer.args
    if args.assistant_only_loss and trainer.chat_template is not None:
        found.warn(
            "chat_template_path",
            "the chat template has no {% generation %} markers: TRL trains with its own marked copy of it",
            "ship the marked template (chat_template_path) so training and inference render alike",
        )
    elif args.assistant_only_loss and has_generation_markers(getattr(trainer.processing_class, "chat_template", "")):
        found.checks.append("the chat template has {% generation %} markers: only assistant turns are trained")
    elif loss_scope(ctx) == "completion only":
        found.checks.append("prompt-completion data: only the completions are trained (completion_only_loss)")
    elif ctx.conversational and "prompt" in ctx.first:
        found.warn(
            "completion_only_loss",
            "false: the loss also trains the prompts (their user and system turns), so the model learns to write "
            "prompts",
            "unset completion_only_loss (TRL then trains prompt-completion data on the completions only)",
        )
    elif ctx.conversational:
        found.warn(
            "assistant_only_loss",
            "off: the loss also trains the user and system turns, so the model learns to write prompts",
            "set assistant_only_loss: true (needs {% generation %} markers in the chat template)",
        )
    if trainer.padding_free and counts["documents"] > statistics.get("training_rows", counts["documents"]):
        found.checks.append("packed documents are isolated: position_ids restart at 0 for each document")


def loss_scope(ctx: Context) -> str:
    """Which tokens the loss trains, as TRL decides it (completion_only_loss is its default for prompt-completion)."""
    if ctx.trainer.args.assistant_only_loss:
        return "assistant turns only"
    if ctx.trainer.completion_only_loss and "prompt" in ctx.first:
        return "completion only"
    return "every token"


def _vision_problems(found: Findings, ctx: Context, statistics: dict[str, Any], counts: dict[str, int]) -> None:
    args = ctx.trainer.args
    if counts.get("trained_image_tokens"):
        found.warn(
            "loss mask",
            f"{counts['trained_image_tokens']} image placeholder tokens in the first {statistics['sample']} examples "
            "are trained targets (TRL's vision collator masks only padding)",
            "set assistant_only_loss: true to train on the replies only",
        )
    if args.max_length is not None:
        cuts = counts["image_cuts"]
        found.warn(
            "max_length",
            f"{cuts} of the first {statistics['sample']} examples would be cut inside their image tokens at "
            f"max_length {args.max_length}, leaving image features without their tokens (the processor fails "
            "mid-run); `train` refuses max_length for vision-language models",
            "set max_length: null for vision-language data",
            "error" if cuts else "warning",
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
