"""A command asked for JSON prints one JSON document on stdout and nothing else: libraries' output goes to stderr.

DeepSpeed, which accelerate imports whenever it is installed, logs "Setting accelerator to CPU" to stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sft_recipes.environment import has_package
from sft_recipes.resources import demo_recipe

DEEPSPEED_LINE = "Setting accelerator to CPU"


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "sft_recipes", *argv], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _deepspeed_warns_here() -> bool:
    import torch

    return has_package("deepspeed") and not torch.cuda.is_available()


def test_env_json_is_the_only_thing_on_stdout():
    assert json.loads(_run("env", "--json").stdout)["packages"]["torch"]


@pytest.mark.slow
def test_inspect_json_is_the_only_thing_on_stdout_and_deepspeed_speaks_on_stderr(tmp_path):
    from sft_recipes.tiny import build_causal_lm, build_tokenizer, write_demo_dataset

    model = build_causal_lm("llama", tmp_path / "model", tokenizer=build_tokenizer())
    data = write_demo_dataset(tmp_path / "chat.jsonl", n=16)
    overrides = ["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(tmp_path / "o")]
    done = _run("inspect", "--config", str(demo_recipe()), *overrides, "-n", "1", "--format", "json")
    report = json.loads(done.stdout)  # raises when anything else shares stdout
    assert report["statistics"]
    assert DEEPSPEED_LINE not in done.stdout
    if _deepspeed_warns_here():  # kept, not swallowed: only moved to stderr
        assert DEEPSPEED_LINE in done.stderr
