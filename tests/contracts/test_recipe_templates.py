"""recipes/templates/*.jinja render exactly like the models' own templates and mark only what the assistant says."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "recipes" / "templates"
# The models' own templates, byte for byte (tests/fixtures/chat_templates/PROVENANCE.md says where each is from).
SHIPPED = ROOT / "tests" / "fixtures" / "chat_templates"
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")

CHATS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "  Hello!\n"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d d"},
    ],
    [{"role": "user", "content": "only a question"}],
    [
        {"role": "user", "content": "Is 7 prime?"},
        {"role": "assistant", "content": "<think>\nNo divisors.\n</think>\n\nYes."},
        {"role": "user", "content": "And 9?"},
        {"role": "assistant", "content": "<think>\n3 * 3.\n</think>\n\nNo."},
    ],
]
PARIS = {"city": "Paris"}
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "tool_calls": [{"id": "call00001", "type": "function", "function": {"name": "weather", "arguments": PARIS}}],
    },
    {"role": "tool", "content": "sunny", "tool_call_id": "call00001"},
    {"role": "assistant", "content": "It is sunny."},
]
CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather.", "parameters": CITY}}]


# template file -> (the model's own template, how a marked reply ends, whether it renders tool calls)
CASES = {
    "llama-3.1.jinja": ("llama-3.1.jinja", ("<|eot_id|>", "<|eom_id|>"), True),
    "mistral-v0.3.jinja": ("mistral-v0.3.jinja", ("</s>",), True),
    "qwen3.jinja": ("qwen3.jinja", ("<|im_end|>",), True),
    "smollm2.jinja": ("smollm2.jinja", ("<|im_end|>\n",), False),
}

# template file -> (the model's own template, what ours renders after each reply, what the shipped one renders):
# differences a recipe makes knowingly, each explained in the file's header.
KNOWING = {"llava-1.5.jinja": ("llava-1.5.jinja", "</s>", " ")}


def _render(template: str, chat: list, **kwargs):
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, spans = render_jinja_template(
        [chat], chat_template=template, bos_token="<s>", eos_token="</s>", return_assistant_tokens_mask=True, **kwargs
    )
    return rendered[0], [rendered[0][start:end] for start, end in spans[0]]


def test_every_template_file_is_covered_here():
    assert {path.name for path in TEMPLATES.glob("*.jinja")} == set(CASES) | set(KNOWING)


@pytest.mark.parametrize("name", sorted(KNOWING))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_a_knowingly_different_template_differs_only_after_each_reply(name, add_generation_prompt):
    """LLaVA-1.5: `reply</s>` where llava-hf's template renders `reply ` (no stop token), the rest identical."""
    shipped, ours_end, shipped_end = KNOWING[name]
    shipped, ours = (SHIPPED / shipped).read_text(), (TEMPLATES / name).read_text()
    for chat in CHATS:
        typed = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in chat]
        expected, _ = _render(shipped, typed, add_generation_prompt=add_generation_prompt)
        rendered, replies = _render(ours, typed, add_generation_prompt=add_generation_prompt)
        assert rendered.replace(ours_end, shipped_end) == expected
        assert replies == [m["content"] + ours_end for m in chat if m["role"] == "assistant"]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_template_renders_like_the_shipped_one_and_marks_replies_up_to_end_of_turn(name, add_generation_prompt):
    shipped, ends, supports_tools = CASES[name]
    shipped = (SHIPPED / shipped).read_text()
    ours = (TEMPLATES / name).read_text()
    chats = [(chat, None) for chat in CHATS] + ([(TOOL_CHAT, TOOLS)] if supports_tools else [])
    for chat, tools in chats:
        expected, _ = _render(shipped, chat, tools=tools, add_generation_prompt=add_generation_prompt)
        rendered, replies = _render(ours, chat, tools=tools, add_generation_prompt=add_generation_prompt)
        assert rendered == expected
        turns = [message for message in chat if message["role"] == "assistant"]
        assert len(replies) == len(turns)
        # The end-of-turn token sits inside the mask (the model learns to stop), the role header outside it.
        for message, reply in zip(turns, replies, strict=True):
            assert reply.endswith(ends), reply
            assert not reply.startswith(("<|start_header_id|>", "<|im_start|>")), reply
            # Qwen3 drops the reasoning of turns before the last user message, as its own template does.
            assert message.get("content", "").split("</think>")[-1].strip() in reply


def test_every_recipe_with_a_template_file_uses_one_that_marks_generation():
    for path in sorted((ROOT / "recipes").glob("*/*.yaml")):
        recipe = yaml.safe_load(path.read_text())
        if "chat_template_path" in recipe:
            template = ROOT / recipe["chat_template_path"]
            assert template.is_file(), path
            assert GENERATION_TAG.search(template.read_text()), path


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_template_file_exists_only_where_trl_has_no_faithful_marked_copy(name):
    from helpers.chat_families import build_family_tokenizer
    from trl.chat_template_utils import get_training_chat_template

    from sft_recipes.template_fidelity import render_differences

    # The file names match the fixture families; their tokenizers carry the shipped template.
    tokenizer = build_family_tokenizer(name.removesuffix(".jinja"))
    try:
        trl_copy = get_training_chat_template(tokenizer)
    except ValueError:
        return  # TRL has no marked copy of this template
    assert trl_copy is not None, "the shipped template has markers of its own: drop the file"
    assert render_differences(tokenizer, trl_copy), f"TRL's marked copy renders like the shipped one: drop {name}"
