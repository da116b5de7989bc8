"""The real chat templates and special tokens of each model family (tests/fixtures/chat_templates) survive into the
tiny tokenizers built from them, and the template each recipe trains with renders like the model's own
(sft_recipes.template_fidelity), except where the difference is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.chat_families import (
    ARCHITECTURES,
    FIXTURES,
    TEXT_FAMILIES,
    TRL_COPIES,
    build_family_model,
    build_family_tokenizer,
    chat_family,
    conversation,
    recipe_chat_keys,
)

from sft_recipes.template_fidelity import SAMPLE_CONVERSATIONS, render_differences, trl_training_template

FAMILY_CHATS = [conversation("France", "Japan", "Kenya"), conversation("Peru", system=True)]


def trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / name).read_text(encoding="utf-8")


def recipe_training_template(name: str, tokenizer) -> str:
    """The template the family's recipe computes the loss with: its chat_template_path, else TRL's swap."""
    path = recipe_chat_keys(name).get("chat_template_path")
    return Path(path).read_text(encoding="utf-8") if path else trl_training_template(tokenizer)


@pytest.mark.parametrize("name", sorted(TRL_COPIES))
def test_fixture_is_byte_identical_to_trls_copy_of_the_shipped_template(name):
    assert (FIXTURES / chat_family(name).template_file).read_bytes() == trl_template(TRL_COPIES[name]).encode()


def test_every_fixture_template_has_its_family_and_provenance():
    spec = json.loads((FIXTURES / "special_tokens.json").read_text())
    provenance = (FIXTURES / "PROVENANCE.md").read_text()
    assert {entry["template"] for entry in spec.values()} == {p.name for p in FIXTURES.glob("*.jinja")}
    for name, entry in spec.items():
        assert f"| {name} | `{entry['repo']}` |" in provenance, name


@pytest.mark.parametrize("name", TEXT_FAMILIES)
def test_tiny_tokenizer_reloads_with_the_real_special_tokens_and_template(name, tmp_path):
    from transformers import AutoTokenizer

    family = chat_family(name)
    tokenizer = AutoTokenizer.from_pretrained(build_family_model(name, tmp_path / ARCHITECTURES[name]))
    assert tokenizer.chat_template == family.chat_template
    roles = {role: getattr(tokenizer, role) for role in ("bos_token", "eos_token", "pad_token", "unk_token")}
    assert roles == {role: getattr(family, role) for role in roles}
    for token in family.special_tokens:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token, token
    text = tokenizer.apply_chat_template(conversation("France", "Japan"), tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert family.end_of_turn in tokenizer.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("name", TEXT_FAMILIES)
def test_the_template_each_recipe_trains_with_renders_like_the_models_own(name):
    tokenizer = build_family_tokenizer(name)
    training = recipe_training_template(name, tokenizer)
    assert render_differences(tokenizer, training, [*SAMPLE_CONVERSATIONS, *FAMILY_CHATS]) == []


def test_trls_qwen3_training_template_is_reported_with_its_think_blocks_and_their_fix():
    tokenizer = build_family_tokenizer("qwen3")
    assert trl_training_template(tokenizer) == trl_template("qwen3_training.jinja")
    differences = render_differences(tokenizer, trl_template("qwen3_training.jinja"))
    # The multi-turn samples differ; single-turn ones render alike (the last turn keeps its think block).
    multi_turn = {i for i, chat in enumerate(SAMPLE_CONVERSATIONS) if sum(m["role"] == "user" for m in chat) > 1}
    assert {d.conversation for d in differences} == multi_turn
    for difference in differences:
        assert difference.training.startswith("<think>\n") and not difference.inference.startswith("<think>")
        assert "<think>" in difference.cause and "earlier assistant turn" in difference.cause
        assert "chat_template_path" in difference.fix and "accept" in difference.fix
    empty = differences[0]
    chat = SAMPLE_CONVERSATIONS[empty.conversation]
    assert empty.training.startswith("<think>\n\n</think>\n\n" + chat[1]["content"])
    assert empty.inference.startswith(chat[1]["content"] + "<|im_end|>")


def test_a_one_character_change_is_found_at_its_offset():
    tokenizer = build_family_tokenizer("llama-3.1")
    own = tokenizer.chat_template
    changed = own.replace(
        "'<|end_header_id|>\\n\\n'+ message['content']", "'<|end_header_id|>\\n'+ message['content']"
    )
    assert changed != own
    differences = render_differences(tokenizer, changed)
    assert len(differences) == len(SAMPLE_CONVERSATIONS)
    first = differences[0]
    text = tokenizer.apply_chat_template(list(SAMPLE_CONVERSATIONS[0]), tokenize=False)
    assert text[first.offset :].startswith(first.inference) and first.inference != first.training
    assert text[: first.offset].endswith("user<|end_header_id|>\n")
    assert "chat_template_path" in first.fix


def test_a_template_refusing_what_the_other_renders_is_a_difference():
    tokenizer = build_family_tokenizer("gemma-2")
    refusing = "{{ raise_exception('no') }}"
    differences = render_differences(tokenizer, refusing)
    # Gemma 2 itself refuses the system-turn samples: those are no difference.
    accepted = [i for i, chat in enumerate(SAMPLE_CONVERSATIONS) if chat[0]["role"] != "system"]
    assert [d.conversation for d in differences] == accepted
    assert all("only the training template refuses" in d.cause for d in differences)
