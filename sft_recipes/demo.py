"""Offline demo: build a tiny chat model and a capitals chat set, fine-tune on CPU, compare answers before/after.

Usage: python -m sft_recipes.demo [--workdir .demo] [--recipe RECIPE.yaml]   (default: the shipped demo recipe)"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from sft_recipes.resources import demo_recipe


def generate(model_dir: Path, prompts: list[str], max_new_tokens: int = 24) -> list[str]:
    """Greedy answers, stopping at the run's EOS ids (the end-of-turn token), as `sft-recipes chat` gives them."""
    from sft_recipes.trained import load_trained

    run = load_trained(model_dir, device="cpu")
    return [run.reply([{"role": "user", "content": p}], max_new_tokens, do_sample=False) for p in prompts]


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from sft_recipes.arguments import configure_logging
    from sft_recipes.errors import RecipeError
    from sft_recipes.tiny import ANSWER_TEMPLATE, CAPITALS, DEMO_PROMPTS, build_causal_lm, write_demo_dataset
    from sft_recipes.train import main as train

    parser = argparse.ArgumentParser(prog="python -m sft_recipes.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".demo", help="where the tiny model, data and run go")
    parser.add_argument("--recipe", default=str(demo_recipe()), help="default: the demo recipe shipped in the package")
    args = parser.parse_args(argv)
    configure_logging(debug=False)
    console = Console()
    work = Path(args.workdir)
    model_dir, data, out = work / "model", work / "capitals.jsonl", work / "out"
    started = time.time()
    if not (model_dir / "config.json").is_file():
        build_causal_lm("llama", model_dir, hidden_size=64, num_layers=2)
    write_demo_dataset(data, n=480)
    console.print(f"[bold]Built[/] a tiny llama in {model_dir} and 480 chat rows in {data}")
    before = generate(model_dir, list(DEMO_PROMPTS))
    overrides = ["--model_name_or_path", str(model_dir), "--dataset_name", str(data), "--output_dir", str(out)]
    try:
        code = train(["--config", args.recipe, *overrides, "--overwrite_output_dir", "true"])
    except RecipeError as err:
        console.print(str(err), style="red", markup=False)
        return 2
    if code:
        return code
    after = generate(out, list(DEMO_PROMPTS))
    expected = {country: ANSWER_TEMPLATE.format(country=country, city=city) for country, city in CAPITALS.items()}
    table = Table("prompt", "before", "after", "correct", title="Before and after fine-tuning (greedy decoding)")
    correct = 0
    for prompt, old, new in zip(DEMO_PROMPTS, before, after, strict=True):
        right = any(country in prompt and new == answer for country, answer in expected.items())
        correct += right
        table.add_row(prompt, old[:40], new, "yes" if right else "no")
    console.print(table)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    console.print(
        f"{correct}/{len(DEMO_PROMPTS)} correct; wall time {time.time() - started:.0f} s; "
        f"peak memory {peak_gib:.2f} GiB; the fine-tuned model is in {out}"
    )
    return 0 if correct >= len(DEMO_PROMPTS) - 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
