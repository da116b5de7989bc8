"""`sft-recipes train` end to end on tiny models: what changes, what stays frozen, what is saved."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.runs import CPU_DEFAULTS, train, write_recipe
from safetensors.torch import load_file


def run(tmp_path, **keys):
    from sft_recipes.config import parse_recipe
    from sft_recipes.train import run as run_recipe

    keys.setdefault("output_dir", str(tmp_path / "out"))
    return run_recipe(parse_recipe(["--config", str(write_recipe(tmp_path / "recipe.yaml", **keys))]))


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_full_fine_tuning_changes_every_trainable_weight(tmp_path, llama_dir, demo_data_path):
    before = load_file(llama_dir / "model.safetensors")
    out = train(tmp_path, model_name_or_path=str(llama_dir), dataset_name=str(demo_data_path))
    after = load_file(out / "model.safetensors")
    assert set(after) == set(before)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []


def test_lora_keeps_base_weights_bit_identical_and_trains_only_the_adapter(tmp_path, llama_dir, demo_data_path):
    before = load_file(llama_dir / "model.safetensors")
    trainer = run(
        tmp_path,
        model_name_or_path=str(llama_dir),
        dataset_name=str(demo_data_path),
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
    )
    base = trainer.model.get_base_model()
    for name, param in base.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(param.detach(), before[key]), key
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: non-zero means it trained
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert saved and all("lora_" in key for key in saved)


def test_qlora_trains_on_cpu_and_its_loss_falls(tmp_path, llama_dir, demo_data_path):
    pytest.importorskip("bitsandbytes")
    trainer = run(
        tmp_path,
        model_name_or_path=str(llama_dir),
        dataset_name=str(demo_data_path),
        use_peft=True,
        load_in_4bit=True,
        use_bnb_nested_quant=True,
        lora_r=8,
        lora_alpha=16,
        max_steps=12,
        learning_rate=5.0e-3,
    )
    assert type(trainer.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    history = losses(trainer)
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3


def test_saved_model_reloads_generates_and_is_ready_for_inference(tmp_path, llama_dir, demo_data_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = train(tmp_path, model_name_or_path=str(llama_dir), dataset_name=str(demo_data_path))
    config = json.loads((out / "config.json").read_text())
    assert config["use_cache"] is True
    generation = GenerationConfig.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    eos = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    assert tokenizer.eos_token_id in eos and generation.pad_token_id not in eos
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "capital of Peru?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    for name in ("recipe.yaml", "run_summary.json", "tokenizer.json", "generation_config.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["steps"] == CPU_DEFAULTS["max_steps"] and summary["final_loss"] > 0 and summary["tokens_seen"] > 0


def test_merged_logits_equal_adapter_logits(tmp_path, llama_dir, demo_data_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sft_recipes.merge import merge_adapter

    out = train(
        tmp_path,
        model_name_or_path=str(llama_dir),
        dataset_name=str(demo_data_path),
        use_peft=True,
        lora_r=4,
        max_steps=3,
    )
    figures = merge_adapter(str(out), str(tmp_path / "merged"))
    assert figures["max_abs_merged_vs_trained"] < 1e-4 < figures["max_abs_trained_vs_base"]
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), str(out)).eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert torch.allclose(adapter(ids).logits, merged(ids).logits, atol=1e-4)
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["use_cache"] is True


def test_rope_scaling_is_applied_when_max_length_exceeds_the_context(tmp_path, llama_dir, demo_data_path):
    context = json.loads((llama_dir / "config.json").read_text())["max_position_embeddings"]
    trainer = run(
        tmp_path,
        model_name_or_path=str(llama_dir),
        dataset_name=str(demo_data_path),
        max_length=context * 2 + 1,
        max_steps=1,
    )
    rope = trainer.model.config.rope_parameters
    assert rope["rope_type"] == "linear" and rope["factor"] == 3.0


def test_added_pad_token_grows_embeddings_to_a_multiple_of_8(tmp_path, llama_dir, demo_data_path):
    trainer = run(
        tmp_path,
        model_name_or_path=str(llama_dir),
        dataset_name=str(demo_data_path),
        pad_token_policy="add",
        max_steps=1,
    )
    tokenizer = trainer.processing_class
    rows = trainer.model.get_input_embeddings().weight.shape[0]
    assert tokenizer.pad_token == "<|pad|>" and rows >= len(tokenizer) and rows % 8 == 0


def test_a_trl_sft_yaml_runs_unchanged(tmp_path, llama_dir, demo_data_path):
    """Only keys `trl sft` knows, parsed by TRL's own parser too."""
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser

    keys = dict(
        model_name_or_path=str(llama_dir),
        dataset_name=str(demo_data_path),
        dtype="float32",
        use_peft=True,
        lora_r=4,
        max_length=64,
        bf16=False,
        use_cpu=True,
        max_steps=2,
        learning_rate=1.0e-3,
        report_to="none",
        output_dir=str(tmp_path / "out"),
        eos_token="<|im_end|>",
        per_device_train_batch_size=2,
        gradient_checkpointing=False,
    )
    path = tmp_path / "trl.yaml"
    import yaml

    path.write_text(yaml.safe_dump(keys))
    TrlParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)).parse_args_and_config(
        ["--config", str(path)]
    )
    from sft_recipes.cli import main

    assert main(["train", "--config", str(path)]) == 0
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
