"""The held-out rows of an eval, converted and masked as train does it, and the prompts and references it compares."""

from __future__ import annotations

import copy
import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any

from sft_recipes.errors import Problem, RecipeError

logger = logging.getLogger("sft_recipes")

REDACTED = "<redacted>"
NO_HELD_OUT_FIX = (
    "hold rows out the way train does (--test_split_size 0.05 with the recipe train used, or a dataset_test_split "
    "the data has), or pass --data FILE"
)


@dataclass
class Sample:
    """A prompt (the conversation up to its last assistant turn, or a plain-text prompt) and the answer expected."""

    prompt: list[dict[str, Any]] | str
    reference: str

    def prompt_turns(self) -> list[tuple[str, str]]:
        """(role, text) of each prompt turn; a plain-text prompt is one user turn."""
        if isinstance(self.prompt, str):
            return [("user", self.prompt)]
        return [(m["role"], content_text(m.get("content"))) for m in self.prompt]

    def prompt_text(self) -> str:
        turns = self.prompt_turns()
        return turns[0][1] if len(turns) == 1 else "\n".join(f"{role}: {text}" for role, text in turns)


def eval_recipe(layout: Any, config: str | None, overrides: list[str]) -> Any:
    """The recipe that shapes the rows: --config (with overrides), else the resolved recipe.yaml the run saved."""
    from sft_recipes.config import parse_recipe

    if config is None and layout.recipe_path is None:
        what = "holds no recipe.yaml, so how train converted and masked its rows is unknown"
        raise RecipeError(Problem(str(layout.path), what, "pass --config with the recipe this model was trained with"))
    before = dict(os.environ)
    recipe = parse_recipe(["--config", config or str(layout.recipe_path), *overrides])
    # recipe.yaml keeps secrets as "<redacted>": exported, they would replace a working HF_TOKEN.
    for key in [key for key, value in os.environ.items() if value == REDACTED]:
        if key in before:
            os.environ[key] = before[key]
        else:
            del os.environ[key]
    # The run's saved tokenizer already holds the chat template (and the tokens) chat_template_path gave it.
    recipe.training.chat_template_path = None
    return recipe


def load_rows(recipe: Any, data: str | None, trained: dict[str, Any] | None = None) -> tuple[Any, str]:
    """(rows, where they come from): the rows of `data`, or the recipe's eval split, checked and converted by the
    data layer as train converts them; `trained` is the run's recipe.yaml, to warn when train did not hold them out."""
    from sft_recipes.config import DatasetMixtureConfig, ScriptArguments
    from sft_recipes.data.formats import columns_of
    from sft_recipes.data.loading import load_training_data

    training = copy.copy(recipe.training)
    if data is not None:
        training.eval_strategy = "no"
        rows, _ = load_training_data(ScriptArguments(dataset_name=data), DatasetMixtureConfig(), training)
        label = data
    else:
        training.eval_strategy = "steps"  # the data layer holds rows out only when evaluation is on
        try:
            _, rows = load_training_data(recipe.script, recipe.mixture, training)
        except RecipeError as err:
            if [p.where for p in err.problems] != ["eval_strategy"]:
                raise
            what = "the recipe holds no rows out: its data has no test split"
            raise RecipeError(Problem(f"{recipe.path}", what, NO_HELD_OUT_FIX)) from None
        label = f"the eval split of {recipe.path}"
        if recipe.mixture.test_split_size is not None and not held_out_by_training(trained or {}, recipe):
            logger.warning(
                "The run did not hold out this test_split_size split (its recipe.yaml has eval_strategy: no or "
                "another test_split_size): rows of it were trained on"
            )
    columns = columns_of(rows)
    if "messages" not in columns and "prompt" not in columns:
        what = f"its rows are plain text (columns: {', '.join(columns)}): no assistant turns to generate and compare"
        raise RecipeError(Problem(label, what, "evaluate on conversations (messages) or prompt/completion rows"))
    return rows, label


def held_out_by_training(trained: dict[str, Any], recipe: Any) -> bool:
    """Whether train split these test_split_size rows off too: its recipe.yaml (`trained`) has evaluation on and the
    same test_split_size. A run without recipe.yaml is taken to have trained with the recipe given."""
    if trained:
        strategy, size = trained.get("eval_strategy", "no"), trained.get("test_split_size")
    else:
        strategy, size = recipe.training.eval_strategy, recipe.mixture.test_split_size
    return str(getattr(strategy, "value", strategy)) != "no" and size == recipe.mixture.test_split_size


def first_samples(rows: Any, n: int) -> list[Sample]:
    """The prompts and references of the first `n` rows, images set into their image placeholders."""
    return [sample_of(row) for row in itertools.islice(iter(rows), n)]


def sample_of(row: dict[str, Any]) -> Sample:
    images = list(row.get("images") or [])
    if "messages" in row and row["messages"] is not None:
        messages = [_with_images(m, images) for m in row["messages"]]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")  # the data layer checked one is
        return Sample(messages[:last], content_text(messages[last].get("content")))
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str):
        return Sample(prompt, completion)
    reference = "\n".join(content_text(m.get("content")) for m in completion)
    return Sample([_with_images(m, images) for m in prompt], reference)


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str) or content is None:
        return content or ""
    return "".join(part.get("text") or "" for part in content if part.get("type") == "text")


def _with_images(message: dict[str, Any], images: list[Any]) -> dict[str, Any]:
    """The message with its image placeholders filled, in order, from the row's images (the processor reads parts)."""
    message = {k: v for k, v in message.items() if v is not None}  # datasets fills absent keys with None
    content = message.get("content")
    if isinstance(content, str) or content is None:
        return message
    parts = []
    for part in content:
        part = {k: v for k, v in part.items() if v is not None}
        if part.get("type") == "image" and images:
            part["image"] = images.pop(0)
        parts.append(part)
    return {**message, "content": parts}


def prepared_batches(recipe: Any, rows: Any, run: Any, workdir: str, source: str = "data") -> Any:
    """The rows prepared by TRL's SFTTrainer (on a meta-device model, with the run's tokenizer or processor) under the
    recipe's settings, batched in order by its collator: the labels train computes its loss on. `source` names them."""
    from torch.utils.data import DataLoader

    from sft_recipes.inspection.meta_trainer import build_meta_model, inspection_args, meta_trainer, outside_launch

    with outside_launch():
        model = build_meta_model(recipe.model, recipe.training, run.kind, config_dict=run.layout.config)
        args = inspection_args(recipe.training, workdir)
        trainer, warnings = meta_trainer(model, copy.deepcopy(run.processing_class), rows, args, source)
    for warning in warnings:
        logger.warning("%s", warning)
    # In order and whole (an eval loader), through the training collator; a plain DataLoader, since outside_launch
    # put accelerate's process state back, which the trainer's own loaders would need.
    return DataLoader(
        trainer.train_dataset, batch_size=recipe.training.per_device_eval_batch_size, collate_fn=trainer.data_collator
    )
