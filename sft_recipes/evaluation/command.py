"""Compare a trained run with its base model on held-out rows: loss, perplexity, exact match and ROUGE-L.

Usage: sft-recipes eval OUTPUT_DIR (--data FILE | --config RECIPE) [--n N] [--json] [--format html --out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from sft_recipes.arguments import command_parser
from sft_recipes.errors import Problem, RecipeError

logger = logging.getLogger("sft_recipes")
FORMATS = ("text", "json", "html")
WHO = ("base", "tuned")
EPILOG = """The rows are converted, tokenized and masked by TRL's SFTTrainer exactly as train does it, under the
recipe's settings: the loss is over the tokens train learns (assistant-only / completion-only masks kept). With
--data, those settings come from the run's recipe.yaml (or --config); without it, the rows are the recipe's eval
split (dataset_test_split, or the seeded test_split_size split train held out). Recipe keys may follow as overrides
(--max_length 2048). The base is the adapter's base model (adapter disabled), or recipe.yaml's model_name_or_path."""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("eval", __doc__, recipe=True)
    parser.epilog = EPILOG
    parser.add_argument("output_dir", help="a run's output_dir, its merged/ folder or a checkpoint-N/ folder")
    parser.add_argument(
        "--data", metavar="FILE", help="held-out rows (.jsonl/.json/.parquet/.csv, messages or prompt/completion)"
    )
    parser.add_argument("--n", type=int, default=20, metavar="N", help="rows whose greedy answers are compared (20)")
    parser.add_argument(
        "--max_new_tokens", type=int, metavar="N", help="most tokens per answer (default: twice the longest reference)"
    )
    parser.add_argument("--base", metavar="MODEL", help="the base model, when the recorded one is elsewhere")
    parser.add_argument("--json", action="store_true", help="print the result as JSON, and nothing else, on stdout")
    parser.add_argument("--format", choices=FORMATS, default="text", help="text (terminal), json or html")
    parser.add_argument("--out", metavar="PATH", help="write there instead of stdout")
    return parser


def check_args(args: argparse.Namespace) -> None:
    if args.data is None and args.config is None:
        raise RecipeError(
            Problem(
                "sft-recipes eval",
                "no held-out rows: give --data FILE or --config RECIPE",
                "--data FILE evaluates on its rows; --config RECIPE on the recipe's eval split",
            )
        )
    if args.json and args.format not in ("text", "json"):
        raise RecipeError(Problem("--json", f"conflicts with --format {args.format}", "pass one of them"))
    if args.n < 0:
        raise RecipeError(Problem("--n", f"{args.n} is below 0", "pass how many rows to generate answers for"))
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise RecipeError(Problem("--max_new_tokens", f"{args.max_new_tokens} is below 1", "pass a positive number"))
    if args.data is not None and not Path(args.data).expanduser().exists():
        raise RecipeError(Problem("--data", f"{args.data} does not exist", "pass a file of held-out rows"))


def main(argv: list[str]) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    check_args(args)
    fmt = "json" if args.json else args.format
    # Only the result goes to stdout: whatever the libraries print on the way goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        result, turns = evaluate(args, overrides)
    if fmt == "text":
        with open(args.out, "w", encoding="utf-8") if args.out else contextlib.nullcontext(sys.stdout) as handle:
            render_text(result, handle)
    else:
        from sft_recipes.evaluation.page import render_html

        text = render_html(result, turns) if fmt == "html" else json.dumps(result, indent=2) + "\n"
        if args.out is None:
            sys.stdout.write(text)
        else:
            Path(args.out).write_text(text, encoding="utf-8")
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def evaluate(args: argparse.Namespace, overrides: list[str]) -> tuple[dict[str, Any], list[list[tuple[str, str]]]]:
    """The result document (the --json output) and each sample's prompt turns."""
    from sft_recipes.evaluation.heldout import eval_recipe, first_samples, load_rows, prepared_batches
    from sft_recipes.evaluation.scoring import base_of, recorded_base, rouge_scorer, score
    from sft_recipes.trained import load_trained, locate_run

    scorer = rouge_scorer()  # a missing extra fails before anything loads
    layout = locate_run(args.output_dir, args.base)
    recipe = eval_recipe(layout, args.config, overrides)
    rows, label = load_rows(recipe, args.data, layout.recipe)
    samples = first_samples(rows, args.n)
    base_model = recorded_base(layout, recipe, args.base)
    run = load_trained(args.output_dir, base=args.base)
    max_new_tokens = args.max_new_tokens or default_max_new_tokens(run, samples)
    with tempfile.TemporaryDirectory(prefix="sft-recipes-eval-") as workdir:
        batches = prepared_batches(recipe, rows, run, workdir, label)
        logger.info("Scoring %s", run.describe())
        tuned, tuned_answers = score(run, batches, samples, max_new_tokens, scorer)
        with base_of(run, base_model) as base:
            logger.info("Scoring the base model %s", base_model.name)
            base_figures, base_answers = score(base, batches, samples, max_new_tokens, scorer)
    result = {
        "run": {"path": str(layout.path.resolve()), "base": base_model.name, "data": label, "rows": _length(rows)},
        "base": dataclasses.asdict(base_figures),
        "tuned": dataclasses.asdict(tuned),
        "samples": [
            {
                "prompt": sample.prompt_text(),
                "reference": sample.reference,
                "base": b.text,
                "tuned": t.text,
                "base_exact_match": b.exact_match,
                "tuned_exact_match": t.exact_match,
                "base_rouge_l": b.rouge_l,
                "tuned_rouge_l": t.rouge_l,
            }
            for sample, b, t in zip(samples, base_answers, tuned_answers, strict=True)
        ],
    }
    return result, [sample.prompt_turns() for sample in samples]


def default_max_new_tokens(run: Any, samples: list[Any]) -> int:
    """Twice the longest reference (at least 32 tokens): room for a right answer, a bound on a rambling one."""
    longest = max((len(run.tokenizer(s.reference, add_special_tokens=False)["input_ids"]) for s in samples), default=0)
    return max(32, 2 * longest)


def _length(rows: Any) -> int | None:
    try:
        return len(rows)
    except TypeError:  # a stream
        return None


def render_text(result: dict[str, Any], handle: Any) -> None:
    """The figures side by side (the better one in green), then the samples."""
    from rich.console import Console
    from rich.table import Table

    from sft_recipes.evaluation.page import METRICS, better, shown

    console = Console(file=handle, width=None if handle is sys.stdout else 160, highlight=False)
    run = result["run"]
    console.print(f"[bold]{run['path']}[/] against base [bold]{run['base']}[/]")
    console.print(f"held-out data: {run['data']} ({result['tuned']['tokens']} trained tokens)")
    figures = Table("", "base", "tuned", title=None, header_style="bold")
    for key, label, _, _, fmt in METRICS:
        winner = better(key, result["base"][key], result["tuned"][key])
        cells = [shown(result[who][key], fmt) for who in WHO]
        cells = [f"[bold green]{c}[/]" if who == winner else c for c, who in zip(cells, WHO, strict=True)]
        figures.add_row(label, *cells)
    console.print(figures)
    if not result["samples"]:
        return
    samples = Table("#", "prompt", "reference", "base", "tuned", show_lines=True, header_style="bold")
    for number, sample in enumerate(result["samples"], start=1):
        answers = [
            f"[{'green' if sample[f'{who}_exact_match'] else 'red'}]{_escape(sample[who]) or '(empty)'}[/]\n"
            f"[dim]ROUGE-L {sample[f'{who}_rouge_l']:.2f}[/]"
            for who in WHO
        ]
        samples.add_row(str(number), _escape(sample["prompt"]), _escape(sample["reference"]), *answers)
    console.print(samples)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
