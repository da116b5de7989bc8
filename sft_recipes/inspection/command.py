"""Show the first training rows exactly as the model sees them (template, truncation, packing, loss mask), with
statistics and warnings about what the model would learn wrong.

Usage: sft-recipes inspect --config recipes/<model>/<method>.yaml [-n 3] [--format text|html|json] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from sft_recipes.arguments import command_parser, parse_with_recipe
from sft_recipes.inspection.diagnosis import diagnose, loss_scope
from sft_recipes.inspection.meta_trainer import (
    build_context,
    build_trainer,
    first_rows,
    is_vision,
    is_vlm,
    outside_launch,
)
from sft_recipes.inspection.render import Inspection, build_example, render_html, render_text
from sft_recipes.inspection.statistics import text_statistics, vision_statistics

if TYPE_CHECKING:
    from sft_recipes.inspection.meta_trainer import Context

# What TRL 1.16's packing does to an example over max_length (truncation_mode applies without packing only).
PACKED_TRUNCATION = {
    "bfd": "keep_start (bfd packing drops the overflow)",
    "bfd_split": "none (bfd_split packing splits the overflow off)",
    "wrapped": "none (wrapped packing cuts across rows)",
}
FORMATS = ("text", "html", "json")


def inspect_recipe(recipe: Any, n: int = 3) -> Inspection:
    """Prepare the recipe's data exactly as `train` would (the datasets cache then serves it) and show `n` rows."""
    import datasets

    quiet = contextlib.ExitStack()
    if datasets.is_progress_bar_enabled():
        datasets.disable_progress_bars()
        quiet.callback(datasets.enable_progress_bars)
    with tempfile.TemporaryDirectory(prefix="sft-recipes-inspect-") as output_dir, quiet, outside_launch():
        trainer, raw_train, trl_warnings = build_trainer(recipe, output_dir)
        if is_vision(trainer) and trainer.args.max_length is not None:
            # The processor raises on rows cut inside their image tokens: show them whole, the cut marked.
            trainer.data_collator = dataclasses.replace(trainer.data_collator, max_length=None)
        ctx = build_context(recipe, trainer, raw_train)
        rows, padding = first_rows(trainer, n)
        examples = [build_example(ctx, i, row, pad) for i, (row, pad) in enumerate(zip(rows, padding, strict=True))]
        statistics, counts = (vision_statistics if is_vision(trainer) else text_statistics)(ctx)
        problems, checks = diagnose(ctx, statistics, counts)
        settings = describe_settings(ctx)
    return Inspection(recipe.path or "recipe", settings, statistics, trl_warnings + problems, checks, examples)


def describe_settings(ctx: Context) -> dict[str, Any]:
    trainer, args = ctx.trainer, ctx.trainer.args
    if args.chat_template_path:
        template = args.chat_template_path
    elif trainer.chat_template is not None:
        template = "TRL's training copy of the tokenizer's template"
    else:
        template = "the tokenizer's own" if getattr(trainer.processing_class, "chat_template", None) else "none"
    return {
        "model": ctx.recipe.model.model_name_or_path,
        "kind": "image_text_to_text" if is_vlm(trainer) else "causal_lm",
        "chat template": template,
        "end of turn": ctx.end_of_turn,
        "eos / pad": f"{ctx.tokenizer.eos_token} / {ctx.tokenizer.pad_token}",
        "max_length": args.max_length,
        "truncation": PACKED_TRUNCATION.get(args.packing_strategy, "") if args.packing else args.truncation_mode,
        "packing": args.packing_strategy if args.packing else "off",
        "padding-free": bool(trainer.padding_free),
        "loss on": loss_scope(ctx),
        "batch": f"{args.per_device_train_batch_size} per device x {args.gradient_accumulation_steps} accumulation",
    }


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("inspect", __doc__, recipe=True)
    parser.add_argument("-n", type=_positive, default=3, help="number of examples to show (default 3)")
    parser.add_argument("--format", choices=FORMATS, default="text", help="text (terminal), html or json")
    parser.add_argument("--out", help="write there instead of stdout")
    return parser


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of rows, got {value!r}")
    return int(value)


def main(argv: list[str]) -> int:
    from rich.console import Console

    from sft_recipes.config import parse_recipe

    args, rest = parse_with_recipe(build_parser(), argv)
    # stdout carries the report alone (`--format json | jq` must parse): whatever the libraries print while the data
    # is prepared (DeepSpeed's import announces its accelerator on stdout) goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        recipe = parse_recipe(rest)
        console = Console(stderr=True)
        spinner = "Preparing the data with TRL's SFTTrainer (meta-device model, no weights)"
        with console.status(spinner) if console.is_terminal else contextlib.nullcontext():
            inspection = inspect_recipe(recipe, args.n)
    with open(args.out, "w", encoding="utf-8") if args.out else contextlib.nullcontext(sys.stdout) as handle:
        if args.format == "text":
            render_text(inspection, file=handle)
        elif args.format == "html":
            handle.write(render_html(inspection))
        else:
            handle.write(json.dumps(dataclasses.asdict(inspection), indent=2) + "\n")
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
