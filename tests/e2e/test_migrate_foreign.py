"""Every public alignment-handbook and open-r1 SFT recipe shape migrates to a recipe that parses strictly, validates,
and (two representative ones) trains, once its model and data are swapped for local tiny ones.

The fixtures under tests/fixtures/foreign_recipes/ keep each public recipe's keys, order, nesting and comments; each
names its source in its header. Only what ties a recipe to a machine or to the hub is swapped before validate/train:
the model, the data (path, config name, split names; `columns` kept), and max_steps, output_dir, use_cpu,
report_to, push_to_hub, dataset_num_proc, tf32 (no TF32 on a CPU); to train, also max_length, capped at the tiny
model's context (a recipe's 65536 would pack the whole data set into one sequence, quadratic on a CPU).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

FIXTURES = Path(__file__).parents[1] / "fixtures" / "foreign_recipes"
RECIPES = sorted(FIXTURES.glob("*/*.yaml"))
# Recipes whose data cannot be swapped for local rows: the smolagents fork's `texts` rows are no format TRL reads.
NOT_VALIDATED = {"Qwen2.5-VL-3B-Instruct_sft_config_agent"}
TRAINED = ("zephyr-7b-beta_sft_config_qlora", "smollm3_sft_sft")
CONTEXT = 256  # sft_recipes.tiny.build_causal_lm's max_position_embeddings


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny llama and a directory of `train.jsonl` and `test.jsonl` conversational rows, enough of them for the
    recipes' own row counts and slices (test_split_size: 1000, a 1% share) to hold."""
    from sft_recipes.tiny import build_causal_lm, build_tokenizer, demo_rows

    root = tmp_path_factory.mktemp("foreign")
    model = build_causal_lm("llama", root / "llama", tokenizer=build_tokenizer())
    data = root / "data"
    data.mkdir()
    for split, rows in (("train", demo_rows(1000)), ("test", demo_rows(200, seed=1))):
        with (data / f"{split}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps({**row, "chat_template_kwargs": {"enable_thinking": False}}) + "\n")
    return {"model": model, "data": data}


def migrate(path: Path, out_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    from sft_recipes.cli import main

    new = out_dir / f"{path.stem}.yaml"
    assert main(["migrate", str(path), "-o", str(new)]) == 0
    return new, capsys.readouterr().err


def localize(recipe: dict, local: dict[str, Path], out: Path, context: int | None = None) -> dict:
    """The migrated recipe with its model and data swapped for local ones, sized for a CPU; `context` caps
    max_length."""
    recipe = dict(recipe)
    if context is not None:
        recipe["max_length"] = min(recipe.get("max_length") or context, context)
    recipe["model_name_or_path"] = str(local["model"])
    if "tokenizer_name_or_path" in recipe:
        recipe["tokenizer_name_or_path"] = str(local["model"])
    if "datasets" in recipe:
        recipe["datasets"] = [
            {**{k: v for k, v in d.items() if k != "name"}, "path": str(local["data"]), "split": _local_split(d)}
            for d in recipe["datasets"]
        ]
    else:
        recipe["dataset_name"] = str(local["data"])
        recipe.pop("dataset_config", None)
        recipe.update(dataset_train_split="train", dataset_test_split="test")
    recipe.pop("tf32", None)
    recipe.update(
        max_steps=2, output_dir=str(out), use_cpu=True, report_to="none", push_to_hub=False, dataset_num_proc=None
    )
    return recipe


def _local_split(entry: dict) -> str:
    """`train_sft[:50%]` -> `train[:50%]`: the local directory's split of the same kind, with the same slice."""
    name, _, cut = str(entry.get("split", "train")).partition("[")
    return ("test" if "test" in name else "train") + (f"[{cut}" if cut else "")


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_foreign_recipe_migrates_to_keys_the_strict_parser_accepts(path, tmp_path, capsys):
    from sft_recipes.config import parse_recipe
    from sft_recipes.renames import RENAMED

    original = path.read_bytes()
    new, err = migrate(path, tmp_path, capsys)
    assert path.read_bytes() == original
    migrated = yaml.safe_load(new.read_text())
    assert not set(migrated) & set(RENAMED), err
    source = re.search(r"huggingface/\S+ recipes/\S+\.yaml", path.read_text()).group(0)
    assert source in new.read_text()  # the header comment naming the source survives
    no_tf32 = ["--tf32", "false"] if migrated.get("tf32") else []  # TrainingArguments refuses TF32 without a GPU
    recipe = parse_recipe(["--config", str(new), *no_tf32])
    for key, value in migrated.items():
        if key != "datasets" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            assert str(recipe.raw[key]).lower() == str(value).lower() or key == "report_to", key
    if "chat_template" in yaml.safe_load(original):
        template = Path(migrated["chat_template_path"])
        assert template.read_text() == yaml.safe_load(original)["chat_template"]


@pytest.mark.parametrize("path", [p for p in RECIPES if p.stem not in NOT_VALIDATED], ids=_id)
def test_migrated_foreign_recipe_validates_on_a_local_model_and_data(path, tmp_path, capsys, local):
    from sft_recipes.cli import main

    new, _ = migrate(path, tmp_path, capsys)
    recipe = localize(yaml.safe_load(new.read_text()), local, tmp_path / "out")
    new.write_text(yaml.safe_dump(recipe, sort_keys=False))
    code = main(["validate", "--config", str(new)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"{new}: OK") and "trained tokens" in out, out


@pytest.mark.parametrize("stem", TRAINED)
def test_representative_migrated_recipe_trains_its_steps(stem, tmp_path, capsys, local):
    from sft_recipes.cli import main

    path = next(p for p in RECIPES if p.stem == stem)
    new, _ = migrate(path, tmp_path, capsys)
    out = tmp_path / "out"
    new.write_text(yaml.safe_dump(localize(yaml.safe_load(new.read_text()), local, out, CONTEXT), sort_keys=False))
    assert main(["train", "--config", str(new)]) == 0, capsys.readouterr().err
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    weights = ("adapter_model.safetensors",) if "qlora" in stem else ("model.safetensors",)
    assert all((out / name).is_file() for name in weights), sorted(p.name for p in out.iterdir())
