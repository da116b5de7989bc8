"""The model layer: kind dispatch, quantization and device-map rules, tokenizer policies, RoPE (LoRA: test_lora)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from sft_recipes.errors import RecipeError
from sft_recipes.model.kind import CAUSAL_LM, IMAGE_TEXT_TO_TEXT, detect_model_kind, resolve_dtype
from sft_recipes.model.loading import (
    apply_pad_policy,
    build_quantization_config,
    get_kbit_device_map,
    resolve_attn_implementation,
)
from sft_recipes.model.rope import rope_scaling_plan
from sft_recipes.topology import Topology


def model_args(**overrides):
    from sft_recipes.config import ModelConfig

    return ModelConfig(**{"model_name_or_path": "x", **overrides})


def test_every_causal_fixture_dispatches_to_causal_lm_from_config_json(causal_lm_dirs):
    for family, path in causal_lm_dirs.items():
        config = json.loads((path / "config.json").read_text())
        assert detect_model_kind(config) == CAUSAL_LM, family


def test_every_vlm_fixture_dispatches_to_image_text_to_text_from_config_json(vlm_dirs):
    for family, path in vlm_dirs.items():
        config = json.loads((path / "config.json").read_text())
        assert detect_model_kind(config) == IMAGE_TEXT_TO_TEXT, family


def test_types_in_both_maps_follow_the_saved_architecture():
    assert (
        detect_model_kind({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]})
        == IMAGE_TEXT_TO_TEXT
    )
    assert detect_model_kind({"model_type": "gemma3", "architectures": ["Gemma3ForCausalLM"]}) == CAUSAL_LM
    assert detect_model_kind({"model_type": "qwen2"}) == CAUSAL_LM
    assert detect_model_kind({"model_type": "qwen2"}, override=IMAGE_TEXT_TO_TEXT) == IMAGE_TEXT_TO_TEXT


def test_unknown_model_type_is_a_recipe_error():
    with pytest.raises(RecipeError, match="unknown to transformers"):
        detect_model_kind({"model_type": "not_a_model"})


def test_auto_dtype_follows_checkpoint_then_training_precision():
    assert resolve_dtype("auto", SimpleNamespace(bf16=False), {"dtype": "bfloat16"}) == torch.bfloat16
    assert resolve_dtype("auto", SimpleNamespace(bf16=False, fp16=True), {}) == torch.float16
    assert resolve_dtype("auto", SimpleNamespace(bf16=False, fp16=False), {}) == torch.float32
    assert resolve_dtype("float32", SimpleNamespace(bf16=True), {"dtype": "bfloat16"}) == torch.float32


def test_qlora_config_is_nf4_double_quant_with_compute_dtype_of_training():
    config = build_quantization_config(model_args(load_in_4bit=True, use_bnb_nested_quant=True), torch.bfloat16)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.bnb_4bit_quant_storage == torch.uint8


def test_qlora_under_fsdp_stores_quantized_weights_in_the_compute_dtype():
    config = build_quantization_config(model_args(load_in_4bit=True), torch.bfloat16, Topology(mode="fsdp2"))
    assert config.bnb_4bit_quant_storage == torch.bfloat16


def test_eight_bit_and_both_bit_widths(tmp_path):
    from sft_recipes.config import parse_recipe

    assert build_quantization_config(model_args(load_in_8bit=True), torch.float32).load_in_8bit
    assert build_quantization_config(model_args(), torch.float32) is None
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: x\nload_in_4bit: true\nload_in_8bit: true\n")
    with pytest.raises(RecipeError, match="8 bit and 4 bit") as raised:  # trl.ModelConfig's own check, named by key
        parse_recipe(["--config", str(recipe)])
    assert "load_in_" in raised.value.problems[0].where


@pytest.mark.parametrize("mode", ["zero3", "fsdp2"])
def test_no_device_map_under_zero3_or_fsdp(mode, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_kbit_device_map(Topology(mode=mode)) is None


@pytest.mark.parametrize("mode", ["single", "ddp", "zero2"])
def test_quantized_models_go_to_this_ranks_gpu_under_single_and_ddp(mode, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert get_kbit_device_map(Topology(mode=mode)) == {"": 3}


def test_device_map_is_never_auto_and_none_on_cpu():
    for mode in ("single", "ddp", "zero2", "zero3", "fsdp2"):
        assert get_kbit_device_map(Topology(mode=mode)) != "auto"
    if not torch.cuda.is_available():
        assert get_kbit_device_map(Topology()) is None


def test_missing_flash_attn_falls_back_to_sdpa_or_fails_when_strict(caplog):
    from importlib.util import find_spec

    if find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    assert resolve_attn_implementation("flash_attention_2", strict=False) == "sdpa"
    assert "falling back to sdpa" in caplog.text
    with pytest.raises(RecipeError, match="flash-attn"):
        resolve_attn_implementation("flash_attention_2", strict=True)
    assert resolve_attn_implementation("eager", strict=True) == "eager"


def test_rope_factor_is_ceil_of_max_length_over_context():
    assert rope_scaling_plan({"max_position_embeddings": 256}, 256) is None
    assert rope_scaling_plan({"max_position_embeddings": 256}, 600).factors == {"": 3.0}
    assert rope_scaling_plan({"text_config": {"max_position_embeddings": 100}}, 101).extra == math.ceil(1.01)
    with pytest.raises(RecipeError, match="exceeds"):
        rope_scaling_plan({"max_position_embeddings": 256}, 600, policy="off")


def test_pad_policy_prefers_existing_then_unk_then_eos_then_adds():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    def tokenizer(**special):
        vocab = {"<unk>": 0, "</s>": 1, "[PAD]": 2, "a": 3}
        fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")))
        fast.add_special_tokens(special)
        return fast

    assert apply_pad_policy(tokenizer(pad_token="[PAD]", eos_token="</s>"), "auto") == "existing"
    unk = tokenizer(unk_token="<unk>", eos_token="</s>")
    assert apply_pad_policy(unk, "auto") == "unk" and unk.pad_token == "<unk>"
    eos = tokenizer(eos_token="</s>")
    assert apply_pad_policy(eos, "auto") == "eos" and eos.pad_token == "</s>"
    added = tokenizer(eos_token="</s>", pad_token="[PAD]")
    assert apply_pad_policy(added, "add") == "added" and added.pad_token == "<|pad|>"


def test_pad_policy_uses_a_reserved_pad_token_before_unk_or_eos():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|eot_id|>": 1, "<|finetune_right_pad_id|>": 2, "a": 3}
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")))
    fast.add_special_tokens({"unk_token": "<unk>", "eos_token": "<|eot_id|>"})
    assert apply_pad_policy(fast, "auto") == "reserved" and fast.pad_token == "<|finetune_right_pad_id|>"


def test_flash_fallback_is_eager_for_models_without_sdpa(caplog):
    from importlib.util import find_spec

    if find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    assert resolve_attn_implementation("flash_attention_2", False, {"model_type": "gemma2"}) == "eager"
    assert resolve_attn_implementation("flash_attention_2", False, {"model_type": "llama"}) == "sdpa"
