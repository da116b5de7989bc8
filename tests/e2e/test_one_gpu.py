"""Training on one CUDA GPU, what the CPU runs cannot show: bf16 weights (and the 4-bit base) on the GPU, the loss
falling, and the throughput callback's CUDA peak memory and MFU in the logs. Skipped without CUDA; `make gpu-check`
runs it."""

from __future__ import annotations

import pytest
from helpers.runs import write_recipe

LORA = {"use_peft": True, "lora_r": 8, "lora_alpha": 16}


@pytest.mark.gpu
@pytest.mark.parametrize(
    "keys",
    [{"learning_rate": 1.0e-3}, {**LORA, "learning_rate": 5.0e-3, "load_in_4bit": True, "use_bnb_nested_quant": True}],
    ids=["full-bf16", "qlora"],
)
def test_one_gpu_trains_in_bf16_on_the_gpu_and_logs_cuda_peak_memory(tmp_path, llama_dir, demo_data_path, keys):
    import torch

    from sft_recipes.config import parse_recipe
    from sft_recipes.throughput import device_peak_flops
    from sft_recipes.train import run

    path = write_recipe(
        tmp_path / "recipe.yaml",
        model_name_or_path=str(llama_dir),
        dataset_name=str(demo_data_path),
        output_dir=str(tmp_path / "out"),
        use_cpu=False,
        bf16=True,
        dtype="bfloat16",
        max_steps=12,
        **keys,
    )
    trainer = run(parse_recipe(["--config", str(path)]))
    assert {p.device.type for p in trainer.model.parameters()} == {"cuda"}
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trained and {p.dtype for p in trained} <= {torch.bfloat16, torch.float32}
    if "load_in_4bit" in keys:
        layer = trainer.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
        assert type(layer).__name__ == "Linear4bit"
    logs = [h for h in trainer.state.log_history if "loss" in h]
    losses = [h["loss"] for h in logs]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert all(0 < h["peak_memory_gib"] < torch.cuda.get_device_properties(0).total_memory / 2**30 for h in logs)
    if device_peak_flops() is not None:  # a GPU of sft_recipes.plan's table
        assert all(0 < h["mfu"] < 1 for h in logs[1:])
