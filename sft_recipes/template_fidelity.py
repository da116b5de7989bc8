"""Whether the template the loss is computed with renders conversations exactly as the model's own template does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CONTEXT = 48  # characters of each render shown from the first difference on
THINK = "<think>\n"
EMPTY_THINK = "<think>\n\n</think>\n\n"
MARKED_INFERENCE_FIX = (
    "train with the model's own template plus {% generation %} markers (chat_template_path), so training renders "
    "exactly what inference renders"
)

# The conversations checked unless a caller passes its own: one (role, content) pair per message.
SAMPLE_CONVERSATIONS: tuple[tuple[dict[str, str], ...], ...] = tuple(
    tuple({"role": role, "content": content} for role, content in chat)
    for chat in (
        (("user", "What is the capital of France?"), ("assistant", "Paris.")),
        (("system", "Answer in one word."), ("user", "Capital of Japan?"), ("assistant", "Tokyo.")),
        (("user", "2+2?"), ("assistant", "4."), ("user", "And 3+3?"), ("assistant", "6.")),
        (
            ("system", "Be brief."),
            ("user", "Name a colour."),
            ("assistant", "Red."),
            ("user", "Another one?"),
            ("assistant", "Blue."),
            ("user", "Last one."),
            ("assistant", "Green."),
        ),
        (
            ("user", "Think first: is 7 prime?"),
            ("assistant", "<think>\nIt has no divisors but 1 and 7.\n</think>\n\nYes."),
            ("user", "And 9?"),
            ("assistant", "No, 9 = 3 * 3."),
        ),
        (("user", "  Spaces around me  "), ("assistant", "  Trimmed or not?  ")),
    )
)


@dataclass(frozen=True)
class RenderDifference:
    """Where a conversation's training render first departs from its inference render: the model learns text it never
    sees at inference."""

    conversation: int  # index into the conversations checked
    offset: int  # first differing character
    inference: str  # the inference render from `offset` on (CONTEXT characters)
    training: str  # the training render from `offset` on
    cause: str
    fix: str

    def message(self) -> str:
        return (
            f"conversation {self.conversation}, character {self.offset}: inference renders {self.inference!r}, "
            f"training renders {self.training!r}. {self.cause}; fix: {self.fix}"
        )


def render_differences(
    processing_class: Any,
    training_template: str,
    conversations: Any = SAMPLE_CONVERSATIONS,
    inference_template: str | None = None,
) -> list[RenderDifference]:
    """Each conversation `training_template` renders unlike the inference template (the processing class's own unless
    given), with a named cause and fix; one both refuse (e.g. a system turn for Gemma 2) is no difference."""
    inference_template = inference_template or _own_template(processing_class)
    differences = []
    for index, messages in enumerate(conversations):
        messages = _typed(processing_class, list(messages))
        inference, inference_error = _render(processing_class, inference_template, messages)
        training, training_error = _render(processing_class, training_template, messages)
        if inference_error and training_error:
            continue
        if inference_error or training_error:
            which, error = ("training", training_error) if training_error else ("inference", inference_error)
            offset, fix = 0, MARKED_INFERENCE_FIX
            cause = f"only the {which} template refuses this conversation ({error})"
        elif inference != training:
            offset = _first_difference(inference, training)
            cause, fix = _explain(inference[offset:], training[offset:])
        else:
            continue
        end = offset + CONTEXT
        differences.append(RenderDifference(index, offset, inference[offset:end], training[offset:end], cause, fix))
    return differences


def trl_training_template(processing_class: Any) -> str:
    """The template SFTTrainer computes the assistant-only loss with when the recipe sets none: the processing
    class's own if it has {% generation %} markers, else TRL's marked copy (ValueError where TRL has none)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    own = _own_template(processing_class)
    if has_generation_markers(own):
        return own
    return get_training_chat_template(processing_class) or own


def _own_template(processing_class: Any) -> str:
    template = getattr(processing_class, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        raise ValueError("the processing class has no chat template to compare with; pass inference_template")
    return template


def _typed(processing_class: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Processor templates iterate over typed content parts; plain strings become one text part."""
    from transformers import ProcessorMixin

    if not isinstance(processing_class, ProcessorMixin):
        return messages
    return [
        {**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m["content"], str) else m
        for m in messages
    ]


def _render(processing_class: Any, template: str, messages: list[dict[str, Any]]) -> tuple[str, str | None]:
    from jinja2.exceptions import TemplateError

    try:
        text = processing_class.apply_chat_template(messages, chat_template=template, tokenize=False)
    except (TemplateError, TypeError, ValueError) as e:  # a template refusing the conversation raises these
        return "", f"{type(e).__name__}: {e}"
    return (text[0] if isinstance(text, list) else text), None


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _explain(inference_tail: str, training_tail: str) -> tuple[str, str]:
    if training_tail.startswith(THINK) and not inference_tail.startswith(THINK):
        kind = "an empty <think></think> block" if training_tail.startswith(EMPTY_THINK) else "its <think> block"
        return (
            f"the training template writes {kind} into an earlier assistant turn, which the inference template "
            "strips from the history (TRL's Qwen3-style training templates keep every turn's think block so that "
            "appending a turn never changes the earlier ones)",
            f"{MARKED_INFERENCE_FIX}, or accept knowingly that earlier turns train with a think block the model "
            "never sees in its history",
        )
    if inference_tail.startswith(THINK) and not training_tail.startswith(THINK):
        return "the inference template writes a <think> block the training template leaves out", MARKED_INFERENCE_FIX
    if not training_tail or not inference_tail:
        longer = "training" if training_tail else "inference"
        return f"the {longer} render goes on where the other ends", MARKED_INFERENCE_FIX
    if training_tail.strip() == inference_tail.strip() or training_tail.lstrip() == inference_tail.lstrip():
        return "the templates disagree on whitespace", MARKED_INFERENCE_FIX
    return "the training template renders different text", MARKED_INFERENCE_FIX
