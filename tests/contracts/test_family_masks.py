"""With each family's real template and special tokens and its recipe's chat keys, the real SFTTrainer trains
exactly the assistant replies and the end-of-turn token that closes each one: nothing of the system or user turns,
nothing of the role headers."""

from __future__ import annotations

import pytest
from helpers.chat_families import (
    TEXT_FAMILIES,
    build_family_model,
    chat_family,
    conversation,
    recipe_chat_keys,
    stop_ids,
)
from helpers.prepared import prepared_trainer, trained_spans

# What each family's training template trains around one reply's content: (before, after). The newlines are the
# templates' own: TRL's marked Qwen2.5 copy opens the mask right after '<|im_start|>assistant', and the Gemma,
# SmolLM2 and Phi-3.5 ones close it after the newline that follows the end-of-turn token.
TRAINED_AROUND = {
    "qwen2.5": ("\n", "<|im_end|>\n"),
    "qwen3": ("", "<|im_end|>"),
    "llama-3.1": ("", "<|eot_id|>"),
    "mistral-v0.3": (" ", "</s>"),
    "gemma-2": ("", "<end_of_turn>\n"),
    "gemma-3": ("", "<end_of_turn>\n"),
    "smollm2": ("", "<|im_end|>\n"),
    "phi-3.5": ("", "<|end|>\n"),
}
# Gemma 2's template refuses system turns.
ROWS = {
    name: [
        {"messages": conversation("France", "Japan", "Kenya")},
        {"messages": conversation("Peru", system=name != "gemma-2")},
    ]
    for name in TEXT_FAMILIES
}


def expected_spans(name: str, messages: list[dict[str, str]]) -> list[str]:
    before, after = TRAINED_AROUND[name]
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    spans = [before + reply + after for reply in replies]
    if name == "qwen3":  # the last turn keeps the (empty) think block the model writes first
        spans[-1] = "<think>\n\n</think>\n\n" + spans[-1]
    if name == "phi-3.5":  # the template closes a conversation that ends on a reply with the tokenizer's EOS
        spans[-1] += "<|endoftext|>"
    return spans


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-families")
    return {name: build_family_model(name, root / name) for name in TEXT_FAMILIES}


@pytest.fixture(scope="module")
def prepared(family_dirs, tmp_path_factory):
    """name -> (trainer, its prepared rows), built once per family with the recipe's chat keys."""
    built = {}
    for name in TEXT_FAMILIES:
        keys = {**recipe_chat_keys(name), "max_length": 256}
        if name == "gemma-3":  # its recipe is the VLM one, which trains on everything; the text template is here
            keys["assistant_only_loss"] = True
        trainer = prepared_trainer(tmp_path_factory.mktemp(name), family_dirs[name], ROWS[name], **keys)
        built[name] = trainer, list(trainer.train_dataset)
    return built


@pytest.mark.parametrize("name", TEXT_FAMILIES)
def test_trained_tokens_are_exactly_the_replies_and_their_end_of_turn(name, prepared):
    trainer, rows = prepared[name]
    assert len(rows) == len(ROWS[name]), "an example was dropped"
    for raw, row in zip(ROWS[name], rows, strict=True):
        spans = trained_spans(trainer.processing_class, row["input_ids"], row["labels"])
        assert spans == expected_spans(name, raw["messages"])


@pytest.mark.parametrize("name", TEXT_FAMILIES)
def test_no_system_or_user_text_and_no_role_header_is_trained(name, prepared):
    trainer, rows = prepared[name]
    tokenizer = trainer.processing_class
    headers = ("system", "user", "assistant", "model", "[INST]", "[/INST]", "<|im_start|>", "<|start_header_id|>")
    for raw, row in zip(ROWS[name], rows, strict=True):
        trained = "".join(trained_spans(tokenizer, row["input_ids"], row["labels"]))
        for message in raw["messages"]:
            if message["role"] != "assistant":
                assert message["content"] not in trained
        assert not any(header in trained for header in headers), trained


@pytest.mark.parametrize("name", TEXT_FAMILIES)
def test_the_end_of_turn_token_closing_each_reply_is_trained_and_generation_stops_at_it(name, prepared, family_dirs):
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    trainer, rows = prepared[name]
    tokenizer = trainer.processing_class
    end = tokenizer.convert_tokens_to_ids(chat_family(name).end_of_turn)
    for raw, row in zip(ROWS[name], rows, strict=True):
        replies = sum(m["role"] == "assistant" for m in raw["messages"])
        positions = [i for i, token in enumerate(row["input_ids"]) if token == end]
        trained = [i for i in positions if row["labels"][i] == end]
        assert len(trained) == replies
        # Where the same token also closes system and user turns (ChatML, Llama 3.1), those stay untrained.
        assert all(row["labels"][i] == -100 for i in positions if i not in trained)
    # The recipe pins eos_token to the end of turn where the checkpoint would not stop there by itself.
    assert end in stop_ids(family_dirs[name], tokenizer)
    assert is_chat_template_stop_token_trained(tokenizer, trainer.chat_template)
