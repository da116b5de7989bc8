"""The files the package ships beside its code (package data): accelerate configs, the demo recipe, chat templates."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _shipped(relative: str) -> Path:
    # A wheel installs unpacked, so package data is a real file that `accelerate launch` and TRL can open by path,
    # from any folder; the repo's top-level accelerate_configs/ and recipes/demo/ are links into here.
    return Path(str(resources.files("sft_recipes").joinpath(relative)))


def _names(folder: str, suffix: str) -> list[str]:
    directory = _shipped(folder)
    return sorted(path.stem for path in directory.glob(f"*{suffix}")) if directory.is_dir() else []


def accelerate_config_names() -> list[str]:
    """The shipped accelerate configs by name: single_gpu, multi_gpu, zero2, zero3, fsdp2, ..."""
    return _names("accelerate_configs", ".yaml")


def accelerate_config(name: str) -> Path | None:
    """The shipped accelerate config called `name` (zero3, fsdp2, ...), or None when there is none."""
    return _shipped(f"accelerate_configs/{name}.yaml") if name in accelerate_config_names() else None


def demo_recipe() -> Path:
    """The offline CPU demo's recipe (`python -m sft_recipes.demo`)."""
    return _shipped("recipes/demo/full.yaml")


def chat_template_names() -> list[str]:
    """The shipped chat templates by name (chatml: ChatML with `{% generation %}` markers)."""
    return _names("chat_templates", ".jinja")


def chat_template(name: str) -> Path | None:
    """The shipped chat template called `name`, a path for `chat_template_path`, or None when there is none."""
    return _shipped(f"chat_templates/{name}.jinja") if name in chat_template_names() else None
