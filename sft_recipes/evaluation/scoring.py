"""One model on the held-out rows: loss and perplexity over the trained tokens, exact match and ROUGE-L of answers."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sft_recipes.errors import Problem, RecipeError

logger = logging.getLogger("sft_recipes")

BASE_FIX = "pass --base with a local copy (or reachable hub id) of the model the run was trained from"


@dataclass
class Figures:
    """One model's figures over the held-out rows."""

    loss: float  # mean negative log-likelihood per trained token
    perplexity: float
    exact_match: float | None  # share of the samples answered exactly (whitespace aside); None without samples
    rouge_l: float | None  # mean ROUGE-L F1 of the samples
    tokens: int  # trained tokens the loss is over


@dataclass
class Answer:
    text: str
    exact_match: bool
    rouge_l: float


def token_loss(model: Any, batches: Any) -> tuple[float, int]:
    """(summed negative log-likelihood, count) of the tokens labelled other than -100: train's loss, unaveraged."""
    import torch
    from torch.nn.functional import cross_entropy

    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            labels = inputs.pop("labels")
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            # use_cache=False: a padding-free batch is then read as packed sequences, as in training.
            logits = model(**inputs, use_cache=False).logits
            for row_logits, row_labels in zip(logits, labels, strict=True):  # one row at a time in fp32
                targets = row_labels[1:]
                nll = cross_entropy(row_logits[:-1].float(), targets, ignore_index=-100, reduction="sum")
                total += float(nll)
                count += int((targets != -100).sum())
    return total, count


def exact_match(reference: str, answer: str) -> bool:
    """The same text, whitespace aside."""
    return reference.split() == answer.split()


class _Words:
    """rouge-score's tokenizer interface over Unicode words (its default keeps only a-z and 0-9: "Bogotá" would
    lose its last letter, and non-Latin text every word)."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


def rouge_scorer() -> Any:
    from sft_recipes.environment import require_extra

    require_extra("rouge_score", "eval", "ROUGE-L")
    from rouge_score import rouge_scorer as scorers

    return scorers.RougeScorer(["rougeL"], tokenizer=_Words())


def score(run: Any, batches: Any, samples: list[Any], max_new_tokens: int, scorer: Any) -> tuple[Figures, list[Any]]:
    """`run`'s figures over the prepared batches and the samples, and its greedy answers (stopped at its EOS ids)."""
    total, count = token_loss(run.model, batches)
    if count == 0:
        fix = "check assistant_only_loss / completion_only_loss and max_length: train would learn nothing either"
        raise RecipeError(Problem("data", "no token of the held-out rows is trained (every label is masked)", fix))
    replies = []
    for sample in samples:
        text = run.reply(sample.prompt, max_new_tokens, do_sample=False, num_beams=1)
        f1 = scorer.score(sample.reference, text)["rougeL"].fmeasure
        replies.append(Answer(text, exact_match(sample.reference, text), float(f1)))
    loss = total / count
    share = sum(a.exact_match for a in replies) / len(replies) if replies else None
    rouge = sum(a.rouge_l for a in replies) / len(replies) if replies else None
    perplexity = math.exp(loss) if loss < 700 else math.inf
    return Figures(loss, perplexity, share, rouge, count), replies


@dataclass(frozen=True)
class BaseModel:
    """Where the base model comes from, and how an error about it names its origin."""

    name: str
    where: str  # e.g. "recipe.yaml: model_name_or_path M" or "--base M"
    revision: str | None = None


def recorded_base(layout: Any, recipe: Any, override: str | None) -> BaseModel:
    """The adapter's base (--base already applied to it), else --base, else the model_name_or_path of the run's
    recipe.yaml, else --config's; its config.json is read now, so a base that is gone fails before any scoring."""
    from transformers import PretrainedConfig

    if layout.weights == "adapter":
        return BaseModel(str(layout.base), f"{layout.path}: the adapter's base {layout.base}")
    if override:
        base = BaseModel(override, f"--base {override}")
    elif layout.recipe.get("model_name_or_path"):
        name = str(layout.recipe["model_name_or_path"])
        base = BaseModel(name, f"{layout.recipe_path}: model_name_or_path {name}", layout.recipe.get("model_revision"))
    elif recipe.path and recipe.model.model_name_or_path:
        name = recipe.model.model_name_or_path
        base = BaseModel(name, f"{recipe.path}: model_name_or_path {name}", recipe.model.model_revision)
    else:
        raise RecipeError(Problem(str(layout.path), "the run does not record its base model", BASE_FIX))
    try:
        PretrainedConfig.get_config_dict(base.name, revision=base.revision)
    except (OSError, ValueError) as err:
        raise RecipeError(Problem(base.where, f"cannot be read: {str(err).splitlines()[0]}", BASE_FIX)) from None
    return base


@contextlib.contextmanager
def base_of(run: Any, base: BaseModel) -> Iterator[Any]:
    """The run's base model, prompted and stopped as the run is: for an adapter, the adapter disabled (its base loaded
    as trained); else `base` in the run's dtype, loaded once the tuned weights are freed."""
    if run.layout.weights == "adapter":
        with run.model.disable_adapter():
            yield run
        return
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from sft_recipes.model.loading import embedding_rows

    device, dtype = run.model.device, run.model.dtype
    run.model = None  # scored already: two full models need not share the memory
    gc.collect()
    auto_class = AutoModelForImageTextToText if run.is_vlm else AutoModelForCausalLM
    recipe = run.layout.recipe
    logger.info("Loading the base model %s", base.name)
    try:
        model = auto_class.from_pretrained(
            base.name,
            revision=base.revision,
            dtype=dtype,
            trust_remote_code=bool(recipe.get("trust_remote_code", False)),
            use_safetensors=None if recipe.get("allow_pickle_weights") else True,
        )
    except (OSError, ValueError) as err:
        raise RecipeError(Problem(base.where, f"cannot be loaded: {str(err).splitlines()[0]}", BASE_FIX)) from None
    if len(run.tokenizer) > embedding_rows(model):  # grown to the run's vocabulary, as train grew it
        model.resize_token_embeddings(len(run.tokenizer), pad_to_multiple_of=8)
    yield dataclasses.replace(run, model=model.to(device).eval())
