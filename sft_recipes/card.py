"""A finished run's model card (README.md): base, method, data, length, steps, losses, curve, command, versions."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from sft_recipes.config import SECRET_PATTERN
from sft_recipes.launch import LAUNCH_ENV

CARD = "README.md"
CURVE = "report.png"
MARKER = "<!-- model card written by sft-recipes -->"  # a merge rewrites only a card it finds this in


def write_model_card(output_dir: str | Path, trainer: Any, recipe: Any) -> Path:
    """OUTPUT_DIR/README.md (over the empty template PEFT saves) for the run just finished, its curve as report.png."""
    out = Path(output_dir)
    facts = run_facts(out, trainer, recipe)
    facts["curve"] = draw_curve(out, trainer.state.log_history, out.resolve().name)
    (out / CARD).write_text(render_card(facts))
    return out / CARD


def run_facts(out: Path, trainer: Any, recipe: Any) -> dict[str, Any]:
    """What the card says, gathered from the trainer, the recipe and the run summary written beside it."""
    from transformers import ProcessorMixin

    from sft_recipes.data.prepared import read_manifest
    from sft_recipes.environment import package_versions
    from sft_recipes.run_dir import read_summary

    model_args, training_args = recipe.model, recipe.training
    summary = read_summary(out) or {}
    history = trainer.state.log_history
    evals = [h for h in history if "eval_loss" in h]
    manifest = read_manifest(recipe.script.prepared) if recipe.script.prepared else None
    # a prepared set's labels were masked when it was made (train then tells TRL there is nothing left to mask)
    masking = manifest["fingerprint"] if manifest else vars(training_args)
    return {
        "name": out.resolve().name,
        "base": model_args.model_name_or_path,
        "revision": base_revision(model_args),
        "tokenizer": model_args.tokenizer_name_or_path,
        "vision": isinstance(trainer.processing_class, ProcessorMixin),  # as SFTTrainer tells a VLM run
        "method": method_of(trainer.model, model_args),
        "peft": getattr(trainer.model, "peft_config", None) is not None,
        "sources": data_sources(recipe, manifest),
        "sequences": {"train": _length(trainer.train_dataset), "eval": _length(trainer.eval_dataset)},
        "max_length": training_args.max_length,
        "packing": f"on ({training_args.packing_strategy})" if training_args.packing else "off",
        "loss_on": loss_tokens(masking.get("assistant_only_loss"), masking.get("completion_only_loss")),
        "steps": summary.get("steps", trainer.state.global_step),
        "max_steps": trainer.state.max_steps,
        "epochs": summary.get("epochs", trainer.state.epoch),
        "tokens_seen": summary.get("tokens_seen"),
        "final_loss": summary.get("final_loss"),
        "train_loss": summary.get("train_loss"),
        "eval_loss": (evals[-1]["eval_loss"], evals[-1].get("step")) if evals else None,
        "wall_time_s": summary.get("wall_time_s"),
        "world_size": summary.get("world_size", trainer.accelerator.num_processes),
        "command": reproduce_command(recipe),
        "versions": {**(summary.get("versions") or package_versions()), "python": sys.version.split()[0]},
    }


def base_revision(model_args: Any) -> str:
    """The base's revision as the run resolved it: the hub commit of a cached snapshot when it can be read offline."""
    name, revision = model_args.model_name_or_path, model_args.model_revision or "main"
    if os.path.isdir(os.path.expanduser(name)):
        return "a local directory (no hub revision)"
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return f"commit {revision}"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", cache_dir=model_args.cache_dir, revision=revision)
    except Exception:  # noqa: BLE001 - an unreadable cache only costs the card its commit hash
        cached = None
    match = re.search(r"snapshots[/\\]([0-9a-f]{40})[/\\]", cached) if isinstance(cached, str) else None
    return f"{revision} (commit {match.group(1)})" if match else revision


def method_of(model: Any, model_args: Any) -> str:
    """Full fine-tune, LoRA or QLoRA, with the adapter's rank, alpha and the modules PEFT actually wrapped."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        counted = f" ({trainable:,} trainable parameters)" if trainable else ""
        return f"full fine-tune: every weight trained{counted}"
    config = next(iter(configs.values()))
    name = "DoRA" if getattr(config, "use_dora", False) else "LoRA"
    if model_args.load_in_4bit:
        nested = ", double quantization" if model_args.use_bnb_nested_quant else ""
        name = f"QLoRA ({name} on a 4-bit {model_args.bnb_4bit_quant_type} base{nested})"
    elif model_args.load_in_8bit:
        name = f"QLoRA ({name} on an 8-bit base)"
    targets = config.target_modules
    targets = ", ".join(sorted(targets)) if isinstance(targets, (set, list, tuple)) else str(targets)
    parts = [f"r={config.r}", f"alpha={config.lora_alpha}", f"dropout={config.lora_dropout}"]
    if getattr(config, "use_rslora", False):
        parts.append("rsLoRA scaling")
    saved = ", ".join(sorted(config.modules_to_save or []))
    return f"{name}: {', '.join(parts)}; targets: {targets}" + (f"; also trained in full: {saved}" if saved else "")


def data_sources(recipe: Any, manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each source with its rows after conversion: from the prepared set's manifest when the run trained on one, else
    read again as train read it (the datasets cache answers). A stream has no row count."""
    script, mixture = recipe.script, recipe.mixture
    if manifest:
        return [{**source, "prepared": str(script.prepared)} for source in manifest["sources"]]
    if mixture.streaming or script.dataset_streaming:
        named = mixture.datasets or [script]
        return [{"source": getattr(d, "path", None) or d.dataset_name, "split": "stream", "rows": None} for d in named]
    from sft_recipes.data.loading import load_training_data

    counts: list[dict[str, Any]] = []
    load_training_data(script, mixture, recipe.training, counts=counts)
    return counts


def loss_tokens(assistant_only: bool | None, completion_only: bool | None) -> str:
    if assistant_only:
        return "assistant tokens only (assistant_only_loss)"
    if completion_only is False:
        return "every token (completion_only_loss: false)"
    return "the completion only for prompt-completion data, else every token"


def reproduce_command(recipe: Any) -> str:
    """The `sft-recipes train` line of this run: recipe, topology flags and overrides as given, secrets redacted."""
    line = ["sft-recipes", "train"]
    if recipe.path:
        line += ["--config", recipe.path]
    line += shlex.split(os.environ.get(LAUNCH_ENV, ""))
    redact = False
    for arg in recipe.overrides:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if redact:
            line.append("<redacted>")
        elif name and "=" in arg and SECRET_PATTERN.search(name):
            line.append(f"--{name}=<redacted>")
        else:
            line.append(arg)
        redact = bool(name and "=" not in arg and SECRET_PATTERN.search(name))
    return shlex.join(line)


def draw_curve(out: Path, history: list[dict[str, Any]], title: str) -> str | None:
    """report.png from the report's own plot, or why there is none."""
    from sft_recipes.environment import has_package
    from sft_recipes.errors import RecipeError
    from sft_recipes.report import check_replaceable, plot

    if not has_package("matplotlib"):
        return "matplotlib is not installed: `pip install 'sft-recipes[tracking]'`, then `sft-recipes report` here"
    try:
        check_replaceable(out / CURVE)
    except RecipeError:
        return f"{CURVE} here was not written by sft-recipes, so it was left alone: run `sft-recipes report --out`"
    plot(history, out / CURVE, f"Training report: {title}")
    return None


def _length(dataset: Any) -> int | None:
    return len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None


def _number(value: Any, digits: int = 4) -> str:
    return "not logged" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}"


def render_card(f: dict[str, Any]) -> str:
    """The card's markdown, with the Hub's metadata block first (a local base is no hub id)."""
    local = os.path.isdir(os.path.expanduser(f["base"]))
    evaluated, sequences = f["eval_loss"], f["sequences"]
    processes = "process" if f["world_size"] == 1 else "processes"
    prepared = next((s["prepared"] for s in f["sources"] if s.get("prepared")), None)
    preprocessed = f"Trained on the set `sft-recipes preprocess` prepared in `{prepared}` from these sources."
    what = "rows (processed at collation, with their images)" if f["vision"] else "sequences after TRL's preparation"
    lines = [
        "---",
        *([] if local else [f"base_model: {f['base']}"]),
        f"library_name: {'peft' if f['peft'] else 'transformers'}",
        f"pipeline_tag: {'image-text-to-text' if f['vision'] else 'text-generation'}",
        "tags:",
        *[f"- {tag}" for tag in ("sft", "trl", "sft-recipes", *(["lora"] if f["peft"] else []))],
        "---",
        MARKER,
        "",
        f"# {f['name']}",
        "",
        f"`{f['base']}` fine-tuned with `sft-recipes train` (TRL's SFTTrainer): {f['method'].split(':')[0]}.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{f['base']}` |",
        f"| revision | {f['revision']} |",
        *([f"| tokenizer | `{f['tokenizer']}` |"] if f["tokenizer"] else []),
        f"| method | {f['method']} |",
        "",
        "## Data",
        "",
        "| source | split | rows |",
        "|---|---|---|",
        *[f"| `{s['source']}` | {s['split']} | {_number(s['rows'])} |" for s in f["sources"]],
        "",
        *([preprocessed, ""] if prepared else []),
        f"- max_length: {f['max_length']}; packing: {f['packing']}; loss on {f['loss_on']}",
        f"- {what}: {_number(sequences['train'])} for training"
        + (f", {_number(sequences['eval'])} for evaluation" if sequences["eval"] is not None else ""),
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| steps | {f['steps']} of {f['max_steps']} |",
        f"| epochs | {_number(f['epochs'], 2)} |",
        f"| tokens seen | {_number(f['tokens_seen'])} |",
        f"| final train loss | {_number(f['final_loss'])} (mean over the run: {_number(f['train_loss'])}) |",
        f"| final eval loss | {f'{evaluated[0]:.4f} at step {evaluated[1]}' if evaluated else 'not evaluated'} |",
        f"| wall time | {_number(f['wall_time_s'], 1)} s on {f['world_size']} {processes} |",
        "",
        f"![loss, learning rate, tokens/s and memory by step]({CURVE})" if f["curve"] is None else f["curve"],
        "",
        "## Reproduce",
        "",
        "```bash",
        f["command"],
        "```",
        "",
        "`recipe.yaml` beside this card is the resolved recipe of this run: every key as it was set, or decided.",
        "",
        "## Versions",
        "",
        "| package | version |",
        "|---|---|",
        *[f"| {name} | {version or 'not installed'} |" for name, version in f["versions"].items()],
    ]
    return "\n".join(lines) + "\n"


def write_merged_card(adapter_dir: str | Path, merged_dir: str | Path, base: str) -> Path:
    """The adapter's card for `merge`'s folder (same run, loaded as a full model), with its loss curve."""
    import shutil

    adapter, merged = Path(adapter_dir), Path(merged_dir)
    source = adapter / CARD
    text = source.read_text() if source.is_file() else ""
    run = adapter.resolve().name
    note = f"This folder is the LoRA adapter of `{run}` merged into `{base}`: load it as a full model."
    if MARKER in text:
        text = text.replace("library_name: peft", "library_name: transformers", 1)
        title, _, rest = text.partition("\n# ")
        name, _, rest = rest.partition("\n")
        text = f"{title}\n# {name} (merged)\n\n{note}\n{rest}"
        if (adapter / CURVE).is_file():
            shutil.copy2(adapter / CURVE, merged / CURVE)
    else:  # an adapter trained elsewhere: say only what is known
        text = f"---\nlibrary_name: transformers\n---\n{MARKER}\n\n# {run} (merged)\n\n{note}\n"
        text += "\n`merge_check.json` holds the logit check of the merge.\n"
    (merged / CARD).write_text(text)
    return merged / CARD
