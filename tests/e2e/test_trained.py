"""sft_recipes.trained loads every kind of run: an adapter on its base (quantized as trained) that behaves like its
merged model, checkpoints of adapter and full runs with their own weights, and clear errors for what is no run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from sft_recipes.errors import RecipeError
from sft_recipes.tiny import DEMO_PROMPTS
from sft_recipes.trained import load_trained, locate_run


def logits(run, prompt: str) -> torch.Tensor:
    inputs = run.encode([{"role": "user", "content": prompt}])
    with torch.no_grad():
        return run.model(**inputs).logits.float()


def lora_weights(model) -> dict[str, torch.Tensor]:
    """The loaded LoRA matrices, named as PEFT saves them."""
    return {n.replace(".default", ""): p.detach().float() for n, p in model.named_parameters() if "lora_" in n}


def test_lora_run_loads_as_base_plus_adapter_with_the_merged_models_answers(tmp_path, lora_run_dir, demo_base_dir):
    from peft import PeftModel

    from sft_recipes.merge import merge_adapter

    merge_adapter(str(lora_run_dir), str(tmp_path / "merged"), dtype="float32")
    adapter, merged, base = (load_trained(p) for p in (lora_run_dir, tmp_path / "merged", demo_base_dir))
    assert (adapter.layout.weights, adapter.layout.source, adapter.layout.base) == (
        "adapter",
        "run",
        str(demo_base_dir),
    )
    assert isinstance(adapter.model, PeftModel) and adapter.layout.quantization is None
    assert (merged.layout.weights, merged.layout.source) == ("full", "merged")
    for prompt in DEMO_PROMPTS:
        assert adapter.generate_ids([{"role": "user", "content": prompt}], 24, do_sample=False) == merged.generate_ids(
            [{"role": "user", "content": prompt}], 24, do_sample=False
        )
    drift = (logits(adapter, DEMO_PROMPTS[0]) - logits(merged, DEMO_PROMPTS[0])).abs().max()
    effect = (logits(adapter, DEMO_PROMPTS[0]) - logits(base, DEMO_PROMPTS[0])).abs().max()
    assert drift < 1e-4 and effect > 1e3 * drift  # the adapter is on, and merged == base + adapter


def test_qlora_run_loads_its_base_in_4bit_as_it_was_trained(qlora_run_dir):
    import bitsandbytes as bnb

    run = load_trained(qlora_run_dir)
    assert run.layout.quantization == "4-bit" and "4-bit" in run.describe()
    quantized = [m for m in run.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # every projection of both layers; lm_head stays 16/32-bit
    assert all(m.weight.quant_type == "nf4" and m.weight.quant_state.nested for m in quantized)  # double quant
    saved = load_file(qlora_run_dir / "adapter_model.safetensors")
    loaded = lora_weights(run.model)
    assert set(saved) == set(loaded) and all(torch.equal(saved[k].float(), loaded[k]) for k in saved)


def test_adapter_checkpoint_loads_its_own_adapter_with_the_runs_recipe(qlora_run_dir):
    checkpoint = qlora_run_dir / "checkpoint-2"
    assert not (checkpoint / "recipe.yaml").exists() and not (checkpoint / "generation_config.json").exists()
    run = load_trained(checkpoint)
    layout = run.layout
    assert (layout.weights, layout.source, layout.quantization) == ("adapter", "checkpoint", "4-bit")
    assert layout.recipe_path == qlora_run_dir / "recipe.yaml" and layout.generation_dir == qlora_run_dir
    saved, final = (load_file(p / "adapter_model.safetensors") for p in (checkpoint, qlora_run_dir))
    loaded = lora_weights(run.model)
    assert all(torch.equal(saved[k].float(), loaded[k]) for k in saved)
    assert any(not torch.equal(saved[k], final[k]) for k in saved)  # step 2, not the final adapter


def test_full_checkpoint_loads_its_weights_ready_for_generation(demo_run_dir, demo_checkpoint_dir):
    checkpoint = demo_checkpoint_dir
    assert json.loads((checkpoint / "config.json").read_text())["use_cache"] is False  # saved mid-training
    run = load_trained(checkpoint)
    assert (run.layout.weights, run.layout.source) == ("full", "checkpoint")
    assert run.layout.recipe_path == demo_run_dir / "recipe.yaml"
    assert run.model.config.use_cache is True and not run.model.training
    saved, final = (load_file(p / "model.safetensors") for p in (checkpoint, demo_run_dir))
    params = dict(run.model.named_parameters())
    assert set(params) == set(saved) and all(torch.equal(params[k], saved[k]) for k in saved)
    assert any(not torch.equal(saved[k], final[k]) for k in saved)


def test_a_plain_model_folder_loads_as_full_weights_without_a_recipe(demo_base_dir):
    layout = locate_run(demo_base_dir)
    assert (layout.weights, layout.source, layout.recipe, layout.recipe_path) == ("full", "run", {}, None)


def problem(path, **kwargs) -> str:
    with pytest.raises(RecipeError) as caught:
        load_trained(path, **kwargs)
    return str(caught.value)


def test_what_is_not_a_run_is_named_with_a_fix(tmp_path):
    assert "does not exist" in problem(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    assert "is a file" in problem(tmp_path / "file.txt")
    assert "not a run" in problem(tmp_path) and "checkpoint-N" in problem(tmp_path)
    (tmp_path / "unfinished" / "checkpoint-3").mkdir(parents=True)
    assert "only checkpoints: checkpoint-3" in problem(tmp_path / "unfinished")
    (tmp_path / "zero3").mkdir()
    (tmp_path / "zero3" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert "no weights" in problem(tmp_path / "zero3")


@pytest.mark.parametrize("recorded", ["moved-base", "nobody/tiny-base"], ids=["local", "hub"])
def test_adapter_whose_base_is_unreachable_names_it_and_the_base_override(
    tmp_path, lora_run_dir, demo_base_dir, recorded
):
    adapter = shutil.copytree(lora_run_dir, tmp_path / "adapter")
    base = str(tmp_path / recorded) if recorded == "moved-base" else recorded  # offline: the hub is unreachable
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
    message = problem(adapter)
    assert base in message and "--base" in message
    assert load_trained(adapter, base=str(demo_base_dir)).layout.base == str(demo_base_dir)


def test_a_model_folder_without_tokenizer_files_is_named(tmp_path, demo_base_dir):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(demo_base_dir / name, tmp_path / name)
    assert "holds no tokenizer" in problem(tmp_path)
