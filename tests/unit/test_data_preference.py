"""Data that is not SFT data: preference pairs get one clear error (or train on `chosen` when asked), and KTO-style
`label: false` rows are never trained as good answers."""

import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from helpers.data_rows import load_rows

from sft_recipes.errors import RecipeError

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")

USER = [{"role": "user", "content": "What colour is the sky?"}]
GOOD = [{"role": "assistant", "content": "It is blue."}]
BAD = [{"role": "assistant", "content": "It is green."}]
# TRL's four preference layouts (docs: dataset_formats, "Preference"), and what training on `chosen` makes of them.
LAYOUTS = {
    "conversational-explicit": (
        {"prompt": USER, "chosen": GOOD, "rejected": BAD},
        "conversational preference data ('chosen' and 'rejected' answers, with an explicit prompt in 'prompt')",
        {"prompt": USER, "completion": GOOD},
    ),
    "conversational-implicit": (
        {"chosen": USER + GOOD, "rejected": USER + BAD},
        "conversational preference data ('chosen' and 'rejected' answers, with an implicit prompt",
        {"prompt": USER, "completion": GOOD},
    ),
    "plain-explicit": (
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        "plain-text preference data ('chosen' and 'rejected' answers, with an explicit prompt in 'prompt')",
        {"prompt": "The sky is", "completion": " blue."},
    ),
    "plain-implicit": (
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        "plain-text preference data ('chosen' and 'rejected' answers, with an implicit prompt",
        {"prompt": "The sky is", "completion": " blue."},
    ),
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_preference_rows_get_one_error_naming_the_format_and_the_choices(tmp_path, layout):
    row, named, _ = LAYOUTS[layout]
    path = write_jsonl(tmp_path / "pairs.jsonl", [row] * 5)
    with pytest.raises(RecipeError) as err:
        load_rows(path)
    [problem] = err.value.problems  # once for the file, not "no assistant turn" once per row
    assert problem.where == str(path)
    assert problem.message.startswith(f"this is {named}")
    assert "preference_column: chosen" in problem.fix and "DPOTrainer" in problem.fix


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_preference_column_chosen_trains_on_the_chosen_answer(tmp_path, layout):
    row, _, expected = LAYOUTS[layout]
    train = load_rows(write_jsonl(tmp_path / "pairs.jsonl", [row]), preference_column="chosen")
    assert train.column_names == ["prompt", "completion"]
    assert list(train) == [expected]


def test_llama_factory_sharegpt_preference_rows_train_on_the_chosen_message(tmp_path):
    row = {  # LLaMA-Factory's data/dpo_en_demo.json layout: one message each for chosen and rejected
        "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Sky colour?"}],
        "chosen": {"from": "gpt", "value": "Blue."},
        "rejected": {"from": "gpt", "value": "Green."},
    }
    path = tmp_path / "dpo_en_demo.json"
    path.write_text(json.dumps([row]))
    with pytest.raises(RecipeError, match="explicit prompt in 'conversations'"):
        load_rows(path)
    train = load_rows(path, preference_column="chosen")
    assert list(train) == [
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky colour?"}],
            "completion": [{"role": "assistant", "content": "Blue."}],
        }
    ]


@pytest.mark.parametrize("layout", ["messages", "prompt_completion"])
def test_label_false_rows_are_excluded_with_a_logged_count(tmp_path, caplog, layout):
    def row(answer, label):
        if layout == "messages":  # LLaMA-Factory's data/kto_en_demo.json
            return {"messages": USER + [{"role": "assistant", "content": answer}], "label": label}
        return {"prompt": USER, "completion": [{"role": "assistant", "content": answer}], "label": label}  # TRL's

    rows = [row("It is blue.", True), row("It is green.", False), row("Blue.", True), row("Red.", False)]
    path = write_jsonl(tmp_path / "kto.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="sft_recipes.data"):
        train = load_rows(path)
    answers = [(r.get("messages") or r["completion"])[-1]["content"] for r in train]
    assert answers == ["It is blue.", "Blue."]
    assert "label" not in train.column_names
    assert "excluded 2 of 4 rows with label: false" in caplog.text


def test_only_label_false_rows_leave_nothing_to_train_on(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "q", "completion": "bad", "label": False}] * 3)
    with pytest.raises(RecipeError, match="empty once its label: false rows are excluded"):
        load_rows(path)


def test_a_label_column_that_is_not_boolean_is_left_alone(tmp_path):
    rows = [{"prompt": "q", "completion": f"a{i}", "label": i} for i in range(3)]  # a class id, not a verdict
    assert len(load_rows(write_jsonl(tmp_path / "classes.jsonl", rows))) == 3
