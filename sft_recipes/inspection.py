"""Show the first training rows exactly as the model sees them (template, truncation, packing, loss mask), with
statistics and warnings about what the model would learn wrong.

Usage: sft-recipes inspect --config recipes/<model>/<method>.yaml [-n 3] [--format text|html|json] [--out PATH]

Nothing here re-implements TRL: the real `trl.SFTTrainer` is built around the model's architecture on the meta
device (no weights read or allocated), so its own dataset preparation, collator and sampler produce what is shown.
Its `datasets.map` steps are cached: a later `train` of the same recipe reads the tokenized data back.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import html
import json
import logging
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sft_recipes.arguments import command_parser, parse_with_recipe
from sft_recipes.errors import Problem, RecipeError

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np

FORMATS = ("text", "html", "json")
TERMINAL_TOKENS = 1200  # per row in the terminal; html and json show every token
VISION_SAMPLE = 64  # vision rows are processed on the fly (images): their statistics come from the first ones
STREAMING_SAMPLE = 1000  # a stream has no end: its statistics come from its head


@dataclass
class Piece:
    """One displayed token (or a run of image/pad tokens): its text and whether the loss trains on it."""

    id: int
    text: str
    trained: bool
    kind: str = "text"  # text | special | image | pad
    count: int = 1


@dataclass
class Example:
    """One row of a training batch; a packed row holds several documents."""

    position: int
    documents: list[int]  # tokens per document
    pieces: list[Piece]
    tokens: int = 0
    trained: int = 0
    padding: int = 0  # padding this row gets in its batch
    cut: bool = False  # max_length long: an example was (probably) cut to fit
    cut_at: int | None = None  # vision rows are shown whole: where max_length would cut them


@dataclass
class Inspection:
    recipe: str
    settings: dict[str, Any]
    statistics: dict[str, Any]
    examples: list[Example]
    problems: list[Problem] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # what was verified and holds

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "settings": self.settings,
            "statistics": self.statistics,
            "problems": [dataclasses.asdict(p) for p in self.problems],
            "checks": self.checks,
            "examples": [dataclasses.asdict(e) for e in self.examples],
        }


@dataclass
class Context:
    """The trainer and what the checks need to know about the data and its template."""

    recipe: Any
    trainer: Any
    raw_train: Any  # the training data before TRL's preparation
    first: dict[str, Any]  # its first row
    tokenizer: Any
    end_of_turn: str | None  # the token closing an assistant turn in the template TRL renders with
    stop: str | None  # the token each document should end on: end of turn (conversations) or EOS

    @property
    def conversational(self) -> bool:
        from trl.data_utils import is_conversational

        return is_conversational(self.first) or "conversations" in self.first


# -- the trainer --------------------------------------------------------------------------------------------------


def build_meta_model(model_args: Any, training_args: Any, kind: str, config_dict: dict[str, Any] | None = None) -> Any:
    """The model's architecture with every tensor on the meta device: SFTTrainer needs a model object, never its
    weights, to prepare data (a 70B config costs nothing here). From config_dict when given (e.g. an offline
    snapshot), else from the model's config.json."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT

    if config_dict is not None and config_dict.get("model_type"):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        config = CONFIG_MAPPING[config_dict["model_type"]].from_dict(config_dict)
    else:
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            cache_dir=model_args.cache_dir,
            trust_remote_code=training_args.trust_remote_code,
        )
    auto_class = AutoModelForImageTextToText if kind == IMAGE_TEXT_TO_TEXT else AutoModelForCausalLM
    with torch.device("meta"), _outside_zero3_init():
        return auto_class.from_config(config, trust_remote_code=training_args.trust_remote_code)


@contextlib.contextmanager
def _outside_zero3_init() -> Iterator[None]:
    """Under an accelerate ZeRO-3 launch, from_config would partition the skeleton with deepspeed.zero.Init, which
    cannot copy meta tensors: step out of transformers' global DeepSpeed config for the skeleton only."""
    from transformers.integrations import deepspeed

    saved = deepspeed._hf_deepspeed_config_weak_ref
    deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        deepspeed._hf_deepspeed_config_weak_ref = saved


def inspection_args(training_args: Any, output_dir: str) -> Any:
    """The recipe's SFTConfig with everything that does not shape the data off (hub push, trackers, evaluation,
    dataloader workers, distributed engines), and the meta model left where it is."""
    args = dataclasses.replace(
        training_args,
        output_dir=output_dir,
        report_to="none",
        push_to_hub=False,
        eval_strategy="no",
        dataloader_num_workers=0,
        deepspeed=None,
        fsdp=None,
        torch_compile=False,
    )
    keep_in_place = type(type(args).__name__, (type(args),), {"place_model_on_device": property(lambda self: False)})
    args.__class__ = keep_in_place
    return args


class _Collect(logging.Handler):
    """TRL's warnings while it prepares the data (e.g. a prompt that is not a prefix of its completion)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() not in self.messages:
            self.messages.append(record.getMessage())


def build_trainer(recipe: Any, output_dir: str) -> tuple[Any, Any, list[str]]:
    """(trl.SFTTrainer on a meta model with the data prepared, train data before preparation, TRL's warnings)."""
    from trl import SFTTrainer

    from sft_recipes.data.loading import load_training_data
    from sft_recipes.model.kind import detect_model_kind, load_config_dict
    from sft_recipes.model.tokenizer import load_processing_class

    model_args, training_args = recipe.model, recipe.training
    kind = detect_model_kind(load_config_dict(model_args, training_args.trust_remote_code), model_args.model_kind)
    processing_class = load_processing_class(model_args, training_args, kind)
    train, _ = load_training_data(recipe.script, recipe.mixture, training_args)
    model = build_meta_model(model_args, training_args, kind)
    collect = _Collect()
    logging.getLogger("trl").addHandler(collect)
    try:
        trainer = SFTTrainer(
            model=model,
            args=inspection_args(training_args, output_dir),
            train_dataset=train,
            processing_class=processing_class,
        )
    except (ValueError, RuntimeError, TypeError) as err:
        raise RecipeError(
            Problem("SFTTrainer", f"TRL refuses this recipe: {err}", "training would fail the same way")
        ) from None
    finally:
        logging.getLogger("trl").removeHandler(collect)
    return trainer, train, collect.messages


# -- the first rows -----------------------------------------------------------------------------------------------


def first_rows(trainer: Any, n: int) -> tuple[list[dict[str, Any]], list[int]]:
    """The first `n` rows the training loop gets, through the trainer's own sampler and collator, and the padding
    each gets in its batch."""
    collator = trainer.data_collator
    received: list[dict[str, Any]] = []
    padding: list[int] = []

    def capture(examples: list[dict[str, Any]]) -> Any:
        received.extend(dict(e) for e in examples)
        return collator(examples)

    trainer.data_collator = capture
    try:
        for batch in trainer.get_train_dataloader():
            mask = batch.get("attention_mask")  # absent when padding-free: one flat row, no padding
            if mask is None:
                padding += [0] * (len(received) - len(padding))
            else:
                padding += [int(mask.shape[1] - m.sum()) for m in mask]
            if len(received) >= n:
                break
    finally:
        trainer.data_collator = collator
    return received[:n], padding[:n]


def token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token's text; a character split over several byte tokens is shown on the last of them."""
    texts: list[str] = []
    pending: list[int] = []
    for token_id in ids:
        pending.append(token_id)
        text = tokenizer.decode(pending, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if "\ufffd" in text and len(pending) < 4:
            texts.append("")
            continue
        texts.append(text)
        pending = []
    return texts


def special_ids(tokenizer: Any) -> set[int]:
    return set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())


def image_token_id(trainer: Any) -> int | None:
    """The id the model swaps for image features (from the config: a processor's `image_token` can be the
    begin-of-image marker, as in Gemma 3)."""
    config = trainer.model.config
    token_id = getattr(config, "image_token_id", None)
    return getattr(config, "image_token_index", None) if token_id is None else token_id


def build_example(ctx: Context, position: int, row: dict[str, Any], padding: int) -> Example:
    """A displayable row, collated alone by the trainer's collator (the same tokens and labels it has in its batch):
    loss flags, documents from the packed lengths, image and pad runs collapsed."""
    trainer, tokenizer, max_length = ctx.trainer, ctx.tokenizer, ctx.trainer.args.max_length
    alone = trainer.data_collator([dict(row)])
    ids, labels = alone["input_ids"][0].tolist(), alone["labels"][0].tolist()
    if "attention_mask" in alone:
        real = int(alone["attention_mask"][0].sum())
        ids, labels = ids[:real], labels[:real]
    documents = list(row.get("seq_lengths") or [len(ids)])
    ids, labels = ids[: sum(documents)], labels[: sum(documents)]
    starts = _starts(documents)
    trained = [label != -100 and i not in starts for i, label in enumerate(labels)]
    cut_at = max_length if trainer._is_vision_dataset and max_length is not None and len(ids) > max_length else None
    specials, image_id = special_ids(tokenizer), image_token_id(trainer)
    pieces: list[Piece] = []
    texts = token_texts(tokenizer, ids)
    for index, (token_id, text, is_trained) in enumerate(zip(ids, texts, trained, strict=True)):
        if token_id == image_id and pieces and pieces[-1].kind == "image" and index != cut_at:
            pieces[-1].count += 1
            continue
        kind = "image" if token_id == image_id else "special" if token_id in specials else "text"
        pieces.append(Piece(token_id, text, is_trained, kind))
    if padding:
        pieces.append(Piece(tokenizer.pad_token_id, tokenizer.pad_token or "", False, "pad", padding))
    cut = max_length is not None and max(documents) >= max_length
    return Example(position, documents, pieces, len(ids), sum(trained), padding, cut, cut_at)


def _starts(documents: list[int]) -> set[int]:
    return {sum(documents[:i]) for i in range(len(documents))}


# -- the template's stop token ------------------------------------------------------------------------------------


def end_of_turn_token(trainer: Any, tokenizer: Any) -> str | None:
    """The token closing an assistant turn in the template the trainer renders with (e.g. <|im_end|>): the first
    special or added token after the assistant's content."""
    template = trainer.chat_template or getattr(trainer.processing_class, "chat_template", None)
    if not template:
        return None
    answer = "Zebra quartz"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}],
            chat_template=template,
            tokenize=False,
        )
    except Exception:  # noqa: BLE001 - a template that cannot render this probe has no end token to report
        return None
    tail = tokenizer(text[text.rfind(answer) + len(answer) :], add_special_tokens=False)["input_ids"]
    specials = special_ids(tokenizer)
    return next((tokenizer.convert_ids_to_tokens(i) for i in tail if i in specials), None)


def generation_eos_ids(ctx: Context) -> set[int]:
    """The ids generation stops at after `train`: the checkpoint's generation_config EOS ids plus the tokenizer's
    EOS (train adds it; TRL's `eos_token` changes it)."""
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


# -- statistics ---------------------------------------------------------------------------------------------------


@dataclass
class Documents:
    """Every document of prepared training data as flat arrays (what the loss sees)."""

    ids: np.ndarray
    trained: np.ndarray  # per token: labelled and not its document's first token (which is never a target)
    starts: np.ndarray  # index of each document's first token
    lengths: np.ndarray  # tokens per document
    row_lengths: np.ndarray  # tokens per training row (a packed row holds several documents)

    def count(self, flags: np.ndarray) -> np.ndarray:
        """Flagged tokens per document."""
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


def _percentiles(lengths: np.ndarray) -> dict[str, int]:
    import numpy as np

    if lengths.size == 0:
        return {"min": 0, "median": 0, "p95": 0, "max": 0}
    points = {"min": 0, "median": 50, "p95": 95, "max": 100}
    return {name: int(np.percentile(lengths, q)) for name, q in points.items()}


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
    """(statistics, counts for the diagnosis) over the whole prepared training set.

    Untruncated lengths come from TRL's own preparation run again without max_length or packing: its tokenization
    has the fingerprint of the real one, so it is read back from the datasets cache."""
    from datasets import Dataset
    from trl import SFTTrainer

    trainer, raw_train = ctx.trainer, ctx.raw_train
    args, prepared = trainer.args, trainer.train_dataset
    sampled = not isinstance(prepared, Dataset)
    if sampled:
        prepared = Dataset.from_list(list(prepared.take(STREAMING_SAMPLE)))
        raw_train = Dataset.from_list(list(raw_train.take(STREAMING_SAMPLE)))
    # A copy, not dataclasses.replace: re-running TrainingArguments.__post_init__ resets the accelerator state.
    whole = copy.copy(args)
    whole.max_length, whole.packing, whole.shuffle_dataset = None, False, False
    full = documents_of(
        SFTTrainer._prepare_dataset(trainer, raw_train, trainer.processing_class, whole, False, None, "train")
    )
    docs = documents_of(prepared)
    max_length = args.max_length or math.inf
    stop_id = ctx.tokenizer.convert_tokens_to_ids(ctx.stop) if ctx.stop else -1
    intact = docs.lengths < max_length
    stop_trained = docs.count(docs.trained & (docs.ids == stop_id)) > 0
    batches, batch_total = (0, int(docs.row_lengths.sum())) if sampled else batch_tokens(trainer, docs.row_lengths)
    tokens, trained = int(docs.row_lengths.sum()), int(docs.trained.sum())
    too_long = full.lengths > max_length
    statistics = {
        "examples": int(full.lengths.size),
        "sampled": sampled,
        "tokens_per_example": _percentiles(full.lengths),
        "truncated_examples": int(too_long.sum()),
        "truncated_share": float(too_long.mean()) if too_long.size else 0.0,
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

    trainer = ctx.trainer
    whole = dataclasses.replace(trainer.data_collator, max_length=None)
    rows = list(ctx.raw_train.take(VISION_SAMPLE))
    image_id, max_length = image_token_id(trainer), trainer.args.max_length
    stop_id = ctx.tokenizer.convert_tokens_to_ids(ctx.stop) if ctx.stop else -1
    lengths, counts = (
        [],
        dict.fromkeys(
            ("untrained_documents", "intact_documents", "intact_without_stop", "image_cuts", "trained_image_tokens"), 0
        ),
    )
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
    too_long = np.array(lengths) > (max_length or math.inf)
    batches = len(trainer.get_train_dataloader()) if hasattr(ctx.raw_train, "__len__") else None
    statistics = {
        "examples": len(ctx.raw_train) if hasattr(ctx.raw_train, "__len__") else None,
        "sampled": True,
        "sample": len(rows),
        "tokens_per_example": _percentiles(np.array(lengths)),
        "truncated_examples": int(too_long.sum()),
        "truncated_share": float(too_long.mean()) if too_long.size else 0.0,
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_share": trained / max(tokens, 1),
        "batches_per_epoch": batches,
        "optimizer_steps_per_epoch": None
        if batches is None
        else math.ceil(batches / trainer.args.gradient_accumulation_steps),
    }
    return statistics, {"documents": len(rows), **counts}


# -- diagnosis ----------------------------------------------------------------------------------------------------


def diagnose(ctx: Context, statistics: dict[str, Any], counts: dict[str, int]) -> tuple[list[Problem], list[str]]:
    """Warnings about what the model would learn wrong, and the checks that hold."""
    from trl.chat_template_utils import has_generation_markers

    trainer, tokenizer, stop = ctx.trainer, ctx.tokenizer, ctx.stop
    args = trainer.args
    problems: list[Problem] = []
    checks: list[str] = []

    def warn(where: str, message: str, fix: str = "", severity: str = "warning") -> None:
        problems.append(Problem(where, message, fix, severity))

    if counts["untrained_documents"]:
        warn(
            "data",
            f"{counts['untrained_documents']} of {counts['documents']} documents have no trained token: they cost "
            "compute and teach nothing",
            "drop them, or raise max_length if truncation left only their prompt",
        )
    if statistics.get("dropped_examples"):
        warn(
            "max_length",
            f"TRL drops {_count(statistics['dropped_examples'], 'example')} left with no trained token after "
            f"truncation to {args.max_length}",
            "raise max_length, or shorten their prompts",
        )
    if statistics["truncated_examples"]:
        lengths = statistics["tokens_per_example"]
        cut = "split" if args.packing and args.packing_strategy == "bfd_split" else f"cut ({args.truncation_mode})"
        verb = "is" if statistics["truncated_examples"] == 1 else "are"
        warn(
            "max_length",
            f"{_count(statistics['truncated_examples'], 'example')} ({statistics['truncated_share']:.1%}) {verb} "
            f"longer than max_length {args.max_length} and {verb} {cut}: what is cut off, EOS included, is never "
            "trained",
            f"raise max_length (p95 is {lengths['p95']} tokens, max {lengths['max']}), or filter long examples",
        )
    if stop and counts["intact_without_stop"]:
        fix = (
            f"put {stop} inside the template's {{% generation %}} block"
            if args.assistant_only_loss
            else f"make sure every example ends with {stop}"
        )
        if tokenizer.pad_token == stop:
            fix += f"; the pad token is also {stop}: mask padding by position (attention mask), never by token id"
        warn(
            "loss mask",
            f"{counts['intact_without_stop']} of {counts['intact_documents']} whole documents never train the stop "
            f"token {stop}: the model will not learn to stop",
            fix,
        )
    elif stop and counts["intact_documents"]:
        checks.append(f"stop token {stop} trained in all {counts['intact_documents']} whole documents")
        if tokenizer.pad_token == stop:
            checks.append(f"pad token = {stop}, yet it stays trained: TRL masks padding by position, not by id")
    if ctx.conversational and ctx.end_of_turn:
        stops = generation_eos_ids(ctx)
        if tokenizer.convert_tokens_to_ids(ctx.end_of_turn) in stops:
            checks.append(f"generation stops at {ctx.end_of_turn}, the template's end of turn")
        else:
            names = ", ".join(sorted(str(tokenizer.convert_ids_to_tokens(i)) for i in stops)) or "nothing"
            warn(
                "eos_token",
                f"the chat template ends assistant turns with {ctx.end_of_turn} but generation stops at {names}: "
                "the fine-tuned model will run on past its answer",
                f"set eos_token: {ctx.end_of_turn}",
            )
    if args.assistant_only_loss and trainer.chat_template is not None:
        warn(
            "chat_template_path",
            "the chat template has no {% generation %} markers: TRL trains with its own marked copy of it",
            "ship the marked template (chat_template_path) so training and inference render alike",
        )
    elif args.assistant_only_loss and has_generation_markers(getattr(trainer.processing_class, "chat_template", "")):
        checks.append("the chat template has {% generation %} markers: only assistant turns are trained")
    elif ctx.conversational:
        warn(
            "assistant_only_loss",
            "off: the loss also trains the user and system turns, so the model learns to write prompts",
            "set assistant_only_loss: true (needs {% generation %} markers in the chat template)",
        )
    if trainer.padding_free and counts["documents"] > statistics.get("training_rows", counts["documents"]):
        checks.append("packed documents are isolated: position_ids restart at 0 for each document")
    if counts.get("trained_image_tokens"):
        warn(
            "loss mask",
            f"{counts['trained_image_tokens']} image placeholder tokens in the first {statistics['sample']} examples "
            "are trained targets (TRL's vision collator masks only padding)",
            "set assistant_only_loss: true to train on the replies only",
        )
    if trainer._is_vision_dataset and args.max_length is not None:
        cuts = counts["image_cuts"]
        warn(
            "max_length",
            f"{cuts} of the first {statistics['sample']} examples would be cut inside their image tokens at "
            f"max_length {args.max_length}, leaving image features without their tokens (the processor fails "
            "mid-run); `train` refuses max_length for vision-language models",
            "set max_length: null for vision-language data",
            "error" if cuts else "warning",
        )
    return problems, checks


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# -- the command --------------------------------------------------------------------------------------------------


def inspect_recipe(recipe: Any, n: int = 3) -> Inspection:
    """Prepare the recipe's training data exactly as `train` would and describe its first `n` rows."""
    with tempfile.TemporaryDirectory(prefix="sft-recipes-inspect-") as output_dir, _quiet_datasets():
        trainer, raw_train, trl_warnings = build_trainer(recipe, output_dir)
        if trainer._is_vision_dataset and trainer.args.max_length is not None:
            # The processor raises on rows cut inside their image tokens: show them whole, the cut marked.
            trainer.data_collator = dataclasses.replace(trainer.data_collator, max_length=None)
        tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        end_of_turn = end_of_turn_token(trainer, tokenizer)
        ctx = Context(recipe, trainer, raw_train, next(iter(raw_train)), tokenizer, end_of_turn, None)
        ctx.stop = end_of_turn if ctx.conversational and end_of_turn else tokenizer.eos_token
        rows, padding = first_rows(trainer, n)
        examples = [build_example(ctx, i, row, pad) for i, (row, pad) in enumerate(zip(rows, padding, strict=True))]
        statistics, counts = vision_statistics(ctx) if trainer._is_vision_dataset else text_statistics(ctx)
        problems, checks = diagnose(ctx, statistics, counts)
        problems = [Problem("TRL", message, severity="warning") for message in trl_warnings] + problems
        settings = describe_settings(ctx)
    return Inspection(recipe.path or "recipe", settings, statistics, examples, problems, checks)


def describe_settings(ctx: Context) -> dict[str, Any]:
    trainer, args = ctx.trainer, ctx.trainer.args
    if args.assistant_only_loss:
        loss = "assistant turns only"
    elif trainer.completion_only_loss and "prompt" in ctx.first:
        loss = "completion only"
    else:
        loss = "every token"
    if args.chat_template_path:
        template = args.chat_template_path
    elif trainer.chat_template is not None:
        template = "TRL's training copy of the tokenizer's template"
    else:
        template = "the tokenizer's own" if getattr(trainer.processing_class, "chat_template", None) else "none"
    return {
        "model": ctx.recipe.model.model_name_or_path,
        "kind": "image_text_to_text" if trainer._is_vlm else "causal_lm",
        "chat template": template,
        "end of turn": ctx.end_of_turn,
        "eos / pad": f"{ctx.tokenizer.eos_token} / {ctx.tokenizer.pad_token}",
        "max_length": args.max_length,
        "truncation": args.truncation_mode,
        "packing": args.packing_strategy if args.packing else "off",
        "padding-free": bool(trainer.padding_free),
        "loss on": loss,
        "batch": f"{args.per_device_train_batch_size} per device x {args.gradient_accumulation_steps} accumulation",
    }


@contextlib.contextmanager
def _quiet_datasets() -> Any:
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("inspect", __doc__, recipe=True)
    parser.add_argument("-n", type=_positive, default=3, help="number of examples to show (default 3)")
    parser.add_argument("--format", choices=FORMATS, default="text", help="text (terminal), html or json")
    parser.add_argument("--out", help="write there instead of stdout")
    return parser


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of rows, got {value!r}")
    return int(value)


def main(argv: list[str]) -> int:
    from rich.console import Console

    from sft_recipes.config import parse_recipe

    args, rest = parse_with_recipe(build_parser(), argv)
    n, fmt, out = args.n, args.format, args.out
    recipe = parse_recipe(rest)
    console = Console(stderr=True)
    spinner = "Preparing the data with TRL's SFTTrainer (meta-device model, no weights)"
    with console.status(spinner) if console.is_terminal else contextlib.nullcontext():
        inspection = inspect_recipe(recipe, n)
    if fmt == "text":
        with open(out, "w", encoding="utf-8") if out else contextlib.nullcontext(sys.stdout) as handle:
            render_text(inspection, file=handle)
    else:
        text = render_html(inspection) if fmt == "html" else json.dumps(inspection.to_dict(), indent=2) + "\n"
        if out is None:
            sys.stdout.write(text)
        else:
            Path(out).write_text(text, encoding="utf-8")
    if out:
        print(f"wrote {out}", file=sys.stderr)
    return 0


# -- rendering ----------------------------------------------------------------------------------------------------

TRAINED = ("#1b5e20", "#c8f7c5", "#a4ecaf")  # text colour, then two backgrounds alternating so tokens show apart
SPECIAL, MASKED, IMAGE = "#8e24aa", "#8a8a8a", "#00838f"


def _positioned(example: Example) -> list[tuple[int, Piece]]:
    out, position = [], 0
    for piece in example.pieces:
        out.append((position, piece))
        position += piece.count
    return out


def _piece_text(piece: Piece) -> str:
    if piece.kind == "image":
        return f"⟨image ×{piece.count}⟩"
    if piece.kind == "pad":
        return f"⟨pad {piece.text} ×{piece.count}⟩"
    return piece.text.replace("\t", "→").replace("\n", "↵\n")


def example_title(example: Example, markup: bool = True) -> str:
    share = example.trained / max(example.tokens, 1)
    parts = [f"row {example.position + 1}", f"{example.tokens} tokens", f"{example.trained} trained ({share:.0%})"]
    if len(example.documents) > 1:
        parts.append(f"{len(example.documents)} documents packed")
    if example.padding:
        parts.append(f"+{example.padding} padding")
    if example.cut:
        parts.append("[yellow]cut at max_length[/]" if markup else "cut at max_length")
    return " · ".join(parts)


def statistics_rows(statistics: dict[str, Any]) -> list[tuple[str, str]]:
    s, lengths = statistics, statistics["tokens_per_example"]
    sample = f" (first {s['sample']})" if s.get("sample") else " (head of the stream)" if s.get("sampled") else ""
    rows = [
        ("examples", f"{s['examples'] if s['examples'] is not None else '?'}{sample}"),
        ("tokens per example", " · ".join(f"{k} {v}" for k, v in lengths.items())),
        ("truncated", f"{s['truncated_examples']} ({s['truncated_share']:.1%})"),
    ]
    if s.get("dropped_examples"):
        rows.append(("dropped", f"{s['dropped_examples']} (nothing left to train)"))
    if "training_rows" in s:
        rows.append(("training rows", f"{s['training_rows']} ({s['documents_per_row']} documents per row)"))
    rows.append(("tokens trained", f"{s['trained_tokens']} of {s['tokens']} ({s['trained_share']:.1%})"))
    if "packing_efficiency" in s:
        rows.append(("packing efficiency", f"{s['packing_efficiency']:.1%} of batch tokens are real tokens"))
    if s.get("batches_per_epoch") is not None:
        steps = f"{s['batches_per_epoch']} per process → {s['optimizer_steps_per_epoch']} optimizer steps"
        rows.append(("batches per epoch", steps))
    return rows


def render_text(inspection: Inspection, file: Any = None, width: int | None = None) -> None:
    """The terminal view (rich): settings, statistics, problems and checks, then each row, trained tokens on green."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = Console(file=file, width=width, highlight=False)
    settings = Table.grid(padding=(0, 2))
    for key, value in inspection.settings.items():
        settings.add_row(Text(key, style="bold"), str(value))
    console.print(Panel(settings, title=f"[bold]sft-recipes inspect[/] {inspection.recipe}", border_style="blue"))
    statistics = Table.grid(padding=(0, 2))
    for key, value in statistics_rows(inspection.statistics):
        statistics.add_row(Text(key, style="bold"), value)
    console.print(Panel(statistics, title="statistics", title_align="left", border_style="blue"))
    for p in inspection.problems:
        line = Text()
        line.append(
            f"{'✗' if p.severity == 'error' else '⚠'} {p.where}: ",
            style="bold red" if p.severity == "error" else "bold yellow",
        )
        line.append(p.message)
        if p.fix:
            line.append(f"\n  fix: {p.fix}", style="dim")
        console.print(line)
    for check in inspection.checks:
        console.print(Text(f"✓ {check}", style="green"))
    legend = Text("\n")
    for label, style in [
        (" trained ", f"{TRAINED[0]} on {TRAINED[1]}"),
        ("  masked  ", MASKED),
        ("<|special|>  ", f"bold {SPECIAL}"),
        ("⟨image ×n⟩  ", f"bold {IMAGE}"),
        ("── document ──", "bold yellow"),
    ]:
        legend.append(label, style=style)
    console.print(legend)
    for example in inspection.examples:
        console.print(
            Panel(example_text(example), title=example_title(example), title_align="left", border_style="grey50")
        )


def example_text(example: Example, limit: int = TERMINAL_TOKENS) -> Any:
    from rich.text import Text

    text = Text()
    starts = _starts(example.documents) if len(example.documents) > 1 else set()
    for index, (position, piece) in enumerate(_positioned(example)):
        if position in starts:
            document = sorted(starts).index(position)
            text.append(
                ("\n" if document else "") + f"── document {document + 1} · {example.documents[document]} tokens ──\n",
                style="bold yellow",
            )
        if position == example.cut_at:
            text.append(f"✂ max_length {example.cut_at} cuts here ✂", style="bold white on red")
        if position >= limit:
            text.append(f"\n… {example.tokens - position} more tokens (--format html shows them all)", style="dim")
            break
        background = f" on {TRAINED[1 + index % 2]}" if piece.trained else ""
        style = {"special": f"bold {SPECIAL}", "image": f"bold {IMAGE}", "pad": f"dim {MASKED}"}.get(
            piece.kind, TRAINED[0] if piece.trained else MASKED
        )
        text.append(_piece_text(piece), style=style + (background if piece.kind != "pad" else ""))
    text.rstrip()  # the last newline would leave an empty line in the panel
    return text


HTML_STYLE = f"""
body {{ font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.3em; }} h2 {{ font-size: 1.05em; margin-top: 1.6em; }}
td {{ padding: 2px 14px 2px 0; vertical-align: top; }} td:first-child {{ font-weight: 600; white-space: nowrap; }}
.problem {{ margin: 4px 0; }} .error {{ color: #b71c1c; }} .warning {{ color: #9a6700; }}
.fix {{ color: #666; margin-left: 1.5em; }} .check {{ color: #2e7d32; }}
.example {{ border: 1px solid #ccc; border-radius: 6px; margin: 1em 0; }}
.example h3 {{ margin: 0; padding: 6px 10px; background: #f3f3f3; font-size: .9em; }}
.tokens {{ font: 13px/1.55 ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; word-break: break-all;
  padding: 10px; }}
.t {{ color: {MASKED}; }} .tr {{ color: {TRAINED[0]}; background: {TRAINED[1]}; }}
.tr.odd {{ background: {TRAINED[2]}; }}
.sp {{ color: {SPECIAL}; font-weight: 700; }} .img {{ color: {IMAGE}; font-weight: 700; }} .pad {{ color: #bbb; }}
.cut {{ color: #fff; background: #c62828; font-weight: 700; }}
.doc {{ display: block; color: #8d6e00; font-weight: 700; border-top: 2px dashed #e0b000; margin: 6px 0 2px; }}
.legend span {{ margin-right: 1.2em; padding: 1px 4px; }}
"""


def render_html(inspection: Inspection) -> str:
    """A self-contained HTML page with the colours of the terminal view."""
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>sft-recipes inspect {esc(inspection.recipe)}"
        f"</title><style>{HTML_STYLE}</style></head><body><h1>sft-recipes inspect <code>{esc(inspection.recipe)}"
        "</code></h1><table>",
        *(f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in inspection.settings.items()),
        "</table><h2>Statistics</h2><table>",
        *(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in statistics_rows(inspection.statistics)),
        "</table><h2>Checks</h2>",
    ]
    for p in inspection.problems:
        fix = f"<div class='fix'>fix: {esc(p.fix)}</div>" if p.fix else ""
        mark = "✗" if p.severity == "error" else "⚠"
        parts.append(f"<div class='problem {p.severity}'>{mark} <b>{esc(p.where)}</b>: {esc(p.message)}{fix}</div>")
    parts += [f"<div class='check'>✓ {esc(c)}</div>" for c in inspection.checks]
    parts.append(
        "<h2>First rows of training</h2><p class='legend tokens'><span class='tr'>trained</span>"
        "<span class='t'>masked</span><span class='sp'>&lt;|special|&gt;</span><span class='img'>⟨image ×n⟩</span>"
        "<span class='doc' style='display:inline'>document</span></p>"
    )
    for example in inspection.examples:
        title = esc(example_title(example, markup=False))
        parts.append(f"<div class='example'><h3>{title}</h3><div class='tokens'>{example_html(example)}</div></div>")
    parts.append("</body></html>\n")
    return "".join(parts)


def example_html(example: Example) -> str:
    out = []
    starts = sorted(_starts(example.documents)) if len(example.documents) > 1 else []
    for index, (position, piece) in enumerate(_positioned(example)):
        if position in starts:
            document = starts.index(position)
            out.append(f"<span class='doc'>document {document + 1} · {example.documents[document]} tokens</span>")
        if position == example.cut_at:
            out.append(f"<span class='cut'>✂ max_length {example.cut_at} cuts here ✂</span>")
        classes = ["tr" if piece.trained else "t"] + (["odd"] if piece.trained and index % 2 else [])
        classes += {"special": ["sp"], "image": ["img"], "pad": ["pad"]}.get(piece.kind, [])
        title = f"id {piece.id} · {'trained' if piece.trained else 'masked'}"
        out.append(f"<span class='{' '.join(classes)}' title='{title}'>{html.escape(_piece_text(piece))}</span>")
    return "".join(out)
