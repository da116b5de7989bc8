"""Two CPU ranks (gloo) training on a prepared set: each reads it, none tokenizes, no raw data is left to read."""

from __future__ import annotations

import shutil

import pytest
from helpers.distributed_runs import bench, cpu_accelerate_config, launch, launched_ok
from helpers.runs import write_recipe


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_on_a_prepared_set_reproduce_the_single_process_run_from_raw_data(
    tmp_path, tmp_path_factory, llama_dir, demo_data_path
):
    from sft_recipes.cli import main

    setup = bench(tmp_path_factory.getbasetemp(), llama_dir, demo_data_path)
    data = tmp_path / "raw" / "demo.jsonl"
    data.parent.mkdir()
    shutil.copy(demo_data_path, data)  # the bench's own recipe, on a copy of its data that is deleted below
    keys = {"model_name_or_path": str(llama_dir), "dataset_name": str(data), "use_cpu": True}
    recipe = write_recipe(tmp_path / "full.yaml", **keys)
    prepared = tmp_path / "prepared"
    assert main(["preprocess", "--config", str(recipe), "--out", str(prepared)]) == 0
    shutil.rmtree(data.parent)

    recipe = write_recipe(tmp_path / "full.yaml", **keys, prepared=str(prepared))
    run = launched_ok(launch(recipe, cpu_accelerate_config("multi_gpu", tmp_path), tmp_path / "out"), "ddp")
    setup.assert_reproduces_reference(run, "full")
    assert run.log.count(f"Training on the prepared set in {prepared}") == 2  # every rank read it
    assert "Tokenizing" not in run.log and "Checking and converting" not in run.log  # none prepared anything
    assert list((prepared / "train").glob("cache-*")) == []  # no rank mapped the prepared rows
