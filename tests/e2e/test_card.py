"""The model card every run writes (README.md): real base, method, data and figures, a loss curve, no placeholder,
no secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers.prepared import write_rows
from helpers.runs import train, write_recipe

from sft_recipes.card import CARD, MARKER, reproduce_command
from sft_recipes.launch import LAUNCH_ENV

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLACEHOLDER = "More Information Needed"  # PEFT's template, in every section it leaves empty
SECRET = "hf_cardOverrideSECRET424242"


def rows_of(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def test_a_full_fine_tune_card_names_the_base_the_data_file_its_rows_and_the_command(
    tmp_path, llama_dir, demo_data_path
):
    out = train(
        tmp_path, ("--learning_rate", "5.0e-4"), model_name_or_path=str(llama_dir), dataset_name=str(demo_data_path)
    )
    card = (out / CARD).read_text()
    assert MARKER in card and PLACEHOLDER not in card
    assert f"| base model | `{llama_dir}` |" in card
    assert "full fine-tune" in card and "LoRA" not in card
    assert f"| `{demo_data_path}` | train | {rows_of(demo_data_path):,} |" in card
    summary = json.loads((out / "run_summary.json").read_text())
    assert f"| steps | {summary['steps']} of 4 |" in card
    assert f"| tokens seen | {summary['tokens_seen']:,} |" in card
    assert f"| final train loss | {summary['final_loss']:.4f} " in card
    assert "| final eval loss | not evaluated |" in card
    assert "- max_length: 64; packing: off" in card
    assert f"sft-recipes train --config {tmp_path / 'recipe.yaml'} --learning_rate 5.0e-4" in card
    assert "library_name: transformers" in card and "base_model:" not in card  # a local base is no hub id
    assert "![loss" in card and "(report.png)" in card
    assert (out / "report.png").read_bytes().startswith(PNG_MAGIC)
    assert f"| trl | {summary['versions']['trl']} |" in card


def test_a_lora_card_names_the_wrapped_modules_the_eval_loss_and_keeps_a_cli_token_out(
    tmp_path, llama_dir, demo_data_path, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", "hf_placeholder")  # parse_recipe exports hub_token there; restored after
    out = train(
        tmp_path,
        ("--hub_token", SECRET),
        model_name_or_path=str(llama_dir),
        dataset_name=str(demo_data_path),
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
        eval_strategy="steps",
        eval_steps=2,
        test_split_size=16,
        merge_adapter=True,
    )
    card = (out / CARD).read_text()
    adapter = json.loads((out / "adapter_config.json").read_text())
    targets = ", ".join(sorted(adapter["target_modules"]))
    assert PLACEHOLDER not in card
    assert f"LoRA: r=4, alpha=8, dropout={adapter['lora_dropout']}; targets: {targets}" in card
    assert "library_name: peft" in card
    total = rows_of(demo_data_path)
    assert f"| `{demo_data_path}` | train | {total:,} |" in card
    assert f"{total - 16:,} for training, 16 for evaluation" in card
    state = json.loads((out / "trainer_state.json").read_text())
    last_eval = [h for h in state["log_history"] if "eval_loss" in h][-1]
    assert f"| final eval loss | {last_eval['eval_loss']:.4f} at step {last_eval['step']} |" in card
    assert "--hub_token '<redacted>'" in card
    leaked = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []

    merged = (out / "merged" / CARD).read_text()
    assert PLACEHOLDER not in merged and "(merged)" in merged and "library_name: transformers" in merged
    assert f"| `{demo_data_path}` | train | {total:,} |" in merged
    assert (out / "merged" / "report.png").read_bytes() == (out / "report.png").read_bytes()


def test_each_source_of_a_mixture_is_listed_with_the_rows_it_gave(tmp_path, llama_dir):
    from sft_recipes.card import data_sources
    from sft_recipes.config import parse_recipe

    chat = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(30)
    ]
    first = write_rows(tmp_path / "first.jsonl", chat)
    second = write_rows(tmp_path / "second.jsonl", chat[:10])
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        model_name_or_path=str(llama_dir),
        datasets=[
            {"path": str(first), "split": "train", "fraction": 0.75},
            {"path": str(second), "split": "train", "fraction": 0.25},
        ],
        output_dir=str(tmp_path / "out"),
    )
    sources = data_sources(parse_recipe(["--config", str(recipe)]), None)
    # fraction 3:1 of 30 and 10 rows: all 10 of the second limit the first to 30
    assert sources == [
        {"source": str(first), "split": "train", "rows": 30},
        {"source": str(second), "split": "train", "rows": 10},
    ]


@pytest.mark.parametrize("form", ["separate", "joined"])
def test_the_command_line_redacts_secret_values_and_keeps_the_topology_flags(tmp_path, monkeypatch, form):
    from sft_recipes.config import Recipe

    token = ["--hub_token", SECRET] if form == "separate" else [f"--hub_token={SECRET}"]
    recipe = Recipe(None, None, None, None, path="recipes/x/lora.yaml", overrides=["--max_steps", "9", *token])
    monkeypatch.setenv(LAUNCH_ENV, "--accelerate_config zero3 --num_processes 2")
    line = reproduce_command(recipe)
    assert SECRET not in line
    assert line.startswith(
        "sft-recipes train --config recipes/x/lora.yaml --accelerate_config zero3 --num_processes 2"
    )
    assert "--max_steps 9" in line and "<redacted>" in line


def test_without_matplotlib_the_card_says_how_to_get_the_curve(tmp_path, monkeypatch):
    import sft_recipes.environment
    from sft_recipes.card import draw_curve

    monkeypatch.setattr(sft_recipes.environment, "has_package", lambda name: name != "matplotlib")
    why = draw_curve(tmp_path, [{"loss": 1.0, "step": 1}], "run")
    assert why is not None and "matplotlib is not installed" in why and "sft-recipes[tracking]" in why
    assert not (tmp_path / "report.png").exists()


def test_launch_passes_its_topology_flags_to_the_ranks(tmp_path, monkeypatch):
    import subprocess

    from sft_recipes.launch import launch_if_requested

    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path="m", dataset_name="d.jsonl", use_cpu=True)
    seen = {}
    monkeypatch.setattr(subprocess, "call", lambda line, env: seen.update(env=env) or 0)
    flags = {"accelerate_config": "multi_gpu", "num_processes": "2"}
    assert launch_if_requested("train", flags, ["--config", str(recipe)]) == 0
    assert seen["env"][LAUNCH_ENV] == "--accelerate_config multi_gpu --num_processes 2"


def test_an_adapter_without_our_card_gets_a_merged_card_without_placeholders(tmp_path):
    from sft_recipes.card import write_merged_card

    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    adapter.mkdir()
    merged.mkdir()
    (adapter / CARD).write_text(f"---\nlibrary_name: peft\n---\n# Model Card\n\n{PLACEHOLDER}\n")
    text = write_merged_card(adapter, merged, "org/base").read_text()
    assert PLACEHOLDER not in text and "`org/base`" in text
    assert yaml.safe_load(text.split("---")[1]) == {"library_name": "transformers"}
