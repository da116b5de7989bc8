"""Show the first training rows exactly as the model sees them (template, truncation, packing, loss mask), with
statistics and warnings about what the model would learn wrong.

Usage: sft-recipes inspect --config recipes/<model>/<method>.yaml [-n 3] [--format text|html|json] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import html
import json
import sys
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sft_recipes.arguments import command_parser, parse_with_recipe
from sft_recipes.inspection.diagnosis import diagnose, loss_scope, text_statistics, vision_statistics
from sft_recipes.inspection.meta_trainer import (
    build_context,
    build_trainer,
    first_rows,
    image_token_id,
    is_vision,
    is_vlm,
    outside_launch,
    special_ids,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sft_recipes.errors import Problem
    from sft_recipes.inspection.meta_trainer import Context

# What TRL 1.16's packing does to an example over max_length (truncation_mode applies without packing only).
PACKED_TRUNCATION = {
    "bfd": "keep_start (bfd packing drops the overflow)",
    "bfd_split": "none (bfd_split packing splits the overflow off)",
    "wrapped": "none (wrapped packing cuts across rows)",
}
FORMATS = ("text", "html", "json")
TERMINAL_TOKENS = 1200  # per row in the terminal; html and json show every token
TRAINED = ("#1b5e20", "#c8f7c5", "#a4ecaf")  # text colour, then two backgrounds alternating so tokens show apart
SPECIAL, MASKED, IMAGE = "#8e24aa", "#8a8a8a", "#00838f"
KINDS = {"special": (f"bold {SPECIAL}", "sp"), "image": (f"bold {IMAGE}", "img"), "pad": (f"dim {MASKED}", "pad")}
LEGEND = (  # the terminal's
    (" trained ", f"{TRAINED[0]} on {TRAINED[1]}"),
    ("  masked  ", MASKED),
    ("<|special|>  ", f"bold {SPECIAL}"),
    ("⟨image ×n⟩  ", f"bold {IMAGE}"),
    ("── document ──", "bold yellow"),
)


@dataclass
class Piece:
    """One displayed token (or a run of image/pad tokens): its text and whether the loss trains on it."""

    id: int
    text: str
    trained: bool
    kind: str = "text"  # text | special | image | pad
    count: int = 1


@dataclass
class Example:
    """One row of a training batch; a packed row holds several documents."""

    position: int
    documents: list[int]  # tokens per document
    pieces: list[Piece]
    tokens: int = 0
    trained: int = 0
    padding: int = 0  # padding this row gets in its batch
    cut: bool = False  # max_length long: an example was (probably) cut to fit
    cut_at: int | None = None  # vision rows are shown whole: where max_length would cut them


@dataclass
class Inspection:  # in the order of `--format json`
    recipe: str
    settings: dict[str, Any]
    statistics: dict[str, Any]
    problems: list[Problem]
    checks: list[str]  # what was verified and holds
    examples: list[Example]


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


def token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token's text; a character split over several byte tokens is shown on the last of them."""
    texts: list[str] = []
    pending: list[int] = []
    for token_id in ids:
        pending.append(token_id)
        text = tokenizer.decode(pending, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        partial = "\ufffd" in text and len(pending) < 4
        texts.append("" if partial else text)
        pending = pending if partial else []
    return texts


def build_example(ctx: Context, position: int, row: dict[str, Any], padding: int) -> Example:
    """A row collated alone by the trainer's collator (its tokens and labels in a batch), image/pad runs collapsed."""
    trainer, tokenizer, max_length = ctx.trainer, ctx.tokenizer, ctx.trainer.args.max_length
    alone = trainer.data_collator([dict(row)])
    ids, labels = alone["input_ids"][0].tolist(), alone["labels"][0].tolist()
    if "attention_mask" in alone:
        real = int(alone["attention_mask"][0].sum())
        ids, labels = ids[:real], labels[:real]
    documents = list(row.get("seq_lengths") or [len(ids)])
    ids, labels = ids[: sum(documents)], labels[: sum(documents)]
    starts = _starts(documents)
    trained = [label != -100 and i not in starts for i, label in enumerate(labels)]
    cut_at = max_length if is_vision(trainer) and max_length is not None and len(ids) > max_length else None
    specials, image_id = special_ids(tokenizer), image_token_id(trainer)
    pieces: list[Piece] = []
    for index, (token_id, text, is_trained) in enumerate(zip(ids, token_texts(tokenizer, ids), trained, strict=True)):
        if token_id == image_id and pieces and pieces[-1].kind == "image" and index != cut_at:
            pieces[-1].count += 1
            continue
        kind = "image" if token_id == image_id else "special" if token_id in specials else "text"
        pieces.append(Piece(token_id, text, is_trained, kind))
    if padding:
        pieces.append(Piece(tokenizer.pad_token_id, tokenizer.pad_token or "", False, "pad", padding))
    cut = max_length is not None and max(documents) >= max_length
    return Example(position, documents, pieces, len(ids), sum(trained), padding, cut, cut_at)


def _starts(documents: list[int]) -> dict[int, int]:
    """Each document's first position, and the document's index."""
    firsts = sorted({sum(documents[:i]) for i in range(len(documents))})
    return {position: index for index, position in enumerate(firsts)}


def _walk(example: Example) -> Iterator[tuple[int, int, Piece, int | None]]:
    """(index, position, piece, the document starting there when the row packs several)."""
    starts = _starts(example.documents) if len(example.documents) > 1 else {}
    position = 0
    for index, piece in enumerate(example.pieces):
        yield index, position, piece, starts.get(position)
        position += piece.count


def _piece_text(piece: Piece) -> str:
    if piece.kind == "image":
        return f"⟨image ×{piece.count}⟩"
    if piece.kind == "pad":
        return f"⟨pad {piece.text} ×{piece.count}⟩"
    return piece.text.replace("\t", "→").replace("\n", "↵\n")


def example_title(example: Example, markup: bool = True) -> str:
    share = example.trained / max(example.tokens, 1)
    parts = [f"row {example.position + 1}", f"{example.tokens} tokens", f"{example.trained} trained ({share:.0%})"]
    if len(example.documents) > 1:
        parts.append(f"{len(example.documents)} documents packed")
    if example.padding:
        parts.append(f"+{example.padding} padding")
    if example.cut:
        parts.append("[yellow]cut at max_length[/]" if markup else "cut at max_length")
    return " · ".join(parts)


def statistics_rows(statistics: dict[str, Any]) -> list[tuple[str, str]]:
    s, lengths = statistics, statistics["tokens_per_example"]
    sample = f" (first {s['sample']})" if s.get("sample") else " (head of the stream)" if s.get("sampled") else ""
    rows = [
        ("examples", f"{s['examples'] if s['examples'] is not None else '?'}{sample}"),
        ("tokens per example", " · ".join(f"{k} {v}" for k, v in lengths.items())),
        ("truncated", f"{s['truncated_examples']} ({s['truncated_share']:.1%})"),
    ]
    if s.get("dropped_examples"):
        rows.append(("dropped", f"{s['dropped_examples']} (nothing left to train)"))
    if "training_rows" in s:
        rows.append(("training rows", f"{s['training_rows']} ({s['documents_per_row']} documents per row)"))
    rows.append(("tokens trained", f"{s['trained_tokens']} of {s['tokens']} ({s['trained_share']:.1%})"))
    if "packing_efficiency" in s:
        rows.append(("packing efficiency", f"{s['packing_efficiency']:.1%} of batch tokens are real tokens"))
    if s.get("batches_per_epoch") is not None:
        steps = f"{s['batches_per_epoch']} per process → {s['optimizer_steps_per_epoch']} optimizer steps"
        rows.append(("batches per epoch", steps))
    return rows


def render_text(inspection: Inspection, file: Any = None, width: int | None = None) -> None:
    """The terminal view (rich): settings, statistics, problems and checks, then each row, trained tokens on green."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = Console(file=file, width=width, highlight=False)
    settings = Table.grid(padding=(0, 2))
    for key, value in inspection.settings.items():
        settings.add_row(Text(key, style="bold"), str(value))
    console.print(Panel(settings, title=f"[bold]sft-recipes inspect[/] {inspection.recipe}", border_style="blue"))
    statistics = Table.grid(padding=(0, 2))
    for key, value in statistics_rows(inspection.statistics):
        statistics.add_row(Text(key, style="bold"), value)
    console.print(Panel(statistics, title="statistics", title_align="left", border_style="blue"))
    for p in inspection.problems:
        error = p.severity == "error"
        mark = (f"{'✗' if error else '⚠'} {p.where}: ", "bold red" if error else "bold yellow")
        console.print(Text.assemble(mark, p.message, (f"\n  fix: {p.fix}", "dim") if p.fix else ""))
    for check in inspection.checks:
        console.print(Text(f"✓ {check}", style="green"))
    console.print(Text.assemble("\n", *LEGEND))
    for example in inspection.examples:
        text = Text()
        for index, position, piece, document in _walk(example):
            if document is not None:
                header = f"── document {document + 1} · {example.documents[document]} tokens ──\n"
                text.append(("\n" if document else "") + header, style="bold yellow")
            if position == example.cut_at:
                text.append(f"✂ max_length {example.cut_at} cuts here ✂", style="bold white on red")
            if position >= TERMINAL_TOKENS:
                text.append(f"\n… {example.tokens - position} more tokens (--format html shows them all)", style="dim")
                break
            style = KINDS[piece.kind][0] if piece.kind in KINDS else TRAINED[0] if piece.trained else MASKED
            text.append(_piece_text(piece), style=style + (f" on {TRAINED[1 + index % 2]}" if piece.trained else ""))
        text.rstrip()  # the last newline would leave an empty line in the panel
        console.print(Panel(text, title=example_title(example), title_align="left", border_style="grey50"))


HTML_STYLE = f"""
body {{ font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.3em; }} h2 {{ font-size: 1.05em; margin-top: 1.6em; }}
td {{ padding: 2px 14px 2px 0; vertical-align: top; }} td:first-child {{ font-weight: 600; white-space: nowrap; }}
.problem {{ margin: 4px 0; }} .error {{ color: #b71c1c; }} .warning {{ color: #9a6700; }}
.fix {{ color: #666; margin-left: 1.5em; }} .check {{ color: #2e7d32; }}
.example {{ border: 1px solid #ccc; border-radius: 6px; margin: 1em 0; }}
.example h3 {{ margin: 0; padding: 6px 10px; background: #f3f3f3; font-size: .9em; }}
.tokens {{ font: 13px/1.55 ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; word-break: break-all;
  padding: 10px; }}
.t {{ color: {MASKED}; }} .tr {{ color: {TRAINED[0]}; background: {TRAINED[1]}; }}
.tr.odd {{ background: {TRAINED[2]}; }}
.sp {{ color: {SPECIAL}; font-weight: 700; }} .img {{ color: {IMAGE}; font-weight: 700; }} .pad {{ color: #bbb; }}
.cut {{ color: #fff; background: #c62828; font-weight: 700; }}
.doc {{ display: block; color: #8d6e00; font-weight: 700; border-top: 2px dashed #e0b000; margin: 6px 0 2px; }}
.legend span {{ margin-right: 1.2em; padding: 1px 4px; }}
"""


def render_html(inspection: Inspection) -> str:
    """A self-contained HTML page with the colours of the terminal view."""
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>sft-recipes inspect {esc(inspection.recipe)}"
        f"</title><style>{HTML_STYLE}</style></head><body><h1>sft-recipes inspect <code>{esc(inspection.recipe)}"
        "</code></h1><table>",
        *(f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in inspection.settings.items()),
        "</table><h2>Statistics</h2><table>",
        *(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in statistics_rows(inspection.statistics)),
        "</table><h2>Checks</h2>",
    ]
    for p in inspection.problems:
        fix = f"<div class='fix'>fix: {esc(p.fix)}</div>" if p.fix else ""
        mark = "✗" if p.severity == "error" else "⚠"
        parts.append(f"<div class='problem {p.severity}'>{mark} <b>{esc(p.where)}</b>: {esc(p.message)}{fix}</div>")
    parts += [f"<div class='check'>✓ {esc(c)}</div>" for c in inspection.checks]
    parts.append(
        "<h2>First rows of training</h2><p class='legend tokens'><span class='tr'>trained</span>"
        "<span class='t'>masked</span><span class='sp'>&lt;|special|&gt;</span><span class='img'>⟨image ×n⟩</span>"
        "<span class='doc' style='display:inline'>document</span></p>"
    )
    for example in inspection.examples:
        parts.append(f"<div class='example'><h3>{esc(example_title(example, markup=False))}</h3><div class='tokens'>")
        for index, position, piece, document in _walk(example):
            if document is not None:
                parts.append(
                    f"<span class='doc'>document {document + 1} · {example.documents[document]} tokens</span>"
                )
            if position == example.cut_at:
                parts.append(f"<span class='cut'>✂ max_length {example.cut_at} cuts here ✂</span>")
            classes = ["tr" if piece.trained else "t"] + (["odd"] if piece.trained and index % 2 else [])
            classes += [KINDS[piece.kind][1]] if piece.kind in KINDS else []
            title = f"id {piece.id} · {'trained' if piece.trained else 'masked'}"
            parts.append(f"<span class='{' '.join(classes)}' title='{title}'>{esc(_piece_text(piece))}</span>")
        parts.append("</div></div>")
    parts.append("</body></html>\n")
    return "".join(parts)


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
