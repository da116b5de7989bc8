"""glaive-style tool-calling data trains the calls themselves on the real Qwen2.5 and Llama-3.1 templates, and a
real template without tool support is refused instead of training an empty turn."""

from __future__ import annotations

import json

import pytest
from helpers.chat_families import build_family_model, build_family_tokenizer, recipe_chat_keys
from helpers.prepared import prepared_trainer, trained_spans

ARGUMENTS = {"shape": "rectangle", "dimensions": [5, 3]}
AREA = {
    "name": "calculate_area",
    "description": "Calculate the area of a given shape",
    "parameters": {"type": "object", "properties": {"shape": {"type": "string"}}, "required": ["shape"]},
}
GLAIVE = {  # the layout of LLaMA-Factory's data/glaive_toolcall_en_demo.json
    "conversations": [
        {"from": "human", "value": "What is the area of a 5 by 3 rectangle?"},
        {"from": "function_call", "value": json.dumps({"name": "calculate_area", "arguments": ARGUMENTS})},
        {"from": "observation", "value": '{"area": 15}'},
        {"from": "gpt", "value": "The area is 15 square units."},
    ],
    "tools": json.dumps([AREA]),
}
# How each template writes the call the model must learn to emit.
CALL_TEXT = {
    "qwen2.5": '<tool_call>\n{"name": "calculate_area", "arguments": {"shape": "rectangle", "dimensions": [5, 3]}}\n'
    "</tool_call><|im_end|>",
    "llama-3.1": '{"name": "calculate_area", "parameters": {"shape": "rectangle", "dimensions": [5, 3]}}<|eot_id|>',
}


@pytest.mark.parametrize("name", sorted(CALL_TEXT))
def test_the_tool_call_is_trained_and_the_tool_result_and_tools_are_not(tmp_path, name):
    model = build_family_model(name, tmp_path / "model")
    keys = {**recipe_chat_keys(name), "max_length": 1024}
    trainer = prepared_trainer(tmp_path, model, [GLAIVE], **keys)
    [row] = list(trainer.train_dataset)
    tokenizer = trainer.processing_class
    spans = trained_spans(tokenizer, row["input_ids"], row["labels"])
    assert any(CALL_TEXT[name] in span for span in spans), spans
    assert any("The area is 15 square units." in span for span in spans)
    trained = "".join(spans)
    text = tokenizer.decode(row["input_ids"])
    result = ('{"area": 15}', '"{\\"area\\": 15}"')  # Llama-3.1's template `tojson`s a string result once more
    assert any(r in text for r in result) and not any(r in trained for r in result)  # read, not learnt
    assert "Calculate the area of a given shape" in text and "Calculate the area" not in trained


def test_a_template_without_tool_support_is_named_with_file_and_row(tmp_path):
    from sft_recipes.data.rendering import unrendered_tool_use

    # SmolLM2's real template writes role and content only: the call would train as an empty <|im_end|> turn.
    tokenizer = build_family_tokenizer("smollm2")
    plain = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}], "tools": "[]"}
    rows = converted(tmp_path, [plain, GLAIVE])
    problems = unrendered_tool_use(rows, tokenizer, "glaive.json")
    assert [(p.where, p.message.split(":")[0]) for p in problems] == [
        ("glaive.json[row 1]", "the chat template does not render the row's `tools`"),
        ("glaive.json[row 1]", "the chat template does not render the tool calls of message 1"),
    ]
    for name in CALL_TEXT:  # the real tool-calling templates render all three
        assert unrendered_tool_use(rows, build_family_tokenizer(name), "glaive.json") == []


def converted(tmp_path, rows):
    import datasets

    from sft_recipes.data.formats import to_trl_format

    return to_trl_format(datasets.Dataset.from_list(rows), "auto", "mem")
