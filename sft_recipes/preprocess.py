"""Convert, tokenize, mask and pack a recipe's data once, exactly as train would, and save it for `train --prepared`.

Usage: sft-recipes preprocess --config recipes/<model>/<method>.yaml --out DIR [--overwrite]
       sft-recipes train --config recipes/<model>/<method>.yaml --prepared DIR
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sft_recipes.arguments import command_parser, parse_with_recipe
from sft_recipes.errors import error

logger = logging.getLogger("sft_recipes")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("preprocess", __doc__, recipe=True)
    parser.add_argument("--out", required=True, metavar="DIR", help="where to save the prepared set")
    parser.add_argument("--overwrite", action="store_true", help="replace the prepared set already in DIR")
    return parser


def main(argv: list[str]) -> int:
    from sft_recipes.config import parse_recipe

    args, rest = parse_with_recipe(build_parser(), argv)
    recipe = parse_recipe(rest)
    manifest = prepare(recipe, args.out, args.overwrite)
    rows = manifest["rows"]
    evaluated = f", {rows['eval']:,} eval rows" if rows.get("eval") is not None else ""
    print(f"prepared {rows['train']:,} training rows{evaluated} in {manifest['seconds']:.1f} s -> {args.out}")
    print(f"train on them: sft-recipes train --config {recipe.path or 'RECIPE'} --prepared {args.out}")
    return 0


def prepare(recipe: Any, out: str, overwrite: bool = False) -> dict[str, Any]:
    """TRL's preparation of the recipe's train and eval data, saved in `out` with its fingerprint; the manifest."""
    from sft_recipes.data.loading import load_training_data
    from sft_recipes.data.prepared import fingerprint, save_prepared
    from sft_recipes.environment import package_versions

    check_preparable(recipe, Path(out), overwrite)
    started = time.time()
    counts: list[dict[str, Any]] = []
    train, eval_ = load_training_data(recipe.script, recipe.mixture, recipe.training, counts=counts)
    facts = fingerprint(recipe, loaded_tokenizer(recipe))  # first: the trainer changes its tokenizer in place
    with tempfile.TemporaryDirectory() as scratch:
        trainer = prepared_by_trl(recipe, scratch, train, eval_)
    datasets = {"train": trainer.train_dataset, "eval": trainer.eval_dataset}
    manifest = {
        "fingerprint": facts,
        "sources": counts,
        "rows": {split: len(ds) for split, ds in datasets.items() if ds is not None},
        "recipe": recipe.path,
        "seconds": round(time.time() - started, 2),
        "versions": package_versions(),
    }
    if Path(out).exists():
        shutil.rmtree(out)  # check_preparable allowed it: a previous prepared set, with --overwrite
    save_prepared(out, datasets, manifest)
    return manifest


def check_preparable(recipe: Any, out: Path, overwrite: bool) -> None:
    """Refuse what has nothing to prepare up front (streams, images) and an --out that holds something else."""
    from sft_recipes.data.prepared import MANIFEST
    from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT

    if recipe.script.prepared:
        raise error("prepared", "the recipe already trains on a prepared set", "drop `prepared`")
    if recipe.script.dataset_streaming or recipe.mixture.streaming:
        raise error("dataset_streaming", "a stream has no end to prepare and save", "set it to false to preprocess")
    if _model_kind(recipe) == IMAGE_TEXT_TO_TEXT:
        raise error(
            "model_name_or_path",
            "vision-language rows are processed at collation (images), so TRL prepares nothing up front",
            "train this recipe from its raw data",
        )
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise error(str(out), "exists, is not empty and is not a prepared set", "choose another --out")
        if not overwrite:
            raise error(str(out), "already holds a prepared set", "pass --overwrite to replace it")


def loaded_tokenizer(recipe: Any) -> Any:
    """The recipe's tokenizer as train loads it, before SFTTrainer touches it."""
    from sft_recipes.model.loading import load_processing_class

    processing_class = load_processing_class(recipe.model, recipe.training, _model_kind(recipe))
    return getattr(processing_class, "tokenizer", processing_class)


def _model_kind(recipe: Any) -> str:
    from sft_recipes.model.kind import detect_model_kind, load_config_dict

    config = load_config_dict(recipe.model, recipe.training.trust_remote_code)
    return detect_model_kind(config, recipe.model.model_kind)


def prepared_datasets(recipe: Any) -> tuple[Any, Any]:
    """(train, eval) from the prepared set the recipe names, memory-mapped, after checking its fingerprint against the
    recipe; SFTTrainer is then told to take them as they are (dataset_kwargs skip_prepare_dataset)."""
    from sft_recipes.data.loading import wants_eval
    from sft_recipes.data.prepared import check_matches, fingerprint, load_split, read_manifest

    directory = recipe.script.prepared
    manifest = read_manifest(directory)
    current = fingerprint(recipe, loaded_tokenizer(recipe), hash_files=False)
    check_matches(directory, manifest["fingerprint"], current, recipe.path)
    train = load_split(directory, "train")
    eval_ = load_split(directory, "eval") if wants_eval(recipe.training) else None
    training = recipe.training
    training.dataset_kwargs = {**(training.dataset_kwargs or {}), "skip_prepare_dataset": True}
    # TRL 1.16 refuses assistant_only_loss unless the first row is a conversation, and these rows are tokens: their
    # labels hold the assistant mask already, so there is nothing left for the trainer to mask.
    training.assistant_only_loss = False
    logger.info("Training on the prepared set in %s: %s rows, nothing tokenized", directory, f"{len(train):,}")
    return train, eval_


def prepared_by_trl(recipe: Any, scratch: str, train: Any, eval_: Any) -> Any:
    """trl.SFTTrainer on the meta-device model (inspection's engine) with `train` and `eval_` prepared by TRL itself:
    the preparation, collator and template setup the training run gets."""
    from sft_recipes.inspection.meta_trainer import build_meta_model, inspection_args, meta_trainer, outside_launch
    from sft_recipes.model.loading import load_processing_class

    model_args, training_args, kind = recipe.model, recipe.training, _model_kind(recipe)
    processing_class = load_processing_class(model_args, training_args, kind)
    model = build_meta_model(model_args, training_args, kind)
    source = recipe.script.dataset_name or "datasets"
    with outside_launch():  # the TrainingArguments too: they reset accelerate's process-wide state
        args = inspection_args(training_args, scratch)
        trainer, warnings = meta_trainer(model, processing_class, train, args, source, eval_dataset=eval_)
    for warning in warnings:
        logger.warning("%s", warning)
    return trainer
