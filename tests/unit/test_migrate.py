"""`sft-recipes migrate`: comments, key order and OLD.yaml survive; each rename does what the library now reads; the
strict parser's hints quote the same table (sft_recipes.renames)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

FIXTURES = Path(__file__).parents[1] / "fixtures" / "foreign_recipes"
ZEPHYR = FIXTURES / "alignment-handbook" / "zephyr-7b-beta_sft_config_full.yaml"


@pytest.fixture(scope="module")
def known():
    from sft_recipes.migrate.command import known_keys

    return known_keys()


def migrated(text: str, known, tmp_path: Path):
    from sft_recipes.migrate.rules import migrate_text

    return migrate_text(text, (tmp_path / "new.jinja", str(tmp_path / "new.jinja")), known)


def comments(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def test_comments_key_order_and_untouched_lines_survive(known, tmp_path):
    text = ZEPHYR.read_text().replace("bf16: true", "bf16: true  # a comment of ours")
    result = migrated(text, known, tmp_path)
    new = result.text
    assert comments(new) == comments(text)
    assert "bf16: true  # a comment of ours" in new.splitlines()
    renamed = {"torch_dtype": "dtype", "max_seq_length": "max_length", "warmup_ratio": "warmup_steps"}
    renamed |= {"chat_template": "chat_template_path", "dataset_mixture": "datasets"}
    expected = [renamed.get(key, key) for key in yaml.safe_load(text)]
    expected.insert(expected.index("datasets") + 1, "test_split_size")  # lifted out of the mixture, in place
    assert list(yaml.safe_load(new)) == expected
    old_lines = set(text.splitlines())
    untouched = [line for line in new.splitlines() if line in old_lines]
    assert len(untouched) >= len(text.splitlines()) - 20  # only the lines of migrated keys differ


def test_old_recipe_is_never_modified_and_new_files_are_not_overwritten_without_force(tmp_path, capsys):
    from sft_recipes.cli import main

    old = tmp_path / "old.yaml"
    old.write_bytes(ZEPHYR.read_bytes())
    before = (old.read_bytes(), os.stat(old).st_mtime_ns)
    new = tmp_path / "new.yaml"
    assert main(["migrate", str(old), "-o", str(new)]) == 0
    assert (tmp_path / "new.jinja").is_file() and yaml.safe_load(new.read_text())["chat_template_path"]
    migrated = new.read_text()
    new.write_text("edited by hand\n")
    assert main(["migrate", str(old), "-o", str(new)]) == 2
    assert "pass --force" in capsys.readouterr().err and new.read_text() == "edited by hand\n"
    assert main(["migrate", str(old), "-o", str(new), "--force"]) == 0
    assert new.read_text() == migrated
    assert main(["migrate", str(old), "-o", str(old), "--force"]) == 2
    assert (old.read_bytes(), os.stat(old).st_mtime_ns) == before


def test_without_output_the_recipe_goes_to_stdout_and_the_changes_to_stderr(tmp_path, capsys):
    from sft_recipes.cli import main

    old = tmp_path / "old.yaml"
    old.write_text("model_name_or_path: m\ndataset_name: d\ntorch_dtype: bfloat16  # weights\n")
    assert main(["migrate", str(old)]) == 0
    out, err = capsys.readouterr()
    assert out == "model_name_or_path: m\ndataset_name: d\ndtype: bfloat16  # weights\n"
    assert "line 3: torch_dtype -> dtype: transformers 5" in err


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("torch_dtype: bfloat16", "dtype: bfloat16"),
        ("max_seq_length: 2048", "max_length: 2048"),
        ("evaluation_strategy: epoch", "eval_strategy: epoch"),
        ("no_cuda: true", "use_cpu: true"),
        ("push_to_hub_token: hf_x", "hub_token: hf_x"),
        ("use_flash_attention_2: true", "attn_implementation: flash_attention_2"),
        ("use_flash_attention_2: false", "attn_implementation: sdpa"),
        ("packing_strategy: ffd", "packing_strategy: bfd"),
        ("packing_strategy: bfd-requeue", "packing_strategy: bfd_split"),
        ("preprocessing_num_workers: 12", "dataset_num_proc: 12"),
        ("hub_model_revision: v00.00", "hub_revision: v00.00"),
        ("dataset_configs:\n- all", "dataset_config: all"),
        ("eval_strategy: no", 'eval_strategy: "no"'),
        ("use_liger: true", ""),
        ("wandb_project: open-r1", "env:\n  WANDB_PROJECT: open-r1"),
    ],
)
def test_each_old_key_becomes_todays(old, new, known, tmp_path):
    result = migrated(f"model_name_or_path: m\n{old}\ndataset_name: d\n", known, tmp_path)
    assert result.text == f"model_name_or_path: m\n{new + chr(10) if new else ''}dataset_name: d\n"
    assert result.changes and not result.unknown


def test_flash_attention_that_was_off_stays_off_in_the_migration_and_in_the_hint(known, tmp_path):
    from sft_recipes.config import did_you_mean

    result = migrated("use_flash_attention_2: false\n", known, tmp_path)
    assert yaml.safe_load(result.text) == {"attn_implementation": "sdpa"}
    assert "flash attention stays off" in str(result.changes[0])
    assert "flash_attention_2" not in did_you_mean("use_flash_attention_2", known, False).replace(
        "use_flash_attention_2", ""
    )


def test_warmup_ratio_becomes_warmup_steps_that_transformers_reads_as_the_same_ratio(known, tmp_path):
    from sft_recipes.config import parse_recipe

    result = migrated("model_name_or_path: m\ndataset_name: d\nwarmup_ratio: 0.1\n", known, tmp_path)
    (tmp_path / "r.yaml").write_text(result.text)
    training = parse_recipe(["--config", str(tmp_path / "r.yaml")]).training
    assert training.get_warmup_steps(1000) == 100  # transformers' own arithmetic, as warmup_ratio: 0.1 gave


def test_mixture_weights_become_split_slices_and_only_exact_ones_pass_unflagged(known, tmp_path):
    text = """dataset_mixture:
  datasets:
    - id: a
      split: train_sft
      weight: 1.0
    - id: b
      weight: 0.25
    - id: c
      split: train
      weight: 0.106  # about 10k rows
    - id: d
      weight: 0
  test_split_size: 0.1
  seed: 0
"""
    result = migrated(text, known, tmp_path)
    assert yaml.safe_load(result.text) == {
        "datasets": [
            {"path": "a", "split": "train_sft"},
            {"path": "b", "split": "train[:25%]"},
            {"path": "c", "split": "train[:11%]"},
        ],
        "test_split_size": 0.1,
    }
    assert "split: 'train[:11%]'  # about 10k rows" in result.text
    flagged = {c.what: c.review for c in result.changes if "weight" in c.what}
    assert flagged == {
        "weight 1.0 removed": False,
        "weight 0.25 -> split train[:25%]": True,  # first rows, where alignment-handbook drew a seeded sample
        "weight 0.106 -> split train[:11%]": True,
        "an entry of weight 0 removed": False,
    }


def test_legacy_mixer_of_several_datasets_turns_evaluation_off_and_says_why(known, tmp_path):
    text = "dataset_mixer:\n  a: 1.0\n  b: 0.5\ndataset_splits:\n- train_sft\n- test_sft\nevaluation_strategy: epoch\n"
    result = migrated(text, known, tmp_path)
    assert yaml.safe_load(result.text) == {
        "datasets": [{"path": "a", "split": "train_sft"}, {"path": "b", "split": "train_sft[:50%]"}],
        "eval_strategy": "no",
    }
    assert any(c.review and "no separate evaluation datasets" in c.reason for c in result.changes)


@pytest.mark.parametrize(
    ("key", "value", "says", "never"),
    [
        ("dataset_mixture", {"datasets": [{"id": "x"}]}, "sft-recipes migrate", "remove it"),
        ("chat_template", "{{ messages }}", "chat_template_path takes a path, not the template text", "remove it"),
        ("push_to_hub_token", "hf_x", "use `hub_token`", "push_to_hub`"),
        ("use_flash_attention_2", False, "attn_implementation: sdpa", "attn_implementation: flash_attention_2"),
        ("max_seq_length", 512, "use `max_length`", "remove it"),
    ],
)
def test_strict_parser_hints_come_from_the_rename_table(key, value, says, never, tmp_path):
    from sft_recipes.config import parse_recipe
    from sft_recipes.errors import RecipeError

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model_name_or_path": "m", "dataset_name": "d", key: value}))
    with pytest.raises(RecipeError) as raised:
        parse_recipe(["--config", str(recipe)])
    (problem,) = [p for p in raised.value.problems if key in p.where]
    assert says in problem.fix and never not in problem.fix, problem.fix


def test_every_table_entry_names_its_source_and_a_reason():
    from sft_recipes.migrate.rules import RULES
    from sft_recipes.renames import RENAMED, VALUES

    for entry in RENAMED.values():
        assert entry.reason and entry.source and entry.action in RULES, entry
    assert all(reason and source for _, reason, source in VALUES.values())


def test_a_llama_factory_lora_rank_becomes_lora_r(known, tmp_path):
    new = yaml.safe_load(migrated("model_name_or_path: x\nuse_peft: true\nlora_rank: 16\n", known, tmp_path).text)
    assert new == {"model_name_or_path": "x", "use_peft": True, "lora_r": 16}
