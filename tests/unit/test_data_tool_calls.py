"""Tool use in the data: glaive/ShareGPT function_call and observation turns, JSON-string tools, bad rows named."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import pytest
from helpers.data_rows import load_rows

from sft_recipes.data.formats import to_trl_format
from sft_recipes.errors import RecipeError

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")

AREA = {
    "name": "calculate_area",
    "description": "Calculate the area of a given shape",
    "parameters": {
        "type": "object",
        "properties": {"shape": {"type": "string"}, "dimensions": {"type": "array", "items": {"type": "number"}}},
        "required": ["shape", "dimensions"],
    },
}
RECTANGLE = {"shape": "rectangle", "dimensions": [5, 3]}
# The layout of LLaMA-Factory's data/glaive_toolcall_en_demo.json: `tools` a JSON string of bare function schemas,
# each call a JSON string in a `function_call` turn, each result an `observation` turn.
GLAIVE = [
    {
        "conversations": [
            {"from": "human", "value": "The area of a 5 by 3 rectangle?"},
            {"from": "function_call", "value": json.dumps({"name": "calculate_area", "arguments": RECTANGLE})},
            {"from": "observation", "value": '{"area": 15}'},
            {"from": "gpt", "value": "It is 15 square units."},
        ],
        "tools": json.dumps([AREA]),
    },
    {
        "conversations": [{"from": "human", "value": "Define photoshop."}, {"from": "gpt", "value": "An editor."}],
        "tools": "[]",
    },
]  # fmt: skip


def write_json(path, rows):
    path.write_text(json.dumps(rows, indent=2))  # a JSON array, as LLaMA-Factory ships its demo files
    return path


def test_glaive_function_call_and_observation_turns_become_tool_calls_and_tool_messages(tmp_path):
    train = load_rows(write_json(tmp_path / "glaive.json", GLAIVE))
    call = {"name": "calculate_area", "arguments": RECTANGLE}
    assert train[0]["messages"] == [
        {"role": "user", "content": "The area of a 5 by 3 rectangle?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]},
        {"role": "tool", "content": '{"area": 15}'},
        {"role": "assistant", "content": "It is 15 square units."},
    ]
    assert train[0]["tools"] == [{"type": "function", "function": AREA}]  # parsed, in the layout templates read
    assert train[1]["tools"] is None  # "[]": no tools, so templates render no tool preamble


def test_parallel_calls_and_openai_string_arguments_become_argument_mappings(tmp_path):
    calls = [{"name": "clock", "arguments": '{"city": "Oslo"}'}, {"name": "clock", "arguments": {"city": "Rome"}}]
    turns = [("human", "Time?"), ("function_call", json.dumps(calls)), ("observation", "9:00"), ("gpt", "9:00.")]
    sharegpt = {"conversations": [{"from": role, "value": value} for role, value in turns]}
    openai_call = {"id": "c1", "type": "function", "function": {"name": "clock", "arguments": '{"city": "Oslo"}'}}
    messages = {
        "messages": [
            {"role": "user", "content": "Time?"},
            {"role": "assistant", "tool_calls": [openai_call]},
            {"role": "tool", "content": "9:00"},
            {"role": "assistant", "content": "9:00."},
        ]
    }
    converted = to_trl_format(datasets.Dataset.from_list([sharegpt]), "auto", "mem")[0]["messages"]
    assert [c["function"]["arguments"] for c in converted[1]["tool_calls"]] == [{"city": "Oslo"}, {"city": "Rome"}]
    converted = to_trl_format(datasets.Dataset.from_list([messages]), "auto", "mem")[0]["messages"]
    assert converted[1]["tool_calls"] == [
        {"type": "function", "function": {"name": "clock", "arguments": {"city": "Oslo"}}, "id": "c1"}
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({**GLAIVE[0], "tools": '[{"name": "calculate_area",'}, "tools is not valid JSON"),
        ({**GLAIVE[0], "tools": '{"name": "calculate_area"}'}, "tools must be a list"),
        (
            {"conversations": [GLAIVE[0]["conversations"][0], {"from": "function_call", "value": "area(5, 3)"},
                               *GLAIVE[0]["conversations"][2:]]},
            "conversations[1] is a 'function_call' turn whose value is not a JSON tool call",
        ),
    ],
    ids=["tools-bad-json", "tools-not-a-list", "function-call-not-json"],
)  # fmt: skip
def test_bad_tool_rows_are_errors_naming_file_and_row(tmp_path, row, message):
    path = write_json(tmp_path / "glaive.json", [GLAIVE[1], row])
    with pytest.raises(RecipeError) as err:
        load_rows(path)
    assert [(p.where, p.message.startswith(message)) for p in err.value.problems] == [(f"{path}[row 1]", True)]
