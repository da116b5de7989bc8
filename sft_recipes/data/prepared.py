"""A prepared training set: TRL's tokenized, masked, packed rows, saved with the fingerprint of what shaped them."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from sft_recipes.errors import Problem, RecipeError, error

MANIFEST = "prepared.json"  # written last: a folder without it is not (yet) a prepared set
# ScriptArguments fields that never change a row; every other one (today's and tomorrow's data keys) is fingerprinted.
NOT_DATA = {"prepared", "merge_adapter", "overwrite_output_dir", "gradient_checkpointing_use_reentrant"}
NOT_DATA |= {"ignore_bias_buffers"}
# SFTConfig fields that shape the prepared rows: TRL's _prepare_dataset and the tokenizer setup read them.
SHAPING = (
    "max_length",
    "packing",
    "packing_strategy",
    "eval_packing",
    "truncation_mode",
    "assistant_only_loss",
    "completion_only_loss",
    "dataset_text_field",
    "eos_token",
    "pad_token",
    "shuffle_dataset",
)
HASH_CHUNK = 1 << 20


def fingerprint(recipe: Any, tokenizer: Any, hash_files: bool = True) -> dict[str, Any]:
    """Everything that shaped the prepared rows, flat and JSON-ready. `tokenizer` is the recipe's as loaded: what
    SFTTrainer does to it follows from keys here and TRL's version. Without hash_files the data files are described
    by size and mtime alone: a check hashes one only when its mtime moved."""
    import trl

    from sft_recipes.data.loading import wants_eval

    script, mixture, training = recipe.script, recipe.mixture, recipe.training
    facts: dict[str, Any] = {f.name: _plain(getattr(script, f.name)) for f in fields(script) if f.name not in NOT_DATA}
    facts["datasets"] = [_plain(d) for d in mixture.datasets]
    facts["streaming"] = mixture.streaming
    facts["eval"] = wants_eval(training)
    if facts["eval"]:
        facts["test_split_size"] = mixture.test_split_size
    facts.update({key: _plain(getattr(training, key)) for key in SHAPING})
    if training.shuffle_dataset or facts["eval"] and mixture.test_split_size:
        facts["seed"] = training.seed  # it orders the rows or picks the eval split; otherwise it shapes nothing
    facts.update(tokenizer_facts(tokenizer))
    template = getattr(tokenizer, "chat_template", None)
    facts["chat_template"] = _digest(template) if isinstance(template, str) else _plain(template)
    path = training.chat_template_path
    facts["chat_template_path"] = _digest(Path(path).read_text()) if path and os.path.isfile(path) else path
    facts["trl"] = trl.__version__
    facts["data_files"] = {path: file_facts(path, hash_files) for path in data_files(recipe)}
    return json.loads(json.dumps(facts))  # as it reads back from the manifest: lists, string keys


def tokenizer_facts(tokenizer: Any) -> dict[str, Any]:
    """The vocabulary, its special tokens and (fast tokenizers) the whole pipeline: normalizer, merges, template."""
    facts: dict[str, Any] = {"tokenizer_class": type(tokenizer).__name__}
    facts["vocab"] = _digest(json.dumps(sorted(tokenizer.get_vocab().items())))
    facts["special_tokens"] = {
        name: [getattr(tokenizer, f"{name}_token", None), getattr(tokenizer, f"{name}_token_id", None)]
        for name in ("bos", "eos", "pad", "unk")
    }
    facts["added_special_tokens"] = sorted(map(str, getattr(tokenizer, "all_special_tokens", [])))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        pipeline = json.loads(backend.to_str())
        for state in ("truncation", "padding"):  # call-time settings the tokenizer changes as it is used
            pipeline.pop(state, None)
        facts["tokenizer_pipeline"] = _digest(json.dumps(pipeline, sort_keys=True))
    return facts


def data_files(recipe: Any) -> list[str]:
    """The local files the recipe's sources read, as they are now (none for hub ids)."""
    from trl.scripts.utils import DatasetConfig

    from sft_recipes.data.loading import local_data_files

    script, mixture = recipe.script, recipe.mixture
    sources = mixture.datasets or [DatasetConfig(path=script.dataset_name, name=script.dataset_config)]
    return sorted({os.path.abspath(f) for cfg in sources if cfg.path for f in local_data_files(cfg)})


def file_facts(path: str, content: bool = True) -> dict[str, Any]:
    stat = os.stat(path)
    facts: dict[str, Any] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if content:
        facts["sha256"] = _file_digest(path)
    return facts


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, prepared with, the recipe now) for each fact that differs. A data file that is gone is no difference
    (the prepared set stands in for it); one that is there must have the same content."""
    changed = [(key, saved.get(key), current.get(key)) for key in sorted((set(saved) | set(current)) - {"data_files"})]
    changed = [entry for entry in changed if entry[1] != entry[2]]
    old, new = saved.get("data_files", {}), current.get("data_files", {})
    for path in sorted(new):  # a file deleted since has nothing to compare with
        if path not in old:
            changed.append((f"data_files[{path}]", "absent", f"{new[path]['size']} bytes"))
        elif not _same_file(old[path], new[path], path):
            changed.append((f"data_files[{path}]", f"sha256 {old[path]['sha256'][:12]}", "different content"))
    return changed


def _same_file(old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
    same_stat = old["mtime_ns"] == new["mtime_ns"] or old["sha256"] == new.get("sha256")
    return old["size"] == new["size"] and (same_stat or old["sha256"] == _file_digest(path))


def check_matches(
    directory: str | Path, saved: dict[str, Any], current: dict[str, Any], recipe_path: str | None
) -> None:
    """Refuse a prepared set made under other settings, naming each fact that changed."""
    again = f"sft-recipes preprocess --config {recipe_path or 'RECIPE'} --out {directory} --overwrite"
    fix = f"prepare it again (`{again}`), or train from the raw data without `prepared`"
    where = Path(directory) / MANIFEST
    problems = [
        Problem(f"{where} ({key})", f"prepared with {_short(old)}, the recipe now gives {_short(new)}", fix)
        for key, old, new in differences(saved, current)
    ]
    if problems:
        raise RecipeError(problems)


def save_prepared(directory: str | Path, datasets: dict[str, Any], manifest: dict[str, Any]) -> Path:
    """Each split with datasets.save_to_disk, then the manifest (fingerprint, sources, rows) that marks it whole."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for split, dataset in datasets.items():
        if dataset is not None:
            dataset.save_to_disk(str(root / split))
    partial = root / f"{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, root / MANIFEST)
    return root / MANIFEST


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise error(
            "prepared",
            f"{directory} is not a prepared set (no {MANIFEST})",
            "point `prepared` at the --out folder of `sft-recipes preprocess --config RECIPE --out DIR`",
        )
    return dict(json.loads(path.read_text()))


def load_split(directory: str | Path, split: str) -> Any:
    """One split, memory-mapped from the arrow files: nothing is tokenized or rewritten."""
    from datasets import load_from_disk

    path = Path(directory) / split
    return load_from_disk(str(path)) if path.is_dir() else None


def _plain(value: Any) -> Any:
    """JSON-ready: enums by value, dataclasses (a mixture's entries) as their fields."""
    import enum

    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
