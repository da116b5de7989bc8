"""Checks of the tokenizer and chat template: loading, eos and pad in the vocabulary, generation markers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sft_recipes.validate.validation import Validation


def check_tokenizer(v: Validation) -> None:
    """Load the tokenizer (small), apply the recipe's template, eos and pad, check assistant-only loss can work."""
    from sft_recipes.model.loading import load_processing_class

    m, t = v.recipe.model, v.recipe.training
    source = m.tokenizer_name_or_path or m.model_name_or_path
    try:
        processing_class = load_processing_class(m, t, v.kind or "causal_lm")
    except (OSError, ValueError, TypeError, KeyError, ImportError) as err:
        v.add(source, f"cannot load the tokenizer: {str(err).splitlines()[0]}", "check the tokenizer files there")
        return
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if t.chat_template_path is not None:
        template = _read_template(v, t.chat_template_path)
        if template is None:
            return
        processing_class.chat_template = template
    vocab = tokenizer.get_vocab()
    for key in ("eos_token", "pad_token"):
        token = getattr(t, key)
        if token is not None and token not in vocab:
            close = [tok for tok in tokenizer.all_special_tokens if tok in vocab]
            v.add(
                v.key(key), f"{token!r} is not in the tokenizer's vocabulary", f"use one of {close} or a known token"
            )
        elif token is not None:
            setattr(tokenizer, key, token)  # what SFTTrainer does with them
    v.tokenizer = processing_class
    if t.assistant_only_loss and getattr(processing_class, "chat_template", None):
        _check_generation_markers(v)


def _read_template(v: Validation, path: str) -> str | None:
    """chat_template_path: a .jinja file, or a tokenizer whose template TRL clones."""
    if path.endswith((".jinja", ".j2")):
        if not os.path.isfile(path):
            v.add(
                v.key("chat_template_path"), f"{path} does not exist", "check the path (relative to the current dir)"
            )
            return None
        return Path(path).read_text(encoding="utf-8")
    from transformers import AutoTokenizer

    try:
        template = AutoTokenizer.from_pretrained(path).chat_template
    except (OSError, ValueError) as err:
        v.add(
            v.key("chat_template_path"),
            f"cannot load a tokenizer from {path}: {str(err).splitlines()[0]}",
            "point it at a .jinja file or a tokenizer folder",
        )
        return None
    if template is None:
        v.add(v.key("chat_template_path"), f"the tokenizer at {path} has no chat template", "use a .jinja file")
    return template


def _check_generation_markers(v: Validation) -> None:
    """#14: assistant_only_loss masks with {% generation %} markers; TRL patches only templates it knows. Whether
    the end of turn falls inside them is the data check's (inspection's stop-token diagnosis)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(v.tokenizer.chat_template):
        return
    try:
        get_training_chat_template(v.tokenizer)
    except Exception:  # noqa: BLE001 - TRL renders the template to match it; any failure means "cannot patch"
        v.add(
            v.key("assistant_only_loss"),
            "the chat template has no {% generation %} markers (and TRL has no patched version of it), so no "
            "token would be trained",
            "wrap the assistant content and its end-of-turn token in {% generation %}...{% endgeneration %} "
            "(see sft_recipes/chat_templates/chatml.jinja) via chat_template_path, or assistant_only_loss: false",
        )
        return
    v.summary["chat template"] = "TRL's training version of the model's template (adds generation markers)"
