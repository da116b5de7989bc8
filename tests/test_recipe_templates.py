"""recipes/templates/*.jinja render exactly like the models' own templates and mark only what the assistant says."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "recipes" / "templates"
# Verbatim from HuggingFaceTB/SmolLM2-1.7B-Instruct's tokenizer_config.json.
SMOLLM2_SHIPPED = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
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
]
PARIS = {"city": "Paris"}
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": PARIS}}]},
    {"role": "tool", "content": "sunny"},
    {"role": "assistant", "content": "It is sunny."},
]
CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather.", "parameters": CITY}}]


def _llama_shipped() -> str:
    import trl

    # TRL keeps the byte-exact Llama 3.1 template (checked weekly against the Hub) to recognise the model.
    return (Path(trl.__file__).parent / "chat_templates" / "llama3_1.jinja").read_text()


CASES = {
    "llama-3.1.jinja": (_llama_shipped, ("<|eot_id|>", "<|eom_id|>"), True),
    "smollm2.jinja": (lambda: SMOLLM2_SHIPPED, ("<|im_end|>\n",), False),
}


def _render(template: str, chat: list, **kwargs):
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, spans = render_jinja_template(
        [chat], chat_template=template, bos_token="<s>", eos_token="</s>", return_assistant_tokens_mask=True, **kwargs
    )
    return rendered[0], [rendered[0][start:end] for start, end in spans[0]]


def test_every_template_file_is_covered_here():
    assert {path.name for path in TEMPLATES.glob("*.jinja")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_template_renders_like_the_shipped_one_and_marks_replies_up_to_end_of_turn(name, add_generation_prompt):
    shipped, ends, supports_tools = CASES[name]
    ours = (TEMPLATES / name).read_text()
    chats = [(chat, None) for chat in CHATS] + ([(TOOL_CHAT, TOOLS)] if supports_tools else [])
    for chat, tools in chats:
        expected, _ = _render(shipped(), chat, tools=tools, add_generation_prompt=add_generation_prompt)
        rendered, replies = _render(ours, chat, tools=tools, add_generation_prompt=add_generation_prompt)
        assert rendered == expected
        turns = [message for message in chat if message["role"] == "assistant"]
        assert len(replies) == len(turns)
        # The end-of-turn token sits inside the mask (the model learns to stop), the role header outside it.
        for message, reply in zip(turns, replies, strict=True):
            assert reply.endswith(ends), reply
            assert not reply.startswith(("<|start_header_id|>", "<|im_start|>")), reply
            assert message.get("content", "").strip() in reply


def test_every_recipe_with_a_template_file_uses_one_that_marks_generation():
    for path in sorted((ROOT / "recipes").glob("*/*.yaml")):
        recipe = yaml.safe_load(path.read_text())
        if "chat_template_path" in recipe:
            template = ROOT / recipe["chat_template_path"]
            assert template.is_file(), path
            assert GENERATION_TAG.search(template.read_text()), path
