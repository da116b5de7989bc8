"""The bad-input suite's machinery: recipes from BASE plus a case's keys, run through the CLI in-process, and the
setups (files, patched availability) a case needs besides its recipe. The cases are in helpers/bad_cases.py."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class Case:
    expect: tuple[str, ...]  # substrings of stderr; "@key" stands for the recipe's "file:LINE (key)"
    keys: dict[str, Any]
    argv: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    setup: Callable[[Path, pytest.MonkeyPatch, dict[str, str]], None] | None = None
    raw: str | None = None  # the recipe file's text, instead of BASE + keys


def case(name: str, *expect: str, argv=(), drop=(), setup=None, raw=None, **keys: Any) -> Any:
    return pytest.param(Case(expect, keys, tuple(argv), tuple(drop), setup, raw), id=name)


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


def line_of(recipe: Path, key: str) -> str:
    for number, line in enumerate(recipe.read_text().splitlines(), start=1):
        if line.startswith(f"{key}:"):
            return f"{recipe}:{number} ({key})"
    raise AssertionError(f"{key} not in {recipe}")


def write_recipe(tmp_path: Path, places: dict[str, str], keys: dict[str, Any], drop=(), raw=None) -> Path:
    recipe = tmp_path / "recipe.yaml"
    if raw is not None:
        recipe.write_text(raw)
        return recipe
    merged = {k: v for k, v in {**BASE, **keys}.items() if k not in drop}
    recipe.write_text(yaml.safe_dump(fill(merged, places), sort_keys=False))
    return recipe


def run_validate(capsys, monkeypatch, recipe: Path, argv=()) -> tuple[int, str, str]:
    return run_command("validate", capsys, monkeypatch, recipe, argv)


def run_command(command: str, capsys, monkeypatch, recipe: Path, argv=()) -> tuple[int, str, str]:
    """`sft-recipes COMMAND --config recipe [argv]` in this process: (exit code, stdout, stderr)."""
    from sft_recipes.cli import main

    logs_to_current_stderr(monkeypatch)
    capsys.readouterr()
    code = main([command, "--config", str(recipe), *argv])
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


def places_for(tmp_path: Path, llama_dir: Path, demo_data_path: Path, vlm_dirs: dict[str, Path]) -> dict[str, str]:
    """What `{name}` stands for in a case's keys."""
    return {
        "llama": str(llama_dir),
        "llava": str(vlm_dirs["llava"]),
        "data": str(demo_data_path),
        "bad": str(BAD),
        "tmp": str(tmp_path),
    }


# -- setups: files a case needs besides the recipe ------------------------------------------------------------------


def pickle_only_model(tmp: Path, _: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    import torch

    src, dst = Path(places["llama"]), tmp / "pickled"
    dst.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(src / name, dst / name)
    torch.save({"w": torch.zeros(2)}, dst / "pytorch_model.bin")


def model_without_tokenizer(tmp: Path, _: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    src, dst = Path(places["llama"]), tmp / "no-tokenizer"
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, dst / name)


def tokenizer_without_template(tmp: Path, _: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    from sft_recipes.tiny import build_tokenizer

    build_tokenizer(tmp / "no-template", chat_template=False)


def base_model(tmp: Path, _: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    """A base model: tokenizer and generation config end text with <|endoftext|> (also its pad), the chat template
    ends turns with <|im_end|>."""
    from sft_recipes.tiny import build_causal_lm, build_tokenizer

    tokenizer = build_tokenizer(eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    build_causal_lm("llama", tmp / "base", tokenizer=tokenizer)


def finished_run(tmp: Path, _: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "run_summary.json").write_text(json.dumps({"steps": 4}))


def live_lock(tmp: Path, monkeypatch: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    """This process holds output_dir's lock, as a live run would, until the test ends."""
    import sys

    from sft_recipes.run_dir import output_lock

    held = output_lock(str(tmp / "out"))
    held.__enter__()
    # monkeypatch holds the only reference; its undo at teardown drops it, which releases the lock
    monkeypatch.setattr(sys.modules[__name__], "HELD_LOCK", held, raising=False)


def full_disk(tmp: Path, monkeypatch: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    from sft_recipes.validate import output_checks

    monkeypatch.setattr(output_checks, "free_space", lambda path: 1024)


def no_flash_attn(tmp: Path, monkeypatch: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))


def file_at_output_dir(tmp: Path, _: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    (tmp / "taken").write_text("a file, not a folder of checkpoints\n")


def without(flag: str) -> Callable[[Path, pytest.MonkeyPatch, dict[str, str]], None]:
    """A setup making transformers' `flag` (is_wandb_available, is_liger_kernel_available...) say False, as on a
    machine without the package, whatever this one has installed."""

    def setup(tmp: Path, monkeypatch: pytest.MonkeyPatch, places: dict[str, str]) -> None:
        import transformers.integrations.integration_utils as integrations
        import transformers.utils as utils

        for module in (integrations, utils):
            if hasattr(module, flag):
                monkeypatch.setattr(module, flag, lambda: False)

    return setup


def liger_installed(tmp: Path, monkeypatch: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    import transformers.utils as utils

    monkeypatch.setattr(utils, "is_liger_kernel_available", lambda: True)


def hub_online_without_token(tmp: Path, monkeypatch: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    """The hub reachable in principle (no offline mode) but no token anywhere: the push cannot create the repo."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp / "hf-home" / "token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
