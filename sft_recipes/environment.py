"""What this machine offers a run: package versions, optional extras, accelerators, hub settings (never secrets).

Usage: sft-recipes env [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from sft_recipes.arguments import command_parser
from sft_recipes.errors import error

CORE = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")
# import name -> distribution name: the extras of pyproject.toml, then the integrations TRL can report to
_RENAMED = {"flash_attn": "flash-attn", "liger_kernel": "liger-kernel", "PIL": "pillow"}
_EXTRA_MODULES = ("bitsandbytes", "deepspeed", "flash_attn", "liger_kernel", "kernels", "PIL", "matplotlib")
EXTRAS = {name: _RENAMED.get(name, name) for name in (*_EXTRA_MODULES, "tensorboard", "wandb", "trackio")}
SETTINGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "CUDA_VISIBLE_DEVICES")
SECRETS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")  # shown as set/unset, never by value


def has_package(name: str) -> bool:
    """Whether top-level module `name` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module entry set to None
        return False


def require_extra(module: str, extra: str, feature: str) -> None:
    """Raise a RecipeError saying which extra to install when optional `module` is missing."""
    if not has_package(module):
        fix = f"pip install 'sft-recipes[{extra}]'"
        raise error(feature, f"{feature} needs {module}, which is not installed", fix)


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    """sft-recipes and the core stack, as recorded in every run summary."""
    return {"sft-recipes": _version("sft-recipes"), **{name: _version(name) for name in CORE}}


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):  # no sysconf on Windows
        return None


def _cuda() -> dict[str, Any]:
    """CUDA devices as torch sees them. Importing torch is the price of this section (~1 s)."""
    try:
        import torch
    except Exception as err:  # a broken torch install is exactly what this command must report
        return {"available": False, "error": f"import torch failed: {err}"}
    info: dict[str, Any] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda, "devices": []}
    if not info["available"]:
        return info | {"flash_attn_usable": "no CUDA"}
    for props in map(torch.cuda.get_device_properties, range(torch.cuda.device_count())):
        memory_gib, capability = round(props.total_memory / 2**30, 1), f"{props.major}.{props.minor}"
        info["devices"].append({"name": props.name, "memory_gib": memory_gib, "compute_capability": capability})
    return info | {"bf16": torch.cuda.is_bf16_supported(), "flash_attn_usable": _flash_attn_usable(torch)}


def _flash_attn_usable(torch: Any) -> bool | str:
    """True, or why not: FlashAttention-2 needs compute capability 8.0+ and a build that matches this torch."""
    if not has_package("flash_attn"):
        return "not installed"
    if torch.cuda.get_device_capability()[0] < 8:
        return "needs compute capability 8.0 (Ampere) or newer"
    try:
        import flash_attn  # noqa: F401  # a wheel built for another torch fails here with an undefined symbol
    except Exception as err:
        return f"import failed: {err}"
    return True


def _cache_dir() -> str | None:
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return constants.HF_HUB_CACHE


def collect() -> dict[str, Any]:
    """Everything `sft-recipes env` shows, as plain JSON-able data."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "sft-recipes": _version("sft-recipes"),
        "packages": {name: _version(name) for name in CORE},
        "extras": {
            module: {"present": has_package(module), "version": _version(distribution)}
            for module, distribution in EXTRAS.items()
        },
        "cuda": _cuda(),
        "hub": {"cache_dir": _cache_dir(), **{name: os.environ.get(name) for name in SETTINGS}},
        "secrets": {name: "set" if os.environ.get(name) else "unset" for name in SECRETS},
    }


def print_table(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sft-recipes environment", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("python", f"{info['python']} ({info['platform']})")
    table.add_row("CPU / RAM", f"{info['cpu_count']} cores, {info['ram_gib']} GiB")
    table.add_row("sft-recipes", info["sft-recipes"] or "not installed")
    table.add_section()
    for name, found in info["packages"].items():
        table.add_row(name, found or "[red]missing[/red]")
    table.add_section()
    for name, extra in info["extras"].items():
        table.add_row(name, (extra["version"] or "present") if extra["present"] else "[dim]missing[/dim]")
    table.add_section()
    cuda = info["cuda"]
    table.add_row("CUDA", f"yes (torch built for {cuda['torch_cuda']})" if cuda["available"] else "no")
    for index, device in enumerate(cuda.get("devices", [])):
        memory, capability = device["memory_gib"], device["compute_capability"]
        table.add_row(f"cuda:{index}", f"{device['name']}, {memory} GiB, compute capability {capability}")
    if cuda["available"]:
        table.add_row("bf16", str(cuda["bf16"]))
        table.add_row("flash-attn usable", str(cuda["flash_attn_usable"]))
    if "error" in cuda:
        table.add_row("torch", f"[red]{cuda['error']}[/red]")
    table.add_section()
    for name, value in {**info["hub"], **info["secrets"]}.items():
        table.add_row(name, "unset" if value is None else str(value))
    Console().print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("env", __doc__)
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    return parser


def main(argv: list[str]) -> int:
    if build_parser().parse_args(argv).json:
        print(json.dumps(collect(), indent=2))
    else:
        print_table(collect())
    return 0
