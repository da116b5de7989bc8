"""The template the loss is computed with is the one SFTTrainer picks: a template that carries its own
{% generation %} markers is used as it is, even one TRL's patcher would refuse."""

from __future__ import annotations

import pytest

from sft_recipes.template_fidelity import render_differences, trl_training_template
from sft_recipes.tiny import build_tokenizer

# Marked, renders tool calls and tool results, and ends the final assistant turn with <|endoftext|>: not
# prefix-preserving, so trl.chat_template_utils.get_training_chat_template refuses it (ValueError), while
# SFTTrainer never asks it (it patches only templates without markers).
MARKED_WITH_TOOLS = (
    "{%- for m in messages -%}<|im_start|>{{ m.role }}\n"
    "{%- if m.role == 'assistant' %}{% generation %}{{ m.content }}"
    "{%- for call in m.tool_calls or [] %}<tool_call>{{ call.function.name }} {{ call.function.arguments | tojson }}"
    "</tool_call>{% endfor %}<|im_end|>{% endgeneration %}{% if loop.last %}<|endoftext|>{% endif %}\n"
    "{%- else %}{{ m.content }}<|im_end|>\n{% endif %}{% endfor -%}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_with_its_own_generation_markers_is_the_training_template_as_trl_would_refuse_to_patch_it():
    from trl.chat_template_utils import get_training_chat_template, supports_tool_calling

    tokenizer = build_tokenizer(chat_template=MARKED_WITH_TOOLS)
    assert supports_tool_calling(tokenizer)
    with pytest.raises(ValueError, match="not training-compatible"):
        get_training_chat_template(tokenizer)  # what a wrong shortcut would have asked
    assert trl_training_template(tokenizer) == MARKED_WITH_TOOLS
    assert render_differences(tokenizer, trl_training_template(tokenizer)) == []
