"""The real `trl.SFTTrainer` on a meta-device model: the one module touching TRL/transformers private names."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from logging.handlers import BufferingHandler
from typing import TYPE_CHECKING, Any

from sft_recipes.errors import Problem, error

if TYPE_CHECKING:
    from collections.abc import Iterator

SHARDING_ENV = ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP")  # what `accelerate launch` sets for ZeRO and FSDP


def build_meta_model(model_args: Any, training_args: Any, kind: str, config_dict: dict[str, Any] | None = None) -> Any:
    """The architecture on the meta device (SFTTrainer prepares data with a model object, never its weights), from
    config_dict when given (e.g. an offline snapshot), else from the model's config.json."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT

    if config_dict is not None and config_dict.get("model_type"):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        config = CONFIG_MAPPING[config_dict["model_type"]].from_dict(config_dict)
    else:
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            cache_dir=model_args.cache_dir,
            trust_remote_code=training_args.trust_remote_code,
        )
    auto_class = AutoModelForImageTextToText if kind == IMAGE_TEXT_TO_TEXT else AutoModelForCausalLM
    with torch.device("meta"), _outside_zero3_init():
        return auto_class.from_config(config, trust_remote_code=training_args.trust_remote_code)


def check_attn_implementation(model: Any, implementation: str) -> str:
    """transformers' own check of `implementation` for this model class, as from_pretrained runs it at init (no
    weights needed): the implementation it would use; ValueError or ImportError when it refuses it."""
    return str(model._check_and_adjust_attn_implementation(implementation, is_init_check=True))


@contextlib.contextmanager
def _outside_zero3_init() -> Iterator[None]:
    """Under a ZeRO-3 launch, from_config would partition the skeleton with deepspeed.zero.Init, which cannot copy
    meta tensors: step out of transformers' global DeepSpeed config for the skeleton only."""
    from transformers.integrations import deepspeed

    saved = deepspeed._hf_deepspeed_config_weak_ref
    deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        deepspeed._hf_deepspeed_config_weak_ref = saved


@contextlib.contextmanager
def outside_launch() -> Iterator[None]:
    """Wrap every use of a meta trainer: inside `accelerate launch` its TrainingArguments would reset accelerate's
    process-wide state and publish a DeepSpeed config the real model load then partitions with."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    env = {name: os.environ.pop(name) for name in SHARDING_ENV if name in os.environ}
    states = [(cls, dict(cls._shared_state)) for cls in (PartialState, AcceleratorState, GradientState)]
    try:
        with _outside_zero3_init():
            yield
    finally:
        os.environ.update(env)
        for cls, saved in states:
            cls._shared_state.clear()
            cls._shared_state.update(saved)


def inspection_args(training_args: Any, output_dir: str, **changes: Any) -> Any:
    """The recipe's SFTConfig with everything that does not shape the data off (hub push, trackers, evaluation,
    dataloader workers, distributed engines, model loading), and the meta model left where it is."""
    args = dataclasses.replace(
        training_args,
        output_dir=output_dir,
        report_to="none",
        push_to_hub=False,
        eval_strategy="no",
        dataloader_num_workers=0,
        deepspeed=None,
        fsdp=None,
        torch_compile=False,
        model_init_kwargs=None,  # the meta model is built already; TRL would warn that they are ignored
        **changes,
    )
    keep_in_place = type(type(args).__name__, (type(args),), {"place_model_on_device": property(lambda self: False)})
    args.__class__ = keep_in_place
    return args


def meta_trainer(
    model: Any, processing_class: Any, train: Any, args: Any, source: str = "data", eval_dataset: Any = None
) -> tuple[Any, list[Problem]]:
    """(trl.SFTTrainer with the data prepared, TRL's warnings as problems); `args` from inspection_args. A recipe TRL
    refuses, or a row the chat template fails on (`source` names the data), is a RecipeError."""
    from jinja2 import TemplateError
    from trl import SFTTrainer

    collect = BufferingHandler(sys.maxsize)  # TRL's warnings, e.g. a prompt that is not a prefix of its completion
    collect.setLevel(logging.WARNING)
    logging.getLogger("trl").addHandler(collect)
    try:
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=train, eval_dataset=eval_dataset, processing_class=processing_class
        )
    except TemplateError as err:
        row = _failing_row(train, processing_class)
        raise error(
            source if row is None else f"{source}[row {row}]",
            f"the chat template fails on this row: {err}",
            "fix the row (many templates demand strictly alternating user/assistant turns), or the template",
        ) from None
    except (ValueError, RuntimeError, TypeError) as err:
        raise error("SFTTrainer", f"TRL refuses this recipe: {err}", "training would fail the same way") from None
    finally:
        logging.getLogger("trl").removeHandler(collect)
    messages = dict.fromkeys(record.getMessage() for record in collect.buffer)
    return trainer, [Problem("TRL", message, severity="warning") for message in messages]


def _failing_row(train: Any, processing_class: Any) -> int | None:
    """The first row the chat template fails to render (datasets.map does not say which row raised)."""
    from jinja2 import TemplateError
    from trl.data_utils import maybe_convert_to_chatml

    for index, row in enumerate(train):
        row = maybe_convert_to_chatml(dict(row))
        messages = row.get("messages") or (row["prompt"] + row["completion"] if "prompt" in row else None)
        if not isinstance(messages, list):
            continue
        try:
            processing_class.apply_chat_template(messages, tools=row.get("tools"), tokenize=False)
        except TemplateError:
            return index
    return None


def build_trainer(recipe: Any, output_dir: str) -> tuple[Any, Any, list[Problem]]:
    """(trl.SFTTrainer on a meta model with the data prepared, train data before preparation, TRL's warnings)."""
    from sft_recipes.data.loading import load_training_data
    from sft_recipes.model.kind import detect_model_kind, load_config_dict
    from sft_recipes.model.loading import load_processing_class

    model_args, training_args = recipe.model, recipe.training
    kind = detect_model_kind(load_config_dict(model_args, training_args.trust_remote_code), model_args.model_kind)
    processing_class = load_processing_class(model_args, training_args, kind)
    train, _ = load_training_data(recipe.script, recipe.mixture, training_args)
    model = build_meta_model(model_args, training_args, kind)
    args = inspection_args(training_args, output_dir)
    trainer, warnings = meta_trainer(model, processing_class, train, args, recipe.script.dataset_name or "datasets")
    return trainer, train, warnings


def prepare_whole(trainer: Any, raw_train: Any) -> Any:
    """`raw_train` through TRL's preparation without max_length or packing (untruncated lengths); its tokenization
    has the real one's fingerprint, so the datasets cache answers."""
    from trl import SFTTrainer

    # A copy, not dataclasses.replace: re-running TrainingArguments.__post_init__ resets the accelerator state.
    whole = copy.copy(trainer.args)
    whole.max_length, whole.packing, whole.shuffle_dataset = None, False, False
    return SFTTrainer._prepare_dataset(trainer, raw_train, trainer.processing_class, whole, False, None, "train")


def is_vision(trainer: Any) -> bool:
    """Whether TRL collates this data as images + text (processed at collation, not prepared up front)."""
    return bool(trainer._is_vision_dataset)


def is_vlm(trainer: Any) -> bool:
    return bool(trainer._is_vlm)


def first_rows(trainer: Any, n: int) -> tuple[list[dict[str, Any]], list[int]]:
    """The first `n` rows the training loop gets (the trainer's own sampler and collator), and each one's padding."""
    collator = trainer.data_collator
    received: list[dict[str, Any]] = []
    padding: list[int] = []

    def capture(examples: list[dict[str, Any]]) -> Any:
        received.extend(dict(e) for e in examples)
        return collator(examples)

    trainer.data_collator = capture
    try:
        for batch in trainer.get_train_dataloader():
            mask = batch.get("attention_mask")  # absent when padding-free: one flat row, no padding
            if mask is None:
                padding += [0] * (len(received) - len(padding))
            else:
                padding += [int(mask.shape[1] - m.sum()) for m in mask]
            if len(received) >= n:
                break
    finally:
        trainer.data_collator = collator
    return received[:n], padding[:n]


@dataclass
class Context:
    """The trainer and what the checks need to know about the data and its template."""

    recipe: Any
    trainer: Any
    raw_train: Any  # the training data before TRL's preparation
    first: dict[str, Any]  # its first row
    tokenizer: Any
    end_of_turn: str | None  # the token closing an assistant turn in the template TRL renders with

    @property
    def conversational(self) -> bool:
        from trl.data_utils import is_conversational

        return is_conversational(self.first) or "conversations" in self.first

    @property
    def stop(self) -> str | None:
        """The token each document should end on: end of turn (conversations) or EOS."""
        return self.end_of_turn if self.conversational and self.end_of_turn else self.tokenizer.eos_token


def build_context(recipe: Any, trainer: Any, raw_train: Any) -> Context:
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    return Context(recipe, trainer, raw_train, next(iter(raw_train)), tokenizer, end_of_turn_token(trainer, tokenizer))


def special_ids(tokenizer: Any) -> set[int]:
    return set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())


def image_token_id(trainer: Any) -> int | None:
    """The id the model swaps for image features, from the config (a processor's `image_token` may be a begin mark)."""
    config = trainer.model.config
    token_id = getattr(config, "image_token_id", None)
    return getattr(config, "image_token_index", None) if token_id is None else token_id


def end_of_turn_token(trainer: Any, tokenizer: Any) -> str | None:
    """The token closing an assistant turn (e.g. <|im_end|>): the first special or added token after its content."""
    template = trainer.chat_template or getattr(trainer.processing_class, "chat_template", None)
    if not template:
        return None
    answer = "Zebra quartz"
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}]
    try:
        text = tokenizer.apply_chat_template(chat, chat_template=template, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this probe has no end token to report
        return None
    tail = tokenizer(text[text.rfind(answer) + len(answer) :], add_special_tokens=False)["input_ids"]
    specials = special_ids(tokenizer)
    return next((tokenizer.convert_ids_to_tokens(i) for i in tail if i in specials), None)
