"""accelerate_configs/*.yaml load with accelerate's own loader and turn into the launch environment they promise."""

from pathlib import Path

import pytest
import yaml
from helpers.rank_env import launch_env

CONFIG_DIR = Path(__file__).resolve().parents[2] / "accelerate_configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
EXPECTED = {
    "single_gpu",
    "multi_gpu",
    "zero2",
    "zero3",
    "zero3_offload",
    "fsdp2",
    "fsdp2_qlora",
    "multi_node",
}
GPUS_PER_MACHINE = 8


def _load(path: Path):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(path))


def test_the_documented_topologies_all_exist():
    assert {path.stem for path in CONFIGS} == EXPECTED


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_with_accelerates_loader_in_bf16(path):
    config = _load(path)
    assert config.mixed_precision == "bf16"
    assert config.use_cpu is False


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_num_processes_matches_the_name(path):
    config = _load(path)
    if path.stem == "single_gpu":
        assert (config.num_machines, config.num_processes) == (1, 1)
    elif path.stem == "multi_node":
        assert config.num_machines == 2
        assert config.num_processes == config.num_machines * GPUS_PER_MACHINE
    else:
        assert (config.num_machines, config.num_processes) == (1, GPUS_PER_MACHINE)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_nested_key_is_a_launch_option_accelerate_reads(path):
    # load_config_from_file only checks top-level keys; a misspelt deepspeed/fsdp key would be ignored silently.
    from accelerate.commands.launch import launch_command_parser

    options = {action.dest for action in launch_command_parser()._actions}
    raw = yaml.safe_load(path.read_text())
    nested = set(raw.get("deepspeed_config", {})) | set(raw.get("fsdp_config", {}))
    assert nested <= options, sorted(nested - options)


ZERO3 = [p for p in CONFIGS if "zero3" in p.stem or p.stem == "multi_node"]


@pytest.mark.parametrize("path", ZERO3, ids=lambda p: p.stem)
def test_zero3_configs_init_sharded_and_gather_weights_on_save(path):
    config = _load(path)
    assert config.deepspeed_config["zero_stage"] == 3
    assert config.deepspeed_config["zero3_init_flag"] is True
    # Without a 16-bit gather, save_model under ZeRO-3 writes an empty state dict plus DeepSpeed shards.
    assert config.deepspeed_config["zero3_save_16bit_model"] is True
    _, env = launch_env(path)
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.startswith("fsdp")], ids=lambda p: p.stem)
def test_fsdp_configs_are_fsdp2_and_save_a_full_state_dict(path):
    config = _load(path)
    assert config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert config.fsdp_config["fsdp_cpu_ram_efficient_loading"] is True
    _, env = launch_env(path)
    assert env["FSDP_VERSION"] == "2"
    # transformers' Trainer.save_model writes nothing under SHARDED_STATE_DICT; FULL gathers real weights.
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"


def test_fsdp2_qlora_is_fsdp_version_2():
    assert _load(CONFIG_DIR / "fsdp2_qlora.yaml").fsdp_config["fsdp_version"] == 2


def test_multi_node_launch_splits_processes_over_machines_and_uses_the_given_rank():
    args, env = launch_env(CONFIG_DIR / "multi_node.yaml", "--machine_rank", "1", "--main_process_ip", "node-a")
    assert (int(args.nnodes), int(args.nproc_per_node), int(args.node_rank)) == (2, GPUS_PER_MACHINE, 1)
    assert args.rdzv_endpoint == "node-a:29500"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"


@pytest.mark.parametrize("name", ["single_gpu", "multi_gpu"])
def test_plain_configs_export_bf16_mixed_precision(name):
    _, env = launch_env(CONFIG_DIR / f"{name}.yaml")
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
