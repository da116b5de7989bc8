"""The offline tiny builders produce checkpoints that load, generate, mask the right tokens and train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft_recipes.errors import RecipeError
from sft_recipes.tiny import (
    ANSWER_TEMPLATE,
    CAPITALS,
    DEMO_PROMPTS,
    build_causal_lm,
    build_tokenizer,
    build_vlm,
    demo_rows,
)

TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Japan?"},
    {"role": "assistant", "content": "Tokyo."},
]


def expected_chatml(tokenizer, messages) -> tuple[list[int], list[int]]:
    """Token ids and mask built segment by segment: only assistant content and its <|im_end|> are trained."""
    ids: list[int] = []
    mask: list[int] = []
    for message in messages:
        header = tokenizer.encode(f"<|im_start|>{message['role']}\n", add_special_tokens=False)
        body = tokenizer.encode(f"{message['content']}<|im_end|>", add_special_tokens=False)
        newline = tokenizer.encode("\n", add_special_tokens=False)
        trained = int(message["role"] == "assistant")
        ids += header + body + newline
        mask += [0] * len(header) + [trained] * len(body) + [0] * len(newline)
    return ids, mask


def test_tokenizer_is_chatml_with_distinct_eos_and_pad(tiny_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == ("<|im_end|>", "<|endoftext|>", "<unk>")
    assert tokenizer.bos_token is None
    assert len(tokenizer) == 1024
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") != tokenizer.unk_token_id
    text = "What is the capital of Peru?  Lima, 123 é\n"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_tokenizer_variants_drop_pad_token_and_chat_template():
    assert build_tokenizer(pad_token=None).pad_token is None
    assert build_tokenizer(chat_template=False).chat_template is None
    base = build_tokenizer(eos_token="<|endoftext|>", chat_template=False)
    assert base.eos_token == "<|endoftext|>" and base.convert_tokens_to_ids("<|im_end|>") != base.unk_token_id


def test_chat_template_masks_exactly_assistant_content_and_end_of_turn(causal_lm_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(causal_lm_dir)
    out = tokenizer.apply_chat_template(TWO_TURNS, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = expected_chatml(tokenizer, TWO_TURNS)
    assert out["input_ids"] == ids
    assert out["assistant_masks"] == mask
    trained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == "The capital of France is Paris.<|im_end|>Tokyo.<|im_end|>"


def test_trl_finds_the_end_of_turn_token_trained(tiny_tokenizer_dir: Path):
    from transformers import AutoTokenizer
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    assert is_chat_template_stop_token_trained(AutoTokenizer.from_pretrained(tiny_tokenizer_dir))


def test_generation_prompt_is_the_prefix_the_model_continues(tiny_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    prompt = tokenizer.apply_chat_template(TWO_TURNS[:2], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(TWO_TURNS[:3], tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert full == prompt + "The capital of France is Paris.<|im_end|>\n"


def test_tool_calls_are_trained_and_tool_results_are_not(tiny_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tool = {"type": "function", "function": {"name": "get_capital", "parameters": {"type": "object"}}}
    call = {"type": "function", "function": {"name": "get_capital", "arguments": {"country": "Peru"}}}
    messages = [
        {"role": "user", "content": "Capital of Peru?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "Lima"},
        {"role": "assistant", "content": "Lima."},
    ]
    out = tokenizer.apply_chat_template(
        messages, tools=[tool], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    trained = tokenizer.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m])
    assert trained == (
        '<tool_call>\n{"name": "get_capital", "arguments": {"country": "Peru"}}\n</tool_call><|im_end|>Lima.<|im_end|>'
    )
    assert '"name": "get_capital", "parameters"' in tokenizer.decode(out["input_ids"])


def test_causal_lm_checkpoint_reloads_and_generates(causal_lm_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(causal_lm_dir)
    tokenizer = AutoTokenizer.from_pretrained(causal_lm_dir)
    assert model.config.model_type == causal_lm_dir.name
    assert model.config.vocab_size == len(tokenizer)
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert model.config.use_cache
    assert (causal_lm_dir / "model.safetensors").stat().st_size < 1_000_000
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 5)


def test_build_is_seeded_and_leaves_global_rng_alone(tmp_path: Path):
    import torch
    from safetensors.torch import load_file

    tokenizer = build_tokenizer()
    state = torch.get_rng_state()
    first = load_file(build_causal_lm("llama", tmp_path / "a", tokenizer=tokenizer, seed=1) / "model.safetensors")
    again = load_file(build_causal_lm("llama", tmp_path / "b", tokenizer=tokenizer, seed=1) / "model.safetensors")
    other = load_file(build_causal_lm("llama", tmp_path / "c", tokenizer=tokenizer, seed=2) / "model.safetensors")
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_unknown_family_is_a_recipe_error(tmp_path: Path):
    with pytest.raises(RecipeError, match="unknown causal LM family"):
        build_causal_lm("gpt9", tmp_path)
    with pytest.raises(RecipeError, match="unknown VLM family"):
        build_vlm("qwen2_vl", tmp_path)


@pytest.mark.parametrize(("family", "image_tokens"), [("llava", 16), ("idefics3", 4), ("gemma3", 4)])
def test_vlm_checkpoint_runs_a_forward_with_an_image(vlm_dirs: dict[str, Path], family: str, image_tokens: int):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

    model = AutoModelForImageTextToText.from_pretrained(vlm_dirs[family])
    processor = AutoProcessor.from_pretrained(vlm_dirs[family])
    assert isinstance(processor, ProcessorMixin)
    assert type(processor.image_processor).__name__.endswith("Pil")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    inputs = processor(images=[Image.new("RGB", (40, 30), (255, 0, 0))], text=text, return_tensors="pt")
    image_token_id = getattr(model.config, "image_token_id", None) or model.config.image_token_index
    assert (inputs["input_ids"] == image_token_id).sum().item() == image_tokens
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape[:2] == inputs["input_ids"].shape
    assert torch.isfinite(out.loss)


def test_vlm_chat_template_masks_assistant_parts_and_end_of_turn(vlm_dir: Path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(vlm_dir)
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
        {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Goodbye."}]},
    ]
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    trained = processor.tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == "Hello.<|im_end|>Goodbye.<|im_end|>"


def test_demo_dataset_is_valid_jsonl_covering_every_country(demo_data_path: Path):
    rows = [json.loads(line) for line in demo_data_path.read_text().splitlines()]
    assert len(rows) == 64
    for row in rows:
        user, assistant = row["messages"]
        country = next(c for c in CAPITALS if c in user["content"])
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert assistant["content"] == ANSWER_TEMPLATE.format(country=country, city=CAPITALS[country])
    questions = {row["messages"][0]["content"] for row in demo_rows(len(CAPITALS) * 5)}
    assert {c for c in CAPITALS if any(c in q for q in questions)} == set(CAPITALS)
    assert set(DEMO_PROMPTS) <= questions
    assert demo_rows(10, seed=3) == demo_rows(10, seed=3) != demo_rows(10, seed=4)
