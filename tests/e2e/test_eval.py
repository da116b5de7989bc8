"""`sft-recipes eval`: after the demo training the tuned model beats its base on held-out rows, over exactly the
tokens train learns (assistant-only mask, packed or padded), for full runs, adapters and 4-bit bases; bad input
gives a clear error."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from sft_recipes.cli import main
from sft_recipes.tiny import ANSWER_TEMPLATE, CAPITALS


def run_eval(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["eval", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def eval_json(*argv) -> dict:
    code, out, err = run_eval(*argv, "--json")
    assert code == 0, err
    return json.loads(out)  # the whole of stdout: anything else printed there fails here


@pytest.fixture(scope="module")
def demo_eval(demo_run_dir, demo_heldout_file) -> dict:
    return eval_json(demo_run_dir, "--data", demo_heldout_file, "--n", "8")


def expected(prompt: str) -> str:
    country = next(c for c in CAPITALS if c in prompt)
    return ANSWER_TEMPLATE.format(country=country, city=CAPITALS[country])


def assistant_tokens(run_dir, data_file) -> int:
    """The tokens assistant_only_loss trains in the demo template: each answer and its <|im_end|>, counted here
    without TRL."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    answers = [row["messages"][-1]["content"] + "<|im_end|>" for row in rows]
    return sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)


def test_eval_on_the_demo_shows_the_tuned_model_below_the_base_loss_and_answering_exactly(
    demo_eval, demo_run_dir, demo_heldout_file
):
    base, tuned = demo_eval["base"], demo_eval["tuned"]
    assert tuned["loss"] < base["loss"] / 4
    assert tuned["exact_match"] == 1.0 > base["exact_match"] and tuned["rouge_l"] > base["rouge_l"]
    for figures in (base, tuned):
        assert math.isclose(figures["perplexity"], math.exp(figures["loss"]))
    # Only the answers are trained (assistant_only_loss): the loss is over them, not over the prompts.
    assert base["tokens"] == tuned["tokens"] == assistant_tokens(demo_run_dir, demo_heldout_file)
    assert demo_eval["run"]["rows"] == 40
    samples = demo_eval["samples"]
    assert len(samples) == 8
    for sample in samples:
        assert sample["reference"] == expected(sample["prompt"]) == sample["tuned"]
        assert sample["tuned_exact_match"] and sample["tuned_rouge_l"] == 1.0
        assert sample["base_exact_match"] == (sample["base"] == sample["reference"])


def test_the_terminal_table_shows_both_models_figures_and_every_sample(demo_eval):
    from sft_recipes.evaluation.command import render_text

    handle = io.StringIO()
    render_text(demo_eval, handle)
    lines = handle.getvalue().splitlines()
    loss = next(line for line in lines if "Loss" in line)
    assert f"{demo_eval['base']['loss']:.4f}" in loss and f"{demo_eval['tuned']['loss']:.4f}" in loss
    exact = next(line for line in lines if "Exact match" in line)
    assert exact.index("0%") < exact.index("100%")  # base, then tuned
    assert sum(line.count("ROUGE-L 1.00") for line in lines) >= len(demo_eval["samples"])  # each tuned answer


def test_the_loss_is_the_models_own_mean_over_the_labels_train_uses(tmp_path, demo_run_dir, demo_heldout_file):
    import torch

    from sft_recipes.evaluation.heldout import eval_recipe, load_rows, prepared_batches
    from sft_recipes.evaluation.scoring import token_loss
    from sft_recipes.trained import load_trained

    run = load_trained(demo_run_dir)
    recipe = eval_recipe(run.layout, None, ["--per_device_eval_batch_size", "1"])
    rows, _ = load_rows(recipe, str(demo_heldout_file))
    batches = list(prepared_batches(recipe, rows, run, str(tmp_path)))
    assert len(batches) == 40
    for batch in batches[:10]:
        total, count = token_loss(run.model, [batch])
        with torch.no_grad():
            hf = run.model(**batch, use_cache=False).loss  # transformers' causal-LM loss on the collator's labels
        assert count == int((batch["labels"][0, 1:] != -100).sum()) and count < batch["input_ids"].shape[1] / 2
        assert math.isclose(total / count, float(hf), rel_tol=1e-5)


def test_packed_rows_give_the_padded_loss(demo_eval, demo_run_dir, demo_heldout_file):
    """bfd packing makes padding-free batches: read as packed sequences, no row sees another."""
    packed = eval_json(demo_run_dir, "--data", demo_heldout_file, "--n", "0", "--packing", "true")
    for who in ("base", "tuned"):
        assert packed[who]["tokens"] == demo_eval[who]["tokens"]
        assert math.isclose(packed[who]["loss"], demo_eval[who]["loss"], rel_tol=1e-5)
        assert packed[who]["exact_match"] is None and packed["samples"] == []


def test_prompt_completion_rows_score_as_the_same_conversations(tmp_path, demo_eval, demo_run_dir, demo_heldout_file):
    rows = [json.loads(line) for line in demo_heldout_file.read_text().splitlines()]
    split = [{"prompt": row["messages"][:-1], "completion": row["messages"][-1:]} for row in rows]
    result = eval_json(demo_run_dir, "--data", write_rows(tmp_path / "pc.jsonl", *split), "--n", "2")
    for who in ("base", "tuned"):
        assert result[who]["tokens"] == demo_eval[who]["tokens"]
        assert math.isclose(result[who]["loss"], demo_eval[who]["loss"], rel_tol=1e-5)
    assert result["samples"] == demo_eval["samples"][:2]


def test_an_adapters_base_is_its_base_model_with_the_adapter_disabled(demo_eval, lora_run_dir, demo_heldout_file):
    result = eval_json(lora_run_dir, "--data", demo_heldout_file, "--n", "2")
    assert result["run"]["base"] == demo_eval["run"]["base"]
    # The same base model (demo_run_dir's) scored alone: the same loss over the same tokens.
    assert result["base"]["tokens"] == demo_eval["base"]["tokens"]
    assert math.isclose(result["base"]["loss"], demo_eval["base"]["loss"], rel_tol=1e-5)
    assert result["tuned"]["loss"] < result["base"]["loss"]


def test_a_qlora_checkpoint_is_scored_on_its_base_quantized_to_4_bit(demo_eval, qlora_run_dir, demo_heldout_file):
    result = eval_json(qlora_run_dir / "checkpoint-2", "--data", demo_heldout_file, "--n", "0")
    fp32 = demo_eval["base"]["loss"]
    assert result["base"]["loss"] != pytest.approx(fp32, rel=1e-5)  # NF4 weights, not the fp32 ones
    assert result["base"]["loss"] == pytest.approx(fp32, rel=0.1)
    assert result["tuned"]["loss"] < result["base"]["loss"]


def test_a_vlm_adapter_is_scored_on_its_image_rows_with_the_image_in_each_prompt(vlm_lora_run_dir, vlm_rows_file):
    from sft_recipes.evaluation.heldout import eval_recipe, first_samples, load_rows
    from sft_recipes.trained import load_trained

    result = eval_json(vlm_lora_run_dir, "--data", vlm_rows_file, "--n", "1")
    assert result["base"]["tokens"] == result["tuned"]["tokens"] > 0
    assert result["tuned"]["loss"] < result["base"]["loss"]
    assert result["samples"][0]["prompt"] == "What colour is this?"
    assert result["samples"][0]["reference"] == "It is red."
    run = load_trained(vlm_lora_run_dir)
    rows, _ = load_rows(eval_recipe(run.layout, None, []), str(vlm_rows_file))
    inputs = run.encode(first_samples(rows, 1)[0].prompt)
    assert inputs["pixel_values"].shape[0] == 1  # the row's image, set into its placeholder
    assert int((inputs["input_ids"] == run.tokenizer.convert_tokens_to_ids("<image>")).sum()) == 16


def test_config_scores_the_recipes_eval_split(caplog, demo_run_dir, demo_base_dir, demo_data_file):
    from sft_recipes.resources import demo_recipe

    recipe = ["--config", str(demo_recipe()), "--model_name_or_path", demo_base_dir, "--dataset_name", demo_data_file]
    result = eval_json(demo_run_dir, *recipe, "--test_split_size", "24", "--n", "3")
    assert result["run"]["rows"] == 24 and str(demo_recipe()) in result["run"]["data"]
    assert result["tuned"]["loss"] < result["base"]["loss"] and len(result["samples"]) == 3
    assert "rows of it were trained on" in caplog.text  # the demo trains with eval_strategy: no: nothing held out
    code, out, err = run_eval(demo_run_dir, *recipe)
    assert code == 2 and out == "" and "holds no rows out" in err and "--test_split_size" in err


def test_a_split_counts_as_held_out_only_when_the_run_split_it_off_the_same_way():
    from types import SimpleNamespace

    from sft_recipes.evaluation.heldout import held_out_by_training

    recipe = SimpleNamespace(training=SimpleNamespace(eval_strategy="no"), mixture=SimpleNamespace(test_split_size=24))
    assert held_out_by_training({"eval_strategy": "steps", "test_split_size": 24}, recipe)
    assert not held_out_by_training({"eval_strategy": "steps", "test_split_size": 0.1}, recipe)
    assert not held_out_by_training({"test_split_size": 24}, recipe)  # train's default: no evaluation, no split
    assert not held_out_by_training({}, recipe)  # no recipe.yaml: the recipe given trains without evaluation
    recipe.training.eval_strategy = "epoch"
    assert held_out_by_training({}, recipe)


def test_a_recorded_base_that_is_gone_is_named_and_base_replaces_it(tmp_path, demo_eval, demo_run_dir, demo_base_dir):
    run_dir = shutil.copytree(demo_run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint-*"))
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe["model_name_or_path"] = str(tmp_path / "moved")
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    row = {"messages": [{"role": "user", "content": "capital of Peru?"}, {"role": "assistant", "content": ""}]}
    row["messages"][1]["content"] = expected("Peru")
    rows = ["--data", write_rows(tmp_path / "rows.jsonl", row)]
    code, out, err = run_eval(run_dir, *rows, "--n", "0")
    assert code == 2 and out == ""
    assert "model_name_or_path" in err and str(tmp_path / "moved") in err and "--base" in err
    result = eval_json(run_dir, *rows, "--n", "1", "--base", demo_base_dir)
    assert result["run"]["base"] == str(demo_base_dir) and result["samples"][0]["tuned_exact_match"]
    assert result["tuned"]["loss"] < result["base"]["loss"]


def test_secrets_recipe_yaml_redacted_never_replace_the_environments(tmp_path, monkeypatch, demo_run_dir):
    from sft_recipes.evaluation.heldout import eval_recipe
    from sft_recipes.trained import locate_run

    run_dir = shutil.copytree(demo_run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint-*"))
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe.update(env={"HF_TOKEN": "<redacted>", "EVAL_FLAG": "1"}, hub_token="<redacted>")
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.setenv("HF_TOKEN", "hf_working")
    monkeypatch.setenv("EVAL_FLAG", "0")
    eval_recipe(locate_run(run_dir), None, [])
    assert os.environ["HF_TOKEN"] == "hf_working" and os.environ["EVAL_FLAG"] == "1"  # the plain env still applies
    monkeypatch.delenv("HF_TOKEN")
    eval_recipe(locate_run(run_dir), None, [])
    assert "HF_TOKEN" not in os.environ


def write_rows(path, *rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_bad_input_is_a_clear_error(tmp_path, demo_run_dir, monkeypatch):
    user_only = write_rows(tmp_path / "user.jsonl", {"messages": [{"role": "user", "content": "Hi"}]})
    text = write_rows(tmp_path / "text.jsonl", {"text": "Just text."})
    (tmp_path / "notes").mkdir()
    cases = [
        ((demo_run_dir,), "no held-out rows: give --data FILE or --config RECIPE"),
        ((tmp_path / "notes", "--data", text), "not a run"),
        ((demo_run_dir, "--data", tmp_path / "none.jsonl"), "none.jsonl does not exist"),
        ((demo_run_dir, "--data", user_only), "user.jsonl[row 0]: messages has no assistant turn"),
        ((demo_run_dir, "--data", text), "plain text (columns: text): no assistant turns"),
        ((demo_run_dir, "--data", text, "--json", "--format", "html"), "--json: conflicts with --format html"),
        ((tmp_path / "notes", "--data", text, "--n", "-1"), "--n: -1 is below 0"),
    ]
    for argv, message in cases:
        code, out, err = run_eval(*argv)
        assert code == 2 and out == "" and message in err, (argv, err)
    monkeypatch.setitem(sys.modules, "rouge_score", None)
    code, _, err = run_eval(demo_run_dir, "--data", text)
    assert code == 2 and "pip install 'sft-recipes[eval]'" in err


def test_eval_of_a_folder_that_is_not_a_run_exits_2_without_traceback(tmp_path):
    (tmp_path / "rows.jsonl").write_text("{}\n")
    done = subprocess.run(
        [sys.executable, "-m", "sft_recipes", "eval", str(tmp_path), "--data", str(tmp_path / "rows.jsonl")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "not a run" in done.stderr and "Traceback" not in done.stderr
