"""One topology object: read from an accelerate config with accelerate's loader, or from what `accelerate launch`
exports to each rank, the two agree; and it answers the sharding and device-map questions."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers.rank_env import launch_env

from sft_recipes.errors import RecipeError
from sft_recipes.topology import Topology

CONFIG_DIR = Path(__file__).resolve().parents[2] / "accelerate_configs"
BAD = Path(__file__).parents[1] / "bad_inputs"
# name -> (mode, offload, processes, machines, planner parallelism)
SHIPPED = {
    "single_gpu": ("single", False, 1, 1, "single"),
    "multi_gpu": ("ddp", False, 8, 1, "ddp"),
    "zero2": ("zero2", False, 8, 1, "zero2"),
    "zero3": ("zero3", False, 8, 1, "zero3"),
    "zero3_offload": ("zero3", True, 8, 1, "zero3_offload"),
    "fsdp2": ("fsdp2", False, 8, 1, "fsdp2"),
    "fsdp2_qlora": ("fsdp2", False, 8, 1, "fsdp2"),
    "multi_node": ("zero3", False, 16, 2, "zero3"),
}


def test_every_shipped_config_has_an_expected_topology():
    assert set(SHIPPED) == {path.stem for path in CONFIG_DIR.glob("*.yaml")}


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_config_reads_into_its_topology(name):
    topology = Topology.from_accelerate_config(name)
    got = (topology.mode, topology.offload, topology.num_processes, topology.num_machines, topology.parallelism)
    assert got == SHIPPED[name]
    assert topology.mixed_precision == "bf16"
    assert Path(topology.config_path).resolve() == (CONFIG_DIR / f"{name}.yaml").resolve()
    assert topology.sharded == (topology.mode in ("zero3", "fsdp2"))


@pytest.mark.parametrize("name", SHIPPED)
def test_each_rank_launched_with_a_config_sees_the_topology_the_config_describes(name, monkeypatch):
    expected = Topology.from_accelerate_config(name)
    _, env = launch_env(CONFIG_DIR / f"{name}.yaml")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # what torchrun adds for each rank
    monkeypatch.setenv("WORLD_SIZE", str(expected.num_processes))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(expected.num_processes // expected.num_machines))
    got = Topology.from_env(SimpleNamespace(bf16=True, fp16=False, deepspeed=None, fsdp=""))
    assert (got.mode, got.offload, got.num_processes, got.num_machines) == (
        expected.mode,
        expected.offload,
        expected.num_processes,
        expected.num_machines,
    )
    assert got.parallelism == expected.parallelism and got.mixed_precision == expected.mixed_precision


def test_launch_flags_override_the_configs_counts():
    topology = Topology.from_accelerate_config("multi_node", {"num_processes": "4", "num_machines": "1"})
    assert (topology.num_processes, topology.num_machines) == (4, 1)
    assert Topology.from_accelerate_config("single_gpu", {"num_processes": "2"}).mode == "ddp"


@pytest.mark.parametrize(
    ("text", "mode", "offload"),
    [
        ("distributed_type: NO\n", "single", False),  # YAML 1.1 reads an unquoted NO as false
        ("distributed_type: MULTI_CPU\nnum_processes: 2\n", "ddp", False),
        ("distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 1\n", "zero2", False),
        ("distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n  fsdp_offload_params: true\n", "fsdp2", True),
    ],
)
def test_a_config_file_reads_into_mode_and_offload(text, mode, offload, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    topology = Topology.from_accelerate_config(str(path))
    assert (topology.mode, topology.offload) == (mode, offload)


def test_a_deepspeed_json_named_by_the_config_decides_stage_and_offload(tmp_path):
    ds = {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    path = tmp_path / "config.yaml"
    path.write_text(
        f"distributed_type: DEEPSPEED\ndeepspeed_config:\n  deepspeed_config_file: {tmp_path / 'ds.json'}\n"
    )
    topology = Topology.from_accelerate_config(str(path))
    assert (topology.mode, topology.parallelism) == ("zero3", "zero3_offload")
    # the same JSON given to the recipe as `deepspeed:`, without a launcher
    assert Topology.from_env(SimpleNamespace(deepspeed=ds, bf16=False, fp16=False)).parallelism == "zero3_offload"


@pytest.mark.parametrize(
    ("source", "where", "message"),
    [
        (BAD / "accelerate_broken.yaml", "accelerate_broken.yaml:6", "invalid YAML"),
        (BAD / "accelerate_unknown_type.yaml", "accelerate_unknown_type.yaml (distributed_type)", "MEGATRON_LM"),
        ("zero4", "--accelerate_config", "zero3"),
    ],
)
def test_a_bad_config_is_a_recipe_error_naming_the_file(source, where, message):
    with pytest.raises(RecipeError) as raised:
        Topology.from_accelerate_config(str(source))
    problem = raised.value.problems[0]
    assert where in problem.where and message in f"{problem.message} {problem.fix}"


def test_a_config_with_an_unknown_key_is_refused_by_accelerates_loader(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("distributed_type: MULTI_GPU\nnum_procesess: 2\n")
    with pytest.raises(RecipeError, match="num_procesess"):
        Topology.from_accelerate_config(str(path))


@pytest.mark.parametrize(
    ("mode", "processes", "placed", "auto"),
    [
        ("single", 1, True, True),
        ("ddp", 2, True, False),
        ("zero2", 2, True, False),
        ("zero3", 2, False, False),
        ("fsdp2", 2, False, False),
    ],
)
def test_weights_may_be_placed_only_unsharded_and_spread_only_in_one_process(mode, processes, placed, auto):
    topology = Topology(mode=mode, num_processes=processes)
    assert topology.allows_device_map(None)
    assert topology.allows_device_map({"": 0}) == placed
    assert topology.allows_device_map("auto") == auto
    assert topology.sharded == (not placed)
