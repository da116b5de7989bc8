"""After a short fine-tune with each family's real template, special tokens and recipe chat keys, the saved model
ends its reply with the family's end-of-turn token and stops there. The untrained model does not, so the check can
fail."""

from __future__ import annotations

import pytest
from helpers.chat_families import ANSWERS, build_family_model, chat_family, conversation, recipe_chat_keys
from helpers.prepared import write_rows
from helpers.runs import train

MAX_NEW_TOKENS = 40
FAMILIES = ("qwen3", "llama-3.1", "mistral-v0.3", "gemma-2", "phi-3.5")
# Gemma 2's tiny model (embeddings scaled by sqrt(hidden), soft-capped logits) learns slower at 1e-2.
LEARNING_RATES = {"gemma-2": 3.0e-2}


def generations(model_dir, name):
    """(generated ids, the end-of-turn id) for each training question, greedy, with the saved generation config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    outputs = []
    for country in ANSWERS:
        inputs = tokenizer.apply_chat_template(
            conversation(country)[:1], add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        generated = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        outputs.append(generated[0, inputs["input_ids"].shape[1] :].tolist())
    return outputs, tokenizer.convert_tokens_to_ids(chat_family(name).end_of_turn)


def stops(ids, end):
    return len(ids) < MAX_NEW_TOKENS and ids[-1] == end and end not in ids[:-1]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_generation_ends_with_the_end_of_turn_token_after_a_short_fine_tune(name, tmp_path):
    base = build_family_model(name, tmp_path / "base")
    before, end = generations(base, name)
    assert not all(stops(ids, end) for ids in before), "the untrained model already stops: the test proves nothing"
    rows = [{"messages": conversation(country)} for country in ANSWERS] * 4
    out = train(
        tmp_path,
        model_name_or_path=str(base),
        dataset_name=str(write_rows(tmp_path / "rows.jsonl", rows)),
        **recipe_chat_keys(name),
        max_length=128,
        per_device_train_batch_size=8,
        max_steps=30,
        learning_rate=LEARNING_RATES.get(name, 1.0e-2),
        lr_scheduler_type="constant",
    )
    after, end = generations(out, name)
    assert all(stops(ids, end) for ids in after), after
