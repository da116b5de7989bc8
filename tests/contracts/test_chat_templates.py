"""Chat templates: the shipped ChatML renders plain ChatML and marks replies with their <|im_end|>; in every template
a recipe uses, the {% generation %} markers change nothing in the rendered text (training = inference).

recipes/templates/*.jinja are compared with their models' own templates in test_recipe_templates.py.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = resources.files("sft_recipes").joinpath("chat_templates/chatml.jinja")
MARKER = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")
CHATS = {
    "system + user + assistant": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ],
    "multi-turn": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": " 6 \n"},
    ],
    "prompt only": [{"role": "user", "content": "Hi"}],
}
TOOLS = [{"type": "function", "function": {"name": "clock", "description": "Time.", "parameters": {"type": "object"}}}]
TOOL_CHAT = [
    {"role": "user", "content": "Time in Tokyo?"},
    {
        "role": "assistant",
        "content": "",
        # Mistral's template insists on 9-character ids.
        "tool_calls": [{"id": "call00001", "function": {"name": "clock", "arguments": {"city": "Tokyo"}}}],
    },
    {"role": "tool", "content": "09:00", "tool_call_id": "call00001"},
    {"role": "assistant", "content": "It is 09:00."},
]


def recipe_templates() -> dict[str, Path]:
    """recipe path -> the chat_template_path it trains with."""
    found = {}
    for recipe in sorted(ROOT.glob("recipes/**/*.yaml")):
        path = (yaml.safe_load(recipe.read_text()) or {}).get("chat_template_path")
        if path:
            found[str(recipe.relative_to(ROOT))] = ROOT / path
    return found


TEMPLATES = {"sft_recipes/chat_templates/chatml.jinja": Path(str(SHIPPED))} | {
    str(path.relative_to(ROOT)): path for path in recipe_templates().values()
}


def without_markers(template: str) -> str:
    """The template with its generation markers replaced by no-op tags of the same whitespace control."""
    return MARKER.sub(lambda m: "{%" + m[1] + (" endif " if m[2] else " if true ") + m[3] + "%}", template)


def render(template: str, chat: list, **kwargs) -> tuple[str, list[str]]:
    """(text, the assistant spans the generation markers cover)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    texts, spans = render_jinja_template(
        [chat], chat_template=template, bos_token="<s>", eos_token="</s>", return_assistant_tokens_mask=True, **kwargs
    )
    return texts[0], [texts[0][start:end] for start, end in spans[0]]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_generation_markers_never_change_the_rendered_text(name, add_generation_prompt):
    template = TEMPLATES[name].read_text()
    assert MARKER.search(template), f"{name} has no {{% generation %}} markers"
    chats = [*CHATS.values(), TOOL_CHAT]
    for chat in chats:
        kwargs = {"add_generation_prompt": add_generation_prompt, "tools": TOOLS if chat is TOOL_CHAT else None}
        marked, spans = render(template, chat, **kwargs)
        plain, _ = render(without_markers(template), chat, **kwargs)
        assert marked == plain
        assert len(spans) == sum(message["role"] == "assistant" for message in chat)


def test_recipes_with_assistant_only_loss_train_with_a_marked_template_file():
    for recipe, path in recipe_templates().items():
        assert path.is_file(), f"{recipe}: {path} does not exist"
        assert MARKER.search(path.read_text()), f"{recipe}: {path} has no generation markers"


def test_shipped_chatml_renders_plain_chatml_and_marks_each_reply_with_its_end_of_turn():
    template = SHIPPED.read_text()
    text, spans = render(template, CHATS["multi-turn"], add_generation_prompt=False)
    assert text == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n"
        "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n 6 \n<|im_end|>\n"
    )
    assert spans == ["4.<|im_end|>", " 6 \n<|im_end|>"]
    text, _ = render(template, CHATS["system + user + assistant"][:2], add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n" + (
        "<|im_start|>assistant\n"
    )


def test_shipped_chatml_needs_no_patching_by_trl_and_trains_the_end_of_turn():
    from trl.chat_template_utils import get_training_chat_template, is_chat_template_stop_token_trained

    from sft_recipes.tiny import build_tokenizer

    tokenizer = build_tokenizer(chat_template=SHIPPED.read_text())
    assert get_training_chat_template(tokenizer) is None  # prefix-preserving, with markers
    assert is_chat_template_stop_token_trained(tokenizer)


def test_a_base_model_without_a_template_trains_on_replies_with_the_shipped_chatml(tmp_path):
    from helpers.prepared import prepared_trainer, trained_spans

    from sft_recipes.tiny import build_causal_lm, build_tokenizer

    tokenizer = build_tokenizer(chat_template=False, eos_token="<|endoftext|>")
    assert tokenizer.chat_template is None
    model = build_causal_lm("llama", tmp_path / "base", tokenizer=tokenizer)
    rows = [{"messages": CHATS["multi-turn"]}]
    trainer = prepared_trainer(
        tmp_path, model, rows, chat_template_path=str(SHIPPED), assistant_only_loss=True, eos_token="<|im_end|>"
    )
    row = trainer.train_dataset[0]
    assert trained_spans(trainer.processing_class, row["input_ids"], row["labels"]) == [
        "4.<|im_end|>",
        " 6 \n<|im_end|>",
    ]
