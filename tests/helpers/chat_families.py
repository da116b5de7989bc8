"""Model families with their real chat templates and special tokens (tests/fixtures/chat_templates), built into
tiny byte-level tokenizers, tiny models and the recipe keys that train them."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "chat_templates"
TRL_TEMPLATES = "trl/chat_templates"

TEXT_FAMILIES = ("qwen2.5", "qwen3", "llama-3.1", "mistral-v0.3", "gemma-2", "gemma-3", "smollm2", "phi-3.5")
VLM_FAMILIES = ("llava-1.5", "smolvlm2", "gemma-3")
# The tiny causal LM each text family trains (sft_recipes.tiny.CAUSAL_FAMILIES).
ARCHITECTURES = {
    "qwen2.5": "qwen2",
    "qwen3": "qwen3",
    "llama-3.1": "llama",
    "mistral-v0.3": "mistral",
    "gemma-2": "gemma2",
    "gemma-3": "gemma3_text",
    "smollm2": "llama",
    "phi-3.5": "phi3",
}
# The recipe each family's chat settings come from; Phi-3.5 has none, so it gets what a recipe would pin.
RECIPES = {
    "qwen2.5": "qwen2.5-1.5b-instruct",
    "qwen3": "qwen3-8b",
    "llama-3.1": "llama-3.1-8b-instruct",
    "mistral-v0.3": "mistral-7b-instruct-v0.3",
    "gemma-2": "gemma-2-2b-it",
    "gemma-3": "gemma-3-4b-it",
    "smollm2": "smollm2-1.7b-instruct",
    "llava-1.5": "llava-1.5-7b-hf",
    "smolvlm2": "smolvlm2-500m-video-instruct",
}
CHAT_KEYS = ("eos_token", "chat_template_path", "assistant_only_loss")
# The file of trl/chat_templates/ each fixture is a copy of (the others come from the Hub, see PROVENANCE.md).
TRL_COPIES = {
    "qwen2.5": "qwen2_5.jinja",
    "qwen3": "qwen3.jinja",
    "llama-3.1": "llama3_1.jinja",
    "gemma-2": "gemma.jinja",
    "gemma-3": "gemma3.jinja",
    "phi-3.5": "phi3_5.jinja",
    "smolvlm2": "smolvlm.jinja",
}

ANSWERS = {
    "France": "The capital of France is Paris.",
    "Japan": "Tokyo is the capital of Japan.",
    "Kenya": "Nairobi.",
    "Peru": "It is Lima, on the coast.",
}
SYSTEM = "You are terse."


@dataclass(frozen=True)
class ChatFamily:
    """One model family's real chat template and special tokens."""

    name: str
    repo: str
    template_file: str
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    unk_token: str | None
    end_of_turn: str | None
    extra_special_tokens: tuple[str, ...]
    named_tokens: dict[str, str] = field(default_factory=dict)
    generation_eos: tuple[str, ...] = ()  # the checkpoint's generation_config eos tokens, where they were checked

    @property
    def chat_template(self) -> str:
        return (FIXTURES / self.template_file).read_text(encoding="utf-8")

    @property
    def special_tokens(self) -> list[str]:
        """Every special token, each once, in a fixed order."""
        named = [self.bos_token, self.eos_token, self.pad_token, self.unk_token, self.end_of_turn]
        tokens = [t for t in named if t] + list(self.extra_special_tokens) + list(self.named_tokens.values())
        return list(dict.fromkeys(tokens))


@functools.cache
def chat_family(name: str) -> ChatFamily:
    spec = json.loads((FIXTURES / "special_tokens.json").read_text(encoding="utf-8"))[name]
    return ChatFamily(
        name=name,
        repo=spec["repo"],
        template_file=spec["template"],
        bos_token=spec["bos_token"],
        eos_token=spec["eos_token"],
        pad_token=spec["pad_token"],
        unk_token=spec["unk_token"],
        end_of_turn=spec["end_of_turn"],
        extra_special_tokens=tuple(spec["extra_special_tokens"]),
        named_tokens=dict(spec["named_tokens"]),
        generation_eos=tuple(spec.get("generation_eos", ())),
    )


def conversation(*countries: str, system: bool = False) -> list[dict[str, str]]:
    """A chat asking for the capital of each country in turn, answered from ANSWERS."""
    messages = [{"role": "system", "content": SYSTEM}] if system else []
    for country in countries:
        messages.append({"role": "user", "content": f"What is the capital of {country}?"})
        messages.append({"role": "assistant", "content": ANSWERS[country]})
    return messages


def recipe_chat_keys(name: str) -> dict[str, Any]:
    """The keys of the family's LoRA recipe that decide what is trained and where generation stops."""
    if name not in RECIPES:
        # What a Phi-3.5 recipe would set: loss on replies. Not eos_token: its template renders {{ eos_token }}
        # after the last turn, and its generation_config already stops at <|end|>.
        return {"assistant_only_loss": True}
    recipe_dir = ROOT / "recipes" / RECIPES[name]
    path = recipe_dir / "lora.yaml"
    recipe = yaml.safe_load(path.read_text())
    keys = {key: recipe[key] for key in CHAT_KEYS if key in recipe}
    if "chat_template_path" in keys:
        keys["chat_template_path"] = str(ROOT / keys["chat_template_path"])
    return keys


def _corpus(family: ChatFamily) -> list[str]:
    """Text the tiny vocabulary is trained on: the family's own renders (headers, default system prompts) and the
    answers, so a conversation is a few dozen tokens."""
    from jinja2.exceptions import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    lines = list(ANSWERS.values()) + [f"What is the capital of {country}?" for country in ANSWERS]
    chats = [conversation(*ANSWERS, system=True), conversation(*ANSWERS)]
    for chat in chats:
        for generation_prompt in (False, True):
            try:
                texts, _ = render_jinja_template(
                    [chat],
                    chat_template=family.chat_template,
                    add_generation_prompt=generation_prompt,
                    **family.named_tokens,
                    bos_token=family.bos_token or "",
                    eos_token=family.eos_token or "",
                )
            except TemplateError:  # Gemma 2 rejects system turns
                continue
            lines += texts
    return lines * 4


@functools.cache
def _tokenizer_json(name: str, vocab_size: int) -> str:
    from sft_recipes.tiny import train_byte_level_bpe

    family = chat_family(name)
    # sft_recipes.tiny's normalizer and pre-tokenizer: AutoTokenizer reloads every tiny family with them intact.
    return train_byte_level_bpe(_corpus(family), family.special_tokens, vocab_size)


def build_family_tokenizer(name: str, out_dir: str | Path | None = None, vocab_size: int = 640) -> Any:
    """A tiny byte-level BPE tokenizer with the family's real special tokens (same roles) and chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    family = chat_family(name)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(name, vocab_size)),
        bos_token=family.bos_token,
        eos_token=family.eos_token,
        pad_token=family.pad_token,
        unk_token=family.unk_token,
        extra_special_tokens=family.named_tokens or list(family.extra_special_tokens),
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    if family.named_tokens:
        tokenizer.add_special_tokens(
            {"extra_special_tokens": list(family.extra_special_tokens)}, replace_extra_special_tokens=False
        )
    tokenizer.chat_template = family.chat_template
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_family_model(name: str, out_dir: str | Path, hidden_size: int = 32) -> Path:
    """A tiny causal LM of the family's architecture, saved with the family's tokenizer."""
    from transformers import GenerationConfig

    from sft_recipes.tiny import build_causal_lm

    tokenizer = build_family_tokenizer(name)
    out = build_causal_lm(ARCHITECTURES[name], out_dir, tokenizer=tokenizer, hidden_size=hidden_size)
    family = chat_family(name)
    if family.generation_eos:
        generation = GenerationConfig.from_pretrained(out)
        generation.eos_token_id = tokenizer.convert_tokens_to_ids(list(family.generation_eos))
        generation.save_pretrained(out)
    return out


def stop_ids(model_dir: str | Path, tokenizer: Any) -> set[int]:
    """The ids generation stops at with this checkpoint: its generation_config EOS ids and the tokenizer's EOS."""
    from transformers import GenerationConfig

    eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    ids = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    return ids | {tokenizer.eos_token_id}


# The tiny VLM each vision family builds on (sft_recipes.tiny.VLM_FAMILIES): SmolVLM2's own processor needs
# torchvision for its video processor, so its template and tokens run on the Idefics3 processor it derives from.
VLM_ARCHITECTURES = {"llava-1.5": "llava", "smolvlm2": "idefics3", "gemma-3": "gemma3"}


def build_family_vlm(name: str, out_dir: str | Path) -> Path:
    """A tiny VLM whose processor carries the family's real special tokens and chat template."""
    from sft_recipes.tiny import build_vlm

    family = chat_family(name)
    return build_vlm(
        VLM_ARCHITECTURES[name], out_dir, tokenizer=build_family_tokenizer(name), chat_template=family.chat_template
    )
