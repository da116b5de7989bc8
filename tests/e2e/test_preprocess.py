"""`sft-recipes preprocess` then `train --prepared`: the same losses as from raw data, no raw data read, a stale set
refused key by key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers.runs import train, write_recipe

from sft_recipes.data.prepared import MANIFEST
from sft_recipes.errors import RecipeError

# Packed, assistant-only, with an eval split carved from train: every step of TRL's preparation has work to do.
SHAPED = {
    "packing": True,
    "assistant_only_loss": True,
    "eval_strategy": "steps",
    "eval_steps": 2,
    "test_split_size": 8,
    "shuffle_dataset": True,
}


@pytest.fixture
def recipe_keys(tmp_path, llama_dir, demo_data_path) -> dict:
    """A recipe on a copy of the demo data, which a test may delete or edit."""
    data = tmp_path / "raw" / "demo.jsonl"
    data.parent.mkdir()
    shutil.copy(demo_data_path, data)
    return {"model_name_or_path": str(llama_dir), "dataset_name": str(data), **SHAPED}


def preprocess(recipe: Path, out: Path, *overrides: str) -> None:
    from sft_recipes.cli import main

    assert main(["preprocess", "--config", str(recipe), "--out", str(out), *overrides]) == 0


def logged(out: Path, key: str) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [entry[key] for entry in state["log_history"] if key in entry]


def test_training_on_a_prepared_set_gives_the_losses_of_training_from_raw_without_the_raw_data(tmp_path, recipe_keys):
    from_raw = train(tmp_path, ("--output_dir", str(tmp_path / "from-raw")), **recipe_keys)
    prepared = tmp_path / "prepared"
    preprocess(tmp_path / "recipe.yaml", prepared)
    manifest = json.loads((prepared / MANIFEST).read_text())
    assert manifest["sources"] == [{"source": recipe_keys["dataset_name"], "split": "train", "rows": 64}]
    assert 0 < manifest["rows"]["eval"] <= 8 and {"train", "eval"} <= {p.name for p in prepared.iterdir()}  # packed
    shutil.rmtree(Path(recipe_keys["dataset_name"]).parent)  # train --prepared must not need the raw files

    overrides = ("--output_dir", str(tmp_path / "from-prepared"), "--prepared", str(prepared))
    from_prepared = train(tmp_path, overrides, **recipe_keys)
    assert logged(from_prepared, "loss") == logged(from_raw, "loss") and len(logged(from_raw, "loss")) == 4
    assert logged(from_prepared, "eval_loss") == logged(from_raw, "eval_loss") and logged(from_raw, "eval_loss")
    assert logged(from_prepared, "num_tokens") == logged(from_raw, "num_tokens")
    # datasets writes cache-*.arrow beside a set it maps: none means TRL took the rows as they were
    assert sorted(p.name for p in (prepared / "train").glob("cache-*")) == []
    card = (from_prepared / "README.md").read_text()
    assert f"| `{recipe_keys['dataset_name']}` | train | 64 |" in card and f"--prepared {prepared}" in card


def test_a_prepared_set_is_refused_naming_each_changed_setting_with_old_and_new(tmp_path, recipe_keys):
    from sft_recipes.config import parse_recipe
    from sft_recipes.preprocess import prepared_datasets

    recipe = write_recipe(tmp_path / "recipe.yaml", **recipe_keys, output_dir=str(tmp_path / "out"))
    prepared = tmp_path / "prepared"
    preprocess(recipe, prepared)
    same = parse_recipe(["--config", str(recipe), "--prepared", str(prepared)])
    train_set, eval_set = prepared_datasets(same)
    rows = json.loads((prepared / MANIFEST).read_text())["rows"]
    assert (len(train_set), len(eval_set)) == (rows["train"], rows["eval"])
    assert same.training.dataset_kwargs["skip_prepare_dataset"] is True and "labels" in train_set.column_names

    model = Path(recipe_keys["model_name_or_path"])
    tokenizer = tmp_path / "tokenizer"  # the same vocabulary, its own template edited
    tokenizer.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(model / name, tokenizer / name)
    (tokenizer / "chat_template.jinja").write_text((model / "chat_template.jinja").read_text() + "\n")
    template = tmp_path / "other.jinja"
    template.write_text((model / "chat_template.jinja").read_text())
    data = Path(recipe_keys["dataset_name"])
    data.write_text(data.read_text().replace("a", "b", 1))  # same size: only its content tells
    changed = parse_recipe(
        ["--config", str(recipe), "--prepared", str(prepared), "--max_length", "32", "--packing", "false"]
        + ["--tokenizer_name_or_path", str(tokenizer), "--chat_template_path", str(template)]
    )
    with pytest.raises(RecipeError) as caught:
        prepared_datasets(changed)
    problems = {p.where.split("(")[-1].rstrip(")"): p.message for p in caught.value.problems}
    assert set(problems) == {"max_length", "packing", "chat_template", "chat_template_path", f"data_files[{data}]"}
    assert problems["max_length"] == "prepared with 64, the recipe now gives 32"
    assert problems["packing"] == "prepared with true, the recipe now gives false"
    assert "sft-recipes preprocess --config" in caught.value.problems[0].fix


def test_a_deleted_data_file_is_no_difference_but_another_file_in_its_folder_is(tmp_path, llama_dir, demo_data_path):
    from sft_recipes.config import parse_recipe
    from sft_recipes.preprocess import prepared_datasets
    from sft_recipes.validate.rules import validate

    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(demo_data_path, folder / "part-0.jsonl")
    recipe = write_recipe(
        tmp_path / "recipe.yaml", model_name_or_path=str(llama_dir), dataset_name=str(folder), output_dir="unused"
    )
    prepared = tmp_path / "prepared"
    preprocess(recipe, prepared)
    (folder / "part-0.jsonl").unlink()
    without_raw = parse_recipe(["--config", str(recipe), "--prepared", str(prepared)])
    prepared_datasets(without_raw)  # accepted
    checked = validate(without_raw)  # train's preflight: no data check on raw files that are gone
    assert [p for p in checked.problems if p.severity == "error"] == [] and "prepared set" in checked.summary["data"]
    shutil.copy(demo_data_path, folder / "part-1.jsonl")
    with pytest.raises(RecipeError, match=r"data_files\[.*part-1.jsonl\]"):
        prepared_datasets(parse_recipe(["--config", str(recipe), "--prepared", str(prepared)]))


def test_preprocess_refuses_a_stream_a_foreign_folder_and_an_existing_set_without_overwrite(
    tmp_path, llama_dir, demo_data_path
):
    recipe = write_recipe(
        tmp_path / "recipe.yaml", model_name_or_path=str(llama_dir), dataset_name=str(demo_data_path), output_dir="x"
    )
    stream = write_recipe(tmp_path / "stream.yaml", **yaml.safe_load(recipe.read_text()), dataset_streaming=True)
    from sft_recipes.config import parse_recipe
    from sft_recipes.preprocess import prepare

    with pytest.raises(RecipeError, match="a stream has no end"):
        prepare(parse_recipe(["--config", str(stream)]), str(tmp_path / "s"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RecipeError, match="is not a prepared set"):
        prepare(parse_recipe(["--config", str(recipe)]), str(foreign))
    prepared = tmp_path / "prepared"
    preprocess(recipe, prepared)
    with pytest.raises(RecipeError, match="--overwrite"):
        prepare(parse_recipe(["--config", str(recipe)]), str(prepared))
    preprocess(recipe, prepared, "--overwrite")
    assert (foreign / "notes.txt").read_text() == "mine"


def test_train_names_a_folder_that_is_not_a_prepared_set(tmp_path, llama_dir):
    from sft_recipes.config import parse_recipe
    from sft_recipes.preprocess import prepared_datasets

    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(llama_dir), dataset_name="gone.jsonl")
    with pytest.raises(RecipeError, match="not a prepared set"):
        prepared_datasets(parse_recipe(["--config", str(recipe), "--prepared", str(tmp_path)]))
