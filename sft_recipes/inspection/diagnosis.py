"""What the model would learn wrong from the prepared data (truncation, stop token, loss mask), as problems `inspect`
and `validate` both report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sft_recipes.errors import Problem
from sft_recipes.inspection.meta_trainer import is_vision

if TYPE_CHECKING:
    from sft_recipes.inspection.meta_trainer import Context


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
