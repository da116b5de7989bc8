"""`sft-recipes inspect`: shows exactly the first batch training gets, counts right, warns about what would go wrong,
pre-tokenizes for train (datasets cache), and never reads weights."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from helpers.prepared import recipe_for

ANSWERS = ["Yes.", "No, not at all.", "Maybe later today.", "Four.", "It is blue.", "Ok."]
CHATS = [
    {"messages": [{"role": "user", "content": f"Question number {i}?"}, {"role": "assistant", "content": a}]}
    for i, a in enumerate(ANSWERS * 2)
]


def row_ids(example):
    return [piece.id for piece in example.pieces for _ in range(piece.count) if piece.kind != "pad"]


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_inspect_shows_exactly_the_first_batch_training_gets(packing, tmp_path, llama_dir, monkeypatch):
    import torch
    from trl import SFTTrainer

    from sft_recipes.inspection.command import inspect_recipe
    from sft_recipes.inspection.meta_trainer import build_trainer
    from sft_recipes.train import run

    keys = {"per_device_train_batch_size": 4, "max_steps": 1, "assistant_only_loss": True, "packing": packing}
    recipe = recipe_for(tmp_path, llama_dir, CHATS, **keys)
    inspection = inspect_recipe(recipe, n=4)
    cached = {
        c["filename"]: os.path.getmtime(c["filename"])
        for c in build_trainer(recipe, str(tmp_path / "i"))[0].train_dataset.cache_files
    }
    seen = []
    compute_loss = SFTTrainer.compute_loss

    def capture(self, model, inputs, *args, **kwargs):
        seen.append({k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)})
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "compute_loss", capture)
    trainer = run(recipe)
    batch = seen[0]
    if packing:  # one flat row: the shown rows one after the other, position_ids restarting per document
        assert sum((row_ids(e) for e in inspection.examples), []) == batch["input_ids"][0].tolist()
        starts = batch["position_ids"] == 0
        lengths = [batch["input_ids"].shape[1]]
    else:
        lengths = batch["attention_mask"].sum(1).tolist()
        assert [row_ids(e) for e in inspection.examples] == [
            r[:n].tolist() for r, n in zip(batch["input_ids"], lengths, strict=True)
        ]
        starts = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        starts[:, 0] = True
    trained = (batch["labels"] != -100) & ~starts  # what the loss scores (labels shift by one)
    expected = [flag for row, n in zip(trained, lengths, strict=True) for flag in row[:n].tolist()]
    assert [p.trained for e in inspection.examples for p in e.pieces if p.kind != "pad"] == expected
    assert any(expected) and not all(expected)
    # inspect tokenized for train: train read the same cache files back, untouched.
    assert {c["filename"] for c in trainer.train_dataset.cache_files} == set(cached)
    assert all(os.path.getmtime(name) == mtime for name, mtime in cached.items())


def test_statistics_count_what_the_dataloader_yields(tmp_path, llama_dir):
    from sft_recipes.inspection.command import inspect_recipe
    from sft_recipes.inspection.meta_trainer import build_trainer

    long = {
        "messages": [{"role": "user", "content": "Tell me a story. " * 12}, {"role": "assistant", "content": "No."}]
    }
    rows = [*CHATS, long]
    recipe = recipe_for(
        tmp_path,
        llama_dir,
        rows,
        max_length=48,
        per_device_train_batch_size=3,
        gradient_accumulation_steps=2,
        assistant_only_loss=True,
    )
    stats = inspect_recipe(recipe, n=1).statistics
    trainer, _, _ = build_trainer(recipe, str(tmp_path / "again"))
    batches = list(trainer.get_train_dataloader())
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    trained = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    assert stats["examples"] == len(rows)
    assert stats["truncated_examples"] == 1 and stats["dropped_examples"] == 1  # only its prompt fits
    assert stats["batches_per_epoch"] == len(batches) == 4 and stats["optimizer_steps_per_epoch"] == 2
    assert stats["tokens"] == real and stats["trained_tokens"] == trained
    assert stats["packing_efficiency"] == pytest.approx(real / sum(b["input_ids"].numel() for b in batches))
    assert stats["tokens_per_example"]["max"] > 48 > stats["tokens_per_example"]["median"]


def test_packing_statistics_fill_rows_without_padding(tmp_path, llama_dir):
    from sft_recipes.inspection.command import inspect_recipe

    recipe = recipe_for(tmp_path, llama_dir, CHATS, max_length=64, packing=True, per_device_train_batch_size=2)
    inspection = inspect_recipe(recipe, n=1)
    stats = inspection.statistics
    assert stats["packing_efficiency"] == 1.0 and stats["documents_per_row"] > 1
    assert len(inspection.examples[0].documents) > 1
    assert any("isolated" in check for check in inspection.checks)


def chatml_without(marker_around_end: bool) -> str:
    """The shipped ChatML with <|im_end|> moved outside {% generation %} (so it is never trained), or without
    generation markers at all."""
    from sft_recipes.tiny import chatml_template

    template = chatml_template()
    if marker_around_end:
        return template.replace(
            "{{- '<|im_end|>' -}}\n        {%- endgeneration -%}",
            "{%- endgeneration -%}\n        {{- '<|im_end|>' -}}",
        )
    return template.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    """A base model whose tokenizer ends text with <|endoftext|> while its chat template ends turns with <|im_end|>."""
    from sft_recipes.tiny import build_causal_lm, build_tokenizer

    tokenizer = build_tokenizer(eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return build_causal_lm("llama", tmp_path_factory.mktemp("base"), tokenizer=tokenizer)


def problems_of(tmp_path, model_dir, rows=CHATS, template=None, **keys):
    from sft_recipes.inspection.command import inspect_recipe

    if template is not None:
        (tmp_path / "template.jinja").write_text(template)
        keys["chat_template_path"] = str(tmp_path / "template.jinja")
    inspection = inspect_recipe(recipe_for(tmp_path, model_dir, rows, **keys), n=1)
    return {p.where for p in inspection.problems}, inspection


def test_a_clean_recipe_has_no_warning(tmp_path, llama_dir):
    wheres, inspection = problems_of(tmp_path, llama_dir, assistant_only_loss=True)
    assert wheres == set()
    assert len(inspection.checks) >= 3


def test_warns_when_generation_would_not_stop_at_the_templates_end_of_turn(tmp_path, base_model_dir):
    wheres, inspection = problems_of(tmp_path / "base", base_model_dir, assistant_only_loss=True)
    assert "eos_token" in wheres
    assert any(p.fix == "set eos_token: <|im_end|>" for p in inspection.problems)
    wheres, _ = problems_of(tmp_path / "fixed", base_model_dir, assistant_only_loss=True, eos_token="<|im_end|>")
    assert wheres == set()


def test_warns_when_the_end_of_turn_token_is_outside_the_loss(tmp_path, llama_dir):
    wheres, inspection = problems_of(tmp_path, llama_dir, template=chatml_without(True), assistant_only_loss=True)
    assert "loss mask" in wheres
    message = next(p.message for p in inspection.problems if p.where == "loss mask")
    assert message.startswith(f"{len(CHATS)} of {len(CHATS)} whole documents never train the stop token <|im_end|>")


def test_assistant_only_loss_without_generation_markers_is_refused_like_training_would(tmp_path, llama_dir):
    from sft_recipes.errors import RecipeError

    with pytest.raises(RecipeError, match="TRL refuses"):
        problems_of(tmp_path, llama_dir, template=chatml_without(False), assistant_only_loss=True)


def test_warns_about_trained_prompts_and_documents_with_nothing_to_learn(tmp_path, llama_dir):
    prompt_only = {
        "messages": [{"role": "user", "content": "Long prompt. " * 30}, {"role": "assistant", "content": "A"}]
    }
    wheres, _ = problems_of(
        tmp_path / "a", llama_dir, rows=[*CHATS, prompt_only], packing=True, max_length=48, assistant_only_loss=True
    )
    assert {"data", "max_length"} <= wheres  # packing keeps the cut document, with no trained token left
    wheres, _ = problems_of(tmp_path / "b", llama_dir)
    assert wheres == {"assistant_only_loss"}


def test_inspect_never_reads_weights_and_writes_json_html_and_text(tmp_path, llama_dir, capsys):
    from sft_recipes.cli import main

    model = tmp_path / "no-weights"
    shutil.copytree(llama_dir, model, ignore=shutil.ignore_patterns("*.safetensors"))
    recipe = recipe_for(tmp_path, model, CHATS, assistant_only_loss=True).path
    assert main(["inspect", "--config", recipe, "-n", "2", "--format", "json", "--out", str(tmp_path / "i.json")]) == 0
    data = json.loads((tmp_path / "i.json").read_text())
    assert len(data["examples"]) == 2 and data["statistics"]["examples"] == len(CHATS) and data["problems"] == []
    assert main(["inspect", "--config", recipe, "--format=html", "--out", str(tmp_path / "i.html")]) == 0
    page = (tmp_path / "i.html").read_text()
    assert "class='tr" in page and "&lt;|im_end|&gt;" in page
    assert "src=" not in page and "<link" not in page and "<script" not in page  # self-contained
    assert main(["inspect", "--config", recipe, "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "tokens trained" in out and "<|im_end|>" in out and "row 1" in out and "row 2" not in out


@pytest.mark.parametrize(("argv", "where"), [(["-n", "0"], "-n"), (["--format", "pdf"], "--format")])
def test_bad_inspect_options_are_clean_errors(argv, where, tmp_path, llama_dir, capsys):
    from sft_recipes.cli import main

    recipe = recipe_for(tmp_path, llama_dir, CHATS).path
    assert main(["inspect", "--config", recipe, *argv]) == 2
    assert where in capsys.readouterr().err


def test_meta_skeleton_builds_inside_a_zero3_launch_and_leaves_zero3_on(llama_dir):
    """Under `accelerate launch` with ZeRO-3, from_config would try to partition meta tensors with zero.Init."""
    from types import SimpleNamespace

    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    from sft_recipes.inspection.meta_trainer import build_meta_model

    # transformers holds the config by weak reference: it counts as a ZeRO-3 launch while `launch` is alive
    launch = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    try:
        assert is_deepspeed_zero3_enabled()
        model = build_meta_model(
            SimpleNamespace(model_name_or_path=str(llama_dir), model_revision="main", cache_dir=None),
            SimpleNamespace(trust_remote_code=False),
            "causal_lm",
        )
        assert all(p.device.type == "meta" for p in model.parameters())
        assert is_deepspeed_zero3_enabled()
    finally:
        unset_hf_deepspeed_config()
        del launch
