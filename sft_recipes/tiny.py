"""Offline builders for tiny tokenizers, causal LMs, VLMs and the demo data set (tests, demo, benchmarks; no hub)."""

from __future__ import annotations

import functools
import json
import random
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sft_recipes.errors import error

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CAUSAL_FAMILIES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3")
VLM_FAMILIES: tuple[str, ...] = ("llava", "idefics3", "gemma3")

# Qwen-style ChatML vocabulary: <|im_end|> ends a chat turn, <|endoftext|> ends a document (and pads).
SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")

# A closed, memorisable mapping: a tiny model learns it in a couple of CPU minutes and the before/after
# generations differ at a glance (random bytes -> "The capital of Japan is Tokyo.").
CAPITALS: dict[str, str] = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Japan": "Tokyo",
    "China": "Beijing",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Canada": "Ottawa",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Australia": "Canberra",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Poland": "Warsaw",
    "Greece": "Athens",
    "Turkey": "Ankara",
    "Ireland": "Dublin",
    "Austria": "Vienna",
    "Cuba": "Havana",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
}
QUESTION_TEMPLATES: tuple[str, ...] = (
    "What is the capital of {country}?",
    "Which city is the capital of {country}?",
    "Tell me the capital of {country}.",
    "capital of {country}?",
    "Name the capital city of {country}.",
)
ANSWER_TEMPLATE = "The capital of {country} is {city}."
DEMO_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Which city is the capital of Japan?",
    "Tell me the capital of Kenya.",
    "capital of Norway?",
    "Name the capital city of Peru.",
)

_ENGLISH = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
You are a helpful assistant. Answer the question briefly and politely. Hello! How can I help you today?
Please summarize the following text in one sentence. Translate this sentence into French. Write a short poem.
What is the weather like today? It is sunny and warm, with a light breeze from the west.
The model reads the prompt, thinks about the answer, and writes a response that ends with a stop token.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14 -1 1e-5. Dates: 2026-11-05, Monday, January, December.
Code: def add(a, b):\n    return a + b\nprint(add(2, 3))  # 5\nfor i in range(10): x = [i * 2 for i in x]
JSON: {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}} <tool_call> </tool_call>
Describe the image. The picture shows a red square on a white background, next to a small blue circle.
Science, history, music, art, sport, food, water, energy, people, time, world, country, city, language.
system user assistant tool: the system prompt sets the rules, the user asks, the assistant answers, tools help.
Once upon a time there was a little house by the river, where an old woman lived with her cat and her garden.
Every morning she walked to the market to buy bread, milk, eggs, apples and fresh vegetables for the week.
Learning a new skill takes practice: read a little every day, ask questions, make mistakes and try again.
The train leaves the station at seven o'clock and arrives in the city before noon, if there is no delay.
Computers store information as numbers; a program is a list of instructions that the machine follows.
Good morning, thank you, you're welcome, excuse me, I'm sorry, see you later, have a nice day, goodbye.
Why does the sky look blue? Because air scatters short wavelengths of sunlight more than long ones.
Sort the list, count the words, find the largest number, and explain each step of your reasoning.
"""


def _corpus() -> list[str]:
    lines = _ENGLISH.splitlines()
    for country, city in CAPITALS.items():
        lines += [q.format(country=country) for q in QUESTION_TEMPLATES]
        lines.append(ANSWER_TEMPLATE.format(country=country, city=city))
    return lines


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    # Training takes ~1 s; every tiny model shares it, so train once per process.
    return train_byte_level_bpe(_corpus() * 4, list(SPECIAL_TOKENS), vocab_size)


def train_byte_level_bpe(corpus: list[str], special_tokens: list[str], vocab_size: int) -> str:
    """A byte-level BPE tokenizer (tokenizer.json text) trained on `corpus`, with `special_tokens` first."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    # Qwen2's normalizer and pre-tokenizer: AutoTokenizer rebuilds a qwen2 checkpoint's tokenizer with
    # Qwen2Tokenizer, which hard-codes them, so any other choice would tokenize differently after a reload.
    qwen2_split = (
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
        r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
    )
    split = pre_tokenizers.Split(Regex(qwen2_split), behavior="isolated", invert=False)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer.to_str()


def chatml_template(image_placeholder: str = "<image>") -> str:
    """The shipped ChatML template; `image_placeholder` is what an image part renders as (the processor's token)."""
    text = resources.files("sft_recipes").joinpath("chat_templates/chatml.jinja").read_text(encoding="utf-8")
    if image_placeholder != "<image>":
        text = text.replace("default('<image>')", f"default('{image_placeholder}')")
    return text


def build_tokenizer(
    out_dir: str | Path | None = None,
    vocab_size: int = 1024,
    *,
    eos_token: str = "<|im_end|>",
    pad_token: str | None = "<|endoftext|>",
    bos_token: str | None = None,
    chat_template: bool | str = True,
    extra_special_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen-like ChatML special tokens, saved to `out_dir` when given.
    `chat_template`: True for the shipped ChatML, False for none (a base model), or a template string.
    `extra_special_tokens` maps attribute names to new tokens (e.g. {"image_token": "<image>"})."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(vocab_size)),
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token="<unk>",
        extra_special_tokens=extra_special_tokens,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    if chat_template:
        tokenizer.chat_template = chatml_template() if chat_template is True else chat_template
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def _text_config(family: str, tokenizer: Any, hidden_size: int, num_layers: int, max_position_embeddings: int) -> Any:
    from transformers import AutoConfig

    heads = 4
    kwargs: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "head_dim": hidden_size // heads,
        "max_position_embeddings": max_position_embeddings,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if family == "gemma3_text":
        kwargs["layer_types"] = (["sliding_attention", "full_attention"] * num_layers)[:num_layers]
    return AutoConfig.for_model(family, **kwargs)


def _save_random(model_class: Any, config: Any, seed: int, tokenizer: Any, processor: Any, out: str | Path) -> Path:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class.from_config(config)
    # A pad id inside the eos set makes generate() stop on padding; keep them distinct (eos = end of turn only).
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return Path(out)


def build_causal_lm(
    family: str,
    out_dir: str | Path,
    tokenizer: Any = None,
    hidden_size: int = 16,
    num_layers: int = 2,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> Path:
    """Build a randomly initialised causal LM of `family` (see CAUSAL_FAMILIES), save it with its tokenizer."""
    from transformers import AutoModelForCausalLM

    if family not in CAUSAL_FAMILIES:
        raise error("family", f"unknown causal LM family {family!r}", f"use one of {', '.join(CAUSAL_FAMILIES)}")
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    config = _text_config(family, tokenizer, hidden_size, num_layers, max_position_embeddings)
    return _save_random(AutoModelForCausalLM, config, seed, tokenizer, tokenizer, out_dir)


def build_vlm(
    family: str, out_dir: str | Path, seed: int = 0, tokenizer: Any = None, chat_template: str | None = None
) -> Path:
    """Build a tiny VLM of `family` (see VLM_FAMILIES) with its processor; reloads with AutoModelForImageTextToText.
    `tokenizer` (with the image tokens its processor needs) and `chat_template` replace the ChatML defaults."""
    from transformers import AutoModelForImageTextToText

    if family not in VLM_FAMILIES:
        raise error("family", f"unknown VLM family {family!r}", f"use one of {', '.join(VLM_FAMILIES)}")
    processor, config = _VLM_PARTS[family](tokenizer, chat_template)
    return _save_random(AutoModelForImageTextToText, config, seed, processor.tokenizer, processor, out_dir)


_TINY_VISION: dict[str, Any] = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
)


def _llava(tokenizer: Any, chat_template: str | None) -> tuple[Any, Any]:
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlavaConfig, LlavaProcessor

    tokenizer = tokenizer or build_tokenizer(extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    # "default" drops the CLS feature: 32/8 squared = 16 image tokens per image.
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template or chatml_template(),
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**_TINY_VISION, projection_dim=16),
        text_config=_text_config("llama", tokenizer, 16, 2, 512),
        image_token_index=tokenizer.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    return processor, config


def _idefics3(tokenizer: Any, chat_template: str | None) -> tuple[Any, Any]:
    from transformers import Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor, Idefics3VisionConfig

    # Idefics3Processor hard-codes these strings; without them in the vocab it would add them after the model is built.
    extra = {
        "image_token": "<image>",
        "fake_image_token": "<fake_token_around_image>",
        "global_image_token": "<global-img>",
        "end_of_utterance_token": "<end_of_utterance>",
    }
    tokenizer = tokenizer or build_tokenizer(extra_special_tokens=extra)
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    scale_factor = 2
    # One 32px image = (32/8)^2 patches, pixel-shuffled by scale_factor^2 into 4 image tokens.
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(32 // 8) ** 2 // scale_factor**2,
        chat_template=chat_template or chatml_template(),
    )
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(**_TINY_VISION),
        text_config=_text_config("llama", tokenizer, 16, 2, 512),
        image_token_id=tokenizer.image_token_id,
        scale_factor=scale_factor,
    )
    return processor, config


def _gemma3(tokenizer: Any, chat_template: str | None) -> tuple[Any, Any]:
    from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor, SiglipVisionConfig

    extra = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tokenizer = tokenizer or build_tokenizer(extra_special_tokens=extra)
    # 4x4 patches average-pooled to 2x2 = 4 soft tokens per image.
    mm_tokens_per_image = 4
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        image_seq_length=mm_tokens_per_image,
        chat_template=chat_template or chatml_template(image_placeholder=extra["boi_token"]),
    )
    config = Gemma3Config(
        text_config=_text_config("gemma3_text", tokenizer, 16, 2, 512),
        vision_config=SiglipVisionConfig(**_TINY_VISION),
        mm_tokens_per_image=mm_tokens_per_image,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    return processor, config


_VLM_PARTS = {"llava": _llava, "idefics3": _idefics3, "gemma3": _gemma3}


def demo_rows(n: int = 480, seed: int = 0) -> list[dict]:
    """`n` conversational rows of the capitals task, every country and phrasing covered before any repeats."""
    rng = random.Random(seed)
    pairs = [(country, question) for country in CAPITALS for question in QUESTION_TEMPLATES]
    rows: list[dict] = []
    while len(rows) < n:
        rng.shuffle(pairs)
        for country, question in pairs[: n - len(rows)]:
            user = {"role": "user", "content": question.format(country=country)}
            answer = ANSWER_TEMPLATE.format(country=country, city=CAPITALS[country])
            rows.append({"messages": [user, {"role": "assistant", "content": answer}]})
    return rows


def write_demo_dataset(path: str | Path, n: int = 480, seed: int = 0) -> Path:
    """Write the demo task as JSONL (`messages` rows) to `path` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in demo_rows(n, seed)), encoding="utf-8")
    return path
