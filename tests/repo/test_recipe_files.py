"""Recipe files follow the house layout: header, sections, pinned keys, and a README table that matches them."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# recipes/demo/ is the offline CPU demo (`make demo`), not a GPU recipe: it has its own test (tests/e2e/test_demo.py).
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if p.parent.name != "demo")
METHODS = {"full", "lora", "qlora"}
FLOAT_KEYS = ("learning_rate", "warmup_steps", "lora_dropout")
SECTIONS = ["# model", "# quantization + LoRA", "# data", "# training"]
HEADER = re.compile(r"# .+\. Fits (?P<hardware>(?P<gpus>\d+)x \d+ GB GPUs?\b.*)\.")


def _ids(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def _header(path: Path) -> tuple[re.Match, str]:
    first, second = path.read_text().splitlines()[:2]
    match = HEADER.fullmatch(first)
    assert match, f"{_ids(path)}: first line must say what is trained and 'Fits <N>x <M> GB GPU(s).'"
    assert second.startswith("# "), _ids(path)
    return match, second[2:]


@pytest.mark.parametrize("path", RECIPES, ids=_ids)
def test_header_names_the_hardware_and_the_exact_launch_command(path):
    match, command = _header(path)
    expected = f"sft-recipes train --config recipes/{path.parent.name}/{path.name}"
    assert command == expected or command.startswith(expected + " --accelerate_config "), command
    if "--accelerate_config" in command:
        assert (ROOT / "accelerate_configs" / f"{command.split()[-1]}.yaml").is_file(), command
    # A recipe that needs several GPUs must say how they are used.
    assert (int(match["gpus"]) > 1) == ("--accelerate_config" in command), command


@pytest.mark.parametrize("path", RECIPES, ids=_ids)
def test_keys_are_grouped_under_the_house_section_comments(path):
    assert path.stem in METHODS
    sections = [line for line in path.read_text().splitlines() if line in SECTIONS]
    expected = [s for s in SECTIONS if path.stem != "full" or s != "# quantization + LoRA"]
    assert sections == expected


@pytest.mark.parametrize("path", RECIPES, ids=_ids)
def test_recipe_pins_what_must_never_be_left_to_a_default(path):
    recipe = yaml.safe_load(path.read_text())
    assert recipe["dtype"] == "bfloat16"
    assert recipe["bf16"] is True
    assert recipe["activation_checkpointing"] is True
    assert recipe["attn_implementation"] in {"sdpa", "flash_attention_2", "eager"}
    assert "max_length" in recipe
    assert recipe["report_to"] in {"none", "tensorboard"}
    assert recipe["output_dir"] == f"outputs/{path.parent.name}-{path.stem}"
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "logging_steps"):
        assert isinstance(recipe[key], int), key
    for key in ("lr_scheduler_type", "save_strategy", "dataset_name"):
        assert recipe[key], key


@pytest.mark.parametrize("path", RECIPES, ids=_ids)
def test_floats_parse_as_floats(path):
    # PyYAML reads 1e-5 (no dot) as the string "1e-5".
    recipe = yaml.safe_load(path.read_text())
    for key in FLOAT_KEYS:
        if key in recipe:
            assert isinstance(recipe[key], float), f"{key}: {recipe[key]!r}"


@pytest.mark.parametrize("path", RECIPES, ids=_ids)
def test_method_matches_the_adapter_and_quantization_keys(path):
    recipe = yaml.safe_load(path.read_text())
    if path.stem == "full":
        assert not recipe.get("use_peft") and not recipe.get("load_in_4bit")
        return
    assert recipe["use_peft"] is True
    assert recipe["lora_target_modules"] and recipe["lora_r"] > 0
    if path.stem == "qlora":
        assert recipe["load_in_4bit"] is True
        assert (recipe["bnb_4bit_quant_type"], recipe["use_bnb_nested_quant"]) == ("nf4", True)
        # FSDP shards only floating-point storage; uint8 would leave the 4-bit weights whole on every GPU.
        assert recipe["bnb_4bit_quant_storage"] == "bfloat16"
    else:
        assert not recipe.get("load_in_4bit") and not recipe.get("load_in_8bit")


def test_readme_table_lists_every_recipe_with_its_header_command_and_hardware():
    rows = {}
    for line in (ROOT / "recipes" / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("["):
            rows[re.search(r"\(([^)]+)\)", cells[0]).group(1)] = cells
    assert set(rows) == {f"{p.parent.name}/{p.name}" for p in RECIPES}
    for path in RECIPES:
        _, model, method, hardware, command = rows[f"{path.parent.name}/{path.name}"]
        match, header_command = _header(path)
        assert model == yaml.safe_load(path.read_text())["model_name_or_path"]
        assert (method, hardware, command) == (path.stem, match["hardware"], f"`{header_command}`")
