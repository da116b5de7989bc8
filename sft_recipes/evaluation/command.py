"""Compare a trained run with its base model on held-out rows: loss, perplexity, exact match and ROUGE-L.

Usage: sft-recipes eval OUTPUT_DIR (--data FILE | --config RECIPE) [--n N] [--json] [--format html --out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import html
import json
import logging
import math
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
        fix = "--data FILE evaluates on its rows; --config RECIPE on the recipe's eval split"
        raise RecipeError(Problem("sft-recipes eval", "no held-out rows: give --data FILE or --config RECIPE", fix))
    if args.json and args.format not in ("text", "json"):
        raise RecipeError(Problem("--json", f"conflicts with --format {args.format}", "pass one of them"))
    if args.n < 0:
        raise RecipeError(Problem("--n", f"{args.n} is below 0", "pass how many rows to generate answers for"))
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise RecipeError(Problem("--max_new_tokens", f"{args.max_new_tokens} is below 1", "pass a positive number"))
    if args.data is not None and not Path(args.data).expanduser().exists():
        raise RecipeError(Problem("--data", f"{args.data} does not exist", "pass a file of held-out rows"))


def main(argv: list[str]) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    check_args(args)
    fmt = "json" if args.json else args.format
    # Only the result goes to stdout: whatever the libraries print on the way goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        result, turns = evaluate(args, overrides)
    if fmt != "text":
        text = render_html(result, turns) if fmt == "html" else json.dumps(result, indent=2) + "\n"
    with open(args.out, "w", encoding="utf-8") if args.out else contextlib.nullcontext(sys.stdout) as handle:
        if fmt == "text":
            render_text(result, handle)
        else:
            handle.write(text)
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
    # Twice the longest reference (at least 32 tokens): room for a right answer, a bound on a rambling one.
    longest = max((len(run.tokenizer(s.reference, add_special_tokens=False)["input_ids"]) for s in samples), default=0)
    max_new_tokens = args.max_new_tokens or max(32, 2 * longest)
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


def _length(rows: Any) -> int | None:
    return len(rows) if hasattr(rows, "__len__") else None  # None for a stream


def render_text(result: dict[str, Any], handle: Any) -> None:
    """The figures side by side (the better one in green), then the samples."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=handle, width=None if handle is sys.stdout else 160, highlight=False)
    run = result["run"]
    console.print(f"[bold]{run['path']}[/] against base [bold]{run['base']}[/]")
    console.print(f"held-out data: {run['data']} ({result['tuned']['tokens']} trained tokens)")
    figures = Table("", "base", "tuned", title=None, header_style="bold")
    for key, label, _, _, fmt in METRICS:
        winner = better(key, result["base"][key], result["tuned"][key])
        cells = {who: shown(result[who][key], fmt) for who in WHO}
        figures.add_row(label, *(f"[bold green]{c}[/]" if who == winner else c for who, c in cells.items()))
    console.print(figures)
    if not result["samples"]:
        return
    samples = Table("#", "prompt", "reference", "base", "tuned", show_lines=True, header_style="bold")
    for number, sample in enumerate(result["samples"], start=1):
        answers = [
            f"[{'green' if sample[f'{who}_exact_match'] else 'red'}]{escape(sample[who]) or '(empty)'}[/]\n"
            f"[dim]ROUGE-L {sample[f'{who}_rouge_l']:.2f}[/]"
            for who in WHO
        ]
        samples.add_row(str(number), escape(sample["prompt"]), escape(sample["reference"]), *answers)
    console.print(samples)


# (key, label, how to read it, whether lower is better, format)
METRICS = (
    ("loss", "Loss", "per trained token, lower is better", True, "{:.4f}"),
    ("perplexity", "Perplexity", "exp(loss), lower is better", True, "{:.2f}"),
    ("exact_match", "Exact match", "share of the {n} samples, higher is better", False, "{:.0%}"),
    ("rouge_l", "ROUGE-L", "mean F1 over the {n} samples, higher is better", False, "{:.3f}"),
)

STYLE = """
:root { --ink: #1f2328; --muted: #656d76; --line: #d8dee4; --good: #1a7f37; --good-bg: #dafbe1;
  --bad: #b42318; --bad-bg: #ffebe9; --card: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; padding: 28px 32px 48px; color: var(--ink); background: #fff;
  font: 15px/1.5 -apple-system, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 32px 0 10px; }
.meta { color: var(--muted); font-size: 13px; margin: 0; }
.meta code { font-size: 12.5px; background: var(--card); padding: 1px 5px; border-radius: 4px; word-break: break-all; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(250px, 1fr)); gap: 14px; margin-top: 22px; }
.metric { border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; background: #fff; }
.metric .name { font-weight: 600; }
.metric .hint { color: var(--muted); font-size: 12px; }
.pair { display: flex; gap: 10px; margin-top: 10px; }
.value { flex: 1; border-radius: 8px; padding: 8px 10px; background: var(--card); border: 1px solid transparent; }
.value .who { display: flex; align-items: center; gap: 6px; white-space: nowrap;
  font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.value .number { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.value.better { background: var(--good-bg); border-color: #aceebb; }
.value.better .number { color: var(--good); }
.tag { font-size: 10.5px; font-weight: 600; color: #fff; letter-spacing: 0; text-transform: none;
  background: var(--good); border-radius: 9px; padding: 0 6px; line-height: 16px; }
table { width: 100%; border-collapse: separate; border-spacing: 0; table-layout: fixed;
  border: 1px solid var(--line); border-radius: 10px; overflow: hidden; }
th { text-align: left; font-size: 13px; background: var(--card); padding: 9px 12px;
  border-bottom: 1px solid var(--line); }
td { vertical-align: top; padding: 10px 12px; border-bottom: 1px solid var(--line);
  white-space: pre-wrap; overflow-wrap: anywhere; }
tr:last-child td { border-bottom: 0; }
col.index { width: 44px; } col.prompt { width: 25%; }
td.index { color: var(--muted); font-variant-numeric: tabular-nums; }
.role { display: block; font-size: 11px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.turn + .turn { margin-top: 6px; display: block; }
td.answer.exact { background: var(--good-bg); }
td.answer.miss { background: var(--bad-bg); }
.score { display: block; margin-top: 6px; font-size: 12px; font-weight: 600; white-space: normal; }
td.exact .score { color: var(--good); } td.miss .score { color: var(--bad); }
.empty { color: var(--muted); font-style: italic; }
.legend { color: var(--muted); font-size: 13px; margin: 0 0 10px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 3px; vertical-align: -1px;
  margin: 0 4px 0 10px; }
"""


def better(key: str, base: float | None, tuned: float | None) -> str | None:
    """ "base", "tuned" or None (a tie, or figures that cannot be compared)."""
    lower = next(m[3] for m in METRICS if m[0] == key)
    if base is None or tuned is None or base == tuned or math.isnan(base) or math.isnan(tuned):
        return None
    return "tuned" if (tuned < base) == lower else "base"


def shown(value: float | None, fmt: str) -> str:
    return "–" if value is None else "∞" if value == math.inf else fmt.format(value)


def _metric(key: str, label: str, hint: str, fmt: str, figures: dict[str, dict[str, Any]]) -> str:
    winner = better(key, figures["base"][key], figures["tuned"][key])
    cells = ""
    for who in WHO:
        tag = '<span class="tag">better</span>' if who == winner else ""
        cells += f'<div class="value {who}{" better" if tag else ""}"><div class="who">{who}{tag}</div>'
        cells += f'<div class="number">{shown(figures[who][key], fmt)}</div></div>'
    return (
        f'<div class="metric"><div class="name">{label}</div><div class="hint">{hint}</div>'
        f'<div class="pair">{cells}</div></div>'
    )


def _turns(turns: list[tuple[str, str]]) -> str:
    if len(turns) == 1 and turns[0][0] == "user":
        return html.escape(turns[0][1])
    return "".join(
        f'<span class="turn"><span class="role">{html.escape(role)}</span>{html.escape(text)}</span>'
        for role, text in turns
    )


def _answer(sample: dict[str, Any], who: str) -> str:
    text, exact, rouge = sample[who], sample[f"{who}_exact_match"], sample[f"{who}_rouge_l"]
    shown = html.escape(text) if text.strip() else '<span class="empty">(empty answer)</span>'
    verdict = "✓ exact match" if exact else "✗ no exact match"
    return (
        f'<td class="answer {"exact" if exact else "miss"}">{shown}'
        f'<span class="score">{verdict} · ROUGE-L {rouge:.2f}</span></td>'
    )


def render_html(result: dict[str, Any], turns: list[list[tuple[str, str]]]) -> str:
    """The page for an eval result (the --json document); `turns` are each sample's prompt turns."""
    run = result["run"]
    n = len(result["samples"])
    figures = "".join(_metric(key, label, hint.format(n=n), fmt, result) for key, label, hint, _, fmt in METRICS)
    rows = [
        f'<tr><td class="index">{number}</td><td>{_turns(prompt)}</td><td>{html.escape(sample["reference"])}</td>'
        f"{_answer(sample, 'base')}{_answer(sample, 'tuned')}</tr>"
        for number, (sample, prompt) in enumerate(zip(result["samples"], turns, strict=True), start=1)
    ]
    table = (
        '<table><colgroup><col class="index"><col class="prompt"><col><col><col></colgroup>'
        "<thead><tr><th>#</th><th>Prompt</th><th>Reference</th><th>Base</th><th>Tuned</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="empty">No samples (--n 0).</p>'
    )
    rows_note = f"{run['rows']} rows, " if run.get("rows") is not None else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>eval · {html.escape(run["path"])}</title><style>{STYLE}</style></head>
<body>
<h1>Did it learn?</h1>
<p class="meta">tuned <code>{html.escape(run["path"])}</code> against base <code>{html.escape(run["base"])}</code></p>
<p class="meta">held-out data: <code>{html.escape(run["data"])}</code> · {rows_note}{result["tuned"]["tokens"]} trained
tokens · greedy answers to the first {n}</p>
<section class="figures">{figures}</section>
<h2>Samples</h2>
<p class="legend">Answers shaded by exact match:<span class="swatch" style="background:#dafbe1"></span>matches the
reference<span class="swatch" style="background:#ffebe9"></span>differs</p>
{table}
</body></html>
"""
