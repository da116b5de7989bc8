"""The inspected rows as the model sees them, token by token: one view for the terminal (rich) and one for html."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sft_recipes.inspection.meta_trainer import image_token_id, is_vision, special_ids

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sft_recipes.errors import Problem
    from sft_recipes.inspection.meta_trainer import Context

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
