"""FSDP2 and the sharded-loading decisions. Accelerate cannot shard on CPU (FSDP2 silently becomes DDP), so on CPU
this checks what our code decides: the mode, the device map, the 4-bit storage and one floating dtype per model.
The real two-GPU run is marked `gpu` and needs two CUDA devices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.runs import write_recipe

from sft_recipes.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
FSDP_CONFIGS = ["fsdp2", "fsdp2_qlora"]
SHARDED = ["fsdp2", "zero3"]


def launch_env(name: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file accelerate_configs/<name>.yaml` gives each rank."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    path = ROOT / "accelerate_configs" / f"{name}.yaml"
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(["--config_file", str(path), "x.py"]))
    return prepare_multi_gpu_env(args)


def recipe(tmp_path: Path, model_dir: Path, data_path: Path, **keys):
    from sft_recipes.config import parse_recipe

    keys = {"model_name_or_path": str(model_dir), "dataset_name": str(data_path), "use_cpu": True, **keys}
    return parse_recipe(["--config", str(write_recipe(tmp_path / "recipe.yaml", **keys))])


@pytest.mark.parametrize("name", FSDP_CONFIGS)
def test_ranks_launched_with_a_shipped_fsdp_config_load_in_fsdp_mode(name, monkeypatch):

    env = launch_env(name)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert Topology.from_env().mode == "fsdp2"


@pytest.mark.parametrize(
    ("mode", "placed"), [("single", True), ("ddp", True), ("zero2", True), ("zero3", False), ("fsdp2", False)]
)
def test_kbit_weights_go_to_the_local_gpu_except_when_zero3_or_fsdp_shards_them(mode, placed, monkeypatch):
    from sft_recipes.model.loading import get_kbit_device_map

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    # never "auto": it cannot train distributed
    assert get_kbit_device_map(Topology(mode=mode)) == ({"": 3} if placed else None)


@pytest.mark.parametrize("mode", ["single", *SHARDED])
def test_sharded_qlora_stores_the_4bit_weights_in_the_compute_dtype(mode):
    from sft_recipes.config import ModelConfig
    from sft_recipes.model.loading import build_quantization_config

    pytest.importorskip("bitsandbytes")
    config = build_quantization_config(ModelConfig(load_in_4bit=True), torch.bfloat16, Topology(mode=mode))
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.bnb_4bit_quant_storage == (torch.bfloat16 if mode in SHARDED else torch.uint8)


def dtypes(model) -> set[torch.dtype]:
    return {param.dtype for param in model.parameters()}


@pytest.mark.parametrize("mode", ["single", *SHARDED])
def test_sharded_qlora_loads_every_weight_in_one_floating_dtype_without_a_device_map(
    mode, tmp_path, llama_dir, demo_data_path
):
    from sft_recipes.model.kind import CAUSAL_LM
    from sft_recipes.model.loading import load_model, load_processing_class

    pytest.importorskip("bitsandbytes")
    r = recipe(tmp_path, llama_dir, demo_data_path, load_in_4bit=True, bf16=True, dtype="bfloat16", use_peft=True)
    tokenizer = load_processing_class(r.model, r.training, CAUSAL_LM)
    config = json.loads((llama_dir / "config.json").read_text())
    model = load_model(r.model, r.training, CAUSAL_LM, config, tokenizer, Topology(mode=mode))
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert getattr(model, "hf_device_map", None) in (None, {"": "cpu"})
    if mode in SHARDED:
        # ZeRO-3/FSDP gather each unit as one dtype: packed 4-bit storage, norms and embeddings all bf16.
        assert dtypes(model) == {torch.bfloat16}
    else:
        # One device: prepare_model_for_kbit_training upcasts norms and embeddings to fp32 for stability.
        assert dtypes(model) == {torch.uint8, torch.float32}


def test_lora_under_fsdp_loads_unplaced_in_one_dtype(tmp_path, llama_dir, demo_data_path):
    from sft_recipes.model.kind import CAUSAL_LM
    from sft_recipes.model.loading import load_model, load_processing_class
    from sft_recipes.model.lora import build_lora_config

    r = recipe(tmp_path, llama_dir, demo_data_path, use_peft=True, bf16=True, dtype="bfloat16", lora_r=4)
    tokenizer = load_processing_class(r.model, r.training, CAUSAL_LM)
    config = json.loads((llama_dir / "config.json").read_text())
    model = load_model(r.model, r.training, CAUSAL_LM, config, tokenizer, Topology(mode="fsdp2"))
    assert getattr(model, "hf_device_map", None) is None and dtypes(model) == {torch.bfloat16}
    lora = build_lora_config(r.model, model, CAUSAL_LM)
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


# -- the real thing: two GPUs ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP2 sharding needs two CUDA devices")
@pytest.mark.parametrize(
    ("config", "keys", "saved"),
    [
        ("fsdp2", {}, "model.safetensors"),
        ("fsdp2", {"use_peft": True, "lora_r": 4}, "adapter_model.safetensors"),
        ("fsdp2_qlora", {"use_peft": True, "lora_r": 4, "load_in_4bit": True}, "adapter_model.safetensors"),
    ],
    ids=["full", "lora", "qlora"],
)
def test_fsdp2_on_two_gpus_trains_and_saves_loadable_weights(config, keys, saved, tmp_path, llama_dir, demo_data_path):
    from safetensors.torch import load_file

    path = write_recipe(
        tmp_path / "recipe.yaml",
        model_name_or_path=str(llama_dir),
        dataset_name=str(demo_data_path),
        use_cpu=False,
        bf16=True,
        dtype="bfloat16",
        **keys,
    )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sft_recipes", "train", "--config", str(path), "--accelerate_config", config]
    command += ["--num_processes", "2", "--output_dir", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "terminate called" not in log, log[-4000:]
    assert log.count("distributed mode: fsdp") == 2
    assert json.loads((out / "run_summary.json").read_text())["world_size"] == 2
    weights = load_file(out / saved)
    assert weights and all(t.numel() > 0 for t in weights.values())  # FULL_STATE_DICT gathered, not empty shards
    if "lora_r" in keys:
        assert any(t.abs().max() > 0 for name, t in weights.items() if "lora_B" in name)
