"""The eval as one self-contained html page: the two models' figures side by side, the better one marked, and the
samples in a table (prompt | reference | base | tuned) coloured by exact match."""

from __future__ import annotations

import html
import math
from typing import Any

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
    return ("tuned" if tuned < base else "base") if lower else ("tuned" if tuned > base else "base")


def shown(value: float | None, fmt: str) -> str:
    return "–" if value is None else "∞" if value == math.inf else fmt.format(value)


def _metric(key: str, label: str, hint: str, fmt: str, figures: dict[str, dict[str, Any]]) -> str:
    winner = better(key, figures["base"][key], figures["tuned"][key])
    cells = []
    for who in ("base", "tuned"):
        number = shown(figures[who][key], fmt)
        tag = '<span class="tag">better</span>' if who == winner else ""
        cells.append(
            f'<div class="value {who}{" better" if who == winner else ""}"><div class="who">{who}{tag}</div>'
            f'<div class="number">{number}</div></div>'
        )
    return (
        f'<div class="metric"><div class="name">{label}</div><div class="hint">{hint}</div>'
        f'<div class="pair">{"".join(cells)}</div></div>'
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
    rows = []
    for number, (sample, prompt) in enumerate(zip(result["samples"], turns, strict=True), start=1):
        rows.append(
            f'<tr><td class="index">{number}</td><td>{_turns(prompt)}</td><td>{html.escape(sample["reference"])}</td>'
            f"{_answer(sample, 'base')}{_answer(sample, 'tuned')}</tr>"
        )
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
