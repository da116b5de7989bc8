"""The command line: every --help is instant, bad input gives a clean message and exit 2, launches are accelerate's."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sft_recipes.cli import COMMANDS

ALL_HELPS = [[], *[[name] for name in COMMANDS]]


@pytest.mark.parametrize("command", ALL_HELPS, ids=lambda c: c[0] if c else "top")
def test_every_help_exits_0_in_under_a_second(command):
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sft_recipes", *command, "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower()
    assert elapsed < 1.0 + 0.5  # one second plus interpreter start-up slack on a loaded CI box


def test_help_does_not_import_torch():
    code = "import sys; from sft_recipes.cli import main; main(['train', '--help']); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip().endswith("False")


def test_console_script_and_module_agree():
    module = subprocess.run([sys.executable, "-m", "sft_recipes", "--help"], capture_output=True, text=True).stdout
    console_script = Path(sys.executable).parent / "sft-recipes"  # installed beside this interpreter
    script = subprocess.run([str(console_script), "--help"], capture_output=True, text=True).stdout
    assert module == script and "train" in script


def test_unknown_key_exits_2_naming_file_line_and_suggestion_without_traceback(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: x\nlearning_rte: 1.0e-5\n")
    done = subprocess.run(
        [sys.executable, "-m", "sft_recipes", "train", "--config", str(recipe)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert f"{recipe}:2" in done.stderr and "did you mean `learning_rate`" in done.stderr
    assert "Traceback" not in done.stderr


def test_debug_shows_the_traceback(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rte: 1.0e-5\n")
    done = subprocess.run(
        [sys.executable, "-m", "sft_recipes", "--debug", "validate", "--config", str(recipe)],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_unknown_command_exits_2():
    done = subprocess.run([sys.executable, "-m", "sft_recipes", "trian"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown command" in done.stderr


def test_accelerate_config_by_name_becomes_an_accelerate_launch_line(tmp_path):
    from sft_recipes.arguments import launch_flags, parse_with_recipe
    from sft_recipes.launch import launch_command
    from sft_recipes.train import build_parser

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: m\ndataset_name: d\nuse_cpu: true\n")
    argv = [
        "--config",
        str(recipe),
        "--accelerate_config",
        "zero3",
        "--num_processes",
        "2",
        "--learning_rate",
        "1.0e-4",
    ]
    args, rest = parse_with_recipe(build_parser(), argv)
    line = launch_command("train", launch_flags(args), rest)
    assert line[1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    assert line[4].endswith("accelerate_configs/zero3.yaml")
    assert line[5:7] == ["--mixed_precision", "no"]  # the recipe's CPU run, over the config's bf16
    assert line[7:9] == ["--num_processes", "2"]
    assert line[9:] == ["-m", "sft_recipes", "train", "--config", str(recipe), "--learning_rate", "1.0e-4"]
    assert launch_command("train", {}, ["--config", str(recipe)]) is None


@pytest.mark.parametrize(
    ("bf16", "fp16", "use_cpu", "expected"),
    [
        (True, False, False, "bf16"),
        (False, True, False, "fp16"),
        (False, False, False, "no"),
        (True, False, True, "no"),
    ],
)
def test_the_launch_precision_is_the_recipes(bf16, fp16, use_cpu, expected):
    from types import SimpleNamespace

    from sft_recipes.launch import launch_precision

    assert launch_precision(SimpleNamespace(bf16=bf16, fp16=fp16, use_cpu=use_cpu)) == expected


def test_unknown_accelerate_config_lists_the_bundled_ones():
    from sft_recipes.errors import RecipeError
    from sft_recipes.launch import launch_command

    with pytest.raises(RecipeError, match="zero3"):
        launch_command("train", {"accelerate_config": "zero4"}, [])
