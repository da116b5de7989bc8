"""LoRA targets: every linear layer of the language model's decoder layers and nothing else, counted alike by PEFT."""

from __future__ import annotations

import json

import pytest
import torch

from sft_recipes.errors import RecipeError
from sft_recipes.model.kind import CAUSAL_LM, IMAGE_TEXT_TO_TEXT
from sft_recipes.model.lora import build_lora_config, count_lora_parameters, resolve_lora_targets
from sft_recipes.tiny import CAUSAL_FAMILIES

# Where each tiny family keeps its language model's decoder layers, read off the transformers modelling code.
DECODER_LAYERS = {
    **{family: "model.layers" for family in CAUSAL_FAMILIES},
    "llava": "model.language_model.layers",
    "idefics3": "model.text_model.layers",
    "gemma3": "model.language_model.layers",
}
NOT_LANGUAGE_MODEL = ("vision_tower", "vision_model", "multi_modal_projector", "connector", "lm_head")
SEVEN = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
PHI3 = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}  # attention and MLP projections fused in pairs
R = 4


def model_args(**overrides):
    from sft_recipes.config import ModelConfig

    return ModelConfig(**{"model_name_or_path": "x", "use_peft": True, "lora_r": R, **overrides})


def load(path, kind: str, meta: bool = False):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if kind == IMAGE_TEXT_TO_TEXT else AutoModelForCausalLM
    if not meta:
        return auto.from_pretrained(path, dtype=torch.float32)
    with torch.device("meta"):
        return auto.from_config(AutoConfig.from_pretrained(path))


def every_family(causal_lm_dirs, vlm_dirs):
    yield from ((family, path, CAUSAL_LM) for family, path in causal_lm_dirs.items())
    yield from ((family, path, IMAGE_TEXT_TO_TEXT) for family, path in vlm_dirs.items())


def decoder_linears(model, family: str) -> dict[str, torch.nn.Linear]:
    prefix = f"{DECODER_LAYERS[family]}."
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefix)}


def sum_r_in_out(linears) -> int:
    return sum(R * (m.in_features + m.out_features) for m in linears)


def test_lora_adapts_every_decoder_linear_layer_of_every_family_and_nothing_else(causal_lm_dirs, vlm_dirs):
    from peft import get_peft_model

    for family, path, kind in every_family(causal_lm_dirs, vlm_dirs):
        model = load(path, kind)
        expected = decoder_linears(model, family)
        count = sum_r_in_out(expected.values())
        peft_model = get_peft_model(model, build_lora_config(model_args(), model, kind))
        adapted = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
        assert adapted == set(expected) and adapted, family
        assert not [n for n in adapted if any(part in n for part in NOT_LANGUAGE_MODEL)], family
        assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == count, family


def test_peft_on_the_meta_model_counts_what_the_loader_trains(causal_lm_dirs, vlm_dirs):
    for family, path, kind in every_family(causal_lm_dirs, vlm_dirs):
        meta, real = load(path, kind, meta=True), load(path, kind)
        assert all(p.is_meta for p in meta.parameters()), family
        config = build_lora_config(model_args(), meta, kind)
        assert config.target_modules == build_lora_config(model_args(), real, kind).target_modules, family
        assert count_lora_parameters(meta, config) == sum_r_in_out(decoder_linears(real, family).values()), family
        assert not [n for n, _ in meta.named_modules() if "lora_" in n], "the model counted must stay untouched"


def test_plan_counts_the_lora_parameters_peft_counts(causal_lm_dirs, vlm_dirs):
    from sft_recipes.plan.inputs import lora_parameters

    for family, path, kind in every_family(causal_lm_dirs, vlm_dirs):
        meta = load(path, kind, meta=True)
        config = json.loads((path / "config.json").read_text())
        peft_count = count_lora_parameters(meta, build_lora_config(model_args(), meta, kind))
        assert lora_parameters(config, None, R) == peft_count, family


def test_validate_plan_and_loader_agree_to_the_parameter_on_every_family(causal_lm_dirs, vlm_dirs):
    from types import SimpleNamespace

    from peft import get_peft_model

    from sft_recipes.plan.inputs import lora_parameters
    from sft_recipes.validate.model_checks import check_meta_model
    from sft_recipes.validate.validation import Validation

    for family, path, kind in every_family(causal_lm_dirs, vlm_dirs):
        config = json.loads((path / "config.json").read_text())
        args = model_args(model_name_or_path=str(path))
        training = SimpleNamespace(trust_remote_code=False)
        recipe = SimpleNamespace(model=args, training=training, explicit=set(), path=None)
        v = Validation(recipe, config=config, kind=kind)
        check_meta_model(v)
        real = load(path, kind)
        trained = get_peft_model(real, build_lora_config(args, real, kind))
        loader = sum(p.numel() for p in trained.parameters() if p.requires_grad)
        assert v.trainable == loader == lora_parameters(config, None, R) > 0, family


def test_default_lora_targets_name_every_projection_fused_ones_included(causal_lm_dirs):
    for family, path in causal_lm_dirs.items():
        targets = resolve_lora_targets(load(path, CAUSAL_LM, meta=True), CAUSAL_LM, None)
        assert isinstance(targets, list) and set(targets) == (PHI3 if family == "phi3" else SEVEN), family


def test_dora_magnitudes_are_counted_by_peft(llama_dir):
    meta = load(llama_dir, CAUSAL_LM, meta=True)
    config = build_lora_config(model_args(use_dora=True), meta, CAUSAL_LM)
    linears = decoder_linears(load(llama_dir, CAUSAL_LM), "llama").values()
    assert count_lora_parameters(meta, config) == sum_r_in_out(linears) + sum(m.out_features for m in linears)


def test_requested_lora_targets_are_kept_and_a_single_name_stays_a_name(llama_dir):
    model = load(llama_dir, CAUSAL_LM, meta=True)
    assert resolve_lora_targets(model, CAUSAL_LM, "q_proj") == ["q_proj"]
    assert resolve_lora_targets(model, CAUSAL_LM, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]
    assert resolve_lora_targets(model, CAUSAL_LM, "all-linear") == "all-linear"
    assert resolve_lora_targets(model, CAUSAL_LM, r".*\.q_proj") == r".*\.q_proj"


def test_lora_trainable_count_is_sum_of_r_times_in_plus_out(llama_dir):
    from peft import get_peft_model

    model = load(llama_dir, CAUSAL_LM)
    config = build_lora_config(model_args(), model, CAUSAL_LM)
    expected = sum(
        R * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in config.target_modules
    )
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == expected > 0


def test_vlm_lora_leaves_the_vision_tower_and_projector_alone(vlm_dirs):
    from peft import get_peft_model

    for family, path in vlm_dirs.items():
        model = load(path, IMAGE_TEXT_TO_TEXT)
        peft_model = get_peft_model(model, build_lora_config(model_args(), model, IMAGE_TEXT_TO_TEXT))
        adapted = [n for n, p in peft_model.named_parameters() if p.requires_grad]
        assert adapted, family
        assert not [n for n in adapted if any(p in n for p in ("vision", "multi_modal_projector", "connector"))]


def test_unknown_lora_targets_list_the_linear_modules_that_exist(llama_dir):
    with pytest.raises(RecipeError, match="q_proj"):
        build_lora_config(model_args(lora_target_modules=["query_key_value"]), load(llama_dir, CAUSAL_LM), CAUSAL_LM)
