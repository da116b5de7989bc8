"""Plot a run's loss, learning rate, tokens/s and peak memory from its trainer_state.json, with an HTML summary.

Usage: sft-recipes report OUTPUT_DIR [--out PATH.png]
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import statistics
from pathlib import Path
from typing import Any

from sft_recipes.arguments import command_parser
from sft_recipes.environment import require_extra
from sft_recipes.errors import error

MARKER = "sft-recipes report"  # stamped into both files: a rerun may replace them, and never anything else
MEMORY_KEYS = {"peak_memory_gib": "GPU memory allocated", "peak_rss_gib": "process RSS, CPU"}


def find_trainer_state(output_dir: Path) -> Path:
    """OUTPUT_DIR/trainer_state.json, else the one of its highest-numbered checkpoint-N/."""
    if not output_dir.is_dir():
        raise error(str(output_dir), "no such directory", "pass the output_dir of a training run")
    top = output_dir / "trainer_state.json"
    if top.is_file():
        return top
    from sft_recipes.run_dir import checkpoints

    states = [state for path in checkpoints(output_dir) if (state := path / "trainer_state.json").is_file()]
    if not states:
        raise error(
            str(top),
            "no trainer_state.json here nor in a checkpoint-*/ folder",
            "point at a run that saved a checkpoint",
        )
    return states[-1]


def series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(entry["step"], entry[key]) for entry in history if key in entry]
    return [step for step, _ in points], [value for _, value in points]


def summarize(state: dict[str, Any], source: Path) -> dict[str, str]:
    history = state.get("log_history", [])
    last = {key: value for entry in history for key, value in entry.items()}  # each key's latest value
    _, losses = series(history, "loss")
    eval_steps, eval_losses = series(history, "eval_loss")
    _, speeds = series(history, "tokens_per_second")
    _, mfus = series(history, "mfu")
    tokens = last.get("num_tokens", last.get("num_input_tokens_seen"))
    best = min(zip(eval_losses, eval_steps, strict=True), default=None)
    memory = [(max(series(history, key)[1]), label) for key, label in MEMORY_KEYS.items() if key in last]
    runtime = last.get("train_runtime")
    return {
        "trainer state": str(source),
        "steps": f"{state.get('global_step')} of {state.get('max_steps')}",
        "epochs": f"{state.get('epoch') or 0:.2f}",
        "final loss": f"{losses[-1]:.4f}" if losses else "not logged",
        "best eval loss": f"{best[0]:.4f} at step {best[1]}" if best else "not evaluated",
        "tokens seen": f"{int(tokens):,}" if tokens is not None else "not logged",
        "median tokens/s": f"{statistics.median(speeds):,.0f}" if speeds else "not logged",
        "median MFU": f"{statistics.median(mfus):.1%}" if mfus else "not logged (CPU or unknown GPU)",
        "peak memory": ", ".join(f"{gib:.2f} GiB ({label})" for gib, label in memory) or "not logged",
        "wall time": f"{runtime:,.0f} s ({runtime / 3600:.2f} h)" if runtime else "n/a",
    }


def plot(history: list[dict[str, Any]], png: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on the Agg canvas: no pyplot global state, no display needed.
    figure = Figure(figsize=(12, 8), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    panels = [
        ("loss", {"loss": "train", "eval_loss": "eval"}),
        ("learning rate", {"learning_rate": "learning rate"}),
        ("tokens/s (all devices)", {"tokens_per_second": "tokens/s"}),
        ("peak memory (GiB)", MEMORY_KEYS),
    ]
    for axes, (name, keys) in zip(figure.subplots(2, 2).flat, panels, strict=True):
        axes.set_title(name)
        axes.set_xlabel("step")
        drawn = False
        for key, label in keys.items():
            steps, values = series(history, key)
            if steps:
                axes.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
                drawn = True
        if drawn and len(keys) > 1:
            axes.legend()
        if not drawn:
            axes.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axes.transAxes, color="gray")
    figure.savefig(png, format="png", dpi=100, metadata={"Software": MARKER})


def render_html(summary: dict[str, str], png_bytes: bytes, title: str) -> str:
    rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary.items())
    image = base64.b64encode(png_bytes).decode("ascii")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="generator" content="{MARKER}"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} th{{text-align:left;padding-right:2em}} img{{max-width:100%}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<table>
{rows}
</table>
<img alt="loss, learning rate, tokens/s and peak memory by step" src="data:image/png;base64,{image}">
</body></html>
"""


def check_replaceable(path: Path) -> None:
    """Refuse to overwrite a file that a previous report did not write."""
    if path.exists() and (not path.is_file() or MARKER.encode() not in path.read_bytes()[:65536]):
        raise error(str(path), "exists and is not a report written by sft-recipes", "choose another --out path")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("report", __doc__)
    parser.add_argument("output_dir", type=Path, help="the output_dir of a training run")
    parser.add_argument("--out", type=Path, help="the PNG (default OUTPUT_DIR/report.png); the HTML goes beside it")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    source = find_trainer_state(args.output_dir)
    png = args.out or args.output_dir / "report.png"
    if png.suffix != ".png":
        raise error("--out", f"{png} does not end in .png", "name the PNG; the HTML is written beside it")
    page = png.with_suffix(".html")
    check_replaceable(png)
    check_replaceable(page)
    require_extra("matplotlib", "tracking", "sft-recipes report")
    try:
        state = json.loads(source.read_text())
    except json.JSONDecodeError as err:
        raise error(str(source), f"is not valid JSON ({err})", "report on an earlier, complete checkpoint") from err
    title = f"Training report: {args.output_dir.resolve().name}"
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(state.get("log_history", []), png, title)
    page.write_text(render_html(summarize(state, source), png.read_bytes(), title))
    print(f"wrote {png}\nwrote {page}")
    return 0
