"""A trained run (output_dir, merged/, checkpoint-N/) loaded to chat, score or merge: full weights or base+adapter."""

from __future__ import annotations

import copy
import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sft_recipes.environment import has_package
from sft_recipes.errors import RecipeError, error
from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT, detect_model_kind, resolve_dtype, text_config
from sft_recipes.model.loading import embedding_rows, load_model, load_processing_class
from sft_recipes.model.rope import BASE_CONFIG
from sft_recipes.run_dir import checkpoints
from sft_recipes.topology import Topology

logger = logging.getLogger("sft_recipes")

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
RUN_FIX = "point at a run's output_dir, its merged/ folder or one of its checkpoint-N/ folders"


@dataclass(frozen=True)
class RunLayout:
    """What a run folder holds, read from its small files alone."""

    path: Path
    weights: str  # "full" (config.json + weights) or "adapter" (adapter_config.json on a base model)
    source: str  # "run", "merged" or "checkpoint"
    config: dict[str, Any]  # config.json of the model (the base's, for an adapter)
    kind: str  # sft_recipes.model.kind.CAUSAL_LM or IMAGE_TEXT_TO_TEXT
    base: str | None = None  # the adapter's base model
    recipe: dict[str, Any] = field(default_factory=dict)  # the recipe.yaml train wrote ({} for a plain model)
    recipe_path: Path | None = None
    generation_dir: Path | None = None  # where generation_config.json comes from

    @property
    def quantization(self) -> str | None:
        """How the adapter's base is loaded, as it was trained: "4-bit", "8-bit" or None (full weights never are)."""
        if self.weights != "adapter":
            return None
        return "4-bit" if self.recipe.get("load_in_4bit") else "8-bit" if self.recipe.get("load_in_8bit") else None

    def describe(self) -> str:
        what = {"run": "run", "merged": "merged model", "checkpoint": "checkpoint"}[self.source]
        if self.weights == "adapter":
            return f"{what} {self.path} (LoRA adapter on {self.base}, base {self.quantization or 'unquantized'})"
        return f"{what} {self.path} (full weights)"


@dataclass
class TrainedRun:
    """A model in eval mode with its processing class (tokenizer or processor) and generation config."""

    model: Any
    processing_class: Any
    generation_config: Any
    layout: RunLayout

    @property
    def kind(self) -> str:
        return self.layout.kind

    @property
    def is_vlm(self) -> bool:
        return self.layout.kind == IMAGE_TEXT_TO_TEXT

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processing_class, "tokenizer", self.processing_class)

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self.generation_config.eos_token_id)

    @property
    def context_length(self) -> int | None:
        return text_config(self.layout.config).get("max_position_embeddings")

    def encode(self, messages: list[dict[str, Any]] | str) -> Any:
        """The chat template applied to `messages` with the assistant prompt, as model inputs on the model's device;
        a plain-text prompt (prompt-completion rows) is tokenized as it is, as TRL tokenizes it."""
        if isinstance(messages, str):
            return self.processing_class(text=messages, return_tensors="pt").to(self.model.device)
        if getattr(self.processing_class, "chat_template", None) is None:
            raise error(
                str(self.layout.path),
                "the run has no chat template (chat_template.jinja), so there is no chat format to prompt",
                "chat with a run trained on conversations, or set chat_template_path in its recipe",
            )
        inputs = self.processing_class.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        ).to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def generate_ids(
        self, messages: list[dict[str, Any]] | str, max_new_tokens: int = 256, streamer: Any = None, **overrides: Any
    ) -> list[int]:
        """The new token ids of one reply, with the run's generation config (`overrides` win, e.g. do_sample=False);
        generation ends at any of eos_token_ids."""
        import torch

        inputs = self.encode(messages)
        generation = copy.deepcopy(self.generation_config)
        generation.update(max_new_tokens=max_new_tokens, **overrides)
        with torch.no_grad():
            output = self.model.generate(**inputs, generation_config=generation, streamer=streamer)
        return output[0, inputs["input_ids"].shape[1] :].tolist()

    def reply(self, messages: list[dict[str, Any]] | str, max_new_tokens: int = 256, **kwargs: Any) -> str:
        """The assistant's answer to `messages`, without special tokens."""
        ids = self.generate_ids(messages, max_new_tokens, **kwargs)
        return str(self.tokenizer.decode(ids, skip_special_tokens=True)).strip()

    def describe(self) -> str:
        return self.layout.describe()


@dataclass
class Trained:
    """The trained model (base + adapter, in eval mode) and what the merge and its check need to know about it."""

    model: Any  # a PeftModel
    base_weights: str  # how training stored the base weights, e.g. "nf4 4-bit, double quant"
    dtype: Any  # the merged model's dtype
    precision: Any  # the coarsest dtype either model computes in: the check's tolerance follows it


def locate_run(path: str | Path, base: str | None = None) -> RunLayout:
    """Read what `path` holds; `base` overrides the adapter's recorded base model. Reads no weights."""
    path = Path(path).expanduser()
    if not path.exists():
        raise error(str(path), "does not exist", RUN_FIX)
    if not path.is_dir():
        raise error(str(path), "is a file, not a run folder", RUN_FIX)
    is_checkpoint = re.fullmatch(r"checkpoint-\d+", path.name) is not None
    source = "checkpoint" if is_checkpoint else "merged" if (path / "merge_check.json").is_file() else "run"
    recipe_path = next(iter(_run_files(path, "recipe.yaml", is_checkpoint)), None)
    recipe = (yaml.safe_load(recipe_path.read_text()) or {}) if recipe_path else {}
    if not isinstance(recipe, dict):
        raise error(str(recipe_path), "is not a mapping of recipe keys", "restore the recipe.yaml train wrote")
    generation_dir = next((p.parent for p in _run_files(path, "generation_config.json", is_checkpoint)), None)
    if (path / "adapter_config.json").is_file():
        adapter = json.loads((path / "adapter_config.json").read_text())
        overridden = base is not None
        base = base or adapter.get("base_model_name_or_path") or recipe.get("model_name_or_path")
        config = _base_config(path, base, recipe, overridden)
        weights = "adapter"
    elif (path / "config.json").is_file():
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            raise error(
                str(path),
                "has config.json but no weights (model.safetensors): a ZeRO-3 run saved without gathering them?",
                "point at a folder with weights; for DeepSpeed shards run zero_to_fp32.py first",
            )
        config = json.loads((path / "config.json").read_text())
        weights, base = "full", None
    elif found := ", ".join(p.name for p in checkpoints(path)):
        raise error(str(path), f"no final weights (the run did not finish?), only checkpoints: {found}", RUN_FIX)
    else:
        raise error(str(path), "not a run: no config.json with weights and no adapter_config.json", RUN_FIX)
    kind = detect_model_kind(config, recipe.get("model_kind", "auto"))
    return RunLayout(path, weights, source, config, kind, base, recipe, recipe_path, generation_dir)


def _run_files(path: Path, name: str, is_checkpoint: bool) -> list[Path]:
    """`name` in the folder, else (for a checkpoint) in the run's output_dir, where train writes it at the end."""
    candidates = [path / name] + ([path.parent / name] if is_checkpoint else [])
    return [p for p in candidates if p.is_file()]


def _base_config(adapter: Path, base: str | None, recipe: dict[str, Any], overridden: bool) -> dict[str, Any]:
    """config.json of the adapter's base, or a RecipeError that names the base and the --base override."""
    from transformers import PretrainedConfig

    fix = "pass --base with a local copy (or reachable hub id) of the base model the adapter was trained on"
    if not base:
        raise error(str(adapter), "the adapter does not name its base model", fix)
    where = f"{adapter}: base model {base}" + (" (--base)" if overridden else "")
    looks_local = base.startswith(("/", ".", "~")) or base.count("/") > 1
    if looks_local and not Path(base).expanduser().is_dir():
        raise error(where, "does not exist", fix)
    try:
        config, _ = PretrainedConfig.get_config_dict(base, revision=recipe.get("model_revision"))
    except (OSError, ValueError) as err:
        raise error(where, f"cannot be read: {str(err).splitlines()[0]}", fix) from None
    return config


def load_trained(
    path: str | Path, base: str | None = None, dtype: str | None = None, device: str | None = None
) -> TrainedRun:
    """Load any run (see locate_run) with its own chat template, generation config and EOS ids. `base` overrides an
    adapter's base, `dtype` the weights' (default: as trained), `device` defaults to the GPU when there is one."""
    layout = locate_run(path, base)  # before torch loads: a wrong path fails at once
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    processing_class = _load_processing_class(layout)
    logger.info("Loading %s", layout.describe())
    model: Any
    try:
        if layout.weights == "adapter":
            trained = load_trained_model(layout.path, layout.base, dtype, layout.recipe_path)
            model = trained.model
            if trained.base_weights == "unquantized":  # else bitsandbytes layers stay where the loader placed them
                model = model.to(device, dtype=getattr(torch, dtype) if dtype and dtype != "auto" else None)
        else:
            auto_class = AutoModelForImageTextToText if layout.kind == IMAGE_TEXT_TO_TEXT else AutoModelForCausalLM
            model = auto_class.from_pretrained(
                layout.path,
                dtype=dtype or "auto",
                trust_remote_code=bool(layout.recipe.get("trust_remote_code", False)),
                use_safetensors=None if layout.recipe.get("allow_pickle_weights") else True,
            )
            model = model.to(device)
    except OSError as err:
        raise error(str(layout.path), f"cannot load the weights: {str(err).splitlines()[0]}", RUN_FIX) from None
    model.eval()
    model.config.use_cache = True  # checkpoints are saved with the training-time use_cache=False
    generation = _generation_config(layout, model, getattr(processing_class, "tokenizer", processing_class))
    return TrainedRun(model, processing_class, generation, layout)


def _load_processing_class(layout: RunLayout) -> Any:
    """The run's own tokenizer or processor (its chat template included); the base's when the run saved none."""
    from transformers import AutoProcessor, AutoTokenizer

    source = layout.path if (layout.path / "tokenizer_config.json").is_file() or layout.base is None else layout.base
    loader = AutoProcessor if layout.kind == IMAGE_TEXT_TO_TEXT else AutoTokenizer
    if isinstance(source, Path) and not (source / "tokenizer_config.json").is_file():
        raise error(str(source), "holds no tokenizer (tokenizer_config.json)", "copy the base model's tokenizer files")
    try:
        processing_class = loader.from_pretrained(
            source,
            revision=None if source == layout.path else layout.recipe.get("model_revision"),
            trust_remote_code=bool(layout.recipe.get("trust_remote_code", False)),
        )
    except (OSError, ValueError) as err:
        raise error(
            str(source),
            f"cannot load the {'processor' if loader is AutoProcessor else 'tokenizer'}: "
            f"{' '.join(str(err).split())[:300]}",
            "a run folder holds the tokenizer files train saved; copy them from the base model",
        ) from None
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    tokenizer.padding_side = "left"  # generation appends on the right
    return processing_class


def _generation_config(layout: RunLayout, model: Any, tokenizer: Any) -> Any:
    """The run's generation_config.json (else the model's), stopping at every EOS id it lists and the tokenizer's."""
    from transformers import GenerationConfig

    if layout.generation_dir is not None:
        generation = GenerationConfig.from_pretrained(layout.generation_dir)
    else:
        generation = copy.deepcopy(getattr(model, "generation_config", None) or GenerationConfig())
    eos = generation.eos_token_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    if not eos_ids:
        raise error(
            str(layout.path),
            "neither generation_config.json nor the tokenizer names an EOS token: generation would never stop",
            "set eos_token in the recipe (or eos_token_id in generation_config.json)",
        )
    generation.eos_token_id = eos_ids
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    return generation


def load_trained_model(adapter: Path, base: str | None, dtype: str | None, recipe_path: Path | None = None) -> Trained:
    """The trained model in eval mode: the base loaded the way training loaded it (the run's recipe.yaml through
    the model layer's loader: quantization, dtype, RoPE scaling, grown vocabulary) with the adapter on."""
    from peft import PeftModel

    from sft_recipes.model.kind import compute_dtype, load_config_dict

    recipe = run_recipe(recipe_path or adapter / "recipe.yaml")
    if recipe is None:
        return _load_without_recipe(adapter, base, dtype)
    model_args, training_args = recipe.model, recipe.training
    recorded = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    model_args.model_name_or_path = base or recorded or model_args.model_name_or_path
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
    if has_package("bitsandbytes"):
        import bitsandbytes as bnb

        # bitsandbytes layers on the path they took in training: Linear4bit's packed CPU inference kernel off, and
        # Linear8bitLt on CPU through the dequantize-then-matmul path it trains with (MatMul8bitFp, taken in
        # training mode only) instead of int8 inference.
        for module in trained.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
            elif isinstance(module, bnb.nn.Linear8bitLt) and module.weight.device.type == "cpu":
                module.training = True
    out_dtype = resolve_dtype(dtype, training_args, config)
    computed = [out_dtype, resolve_dtype(model_args.dtype, training_args, config)]
    base_weights = "unquantized"
    if model_args.load_in_4bit:
        nested = ", double quant" if model_args.use_bnb_nested_quant else ""
        base_weights = f"{model_args.bnb_4bit_quant_type} 4-bit{nested}"
    elif model_args.load_in_8bit:
        base_weights = "int8 (LLM.int8)"
    if base_weights != "unquantized":
        computed.append(compute_dtype(training_args))
    return Trained(trained, base_weights, out_dtype, min(computed, key=lambda d: d.itemsize))


def run_recipe(path: Path) -> Any:
    """A run's recipe.yaml parsed as train parsed it (None when there is none). Its `env:` block is left out: train
    wrote secrets there as <redacted>, which must not replace the real ones in this process."""
    from sft_recipes.config import load_yaml, parse_recipe

    if not path.is_file():
        return None
    raw = load_yaml(str(path))
    raw.pop("env", None)
    with tempfile.TemporaryDirectory() as folder:
        copy_path = Path(folder) / "recipe.yaml"
        copy_path.write_text(yaml.safe_dump(raw))
        try:
            return parse_recipe(["--config", str(copy_path)])
        except RecipeError as err:
            problem = err.problems[0]
            raise error(
                str(path),
                f"the run's recipe no longer parses: {problem.message}",
                problem.fix or "restore the recipe.yaml that train wrote",
            ) from None


def _load_without_recipe(adapter: Path, base: str | None, dtype: str | None) -> Trained:
    """An adapter without recipe.yaml (not trained here): its base as stored, grown to the adapter's vocabulary."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, PretrainedConfig

    base = base or json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise error("--base", "the adapter does not name its base model", "pass --base MODEL")
    logger.warning(
        "%s has no recipe.yaml: base %s loaded as stored (an adapter trained on a 4/8-bit base drifts)", adapter, base
    )
    config, _ = PretrainedConfig.get_config_dict(base)
    vlm = detect_model_kind(config) == IMAGE_TEXT_TO_TEXT
    auto_class = AutoModelForImageTextToText if vlm else AutoModelForCausalLM
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
