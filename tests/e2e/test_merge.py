"""`sft-recipes merge`: the merged model is the trained one (4/8-bit bases included), and bad merges are refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers.runs import train

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 511], [900, 1, 64, 33, 128, 2, 77, 300]])


def quantized_trained_model(run_dir, base_dir, quant):
    """The base quantized as the recipe below trains it, with the adapter on, on bitsandbytes' training-time path
    (built here, not by sft_recipes.merge, so that a wrong check there cannot hide a wrong merge)."""
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if quant == "4bit":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, quantization_config=config)
    model = PeftModel.from_pretrained(base, str(run_dir)).eval()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False  # the packed inference kernel is not what training ran
        if isinstance(module, bnb.nn.Linear8bitLt):
            module.training = True  # CPU training dequantizes then multiplies (MatMul8bitFp)
    return model


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_a_quantized_run_merges_into_the_model_it_trained(tmp_path, llama_dir, demo_data_path, quant):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from sft_recipes.merge import merge_adapter

    keys = {"load_in_4bit": True, "use_bnb_nested_quant": True} if quant == "4bit" else {"load_in_8bit": True}
    out = train(
        tmp_path,
        model_name_or_path=str(llama_dir),
        dataset_name=str(demo_data_path),
        use_peft=True,
        lora_r=8,
        lora_alpha=16,
        max_steps=6,
        learning_rate=5.0e-3,
        **keys,
    )
    figures = merge_adapter(str(out), str(tmp_path / "merged"))
    trained = quantized_trained_model(out, llama_dir, quant)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        trained_logits = trained(IDS).logits
        with trained.disable_adapter():
            effect = (trained_logits - trained(IDS).logits).abs().max().item()
        drift = (merged(IDS).logits - trained_logits).abs().max().item()
    # A merge into a fresh float32 load of the base drifts by ~12% (4-bit) and ~0.4% (8-bit) of the effect.
    assert effect > 0.05 and drift <= 0.01 * effect and drift <= 1e-4
    assert merged.dtype == torch.float32 and "quantization_config" not in merged.config.to_dict()
    saved = json.loads((tmp_path / "merged" / "merge_check.json").read_text())
    assert saved == figures and saved["max_abs_merged_vs_trained"] <= 1e-4
    assert saved["trained_base_weights"].startswith("nf4 4-bit" if quant == "4bit" else "int8")


def test_the_check_refuses_a_drift_over_its_limit():
    from sft_recipes.errors import RecipeError
    from sft_recipes.merge import check_merge

    def figures(drift, effect):
        return {"max_abs_merged_vs_trained": drift, "max_abs_trained_vs_base": effect}

    check_merge(figures(1e-7, 0.4), torch.float32)
    check_merge(figures(0.01, 0.4), torch.bfloat16)
    for drift, effect, dtype in [
        (0.02 * 0.4, 0.4, torch.float32),  # 2% of the effect
        (5e-4, 1.0, torch.float32),  # 0.05% of a large effect, but a float32 merge is exact to rounding
        (5e-5, 1e-3, torch.float32),  # under 1e-4, but 5% of a small effect
        (0.06 * 0.4, 0.4, torch.bfloat16),
        (0.06 * 0.4, 0.4, torch.float16),
    ]:
        with pytest.raises(RecipeError, match="differ from the trained model"):
            check_merge(figures(drift, effect), dtype)


def test_an_adapter_that_changes_nothing_is_refused(tmp_path, llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sft_recipes.errors import RecipeError
    from sft_recipes.merge import merge_adapter

    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    untrained = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))  # B = 0
    untrained.save_pretrained(tmp_path / "adapter")
    with pytest.raises(RecipeError, match="does not change the model's logits"):
        merge_adapter(str(tmp_path / "adapter"), str(tmp_path / "merged"))
    assert not (tmp_path / "merged" / "model.safetensors").exists()


def test_a_merge_keeps_the_vocabulary_that_training_grew(tmp_path, llama_dir, demo_data_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft_recipes.merge import merge_adapter

    out = train(
        tmp_path,
        model_name_or_path=str(llama_dir),
        dataset_name=str(demo_data_path),
        use_peft=True,
        lora_r=4,
        pad_token_policy="add",
        max_steps=3,
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    grown = len(tokenizer) + (-len(tokenizer)) % 8
    assert tokenizer.pad_token == "<|pad|>" and base.get_input_embeddings().weight.shape[0] < grown
    base.resize_token_embeddings(grown)
    trained = PeftModel.from_pretrained(base, str(out)).eval()
    ids = torch.cat([IDS, torch.full((2, 1), tokenizer.pad_token_id)], dim=1)
    with torch.no_grad():
        expected = trained(ids).logits
    shutil.copytree(out, tmp_path / "no_recipe")
    (tmp_path / "no_recipe" / "recipe.yaml").unlink()  # an adapter trained elsewhere: its own vocabulary size rules
    for run, merged_dir in ((out, tmp_path / "merged"), (tmp_path / "no_recipe", tmp_path / "merged_no_recipe")):
        merge_adapter(str(run), str(merged_dir))
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
        assert merged.get_input_embeddings().weight.shape[0] == grown
        with torch.no_grad():
            assert torch.allclose(merged(ids).logits, expected, atol=1e-5)
        assert len(AutoTokenizer.from_pretrained(merged_dir)) == len(tokenizer)
