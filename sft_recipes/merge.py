"""Merge a LoRA adapter into its base model and verify that merged and adapter logits agree.

Usage: sft-recipes merge ADAPTER_DIR [--out DIR] [--base MODEL] [--dtype bfloat16|float16|float32]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from sft_recipes.arguments import command_parser
from sft_recipes.errors import Problem, RecipeError

logger = logging.getLogger("sft_recipes")
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
    "preprocessor_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "generation_config.json",
    "recipe.yaml",
)
# |merged - adapter| must be this small in fp32, and far below |adapter - base| in any dtype.
FP32_TOLERANCE = 1e-4


def merge_adapter(
    adapter_dir: str,
    out_dir: str,
    base: str | None = None,
    dtype: str = "auto",
    check_tokens: int = 16,
    overwrite: bool = False,
) -> dict[str, float]:
    """Merge adapter_dir into its base (reloaded in 16/32-bit, never 4-bit), save to out_dir, and return the
    verification figures: max |merged - adapter| and max |adapter - base| logits on check_tokens tokens."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from sft_recipes.card import write_merged_card
    from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT, detect_model_kind
    from sft_recipes.model.loading import embedding_rows

    adapter = Path(adapter_dir)
    if not (adapter / "adapter_config.json").is_file():
        raise RecipeError(
            Problem(
                str(adapter),
                "no adapter_config.json: not a LoRA adapter folder",
                "point at the output_dir of a LoRA/QLoRA run",
            )
        )
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RecipeError(Problem(str(out), "already exists and is not empty", "choose another --out, or --overwrite"))
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    base = base or adapter_config.get("base_model_name_or_path")
    if not base:
        raise RecipeError(Problem("--base", "the adapter does not name its base model", "pass --base MODEL"))
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(base)
    auto_class = (
        AutoModelForImageTextToText if detect_model_kind(config) == IMAGE_TEXT_TO_TEXT else AutoModelForCausalLM
    )
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    # A QLoRA adapter is merged into the base reloaded in 16-bit: merging into 4-bit weights would round the update
    # away and save a quantized model.
    base_model: Any = auto_class.from_pretrained(base, dtype=torch_dtype)
    embeddings = embedding_rows(base_model)
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").is_file() else Path(base)
    vocab = _saved_vocab_size(adapter)
    if vocab and vocab != embeddings:
        base_model.resize_token_embeddings(vocab)
    model: Any = PeftModel.from_pretrained(base_model, str(adapter))
    model.eval()
    ids = torch.arange(check_tokens).remainder(min(embeddings, 1000)).unsqueeze(0) + 1
    with torch.no_grad():
        adapter_logits = model(input_ids=ids).logits.float()
        with model.disable_adapter():
            base_logits = model(input_ids=ids).logits.float()
        merged = model.merge_and_unload()
        merged_logits = merged(input_ids=ids).logits.float()
    figures = {
        "max_abs_merged_vs_adapter": float((merged_logits - adapter_logits).abs().max()),
        "max_abs_adapter_vs_base": float((adapter_logits - base_logits).abs().max()),
    }
    check_merge(figures, merged.dtype)
    merged.config.use_cache = True
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    for name in PROCESSOR_FILES:
        for source in (adapter, tokenizer_source):
            if (source / name).is_file():
                shutil.copy2(source / name, out / name)
                break
    (out / "merge_check.json").write_text(json.dumps(figures, indent=2) + "\n")
    write_merged_card(adapter, out, base)
    logger.info("Merged %s into %s -> %s (%s)", adapter, base, out, figures)
    return figures


def _saved_vocab_size(adapter: Path) -> int | None:
    """The embedding rows the adapter was trained with, when training resized them (saved embed_tokens)."""
    from safetensors import safe_open

    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    with safe_open(str(weights), "pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            if key.endswith(("embed_tokens.weight", "embed_tokens.modules_to_save.default.weight")):
                return int(handle.get_slice(key).get_shape()[0])
    return None


def check_merge(figures: dict[str, float], dtype: Any) -> None:
    """Fail when the merge changed the function, or when the adapter did nothing at all."""
    import torch

    diff, effect = figures["max_abs_merged_vs_adapter"], figures["max_abs_adapter_vs_base"]
    if effect == 0.0:
        raise RecipeError(
            Problem(
                "adapter",
                "the adapter does not change the model's logits (all-zero B matrices?)",
                "train it first; merging it would be a no-op",
            )
        )
    limit = FP32_TOLERANCE if dtype == torch.float32 else max(FP32_TOLERANCE, 0.05 * effect)
    if diff > limit:
        raise RecipeError(
            Problem(
                "merge",
                f"merged logits differ from adapter logits by {diff:.3g} "
                f"(limit {limit:.3g}; adapter effect {effect:.3g})",
                "merge in float32 (--dtype float32) and check the base model revision",
            )
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
    print(json.dumps(figures))
    return 0
