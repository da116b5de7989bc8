"""In-process `sft-recipes validate` on recipes written from BASE, whose "{name}" placeholders name local paths
(the tiny llama, the demo data, the test's tmp_path...), and a snapshot of the files it must leave untouched."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

BAD = Path(__file__).resolve().parents[1] / "bad_inputs"
# A recipe that validates cleanly on the tiny llama; each case changes a few keys.
BASE: dict[str, Any] = {
    "model_name_or_path": "{llama}",
    "dataset_name": "{data}",
    "dtype": "float32",
    "max_length": 64,
    "max_steps": 4,
    "output_dir": "{tmp}/out",
    "report_to": "none",
}


def tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under roots with its size and mtime: a snapshot to prove nothing was written or touched."""
    found = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                stat = os.lstat(path)
                found[path] = (stat.st_size, stat.st_mtime_ns)
    return found


def fill(value: Any, places: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, path in places.items():
            value = value.replace(f"{{{name}}}", path)
        return value
    if isinstance(value, list):
        return [fill(v, places) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, places) for k, v in value.items()}
    return value


def write_recipe(tmp_path: Path, places: dict[str, str], keys: dict[str, Any], drop=(), raw=None) -> Path:
    recipe = tmp_path / "recipe.yaml"
    if raw is not None:
        recipe.write_text(raw)
        return recipe
    merged = {k: v for k, v in {**BASE, **keys}.items() if k not in drop}
    recipe.write_text(yaml.safe_dump(fill(merged, places), sort_keys=False))
    return recipe


def run_validate(capsys, monkeypatch, recipe: Path, argv=()) -> tuple[int, str, str]:
    from sft_recipes.cli import main

    logs_to_current_stderr(monkeypatch)
    capsys.readouterr()
    code = main(["validate", "--config", str(recipe), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def logs_to_current_stderr(monkeypatch) -> None:
    """Logging handlers (ours from basicConfig, datasets', transformers') keep the stderr of the test that created
    them, closed by now: point them at this test's."""
    import logging
    import sys

    for name in [None, *logging.root.manager.loggerDict]:
        for handler in getattr(logging.getLogger(name), "handlers", []):
            if type(handler) is logging.StreamHandler:
                monkeypatch.setattr(handler, "stream", sys.stderr)


def no_flash_attn(tmp: Path, monkeypatch: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
