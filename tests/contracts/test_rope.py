"""RoPE scaling, checked by the rotary `inv_freq` of real models: loaded to train, saved, base + adapter, merged."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers.runs import train, write_recipe

from sft_recipes.errors import RecipeError
from sft_recipes.model.rope import BASE_CONFIG, rope_scaling_plan
from sft_recipes.tiny import CAUSAL_FAMILIES

FACTOR = 3.0  # max_length = 2 x context + 1 below


def inv_freqs(model) -> dict[str, torch.Tensor]:
    """The rotary inverse frequencies by buffer name (`inv_freq`, or `<layer type>_inv_freq` for Gemma-3)."""
    found = {
        name.rsplit(".", 1)[-1]: buffer.detach().float().cpu()
        for name, buffer in model.named_buffers()
        if name.endswith("inv_freq") and not name.endswith("original_inv_freq")
    }
    assert found, "no rotary embedding found"
    return found


def expected_scaling(family: str, names) -> dict[str, float]:
    """Gemma-3 scales its global (full-attention) layers only; every other family has one rotary for all layers."""
    if family == "gemma3_text":
        return {"full_attention_inv_freq": FACTOR, "sliding_attention_inv_freq": 1.0}
    return dict.fromkeys(names, FACTOR)


def assert_scaled(model, unscaled, family, what):
    freqs = inv_freqs(model)
    assert set(freqs) == set(unscaled), what
    for name, factor in expected_scaling(family, unscaled).items():
        assert torch.allclose(unscaled[name] / freqs[name], torch.full_like(freqs[name], factor), rtol=1e-5), (
            f"{what}: {name} scaled by {(unscaled[name] / freqs[name]).tolist()}, expected {factor}"
        )


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_rope_scaling_reaches_the_rotary_of_every_saved_loaded_and_merged_model(
    family, tmp_path, causal_lm_dirs, demo_data_path
):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    from sft_recipes.config import parse_recipe
    from sft_recipes.merge import merge_adapter
    from sft_recipes.train import run
    from sft_recipes.trained import load_trained

    base_dir = causal_lm_dirs[family]
    context = json.loads((base_dir / "config.json").read_text())["max_position_embeddings"]
    unscaled = inv_freqs(AutoModelForCausalLM.from_pretrained(base_dir))
    keys = dict(model_name_or_path=str(base_dir), dataset_name=str(demo_data_path), max_length=2 * context + 1)

    lora = dict(keys, use_peft=True, lora_r=4, max_steps=2, output_dir=str(tmp_path / "lora"))
    trainer = run(parse_recipe(["--config", str(write_recipe(tmp_path / "lora.yaml", **lora))]))
    assert_scaled(trainer.model, unscaled, family, "loaded for LoRA training")
    out = tmp_path / "lora"
    assert not (out / "config.json").exists()  # it would make from_pretrained(out) look for base weights there
    assert_scaled(load_trained(out, device="cpu").model, unscaled, family, "base + adapter (sft_recipes.trained)")
    recorded = AutoConfig.from_pretrained(out / BASE_CONFIG)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, config=recorded), str(out))
    assert_scaled(peft, unscaled, family, f"base loaded with {BASE_CONFIG} + PeftModel.from_pretrained")
    merge_adapter(str(out), str(tmp_path / "merged"))
    assert_scaled(AutoModelForCausalLM.from_pretrained(tmp_path / "merged"), unscaled, family, "merged")
    shutil.copytree(out, tmp_path / "no_recipe", ignore=shutil.ignore_patterns("recipe.yaml"))
    merge_adapter(str(tmp_path / "no_recipe"), str(tmp_path / "merged_no_recipe"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged_no_recipe")
    assert_scaled(merged, unscaled, family, f"merged from the adapter and {BASE_CONFIG} alone")

    (tmp_path / "full").mkdir()
    full = train(tmp_path / "full", **dict(keys, max_steps=1))
    assert_scaled(AutoModelForCausalLM.from_pretrained(full), unscaled, family, "full fine-tune reloaded")


def test_no_base_config_is_recorded_when_nothing_was_scaled(tmp_path, llama_dir, demo_data_path):
    out = train(
        tmp_path, model_name_or_path=str(llama_dir), dataset_name=str(demo_data_path), use_peft=True, max_steps=1
    )
    assert (out / "adapter_config.json").is_file() and not (out / BASE_CONFIG).exists()


def tiny_llama_with(tmp_path, rope_parameters, max_position_embeddings=256):
    from sft_recipes.tiny import build_causal_lm

    base = build_causal_lm("llama", tmp_path / "base", max_position_embeddings=max_position_embeddings)
    config = json.loads((base / "config.json").read_text())
    config["rope_parameters"] = {"rope_theta": 10000.0, **rope_parameters}
    (base / "config.json").write_text(json.dumps(config))
    return base


def loaded_with_max_length(base, max_length):
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from sft_recipes.config import ModelConfig
    from sft_recipes.model.loading import load_training_config

    training = SimpleNamespace(max_length=max_length, trust_remote_code=False)
    config, _ = load_training_config(ModelConfig(model_name_or_path=str(base)), training)
    return AutoModelForCausalLM.from_pretrained(base, config=config)


def test_linear_scaling_on_an_existing_linear_scaling_multiplies_the_factors(tmp_path):
    base = tiny_llama_with(tmp_path, {"rope_type": "linear", "factor": 2.0})
    plain = inv_freqs(loaded_with_max_length(base, 256))["inv_freq"]
    scaled = inv_freqs(loaded_with_max_length(base, 600))["inv_freq"]
    assert torch.allclose(plain / scaled, torch.full_like(plain, 3.0))  # 2 x 3 in all, not 3 instead of 2
    plan = rope_scaling_plan(json.loads((base / "config.json").read_text()), 600)
    assert plan.factors == {"": 6.0} and "composed with the existing linear x2 into x6" in plan.describe()


@pytest.mark.parametrize(
    "rope_parameters",
    [
        {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64},
        {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 128},
    ],
    ids=["llama3", "yarn"],
)  # fmt: skip
def test_an_existing_llama3_or_yarn_scaling_is_kept_within_its_reach_and_refused_beyond(tmp_path, rope_parameters):
    base = tiny_llama_with(tmp_path, rope_parameters, max_position_embeddings=128)
    within = loaded_with_max_length(base, 200)  # beyond max_position_embeddings 128, within the 256 it reaches
    assert torch.equal(inv_freqs(within)["inv_freq"], inv_freqs(loaded_with_max_length(base, None))["inv_freq"])
    kind = rope_parameters["rope_type"]
    with pytest.raises(
        RecipeError, match=rf"(?s)rope_parameters.rope_type.*own {kind} RoPE scaling.*max_length <= 256"
    ):
        loaded_with_max_length(base, 600)


def test_the_plan_reads_every_layout_and_says_what_it_scales():
    gemma3_legacy = {
        "model_type": "gemma3_text",
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "rope_theta": 1e6,
        "rope_local_base_freq": 1e4,
        "max_position_embeddings": 131072,
        "layer_types": ["sliding_attention", "full_attention"],
        "num_hidden_layers": 2,
    }
    for config in (gemma3_legacy, {"model_type": "gemma3", "text_config": gemma3_legacy}):
        plan = rope_scaling_plan(config, 200_000)
        assert plan.factors == {"full_attention": 16.0} and plan.unscaled == ("sliding_attention",)
        assert plan.describe() == (
            "linear scaling x2 on the full_attention layers only (sliding_attention unscaled), "
            "composed with the existing linear x8 (full_attention) into x16"
        )
    assert rope_scaling_plan(gemma3_legacy, 131072) is None
    flat = {"max_position_embeddings": 256}
    assert rope_scaling_plan(flat, 256) is None
    assert rope_scaling_plan(flat, 600).factors == {"": 3.0} and rope_scaling_plan(flat, 600).describe() == (
        "linear scaling x3"
    )
    with pytest.raises(RecipeError, match="without a full_attention entry"):
        rope_scaling_plan({"max_position_embeddings": 8, "rope_parameters": {"chunked": {"rope_type": "default"}}}, 9)
    with pytest.raises(RecipeError, match="exceeds the model's context 256 and rope_scaling_policy is off"):
        rope_scaling_plan(flat, 600, policy="off")


def test_a_gemma3_plan_written_into_the_config_scales_only_the_global_layers(tmp_path, causal_lm_dirs):
    from transformers import AutoConfig, AutoModelForCausalLM

    base = causal_lm_dirs["gemma3_text"]
    config = AutoConfig.from_pretrained(base)
    rope_scaling_plan(config, 600).apply(config.get_text_config())
    assert set(config.rope_parameters) == {"full_attention", "sliding_attention"}  # nothing at the top level
    freqs = inv_freqs(AutoModelForCausalLM.from_pretrained(base, config=config))
    unscaled = inv_freqs(AutoModelForCausalLM.from_pretrained(base))
    assert torch.allclose(unscaled["full_attention_inv_freq"] / freqs["full_attention_inv_freq"], torch.tensor(3.0))
    assert torch.equal(unscaled["sliding_attention_inv_freq"], freqs["sliding_attention_inv_freq"])
