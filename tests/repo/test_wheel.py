"""The wheel, built from an sdist as pip and `python -m build` do, ships every file the package reads at run time,
and an installed copy finds them with importlib.resources from an empty folder, never through the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sft_recipes import resources

ROOT = Path(__file__).resolve().parents[2]
# sdist first, then the wheel from the unpacked sdist: a file the sdist drops cannot reach the wheel either.
BUILD = """
import os, sys, tarfile
from pathlib import Path
from setuptools import build_meta

out = Path(sys.argv[1])
sdist = out / build_meta.build_sdist(str(out))
with tarfile.open(sdist) as archive:
    archive.extractall(out / "sdist")  # our own sdist, just built
(unpacked,) = (out / "sdist").iterdir()
os.chdir(unpacked)
print(out / build_meta.build_wheel(str(out)))
"""
LOOKUPS = """
import json, sft_recipes
from sft_recipes import launch, resources
print(json.dumps({
    "package": sft_recipes.__file__,
    "configs": resources.accelerate_config_names(),
    "zero3": str(resources.accelerate_config("zero3")),
    "launch": launch.launch_command("train", {"accelerate_config": "zero3"}, [])[4],
    "demo": str(resources.demo_recipe()),
    "templates": resources.chat_template_names(),
    "chatml": str(resources.chat_template("chatml")),
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of what setuptools reads, so the build writes nothing into the checkout."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "sft_recipes", source / "sft_recipes", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-c", BUILD, str(out)], cwd=source, capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return Path(built.stdout.strip().splitlines()[-1])


def _package_files() -> set[str]:
    """Every file of the package in the checkout, bytecode and the docs that are read in the repo (*.md) aside."""
    package = ROOT / "sft_recipes"
    return {
        path.relative_to(ROOT).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".md")
    }


def test_wheel_ships_every_module_config_recipe_and_template_of_the_package(wheel):
    shipped = set(zipfile.ZipFile(wheel).namelist())
    missing = _package_files() - shipped
    assert not missing, f"in the package but not in the wheel (add them to package-data): {sorted(missing)}"
    data = {name for name in shipped if not name.endswith(".py") and ".dist-info/" not in name}
    assert {f"sft_recipes/accelerate_configs/{n}.yaml" for n in resources.accelerate_config_names()} <= data
    assert "sft_recipes/recipes/demo/full.yaml" in data
    assert "sft_recipes/chat_templates/chatml.jinja" in data


def test_installed_wheel_finds_configs_recipe_and_templates_from_an_empty_folder(wheel, tmp_path):
    site, empty = tmp_path / "site-packages", tmp_path / "empty"
    zipfile.ZipFile(wheel).extractall(site)  # what pip does with a pure-Python wheel, minus the scripts
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # the checkout is on no path; the venv's editable finder comes last
    found = subprocess.run(
        [sys.executable, "-c", LOOKUPS], cwd=empty, env=env, capture_output=True, text=True, check=False
    )
    assert found.returncode == 0, found.stderr[-3000:]
    paths = json.loads(found.stdout)
    assert Path(paths.pop("package")).parent == site / "sft_recipes"
    assert paths.pop("configs") == resources.accelerate_config_names()
    assert paths.pop("templates") == resources.chat_template_names()
    assert paths["zero3"] == paths["launch"]
    for name, path in paths.items():
        assert Path(path).is_file() and Path(path).is_relative_to(site), (name, path)


def test_checkout_finds_the_same_files_through_its_top_level_links():
    """The repo keeps its documented layout: accelerate_configs/ and recipes/demo/ are links into the package."""
    assert (ROOT / "accelerate_configs").resolve() == resources.accelerate_config("zero3").parent.resolve()
    assert (ROOT / "recipes" / "demo" / "full.yaml").resolve() == resources.demo_recipe().resolve()
    assert resources.accelerate_config("../pyproject") is None
    assert resources.chat_template("no-such-template") is None
