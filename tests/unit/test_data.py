"""Data layer: every format converts to the exact TRL rows; mixtures, eval splits and bad input behave."""

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import pytest
import trl
from trl import DatasetMixtureConfig, SFTConfig
from trl.scripts.utils import DatasetConfig

from sft_recipes.data.formats import check_rows, detect_format, to_trl_format
from sft_recipes.data.loading import check_file, load_training_data
from sft_recipes.errors import RecipeError

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")

FIXTURES = Path(__file__).parents[1] / "data"
TURN = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
TURN_PAIRS = (("user", "q"), ("assistant", "a"))


@dataclass
class ScriptArgs(trl.ScriptArguments):  # stands in for sft_recipes.config.ScriptArguments
    dataset_format: str = "auto"


@pytest.fixture
def data(tmp_path):
    """The fixture files copied next to a generated 8x8 PNG (vision.jsonl refers to it relatively)."""
    from PIL import Image

    target = tmp_path / "data"
    shutil.copytree(FIXTURES, target)
    Image.new("RGB", (8, 8), "red").save(target / "tiny.png")
    return target


def load(path=None, mixture=(), fmt="auto", eval_strategy="no", test_split_size=None, streaming=False, seed=42):
    script = ScriptArgs(dataset_name=str(path) if path else None, dataset_format=fmt, dataset_streaming=streaming)
    configs = [DatasetConfig(**m) for m in mixture]
    mix = DatasetMixtureConfig(datasets=configs, test_split_size=test_split_size, streaming=streaming)
    args = SFTConfig(output_dir="unused", use_cpu=True, bf16=False, eval_strategy=eval_strategy, seed=seed)
    return load_training_data(script, mix, args)


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat(*pairs):  # ("user", "q"), ("assistant", "a") -> messages
    return [{"role": role, "content": content} for role, content in pairs]


def read_jsonl(name):
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


@pytest.mark.parametrize("name", ["text.jsonl", "prompt_completion.jsonl", "prompt_completion_chat.jsonl"])
def test_pass_through_formats_keep_every_row_unchanged(data, name):
    train, _ = load(data / name)
    assert list(train) == read_jsonl(name)


def test_messages_keep_tool_calls_and_tools_without_null_padding(data):
    train, _ = load(data / "messages.jsonl")
    expected = read_jsonl("messages.jsonl")
    assert train.column_names == ["messages", "tools"]
    assert [row["messages"] for row in train] == [r["messages"] for r in expected]
    assert [row["tools"] for row in train] == [None, None, expected[2]["tools"]]
    assert "tool_calls" not in train[0]["messages"][2]  # Arrow would pad it with tool_calls=None


def test_sharegpt_roles_become_chatml_with_system_column_first(data):
    train, _ = load(data / "sharegpt.jsonl")
    assert train.column_names == ["messages"]
    call = {"type": "function", "function": {"name": "clock", "arguments": {"city": "Tokyo"}}}
    assert [row["messages"] for row in train] == [
        chat(("system", "Be brief."), ("user", "What is 7*6?"), ("assistant", "42.")),
        [
            *chat(("system", "You can call tools."), ("user", "Look up the time in Tokyo.")),
            {"role": "assistant", "content": "", "tool_calls": [call]},  # was trained as the call's JSON in plain text
            *chat(("tool", "09:00"), ("assistant", "It is 09:00 in Tokyo.")),
        ],
    ]


ALPACA = {
    "alpaca.json": [
        (chat(("user", "Translate to German.\n\nGood morning")), chat(("assistant", "Guten Morgen"))),
        (chat(("user", "Name the largest planet.")), chat(("assistant", "Jupiter"))),
        (
            chat(("system", "You summarize."), ("user", "Summarize.\n\nCats sleep a lot.")),
            chat(("assistant", "Cats sleep much.")),
        ),
    ],
    "alpaca.csv": [
        (chat(("user", "Add the numbers.\n\n2 and 3")), chat(("assistant", "5"))),
        (chat(("user", "Say hi.")), chat(("assistant", "hi"))),
    ],
}


@pytest.mark.parametrize("name", sorted(ALPACA))
def test_alpaca_becomes_conversational_prompt_completion(data, name):
    train, _ = load(data / name)
    assert train.column_names == ["prompt", "completion"]
    assert [(r["prompt"], r["completion"]) for r in train] == ALPACA[name]


def test_vision_rows_keep_images_resolved_next_to_the_data_file(data, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the PNG path is relative to the file, not to the working directory
    train, _ = load(data / "vision.jsonl")
    assert train.column_names == ["messages", "images"]
    assert [[img.size for img in row["images"]] for row in train] == [[(8, 8)], [(8, 8)]]
    assert train[0]["images"][0].getpixel((0, 0)) == (255, 0, 0)
    assert [row["messages"] for row in train] == [r["messages"] for r in read_jsonl("vision.jsonl")]


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir()))
def test_streaming_conversion_yields_the_same_rows_as_map_style(data, name):
    mapped, _ = load(data / name)
    streamed, _ = load(data / name, streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    assert list(streamed) == list(mapped)


def test_parquet_and_directories_load_like_jsonl(data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = read_jsonl("messages.jsonl")  # pyarrow pads every message with tool_calls/name = None
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    assert [r["messages"] for r in load(tmp_path / "m.parquet")[0]] == [r["messages"] for r in rows]
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(data / "text.jsonl", folder / "train.jsonl")
    assert list(load(folder)[0]) == read_jsonl("text.jsonl")
    builder, _ = load(mixture=[{"path": "json", "data_files": str(data / "text.jsonl")}])  # TRL's own spelling
    assert list(builder) == read_jsonl("text.jsonl")


def test_detect_format_follows_trl_precedence():
    assert detect_format(["prompt", "prompt_id", "messages"]) == "messages"  # ultrachat_200k: no completion
    assert detect_format(["prompt", "completion", "messages"]) == "prompt_completion"
    assert detect_format(["instruction", "input", "output", "text"]) == "alpaca"  # tatsu-lab/alpaca has `text` too
    assert detect_format(["content"], text_field="content") == "text"
    with pytest.raises(RecipeError, match="columns found: 'a', 'b'"):
        detect_format(["a", "b"])


def test_mixture_fractions_take_the_first_rows_and_honour_columns(tmp_path):
    a = jsonl(tmp_path / "a.jsonl", [{"messages": TURN, "id": i} for i in range(10)])
    gpt = {"from": "gpt", "value": "x"}
    b = jsonl(tmp_path / "b.jsonl", [{"conversations": [{"from": "human", "value": f"b{i}"}, gpt]} for i in range(4)])
    mixture = [{"path": str(a), "fraction": 0.5, "columns": ["messages"]}, {"path": str(b), "fraction": 0.5}]
    train, _ = load(mixture=mixture)
    # TRL's rule: the largest mixture with no source oversampled, here min(10/0.5, 4/0.5) = 8 rows, 4 from each
    assert len(train) == 8
    assert train.column_names == ["messages"]
    assert [row["messages"][0]["content"] for row in train][4:] == ["b0", "b1", "b2", "b3"]


def test_mixture_of_messages_and_alpaca_trains_as_messages(data, caplog):
    with caplog.at_level(logging.WARNING, logger="sft_recipes.data"):
        train, _ = load(mixture=[{"path": str(data / "sharegpt.jsonl")}, {"path": str(data / "alpaca.json")}])
    assert train.column_names == ["messages"] and len(train) == 5
    assert train[2]["messages"] == [
        {"role": "user", "content": "Translate to German.\n\nGood morning"},
        {"role": "assistant", "content": "Guten Morgen"},
    ]
    assert "assistant_only_loss" in caplog.text


@pytest.mark.parametrize("streaming", [False, True])
def test_mixture_fills_tools_for_sources_without_them(data, streaming):
    mixture = [{"path": str(data / "messages.jsonl")}, {"path": str(data / "sharegpt.jsonl")}]
    train, _ = load(mixture=mixture, streaming=streaming)
    assert train.column_names == ["messages", "tools"]
    rows = list(train)
    assert rows[3]["messages"] == chat(("system", "Be brief."), ("user", "What is 7*6?"), ("assistant", "42."))
    assert [row["tools"] is None for row in rows] == [True, True, False, True, True]


def test_mixture_of_text_and_chat_is_refused(data):
    with pytest.raises(RecipeError, match="cannot be mixed") as err:
        load(mixture=[{"path": str(data / "text.jsonl")}, {"path": str(data / "messages.jsonl")}])
    assert "text.jsonl (text)" in str(err.value)


def test_mixture_wins_over_dataset_name_with_a_warning(data, caplog):
    with caplog.at_level(logging.WARNING, logger="sft_recipes.data"):
        train, _ = load(data / "text.jsonl", mixture=[{"path": str(data / "sharegpt.jsonl")}])
    assert train.column_names == ["messages"]
    assert "dataset_name" in caplog.text


def test_test_split_size_gives_a_disjoint_seeded_eval_split(tmp_path):
    path = jsonl(tmp_path / "t.jsonl", [{"text": f"row {i}"} for i in range(20)])
    train, eval_ = load(path, eval_strategy="steps", test_split_size=0.25)
    again_train, again_eval = load(path, eval_strategy="steps", test_split_size=0.25)
    other_train, _ = load(path, eval_strategy="steps", test_split_size=0.25, seed=7)
    texts = lambda ds: [r["text"] for r in ds]  # noqa: E731
    assert (len(train), len(eval_)) == (15, 5)
    assert not set(texts(train)) & set(texts(eval_))
    assert set(texts(train)) | set(texts(eval_)) == {f"row {i}" for i in range(20)}
    assert (texts(again_train), texts(again_eval)) == (texts(train), texts(eval_))
    assert texts(other_train) != texts(train)
    assert load(path, test_split_size=0.25)[1] is None  # eval_strategy "no": no eval, nothing held out
    assert len(load(path, test_split_size=0.25)[0]) == 20


def test_an_existing_test_split_is_used_for_eval(data, tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    shutil.copy(data / "text.jsonl", folder / "train.jsonl")
    jsonl(folder / "test.jsonl", [{"text": "held out"}])
    train, eval_ = load(folder, eval_strategy="epoch", test_split_size=0.5)
    assert (len(train), list(eval_)) == (3, [{"text": "held out"}])


def test_eval_without_a_test_split_or_size_is_refused(data):
    with pytest.raises(RecipeError, match="test_split_size"):
        load(data / "text.jsonl", eval_strategy="steps")


def test_malformed_jsonl_is_reported_at_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"\n{"text": "c"}\n')
    with pytest.raises(RecipeError) as err:
        load(path)
    assert [p.where for p in err.value.problems] == [f"{path}:3"]
    assert "malformed JSON" in str(err.value) and "Traceback" not in str(err.value)
    assert [p.where for p in check_file(path)] == [f"{path}:3"]


def test_missing_and_empty_files_are_named(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "empty.json").write_text("[]\n")
    for name, message in [("nope.jsonl", "file not found"), ("empty.jsonl", "empty"), ("empty.json", "empty")]:
        with pytest.raises(RecipeError, match=message) as err:
            load(tmp_path / name)
        assert err.value.problems[0].where == str(tmp_path / name)


def test_missing_columns_list_the_columns_found(data):
    with pytest.raises(RecipeError, match="needs column 'messages'; columns found: 'text'"):
        load(data / "text.jsonl", fmt="messages")
    with pytest.raises(RecipeError, match=r"no column 'nope'; columns found: 'messages', 'tools'"):
        load(mixture=[{"path": str(data / "messages.jsonl"), "columns": ["nope"]}])


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        (chat(("bot", "hi"), *TURN_PAIRS), "messages[0] has role 'bot'"),
        (chat(*TURN_PAIRS, ("system", "late")), "messages[2] is a system message"),
        (chat(("user", "q"), ("assistant", " ")), "messages[1] is an empty assistant"),
        (chat(("user", "q")), "no assistant turn"),
        (chat(("user", 3), ("assistant", "a")), "messages[0] content is int"),
        (chat(("tool", "x"), *TURN_PAIRS), "messages[0] is a tool message that does not follow"),
        ("not a list", "messages is str"),
    ],
)
def test_bad_rows_are_named_by_source_and_index(tmp_path, messages, problem):
    path = jsonl(tmp_path / "rows.jsonl", [{"messages": TURN}, {"messages": TURN}, {"messages": messages}])
    with pytest.raises(RecipeError, match=re.escape(problem)) as err:
        load(path)
    assert {p.where for p in err.value.problems} == {f"{path}[row 2]"}


def test_consecutive_user_turns_are_allowed():
    rows = [{"messages": chat(("user", "a"), ("user", "b"), ("assistant", "c"))}]
    assert check_rows(datasets.Dataset.from_list(rows), "auto", "mem") == []


def test_unreadable_images_and_placeholder_mismatch_are_reported(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "two?"}]
    rows = [
        {"images": ["missing.png"], "messages": TURN},
        {"images": ["broken.png"], "messages": TURN},
        {"images": [], "messages": [{"role": "user", "content": content}, TURN[1]]},
    ]
    path = str(jsonl(tmp_path / "v.jsonl", rows))
    problems = check_rows(datasets.load_dataset("json", data_files=path, split="train"), "auto", path)
    assert [(p.where.rsplit("[", 1)[1], p.message.split(":")[0]) for p in problems] == [
        ("row 0]", "images[0] not found"),
        ("row 1]", "images[0] is not a readable image"),
        ("row 2]", "0 images but 2 image placeholders in the messages"),
    ]


def test_to_trl_format_converts_in_memory_datasets_for_callers_without_files():
    conversations = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    ds = datasets.Dataset.from_list([{"conversations": conversations, "id": 1}])
    assert list(to_trl_format(ds, "auto", "mem")) == [{"messages": TURN}]


def test_a_second_load_reuses_the_cached_conversion(data):
    first, _ = load(data / "sharegpt.jsonl")
    second, _ = load(data / "sharegpt.jsonl")
    assert first._fingerprint == second._fingerprint
    assert first.cache_files == second.cache_files
