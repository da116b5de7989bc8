"""inspect's and validate's diagnostics say what TRL really does: truncation by packing strategy, the loss of
prompt-completion data, JSON alone on stdout; and VLM training switches the language model's cache off too."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.prepared import recipe_for, write_rows
from helpers.runs import write_recipe

LONG = [
    {"messages": [{"role": "user", "content": f"Tell me about {i}."}, {"role": "assistant", "content": text}]}
    for i, text in enumerate(["A long reply that goes on and on about many things. " * 3, "Short.", "Also short."])
]
PROMPT_COMPLETION = [
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Question {i}?"}],
        "completion": [{"role": "assistant", "content": answer}],
    }
    for i, answer in enumerate(["Yes.", "No.", "Maybe.", "Later."])
]


@pytest.mark.parametrize("packing", ["off", "bfd", "bfd_split", "wrapped"])
def test_truncation_advice_matches_what_the_packing_strategy_keeps(packing, tmp_path, llama_dir):
    from sft_recipes.inspection.command import inspect_recipe
    from sft_recipes.inspection.meta_trainer import build_trainer, prepare_whole

    keys = {"max_length": 24, "assistant_only_loss": True}
    if packing != "off":
        keys.update(packing=True, packing_strategy=packing)
    recipe = recipe_for(tmp_path, llama_dir, LONG, **keys)
    problem = next(p for p in inspect_recipe(recipe, n=1).problems if p.where == "max_length")
    trainer, raw, _ = build_trainer(recipe, str(tmp_path / "i"))
    kept = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    whole = sum(len(ids) for ids in prepare_whole(trainer, raw)["input_ids"])
    drops = kept < whole
    assert ("never trained" in problem.message) == drops, (problem.message, kept, whole)
    if drops:  # the advice names the strategy that keeps the text, and that strategy does keep it
        assert "packing_strategy: bfd_split" in problem.fix
        split = recipe_for(
            tmp_path / "split", llama_dir, LONG, **{**keys, "packing": True, "packing_strategy": "bfd_split"}
        )
        trainer, raw, _ = build_trainer(split, str(tmp_path / "j"))
        assert sum(len(ids) for ids in trainer.train_dataset["input_ids"]) == whole
    else:
        assert "bfd_split" not in problem.fix


@pytest.mark.parametrize("completion_only_loss", [None, False])
def test_prompt_completion_warnings_match_the_tokens_trained(completion_only_loss, tmp_path, llama_dir):
    from sft_recipes.inspection.command import inspect_recipe
    from sft_recipes.inspection.meta_trainer import build_trainer

    keys = {} if completion_only_loss is None else {"completion_only_loss": completion_only_loss}
    recipe = recipe_for(tmp_path, llama_dir, PROMPT_COMPLETION, **keys)
    inspection = inspect_recipe(recipe, n=1)
    trainer, _, _ = build_trainer(recipe, str(tmp_path / "i"))
    labels = trainer.train_dataset[0]["labels"]
    prompt_trained = labels[1] != -100  # the prompt (system turn first) opens every row
    warned = [p for p in inspection.problems if "prompts" in p.message or "user and system turns" in p.message]
    assert bool(warned) == prompt_trained
    assert (inspection.settings["loss on"] == "completion only") == (not prompt_trained)
    if not prompt_trained:
        assert any("only the completions are trained" in check for check in inspection.checks)
        assert not any(p.where == "assistant_only_loss" for p in inspection.problems)
    else:
        assert [p.where for p in warned] == ["completion_only_loss"]


def test_inspect_json_on_stdout_parses_even_when_a_library_prints_there(tmp_path, llama_dir, capsys, monkeypatch):
    from trl import SFTTrainer

    from sft_recipes.cli import main

    init = SFTTrainer.__init__

    def noisy(self, *args, **kwargs):
        print("Setting accelerator to CPU.")  # what DeepSpeed's import prints, on stdout
        init(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "__init__", noisy)
    recipe = recipe_for(tmp_path, llama_dir, LONG, assistant_only_loss=True).path
    capsys.readouterr()
    assert main(["inspect", "--config", recipe, "-n", "1", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["recipe"] == recipe
    assert "Setting accelerator" in err


def test_inspect_json_from_a_fresh_process_is_json_alone(tmp_path, llama_dir):
    """The real thing: a new interpreter, where every library import (DeepSpeed's among them) happens once."""
    recipe = recipe_for(tmp_path, llama_dir, LONG, assistant_only_loss=True).path
    done = subprocess.run(
        [sys.executable, "-m", "sft_recipes", "inspect", "--config", recipe, "-n", "1", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["statistics"]["examples"] == len(LONG)


def test_vlm_training_turns_the_language_models_cache_off_and_the_saved_model_turns_it_on(
    tmp_path, vlm_dirs, monkeypatch
):
    from PIL import Image
    from trl import SFTTrainer

    from sft_recipes.cli import main

    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    row = {
        "images": ["red.png"],
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
        ],
    }
    data = write_rows(tmp_path / "vision.jsonl", [row] * 2)
    seen: list[tuple[bool, bool]] = []
    compute_loss = SFTTrainer.compute_loss

    def capture(self, model, inputs, *args, **kwargs):
        config = self.model.config
        seen.append((config.use_cache, config.get_text_config().use_cache))
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "compute_loss", capture)
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "r.yaml",
        model_name_or_path=str(vlm_dirs["llava"]),
        dataset_name=str(data),
        max_length=None,
        max_steps=1,
        per_device_train_batch_size=2,
        output_dir=str(out),
    )
    assert main(["train", "--config", str(recipe)]) == 0
    assert seen and seen[0] == (False, False)
    saved = json.loads((out / "config.json").read_text())
    assert saved["use_cache"] is True and saved["text_config"]["use_cache"] is True
