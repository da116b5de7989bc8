"""The memory planner's counts: parameters against models built from the same config and published figures, LoRA
parameters against PEFT, the activation model against what autograd saves. (The arithmetic and the command:
test_plan.py.)"""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers.published_configs import PUBLISHED, published_config

from sft_recipes.plan.formula import activation_bytes, estimate
from sft_recipes.plan.inputs import PlanInput, count_parameters, lora_parameters

TINY = {"vocab_size": 101, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2}
TINY_HEADS = {"num_attention_heads": 4, "num_key_value_heads": 2}
FAMILIES = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 8},
    "gemma": {"head_dim": 8},
    "gemma2": {"head_dim": 8},
    "gemma3_text": {"head_dim": 8},
    "phi3": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24, "head_dim": 8},
}


def build(model_type: str, extra: dict, **kw):
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    config = CONFIG_MAPPING[model_type](**TINY, **TINY_HEADS, **extra, **kw)
    return config, AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_parameter_count_equals_a_model_built_from_the_same_config(model_type):
    config, model = build(model_type, FAMILIES[model_type])
    assert count_parameters(config.to_dict())["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_count_of_real_architectures_matches_the_published_count(name):
    assert count_parameters(published_config(name))["total"] == PUBLISHED[name][-1]


def test_lora_parameters_are_r_times_in_plus_out_and_match_peft():
    from peft import LoraConfig, get_peft_model

    config, model = build("llama", {})
    targets = ["q_proj", "v_proj", "down_proj"]
    # q: 32 -> 32, v: 32 -> 16 (2 kv heads x 8), down: 48 -> 32; two layers
    assert lora_parameters(config.to_dict(), targets, 4) == 2 * 4 * ((32 + 32) + (32 + 16) + (48 + 32))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora_parameters(config.to_dict(), targets, 4) == trainable
    assert lora_parameters(config.to_dict(), None, 4) == lora_parameters(config.to_dict(), "all-linear", 4)


def saved_bytes(model, **inputs) -> int:
    """Bytes of distinct storages autograd keeps for backward (parameters excluded)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs)
    return sum(seen.values())


@pytest.mark.parametrize(
    ("model_type", "method", "dtype", "dropout", "checkpointing"),
    [
        ("llama", "full", "bfloat16", 0.0, False),
        ("llama", "lora", "bfloat16", 0.1, False),
        ("qwen3", "full", "float32", 0.0, False),
        ("qwen2", "lora", "float32", 0.0, True),
    ],
)
def test_activation_model_matches_what_autograd_saves(model_type, method, dtype, dropout, checkpointing):
    import torch
    from trl.trainer.utils import add_fused_lm_head

    extra = {"head_dim": 8} if model_type == "qwen3" else {}
    config, model = build(model_type, extra, dtype=dtype)
    model = model.to(getattr(torch, dtype))
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=dropout))
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    batch, seq = 2, 16
    ids = torch.randint(0, 101, (batch, seq))
    measured = saved_bytes(model, input_ids=ids, labels=ids, fused_lm_head=True)

    inp = PlanInput(config.to_dict(), method=method, lora_r=4, lora_dropout=dropout, dtype=dtype, device="cpu")
    inp = replace(inp, micro_batch_size=batch, seq_len=seq, gradient_checkpointing=checkpointing, attention_mask=False)
    a, tokens, layers, b = activation_bytes(inp), batch * seq, 2, 4 if dtype == "float32" else 2
    if checkpointing:
        layers_bytes = layers * a.layer_input * tokens
    else:
        layers_bytes = (a.first_layer + (layers - 1) * a.layer) * tokens + 2 * seq * 8 * b  # + cos and sin
    # the head scores seq - 1 positions per row; its per-token outputs are alive but not saved for backward
    head = a.head_saved * tokens - (32 * b + 18) * batch - 12 * tokens
    assert layers_bytes + head == pytest.approx(measured, rel=0.002)


@pytest.mark.parametrize("optim", ["adamw_8bit", "adafactor", "adamw_torch"])
def test_an_all_moe_model_is_planned_with_every_optimizer(optim):
    # Mixtral has no dense-MLP layer: the 8-bit optimizer's size per layer once divided by zero layers
    config, model = build("mixtral", FAMILIES["mixtral"])
    inp = PlanInput(config=config.to_dict(), method="full", optimizer=optim, seq_len=64)
    assert estimate(inp).components["optimizer states"] > 0
