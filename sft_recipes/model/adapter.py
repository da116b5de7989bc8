"""The model a LoRA run trained, for merging and inference: its base loaded the way training loaded it (the run's
recipe.yaml through the loader: quantization, dtype, RoPE scaling, grown vocabulary), with the adapter on."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_recipes.errors import Problem, RecipeError

logger = logging.getLogger("sft_recipes")


@dataclass
class Trained:
    """The trained model (base + adapter, in eval mode) and what the merge and its check need to know about it."""

    model: Any  # a PeftModel
    base_weights: str  # how training stored the base weights, e.g. "nf4 4-bit, double quant"
    dtype: Any  # the merged model's dtype
    precision: Any  # the coarsest dtype either model computes in: the check's tolerance follows it


def load_trained_model(adapter: Path, base: str | None, dtype: str | None, recipe_path: Path | None = None) -> Trained:
    """The trained model in eval mode: the base loaded the way training loaded it (the run's recipe.yaml through
    the model layer's loader: quantization, dtype, RoPE scaling, grown vocabulary) with the adapter on, its
    bitsandbytes layers on their training-time path."""
    from peft import PeftModel

    from sft_recipes.model.kind import compute_dtype, detect_model_kind, load_config_dict, resolve_dtype
    from sft_recipes.model.loading import load_model
    from sft_recipes.model.tokenizer import load_processing_class
    from sft_recipes.topology import Topology

    recipe = run_recipe(recipe_path or adapter / "recipe.yaml")
    if recipe is None:
        return _load_without_recipe(adapter, base, dtype)
    model_args, training_args = recipe.model, recipe.training
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    model_args.model_name_or_path = (
        base or adapter_config.get("base_model_name_or_path") or model_args.model_name_or_path
    )
    if (adapter / "tokenizer_config.json").is_file():
        model_args.tokenizer_name_or_path = str(adapter)  # the tokenizer as trained (a pad token may have been added)
    training_args.gradient_checkpointing = False  # nothing is trained here; its hooks would only cost time
    config = load_config_dict(model_args, training_args.trust_remote_code)
    kind = detect_model_kind(config, model_args.model_kind)
    processing_class = load_processing_class(model_args, training_args, kind)
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    model = load_model(model_args, training_args, kind, config, tokenizer, Topology())  # one process, as merged
    trained: Any = PeftModel.from_pretrained(model, str(adapter))
    trained.eval()
    use_training_kernels(trained)
    out_dtype = resolve_dtype(dtype, training_args, config)
    computed = [out_dtype, resolve_dtype(model_args.dtype, training_args, config)]
    if model_args.load_in_4bit or model_args.load_in_8bit:
        computed.append(compute_dtype(training_args))
    return Trained(trained, base_weights_name(model_args), out_dtype, min(computed, key=lambda d: d.itemsize))


def run_recipe(path: Path) -> Any:
    """A run's recipe.yaml parsed as train parsed it (None when there is none). Its `env:` block is left out: train
    wrote secrets there as <redacted>, which must not replace the real ones in this process."""
    import tempfile

    import yaml

    from sft_recipes.config import load_yaml, parse_recipe

    if not path.is_file():
        return None
    raw = load_yaml(str(path))
    raw.pop("env", None)
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "recipe.yaml"
        copy.write_text(yaml.safe_dump(raw))
        try:
            return parse_recipe(["--config", str(copy)])
        except RecipeError as err:
            problem = err.problems[0]
            raise RecipeError(
                Problem(
                    str(path),
                    f"the run's recipe no longer parses: {problem.message}",
                    problem.fix or "restore the recipe.yaml that train wrote",
                )
            ) from None


def _load_without_recipe(adapter: Path, base: str | None, dtype: str | None) -> Trained:
    """An adapter without recipe.yaml (not trained here): its base as stored, grown to the adapter's vocabulary."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, PretrainedConfig

    from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT, detect_model_kind, resolve_dtype
    from sft_recipes.model.loading import embedding_rows
    from sft_recipes.model.rope import BASE_CONFIG

    base = base or json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise RecipeError(Problem("--base", "the adapter does not name its base model", "pass --base MODEL"))
    logger.warning(
        "%s has no recipe.yaml: merging into %s as stored; a 4/8-bit trained adapter will drift", adapter, base
    )
    config, _ = PretrainedConfig.get_config_dict(base)
    auto_class = (
        AutoModelForImageTextToText if detect_model_kind(config) == IMAGE_TEXT_TO_TEXT else AutoModelForCausalLM
    )
    recorded = adapter / BASE_CONFIG  # the RoPE scaling the base was trained with, when it was
    model_config = AutoConfig.from_pretrained(recorded) if recorded.is_file() else None
    model: Any = auto_class.from_pretrained(base, config=model_config, dtype=torch.float32)
    vocab = adapter_vocab_size(adapter)
    if vocab and vocab != embedding_rows(model):
        model.resize_token_embeddings(vocab)
    trained: Any = PeftModel.from_pretrained(model, str(adapter))
    trained.eval()
    out_dtype = resolve_dtype(dtype, None, config)
    return Trained(trained, "unquantized", out_dtype, out_dtype)


def base_weights_name(model_args: Any) -> str:
    """How training stored the base weights, e.g. "nf4 4-bit, double quant, compute bfloat16"."""
    if model_args.load_in_4bit:
        nested = ", double quant" if model_args.use_bnb_nested_quant else ""
        return f"{model_args.bnb_4bit_quant_type} 4-bit{nested}"
    if model_args.load_in_8bit:
        return "int8 (LLM.int8)"
    return "unquantized"


def use_training_kernels(model: Any) -> None:
    """Put bitsandbytes layers on the path they took in training: Linear4bit's packed CPU inference kernel
    (`support_avx512bf16_for_cpu`) off, and Linear8bitLt on CPU through the dequantize-then-matmul path it trains
    with (MatMul8bitFp, taken in training mode only) instead of int8 inference."""
    from sft_recipes.environment import has_package

    if not has_package("bitsandbytes"):
        return
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
        elif isinstance(module, bnb.nn.Linear8bitLt) and module.weight.device.type == "cpu":
            module.training = True


def adapter_vocab_size(adapter: Path) -> int | None:
    """The embedding rows the adapter was trained with, when training resized them (it then saves embed_tokens)."""
    from safetensors import safe_open

    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    with safe_open(str(weights), "pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            if key.endswith(("embed_tokens.weight", "embed_tokens.modules_to_save.default.weight")):
                return int(handle.get_slice(key).get_shape()[0])
    return None
