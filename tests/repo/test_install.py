"""Installs as users run them: the Python floor the dependencies set, the README's install lines, `make test` on a
fresh clone. (The wheel itself: test_wheel.py; the image: test_docker.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
README = (ROOT / "README.md").read_text()
PYTHONS = [f"3.{minor}" for minor in range(8, 16)]


def _requirements() -> dict[str, Requirement]:
    return {(req := Requirement(dep)).name: req for dep in PYPROJECT["project"]["dependencies"]}


def test_requires_python_admits_no_python_that_an_installed_dependency_refuses():
    ours = SpecifierSet(PYPROJECT["project"]["requires-python"])
    checked = 0
    for name in _requirements():
        try:
            theirs = SpecifierSet(metadata(name).get("Requires-Python") or "")
        except PackageNotFoundError:
            continue
        checked += 1
        refused = [v for v in PYTHONS if v in ours and v not in theirs]
        assert not refused, f"{name} needs Python {theirs}, we claim {ours}"
    assert checked >= 5


def test_ruff_and_mypy_target_the_python_floor():
    (floor,) = re.findall(r">=\s*3\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert PYPROJECT["tool"]["ruff"]["target-version"] == f"py3{floor}"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == f"3.{floor}"


def test_torch_range_starts_at_2_8_and_the_readme_installs_that_same_range():
    torch = _requirements()["torch"]
    assert "2.7.1" not in torch.specifier and "2.8.0" in torch.specifier
    readme = re.findall(r'pip install "torch([^"]+)"', README)
    assert [SpecifierSet(spec) for spec in readme] == [torch.specifier], readme


def test_readme_builds_flash_attn_against_an_installed_torch_without_build_isolation():
    lines = [line for line in README.splitlines() if line.startswith("pip install")]
    flash = [i for i, line in enumerate(lines) if "flash-attn" in line.split("#")[0]]
    torch = [i for i, line in enumerate(lines) if re.search(r"pip install \"?torch\b", line)]
    assert flash and torch, lines
    for i in flash:
        assert "--no-build-isolation" in lines[i], lines[i]
        assert min(torch) < i, "torch must be installed before flash-attn is built"
        assert any(re.search(r"\bninja\b", line) and "packaging" in line for line in lines[:i]), "flash-attn's tools"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_on_a_fresh_clone_installs_before_it_runs_pytest(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path)
    plan = subprocess.run(["make", "-n", "test"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    install, pytest_run = plan.find("pip install -q -e"), plan.find("-m pytest")
    assert 0 <= install < pytest_run, plan
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed").touch()  # installed after pyproject.toml was last changed
    again = subprocess.run(["make", "-n", "test"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "pip install" not in again and "-m pytest" in again
