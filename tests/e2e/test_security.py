"""Hygiene: no remote code unless asked, safetensors in and out, and secrets kept out of logs and saved files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.bad_inputs import BASE, fill, run_validate, write_recipe

from sft_recipes.topology import Topology

EVIL_CODE = """
from pathlib import Path

Path(__file__).with_name("remote-code-ran").write_text("it ran")
"""
SECRETS = {
    "HF_TOKEN": "hf_environmentSECRET1234567890",  # in the environment of the run
    "WANDB_API_KEY": "wandb-env-block-SECRET-0987",  # in the recipe's env: block
    "hub_token": "hf_recipeKeySECRET55555",  # a recipe key
}


@pytest.fixture
def places(tmp_path, llama_dir, demo_data_path) -> dict[str, str]:
    return {"llama": str(llama_dir), "data": str(demo_data_path), "tmp": str(tmp_path)}


def copy_model(src: Path, dst: Path, files=("config.json", "tokenizer.json", "tokenizer_config.json")) -> Path:
    dst.mkdir()
    for name in files:
        shutil.copy(src / name, dst / name)
    return dst


def test_trust_remote_code_is_off_by_default(tmp_path, places):
    from sft_recipes.config import parse_recipe

    recipe = parse_recipe(["--config", str(write_recipe(tmp_path, places, {}))])
    assert recipe.training.trust_remote_code is False


def test_unknown_model_type_with_auto_map_is_refused_naming_trust_remote_code(tmp_path, places, capsys, monkeypatch):
    model = copy_model(Path(places["llama"]), tmp_path / "acme")
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="acme_lm", auto_map={"AutoConfig": "evil.AcmeConfig", "AutoModelForCausalLM": "evil.M"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text(EVIL_CODE)
    code, _, err = run_validate(
        capsys, monkeypatch, write_recipe(tmp_path, places, {"model_name_or_path": str(model)})
    )
    assert code == 2
    assert "trust_remote_code" in err and "runs arbitrary Python from the model repository" in err
    assert not (model / "remote-code-ran").exists()


def test_auto_map_on_a_known_model_type_never_runs_the_repository_code(tmp_path, places, capsys, monkeypatch):
    """trust_remote_code is never turned on implicitly: the built-in llama classes are used, evil.py never imported."""
    from sft_recipes.config import parse_recipe
    from sft_recipes.model.loading import load_model, load_processing_class

    model = copy_model(
        Path(places["llama"]),
        tmp_path / "llama-with-code",
        files=("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"),
    )
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.C", "AutoModelForCausalLM": "evil.M", "AutoTokenizer": ["evil.T", None]}
    (model / "config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text(EVIL_CODE)
    recipe_path = write_recipe(tmp_path, places, {"model_name_or_path": str(model)})
    code, out, err = run_validate(capsys, monkeypatch, recipe_path)
    assert code == 0, err
    recipe = parse_recipe(["--config", str(recipe_path)])
    tokenizer = load_processing_class(recipe.model, recipe.training, "causal_lm")
    loaded = load_model(recipe.model, recipe.training, "causal_lm", config, tokenizer, Topology())
    assert type(loaded).__module__.startswith("transformers.models.llama")
    assert not (model / "remote-code-ran").exists()


def pickle_only(src: Path, dst: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    copy_model(src, dst, files=("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"))
    torch.save(AutoModelForCausalLM.from_pretrained(src).state_dict(), dst / "pytorch_model.bin")
    return dst


def test_pickle_weights_are_refused_unless_allowed_then_load(tmp_path, places, capsys, monkeypatch):
    from sft_recipes.config import parse_recipe
    from sft_recipes.errors import RecipeError
    from sft_recipes.model.loading import load_model, load_processing_class
    from sft_recipes.validate.rules import preflight

    model = pickle_only(Path(places["llama"]), tmp_path / "pickled")
    refused = write_recipe(tmp_path, places, {"model_name_or_path": str(model)})
    with pytest.raises(RecipeError, match="allow_pickle_weights: true") as caught:
        preflight(parse_recipe(["--config", str(refused)]))
    assert "pytorch_model.bin" in str(caught.value)

    allowed = write_recipe(tmp_path, places, {"model_name_or_path": str(model), "allow_pickle_weights": True})
    code, _, err = run_validate(capsys, monkeypatch, allowed)
    assert code == 0, err
    recipe = parse_recipe(["--config", str(allowed)])
    config = preflight(recipe)
    tokenizer = load_processing_class(recipe.model, recipe.training, "causal_lm")
    import torch

    loaded = load_model(recipe.model, recipe.training, "causal_lm", config, tokenizer, Topology()).state_dict()
    pickled = torch.load(model / "pytorch_model.bin", weights_only=True)
    assert pickled.keys() <= loaded.keys()
    assert all(torch.equal(loaded[name], weight) for name, weight in pickled.items())  # the .bin weights, not random


def test_a_run_saves_safetensors_only_and_keeps_secrets_out_of_logs_and_files(tmp_path, places):
    recipe = tmp_path / "recipe.yaml"
    keys = {
        **fill(BASE, places),
        "max_steps": 2,
        "save_strategy": "steps",
        "save_steps": 1,
        "logging_steps": 1,
        "use_peft": True,
        "lora_r": 4,
        "bf16": False,
        "hub_token": SECRETS["hub_token"],
        "env": {"WANDB_API_KEY": SECRETS["WANDB_API_KEY"], "SFT_RECIPES_TEST_FLAG": "visible"},
    }
    recipe.write_text(yaml.safe_dump(keys))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": SECRETS["HF_TOKEN"]}
    done = subprocess.run(
        [sys.executable, "-m", "sft_recipes", "--debug", "train", "--config", str(recipe)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    files = [p for p in out.rglob("*") if p.is_file()]
    for secret in SECRETS.values():
        assert secret not in done.stdout + done.stderr
        leaked = [str(p.relative_to(out)) for p in files if secret.encode() in p.read_bytes()]
        assert leaked == [], f"{secret} in {leaked}"
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["env"] == {"WANDB_API_KEY": "<redacted>", "SFT_RECIPES_TEST_FLAG": "visible"}
    assert (out / "README.md").is_file()  # the model card was written, and checked above

    weights = {p.name for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")}
    assert "adapter_model.safetensors" in weights
    # Pickles only for trainer state (optimizer, scheduler, RNG, arguments), never for weights.
    assert weights - {"adapter_model.safetensors"} <= {
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "training_args.bin",
    }
