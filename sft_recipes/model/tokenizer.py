"""The tokenizer or processor a run trains with: right padding, a pad token, the recipe's maximum length."""

from __future__ import annotations

from typing import Any

from sft_recipes.model.kind import IMAGE_TEXT_TO_TEXT

RESERVED_PAD_TOKENS = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "<|padding|>")


def load_processing_class(model_args: Any, training_args: Any, kind: str) -> Any:
    """The tokenizer (causal LMs) or processor (VLMs), right-padded, with a pad token and the recipe's template."""
    from transformers import AutoProcessor, AutoTokenizer

    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    kwargs: dict[str, Any] = dict(
        revision=model_args.model_revision,
        cache_dir=model_args.cache_dir,
        trust_remote_code=training_args.trust_remote_code,
    )
    if kind == IMAGE_TEXT_TO_TEXT:
        processing_class = AutoProcessor.from_pretrained(name, **kwargs)
        tokenizer = processing_class.tokenizer
    else:
        processing_class = tokenizer = AutoTokenizer.from_pretrained(
            name, use_fast=not model_args.use_slow_tokenizer, **kwargs
        )
    tokenizer.padding_side = "right"
    max_length = model_args.model_max_length or training_args.max_length
    if max_length:
        tokenizer.model_max_length = max_length
    apply_pad_policy(tokenizer, model_args.pad_token_policy, training_args.pad_token)
    return processing_class


def apply_pad_policy(tokenizer: Any, policy: str, explicit_pad: str | None = None) -> str:
    """Give the tokenizer a pad token and say where it came from: existing, explicit, reserved, unk, eos or added.

    A pad equal to eos is safe here: TRL's collator masks padding by position, so the real EOS stays trained."""
    if explicit_pad is not None:
        return "explicit"  # SFTTrainer sets args.pad_token itself, after checking it is in the vocabulary
    if tokenizer.pad_token is not None and policy != "add":
        return "existing"
    reserved = next((t for t in RESERVED_PAD_TOKENS if t in tokenizer.get_vocab()), None)
    if policy == "auto" and reserved is not None:
        tokenizer.pad_token = reserved  # a token the vocabulary keeps for padding (Llama 3.1), trained by no one
        return "reserved"
    if policy in ("auto", "unk") and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
        return "unk"
    if policy in ("auto", "eos", "unk") and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        return "eos"
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return "added"
