"""recipes/<model-id>/config.json snapshots load offline and carry what the memory planner reads."""

import functools
import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SNAPSHOTS = sorted(RECIPES.glob("*/config.json"))
# templates/ holds chat templates; demo/ trains a tiny model `make demo` builds, so it has no hub snapshot.
MODEL_DIRS = sorted(p for p in RECIPES.iterdir() if p.is_dir() and p.name not in ("templates", "demo"))
# Sizes the planner turns into parameter, activation and KV-cache bytes.
TEXT_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "max_position_embeddings",
)
VISION_KEYS = ("hidden_size", "intermediate_size")
VISION_DEPTH_KEYS = ("num_hidden_layers", "depth")


def _ids(path: Path) -> str:
    return path.parent.name


@functools.cache
def _load(path: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path.parent)


def _text_section(raw: dict) -> dict:
    # Composite configs nest the language model; flat ones (Qwen2.5-VL's) keep it at the top level.
    return {**raw, **raw.get("text_config", {})}


def _is_vlm(raw: dict) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return raw["model_type"] in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES or "vision_config" in raw


def test_every_model_directory_has_a_snapshot_and_recipes():
    assert MODEL_DIRS
    for model_dir in MODEL_DIRS:
        assert (model_dir / "config.json").is_file(), model_dir.name
        assert sorted(model_dir.glob("*.yaml")), model_dir.name


@pytest.mark.parametrize("path", SNAPSHOTS, ids=_ids)
def test_snapshot_loads_offline_as_the_architecture_it_names(path):
    raw = json.loads(path.read_text())
    config = _load(path)
    assert config.model_type == raw["model_type"]
    assert config.architectures == raw["architectures"]
    assert str(config.dtype).removeprefix("torch.") == raw["torch_dtype"]


@pytest.mark.parametrize("path", SNAPSHOTS, ids=_ids)
def test_snapshot_sizes_survive_loading(path):
    # A key under the wrong section or with a stale name is dropped silently and replaced by a default.
    raw = json.loads(path.read_text())
    text = _load(path).get_text_config()
    section = _text_section(raw)
    for key in TEXT_KEYS:
        value = getattr(text, key, None)
        assert value is not None, key
        if key in section:
            assert value == section[key], key


@pytest.mark.parametrize("path", [p for p in SNAPSHOTS if "vision_config" in json.loads(p.read_text())], ids=_ids)
def test_vision_tower_sizes_survive_loading(path):
    raw = json.loads(path.read_text())["vision_config"]
    vision = _load(path).vision_config
    for key in VISION_KEYS:
        assert getattr(vision, key) == raw[key], key
    depth = next(key for key in VISION_DEPTH_KEYS if key in raw)
    assert getattr(vision, depth) == raw[depth]


@pytest.mark.parametrize("model_dir", MODEL_DIRS, ids=lambda p: p.name)
def test_snapshot_names_the_model_its_recipes_train(model_dir):
    source = json.loads((model_dir / "config.json").read_text())["_name_or_path"]
    for recipe in model_dir.glob("*.yaml"):
        assert yaml.safe_load(recipe.read_text())["model_name_or_path"] == source, recipe.name


@pytest.mark.parametrize("model_dir", MODEL_DIRS, ids=lambda p: p.name)
def test_recipes_follow_the_rules_of_their_model_kind(model_dir):
    vlm = _is_vlm(json.loads((model_dir / "config.json").read_text()))
    for path in model_dir.glob("*.yaml"):
        recipe = yaml.safe_load(path.read_text())
        assert "max_length" in recipe, path.name  # the 1024 default truncates silently
        if vlm:
            # Truncation cuts image tokens; TRL refuses packing and padding_free for VLMs. assistant_only_loss works
            # for VLMs since TRL 1.16 + transformers 5.18 (tests/test_vlm_family_masks.py), but the VLM recipes
            # still train on the whole sequence.
            assert recipe["max_length"] is None, path.name
            for key in ("packing", "padding_free", "assistant_only_loss"):
                assert not recipe.get(key, False), f"{path.name}: {key}"
        else:
            assert isinstance(recipe["max_length"], int), path.name
            # Every text template here allows it (TRL's marked copy, or a marked one in recipes/templates/).
            assert recipe.get("assistant_only_loss") is True, f"{path.name}: assistant_only_loss"
