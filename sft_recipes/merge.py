"""Merge a LoRA adapter into the base weights it was trained on, and check that the merged model is the trained one.

Usage: sft-recipes merge ADAPTER_DIR [--out DIR] [--base MODEL] [--dtype bfloat16|float16|float32]"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from sft_recipes.arguments import command_parser
from sft_recipes.errors import error
from sft_recipes.trained import load_trained_model

logger = logging.getLogger("sft_recipes")
# Copied beside the merged weights, each from the adapter folder, else from the base model's.
PROCESSOR_FILES = (
    *("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "added_tokens.json"),
    *("vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json", "generation_config.json"),
    *("processor_config.json", "preprocessor_config.json", "recipe.yaml"),
)
# How far the merged model's logits may be from the trained model's (quantized base + adapter), as a share of the
# adapter's effect (max |trained - base|). A float32 merge is exact up to rounding, so it must also stay under
# FP32_TOLERANCE; a 16-bit one rounds every merged weight to 8 (bf16) or 11 (fp16) bits.
FP32_DRIFT_SHARE = 0.01
FP32_TOLERANCE = 1e-4
HALF_DRIFT_SHARE = 0.05


def merge_adapter(
    adapter_dir: str,
    out_dir: str,
    base: str | None = None,
    dtype: str = "auto",
    check_tokens: int = 32,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Merge adapter_dir into the base weights training computed with (4/8-bit dequantized), cast to dtype ("auto":
    the base's), save to out_dir with merge_check.json; returns its figures (merged vs trained over check_tokens)."""
    import torch

    from sft_recipes.card import write_merged_card

    adapter = Path(adapter_dir)
    if not (adapter / "adapter_config.json").is_file():
        raise error(
            str(adapter),
            "no adapter_config.json: not a LoRA adapter folder",
            "point at the output_dir of a LoRA/QLoRA run",
        )
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise error(str(out), "already exists and is not empty", "choose another --out, or --overwrite")
    run = load_trained_model(adapter, base, dtype)
    trained = run.model
    embeddings = trained.get_input_embeddings().weight
    ids = torch.randint(0, embeddings.shape[0], (2, check_tokens), generator=torch.Generator().manual_seed(0))
    ids = ids.to(embeddings.device)
    base_folder = Path(trained.get_base_model().name_or_path)  # the tokenizer's source when the run saved none
    with torch.no_grad():
        trained_logits = trained(input_ids=ids).logits.float().cpu()
        with trained.disable_adapter():
            base_logits = trained(input_ids=ids).logits.float().cpu()
        merged = merge_into_dequantized(trained, adapter, run.dtype)
        merged_logits = merged(input_ids=ids.to(merged.device)).logits.float().cpu()
    drift = float((merged_logits - trained_logits).abs().max())
    effect = float((trained_logits - base_logits).abs().max())
    figures: dict[str, Any] = {
        "max_abs_merged_vs_trained": drift,
        "max_abs_trained_vs_base": effect,
        "drift_share_of_effect": drift / effect if effect else None,
        "top1_agreement": float((merged_logits.argmax(-1) == trained_logits.argmax(-1)).float().mean()),
        "trained_base_weights": run.base_weights,
        "dtype": str(run.dtype).removeprefix("torch."),
        "check_precision": str(run.precision).removeprefix("torch."),
    }
    check_merge(figures, run.precision)
    for config in {id(c): c for c in (merged.config, merged.config.get_text_config())}.values():
        config.use_cache = True
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    for name in PROCESSOR_FILES:
        for source in (adapter, base_folder):
            if (source / name).is_file():
                shutil.copy2(source / name, out / name)
                break
    (out / "merge_check.json").write_text(json.dumps(figures, indent=2) + "\n")
    write_merged_card(adapter, out, base or str(base_folder))
    logger.info("Merged %s -> %s: %s", adapter, out, drift_line(figures))
    return figures


def merge_into_dequantized(trained: Any, adapter: Path, dtype: Any) -> Any:
    """The adapter merged in float32 into the base weights the trained model computes with (4/8-bit ones dequantized:
    a fresh 16-bit load misses the quantization error training saw, and PEFT's merge into bitsandbytes requantizes)."""
    import torch
    from peft import PeftModel

    base = trained.unload()  # the bitsandbytes layers again, unpacked (the packed kernel never ran)
    if getattr(base, "hf_quantizer", None) is not None:
        base = base.dequantize(dtype=torch.float32)
    base = base.to(torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    return merged.to(dtype).eval()


def drift_line(figures: dict[str, Any]) -> str:
    drift, effect = figures["max_abs_merged_vs_trained"], figures["max_abs_trained_vs_base"]
    return (
        f"merged vs trained ({figures['trained_base_weights']} base + adapter): max |logit diff| {drift:.3g}, "
        f"{figures['drift_share_of_effect']:.4%} of the adapter's effect {effect:.3g}; "
        f"top-1 agreement {figures['top1_agreement']:.1%} ({figures['dtype']} merge, "
        f"checked at {figures['check_precision']} precision)"
    )


def check_merge(figures: dict[str, Any], precision: Any) -> None:
    """Fail when the merged model is not the trained one, or when the adapter did nothing at all. precision: the
    coarsest dtype the trained or the merged model computes in."""
    import torch

    drift, effect = figures["max_abs_merged_vs_trained"], figures["max_abs_trained_vs_base"]
    if effect == 0.0:
        raise error(
            "adapter",
            "the adapter does not change the model's logits (all-zero B matrices?)",
            "train it first; merging it would be a no-op",
        )
    limit = min(FP32_TOLERANCE, FP32_DRIFT_SHARE * effect) if precision == torch.float32 else HALF_DRIFT_SHARE * effect
    if drift > limit:
        raise error(
            "merge",
            f"merged logits differ from the trained model's by {drift:.3g} "
            f"(limit {limit:.3g}; adapter effect {effect:.3g})",
            "merge in float32 (--dtype float32) and check --base is the model the adapter was trained on",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("merge", __doc__)
    parser.add_argument("adapter_dir", help="output_dir of a LoRA/QLoRA run (adapter_config.json inside)")
    parser.add_argument("--out", help="where to save the merged model (default: ADAPTER_DIR/merged)")
    parser.add_argument("--base", help="base model (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    figures = merge_adapter(
        args.adapter_dir,
        args.out or str(Path(args.adapter_dir) / "merged"),
        args.base,
        args.dtype,
        overwrite=args.overwrite,
    )
    print(drift_line(figures))
    return 0
