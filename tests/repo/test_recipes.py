"""Every shipped recipe parses strictly under the installed TRL, its header's launch command goes through our launcher,
and it passes the distributed checks of each topology it can scale to. (test_validate_recipes.py runs the whole
`sft-recipes validate` on each recipe; this file is the part that a TRL rename or a topology change breaks.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*/*.yaml"))
LAUNCH = re.compile(r"sft-recipes train --config \S+\.yaml(?: --\w+ \S+)*")
# Values TrainingArguments normalises on purpose: YAML value -> parsed value.
NORMALISED = {"report_to": {"none": []}}
# Keys TRL or transformers renamed (old, new, a value); recipes copied from older repositories still carry them.
OLD_KEYS = [
    ("max_seq_length", "max_length", 2048),  # TRL 0.20
    ("torch_dtype", "dtype", "bfloat16"),  # TRL 1.x ModelConfig, transformers 5
    ("evaluation_strategy", "eval_strategy", "no"),  # transformers 4.46
]


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def parse(path: Path, *extra: str):
    """parse_recipe on the recipe as shipped; a hub model is replaced by its config.json snapshot next to it."""
    from sft_recipes.config import parse_recipe

    args = ["--config", str(path.relative_to(ROOT))]
    if (path.parent / "config.json").is_file():
        args += ["--model_name_or_path", str(path.parent.relative_to(ROOT))]
    return parse_recipe(args + list(extra))


def header_command(path: Path) -> list[str]:
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    match = LAUNCH.search(" ".join(header))
    assert match, f"{_id(path)}: the header comment must hold the launch command `sft-recipes train --config ...`"
    return shlex.split(match.group(0))


@pytest.fixture(autouse=True)
def _from_the_repository_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # recipe paths, chat_template_path and accelerate config names are relative to it


def test_recipes_are_shipped():
    assert len([p for p in RECIPES if p.parent.name != "demo"]) >= 20


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_recipe_parses_strictly_and_every_key_keeps_its_yaml_value(path):
    recipe = parse(path)
    assert recipe.warnings == [], [str(w) for w in recipe.warnings]
    shipped = yaml.safe_load(path.read_text())
    for key, value in shipped.items():
        if key == "model_name_or_path":
            continue
        expected = NORMALISED.get(key, {}).get(value, value) if isinstance(value, str) else value
        assert recipe.raw[key] == expected, key


@pytest.mark.parametrize(("old", "new", "value"), OLD_KEYS)
def test_a_key_renamed_by_trl_fails_the_parse_and_names_the_key(tmp_path, old, new, value):
    from sft_recipes.config import parse_recipe
    from sft_recipes.errors import RecipeError

    shipped = yaml.safe_load((ROOT / "recipes/qwen2.5-1.5b-instruct/lora.yaml").read_text())
    shipped[old] = shipped.pop(new, value)
    stale = tmp_path / "stale.yaml"
    stale.write_text(yaml.safe_dump(shipped))
    with pytest.raises(RecipeError) as raised:
        parse_recipe(["--config", str(stale)])
    assert any(old in problem.where for problem in raised.value.problems)


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_header_launch_command_goes_through_our_launcher_to_a_bundled_config(path):
    from sft_recipes.arguments import launch_flags, parse_with_recipe
    from sft_recipes.launch import launch_command, launch_precision
    from sft_recipes.train import build_parser

    command = header_command(path)
    assert command[:4] == ["sft-recipes", "train", "--config", str(path.relative_to(ROOT))]
    args, rest = parse_with_recipe(build_parser(), command[2:])
    line = launch_command("train", launch_flags(args), rest)
    if "--accelerate_config" not in command:
        assert line is None  # a single-process run
        return
    config = Path(line[line.index("--config_file") + 1])
    assert config.parent.name == "accelerate_configs" and config.is_file()
    assert line[line.index("--mixed_precision") + 1] == launch_precision(parse(path).training)
    assert line[line.index("-m", 3) :] == ["-m", "sft_recipes", "train", "--config", command[3]]


def topologies(path: Path) -> list[str]:
    """The accelerate configs a recipe must work with: the one its header names, and the sharded ones it scales to."""
    command = header_command(path)
    named = [command[command.index("--accelerate_config") + 1]] if "--accelerate_config" in command else []
    if path.parent.name == "demo":
        return named
    return sorted({*named, "zero3", "fsdp2_qlora" if path.stem == "qlora" else "fsdp2"})


@pytest.mark.parametrize(
    ("path", "topology"),
    [(p, t) for p in RECIPES for t in topologies(p)],
    ids=lambda v: _id(v) if isinstance(v, Path) else v,
)
def test_recipe_passes_the_distributed_checks_of_each_topology_it_scales_to(path, topology):
    from sft_recipes.model.loading import check_sharded_combination
    from sft_recipes.topology import Topology
    from sft_recipes.validate.recipe_checks import check_distribution
    from sft_recipes.validate.validation import Validation

    recipe = parse(path)
    assert Topology.from_env(recipe.training).mode == "single"  # the topology comes from the launcher, not the recipe
    v = Validation(recipe, topology=Topology.from_accelerate_config(topology))
    check_distribution(v)
    assert v.problems == [], [str(p) for p in v.problems]
    shipped = yaml.safe_load((ROOT / "accelerate_configs" / f"{topology}.yaml").read_text())
    gathers = (shipped.get("deepspeed_config") or {}).get("zero3_save_16bit_model", False)
    plugin = SimpleNamespace(
        deepspeed_config={"zero_optimization": {"stage3_gather_16bit_weights_on_model_save": gathers}}
    )
    check_sharded_combination(
        recipe.model, SimpleNamespace(deepspeed_plugin=plugin), Topology.from_accelerate_config(topology)
    )
