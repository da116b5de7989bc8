"""The memory planner: the arithmetic of a plan, its fixes, the GPUs and topologies it reads, the command. (Parameter
and activation counts: test_plan_counts.py.)"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from types import SimpleNamespace

from helpers.published_configs import published_config

from sft_recipes.plan.command import launched_topology, main, plan_input_from_recipe
from sft_recipes.plan.fixes import find_fixes, max_micro_batch, suggestions, verdict_line
from sft_recipes.plan.formula import CUDA_CONTEXT, FRAGMENTATION, activation_bytes, estimate
from sft_recipes.plan.gpus import GiB, gpu_spec
from sft_recipes.plan.inputs import PlanInput


def test_hand_computed_two_layer_plan_matches_every_component_to_the_byte():
    config = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128}
    config |= {
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
    }
    inp = PlanInput(config, method="full", dtype="bfloat16", micro_batch_size=2, seq_len=8)
    plan = estimate(replace(inp, gradient_checkpointing=False, attn_implementation="flash_attention_2"))
    h, f, V, kv, N = 64, 128, 1000, 32, 16
    layer_params = h * h + h * kv + h * kv + h * h + 3 * h * f + 2 * h  # q k v o, gate up down, two norms
    params = V * h + 2 * layer_params + h + V * h  # embedding, layers, final norm, lm_head
    assert plan.trainable_parameters == params == 202_048
    norm = 4 * h + 4 + 2 * h  # fp32 upcast + rsqrt + bf16 normalized input of the weight
    attention = 2 * h + 2 * h + 4 * 4 + 2 * kv * 2  # query, output, fp32 logsumexp, key + value
    mlp = 3 * f * 2  # gate output, SiLU output, up output
    inputs = 2 * h + 2 * h + 2 * f  # what q/k/v, gate/up and down keep of their input (o_proj's is the output)
    layer = 2 * norm + attention + mlp + inputs
    assert activation_bytes(replace(inp, attn_implementation="flash_attention_2")).layer == layer == 2456
    rope = 2 * 8 * 16 * 2  # cos and sin: seq x head_dim
    head_saved = (norm + 2 * h + 30 + 8) * N  # final norm, hidden copy, labels/logZ/entropy/masks, outputs, ids
    head_backward = N * 32768 * 2 + N * h * 6 + V * h * 6  # [tokens x 32768] tile, grad of hidden and of lm_head
    expected = {
        "weights": 2 * params,
        "optimizer states": 2 * 2 * params,  # exp_avg and exp_avg_sq in bf16, like the bf16 params
        "gradients": 0,  # no accumulation: gradients only appear as backward frees the activations
        "activations": 2 * layer * N + rope,
        "loss head": head_saved + head_backward,
        "working memory": 0,
        "CUDA context": CUDA_CONTEXT,
    }
    expected["allocator fragmentation"] = int(FRAGMENTATION * sum(expected.values()))
    assert plan.peak_phase == "backward (LM head)"
    assert plan.breakdown == expected
    assert plan.total == sum(expected.values())


def test_gradients_live_through_the_forward_only_with_accumulation():
    inp = PlanInput(published_config("Qwen2.5-0.5B"), method="full", seq_len=2048, micro_batch_size=4)
    one, four = estimate(inp), estimate(replace(inp, gradient_accumulation_steps=4))
    assert four.breakdown["gradients"] == four.components["gradients"] > 0
    assert four.total > one.total


def test_partial_and_offloaded_checkpointing_keep_less_than_none_and_more_than_all():
    inp = PlanInput(published_config("Qwen2.5-0.5B"), method="full", seq_len=2048, micro_batch_size=4)

    def kept(**changes):
        return estimate(replace(inp, **changes)).components["activations"]

    assert kept() < kept(checkpoint_every_n_layers=2) < kept(gradient_checkpointing=False)
    assert kept(checkpoint_offload=True) == 0


def test_zero3_shards_the_weights_over_the_world_and_ddp_replicates_them():
    inp = PlanInput(published_config("Llama-3.1-8B"), method="full")
    single = estimate(inp)
    zero3 = estimate(replace(inp, parallelism="zero3", world_size=8))
    ddp = estimate(replace(inp, parallelism="ddp", world_size=8))
    assert zero3.breakdown["weights"] == single.breakdown["weights"] // 8
    assert ddp.breakdown["weights"] == single.breakdown["weights"]
    assert ddp.breakdown["DDP gradient buckets"] == single.components["gradients"]
    zero2 = estimate(replace(inp, parallelism="zero2", world_size=8))
    assert zero2.breakdown["weights"] == single.breakdown["weights"]
    assert zero2.breakdown["optimizer states"] == 8 * 8_030_261_248 // 8  # fp32 Adam states of the master copy
    offload = estimate(replace(inp, parallelism="zero3_offload", world_size=8))
    assert "optimizer states" not in offload.breakdown and offload.cpu_bytes > 0


def test_qlora_weights_are_less_than_a_third_of_bf16_weights():
    inp = PlanInput(published_config("Mistral-7B-v0.1"), method="lora")
    bf16 = estimate(inp).breakdown["weights"]
    qlora = estimate(replace(inp, method="qlora")).breakdown["weights"]
    assert qlora < bf16 / 3
    # NF4 with nested quantization: 4.127 bits per linear weight; embeddings, lm_head and norms stay in bf16
    linear = 7_241_732_096 - 2 * 32000 * 4096 - 65 * 4096
    assert qlora == int(linear * (0.5 + 1 / 64 + 4 / (64 * 256)) + (7_241_732_096 - linear) * 2)
    assert estimate(replace(inp, method="8bit-lora")).breakdown["weights"] < bf16 * 0.6


def test_suggestions_only_list_changes_that_fit():
    inp = PlanInput(published_config("Llama-3.1-8B"), method="full", gradient_checkpointing=False, micro_batch_size=8)
    plan = estimate(replace(inp, seq_len=4096))
    assert not plan.fits(24)
    fixes = find_fixes(plan, 24)
    assert fixes and len(suggestions(plan, 24)) == len(fixes)
    for _, changes in fixes:
        assert estimate(replace(plan.input, **changes)).fits(24)
    assert suggestions(estimate(replace(inp, method="qlora", micro_batch_size=1, seq_len=512)), 80) == []
    assert "does NOT fit on 24 GiB" in verdict_line(plan, 24) and "cheapest fix" in verdict_line(plan, 24)


def test_max_micro_batch_is_monotone_and_is_the_largest_that_fits():
    plan = estimate(PlanInput(published_config("Qwen2.5-1.5B"), method="lora", seq_len=2048))
    previous = 0
    for gib in (8, 16, 24, 40, 80):
        best = max_micro_batch(plan, gib)
        assert best >= previous
        previous = best
        if best:
            assert estimate(replace(plan.input, micro_batch_size=best)).fits(gib)
        assert not estimate(replace(plan.input, micro_batch_size=best + 1)).fits(gib)


def test_gpu_spec_reads_torch_device_names():
    assert gpu_spec("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert gpu_spec("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert gpu_spec("NVIDIA A100-SXM4-40GB").name == "A100 40GB"
    assert gpu_spec("NVIDIA L4").name == "L4" and gpu_spec("NVIDIA L40S").name == "L40S"
    assert gpu_spec("NVIDIA GeForce RTX 4090").name == "RTX 4090" and gpu_spec("Tesla T4").bf16 is False
    assert gpu_spec("H200").memory_gib > 139 and gpu_spec("Some Future Accelerator") is None


def test_accelerate_configs_map_to_parallelism(tmp_path):
    cases = {
        "distributed_type: DEEPSPEED\nnum_processes: 16\ndeepspeed_config:\n  zero_stage: 3\n": ("zero3", 16),
        "distributed_type: DEEPSPEED\nnum_processes: 8\ndeepspeed_config:\n  zero_stage: 2\n": ("zero2", 8),
        "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  zero_stage: 3\n"
        "  offload_optimizer_device: cpu\n  offload_param_device: cpu\n": ("zero3_offload", 2),
        "distributed_type: FSDP\nnum_processes: 8\nfsdp_config:\n  fsdp_version: 2\n": ("fsdp2", 8),
        "distributed_type: MULTI_GPU\nnum_processes: 4\n": ("ddp", 4),
        'distributed_type: "NO"\nnum_processes: 1\n': ("single", 1),
    }
    for i, (text, expected) in enumerate(cases.items()):
        (tmp_path / f"{i}.yaml").write_text(text)
        topology = launched_topology({"accelerate_config": str(tmp_path / f"{i}.yaml")})
        assert (topology.parallelism, topology.num_processes) == expected


def test_plan_input_follows_the_recipe_fields():
    model = SimpleNamespace(
        load_in_4bit=True,
        load_in_8bit=False,
        use_peft=True,
        lora_r=32,
        lora_dropout=0.0,
        lora_target_modules=["q_proj", "v_proj"],
        dtype="auto",
        attn_implementation=None,
    )
    training = SimpleNamespace(
        per_device_train_batch_size=4,
        max_length=None,
        gradient_checkpointing=True,
        gradient_accumulation_steps=2,
        optim="paged_adamw_8bit",
        bf16=True,
        fp16=False,
    )
    inp = plan_input_from_recipe(SimpleNamespace(model=model, training=training), {"torch_dtype": "bfloat16"})
    assert (inp.method, inp.lora_r, inp.lora_targets, inp.dtype) == ("qlora", 32, ("q_proj", "v_proj"), "bfloat16")
    assert (inp.micro_batch_size, inp.seq_len, inp.optimizer) == (4, 2048, "paged_adamw_8bit")
    assert (inp.attn_implementation, inp.mixed_precision, inp.lora_dropout) == ("sdpa", "bf16", 0.0)


def test_json_output_has_the_same_numbers_as_the_table(tmp_path, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        json.dumps(published_config("Qwen2.5-1.5B") | {"architectures": ["Qwen2ForCausalLM"]})
    )
    recipe = tmp_path / "lora.yaml"
    recipe.write_text(f"model_name_or_path: {model_dir}\nuse_peft: true\nmax_length: 2048\ndtype: bfloat16\n")
    args = ["--config", str(recipe), "--gpu-memory", "24", "--per_device_train_batch_size", "4"]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    table = capsys.readouterr().out
    for row in data["breakdown"]:
        line = next(line for line in table.splitlines() if re.search(rf"\b{re.escape(row['component'])}\b", line))
        assert f"{row['gib']:.2f}" in line
    assert f"{data['total_gib']:.2f}" in table and data["verdict"].split(" (")[0] in table.replace("\n", " ")
    assert data["max_micro_batch"] >= 1 and data["fits"] == (data["total_bytes"] <= 24 * GiB)


def test_plan_of_a_shipped_recipe_works_offline_from_its_config_snapshot(capsys, monkeypatch):
    """The hub is unreachable in tests: plan falls back to recipes/<model>/config.json and says so."""
    import json as json_module
    from pathlib import Path

    from sft_recipes.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert main(["plan", "--config", "recipes/qwen2.5-1.5b-instruct/lora.yaml", "--gpu-memory", "24", "--json"]) == 0
    plan = json_module.loads(capsys.readouterr().out)
    assert 1.5e9 < plan["parameters"]["total"] < 1.6e9  # Qwen2.5-1.5B: 1.54B
    assert plan["gpu_memory_gib"] == 24 and plan["total_gib"] < 24
