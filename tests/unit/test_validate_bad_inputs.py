"""`sft-recipes validate` on bad inputs: exit 2, the problem named by key/file:line with its fix, nothing written."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers.validate_runs import BAD, fill, no_flash_attn, run_validate, tree, write_recipe


@dataclass
class Case:
    expect: tuple[str, ...]  # substrings of stderr; "@key" stands for the recipe's "file:LINE (key)"
    keys: dict[str, Any]
    argv: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    setup: Callable[[Path, pytest.MonkeyPatch, dict[str, str]], None] | None = None
    raw: str | None = None  # the recipe file's text, instead of BASE + keys


def case(name: str, *expect: str, argv=(), drop=(), setup=None, raw=None, **keys: Any) -> Any:
    return pytest.param(Case(expect, keys, tuple(argv), tuple(drop), setup, raw), id=name)


def line_of(recipe: Path, key: str) -> str:
    for number, line in enumerate(recipe.read_text().splitlines(), start=1):
        if line.startswith(f"{key}:"):
            return f"{recipe}:{number} ({key})"
    raise AssertionError(f"{key} not in {recipe}")


@pytest.fixture
def places(tmp_path, llama_dir, demo_data_path, vlm_dirs) -> dict[str, str]:
    return {
        "llama": str(llama_dir),
        "llava": str(vlm_dirs["llava"]),
        "data": str(demo_data_path),
        "bad": str(BAD),
        "tmp": str(tmp_path),
    }


# -- setups: files a case needs besides the recipe ------------------------------------------------------------------


def pickle_only_model(tmp: Path, _: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    import torch

    src, dst = Path(places["llama"]), tmp / "pickled"
    dst.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(src / name, dst / name)
    torch.save({"w": torch.zeros(2)}, dst / "pytorch_model.bin")


def model_without_tokenizer(tmp: Path, _: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    src, dst = Path(places["llama"]), tmp / "no-tokenizer"
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, dst / name)


def tokenizer_without_template(tmp: Path, _: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    from sft_recipes.tiny import build_tokenizer

    build_tokenizer(tmp / "no-template", chat_template=False)


def base_model(tmp: Path, _: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    """A base model: tokenizer and generation config end text with <|endoftext|> (also its pad), the chat template
    ends turns with <|im_end|>."""
    from sft_recipes.tiny import build_causal_lm, build_tokenizer

    tokenizer = build_tokenizer(eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    build_causal_lm("llama", tmp / "base", tokenizer=tokenizer)


def finished_run(tmp: Path, _: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "run_summary.json").write_text(json.dumps({"steps": 4}))


def live_lock(tmp: Path, monkeypatch: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    """This process holds output_dir's lock, as a live run would, until the test ends."""
    import sys

    from sft_recipes.run_dir import output_lock

    held = output_lock(str(tmp / "out"))
    held.__enter__()
    # monkeypatch holds the only reference; its undo at teardown drops it, which releases the lock
    monkeypatch.setattr(sys.modules[__name__], "HELD_LOCK", held, raising=False)


def full_disk(tmp: Path, monkeypatch: pytest.MonkeyPatch, places: dict[str, str]) -> None:
    from sft_recipes.validate import output_checks

    monkeypatch.setattr(output_checks, "free_space", lambda path: 1024)


VLM = {"model_name_or_path": "{llava}", "max_length": None}
QLORA = {"load_in_4bit": True, "use_peft": True, "bf16": True}

# fmt: off
CASES = [
    # 1-2: unknown keys, wrong types (every one reported, with did-you-mean)
    case("misspelled-key", "@learning_rte", "did you mean `learning_rate`", learning_rte=1.0e-5),
    case("renamed-key", "@max_seq_length", "use `max_length`", max_seq_length=512),
    case("misspelled-flag", "--learnig_rate", "did you mean `learning_rate`", argv=["--learnig_rate", "1e-4"]),
    case("string-for-float", "@num_train_epochs", "expected float", num_train_epochs="three"),
    case("list-for-int", "@per_device_train_batch_size", "expected int", per_device_train_batch_size=[4]),
    case("float-for-int", "@lora_r", "expected int", lora_r=8.5),
    case("value-outside-choices", "@dtype", "'bf16' is not one of", dtype="bf16"),
    case("choice-of-packing-strategy", "@packing_strategy", "not one of", packing_strategy="first_fit"),
    case("invalid-yaml", "recipe.yaml:2", "invalid YAML", raw="model_name_or_path: x\n\tmax_length: 64\n"),
    case("recipe-not-a-mapping", "a recipe must be a YAML mapping", raw="- model_name_or_path: x\n"),
    case("bad-enum-value", "save_strategy", save_strategy="sometimes"),
    # 3-7: quantization and distribution
    case("4bit-and-8bit", "@load_in_8bit", "8 bit and 4 bit", load_in_8bit=True, **QLORA),
    case("quantization-without-lora", "@load_in_4bit", "use_peft: true", load_in_4bit=True),
    case("fsdp-qlora-wrong-storage", "@bnb_4bit_quant_storage", "set bnb_4bit_quant_storage: bfloat16",
         argv=["--accelerate_config", "fsdp2_qlora"], bnb_4bit_quant_storage="float16", **QLORA),
    # Unset, the loader stores 4-bit weights in the compute dtype under ZeRO-3; an explicit uint8 contradicts it.
    case("zero3-qlora-uint8-storage", "@bnb_4bit_quant_storage", "uint8", argv=["--accelerate_config", "zero3"],
         bnb_4bit_quant_storage="uint8", **QLORA),
    case("device-map-with-zero3", "@model_init_kwargs", "device_map='auto' with zero3",
         argv=["--accelerate_config", "zero3"], model_init_kwargs={"device_map": "auto"}),
    case("device-map-auto-with-ddp", "@model_init_kwargs", "cannot train under ddp",
         argv=["--accelerate_config", "multi_gpu"], model_init_kwargs={"device_map": "auto"}),
    # 8: hardware and attention
    case("bf16-without-a-bf16-device", "@bf16", "fp16: true", use_cpu=False, bf16=True),
    case("flash-attn-missing-and-strict", "@attn_implementation", "flash_attn", setup=no_flash_attn,
         attn_implementation="flash_attention_2", attn_strict=True),
    # 10-11: context and LoRA targets
    case("max-length-beyond-context-without-rope", "@max_length", "exceeds the model's context 256",
         max_length=1000, rope_scaling_policy="off"),
    case("lora-target-missing", "@lora_target_modules", "qkv_proj", "'q_proj'", use_peft=True,
         lora_target_modules=["q_proj", "qkv_proj"]),
    case("lora-regex-matches-nothing", "@lora_target_modules", "matches no linear layer", use_peft=True,
         lora_target_modules=r".*\.attention\.wqkv"),
    # 12: VLMs
    case("vlm-packing", "@packing", "vision-language", packing=True, **VLM),
    case("vlm-padding-free", "@padding_free", "vision-language", padding_free=True, **VLM),
    # TRL 1.16 + transformers >= 5.18 mask VLM assistant turns; without generation markers it still cannot.
    case("vlm-assistant-only-loss-without-markers", "@assistant_only_loss", "{% generation %}",
         chat_template_path="{bad}/no_generation.jinja", assistant_only_loss=True, **VLM),
    case("vlm-max-length", "@max_length", "image tokens", "max_length: null", **{**VLM, "max_length": 64}),
    # 13-16: tokenizer, template, eos/pad
    case("conversational-data-without-template", "chat_template_path", "no chat template",
         setup=tokenizer_without_template, tokenizer_name_or_path="{tmp}/no-template"),
    case("chat-template-file-missing", "@chat_template_path", "does not exist",
         chat_template_path="{tmp}/missing.jinja"),
    case("assistant-loss-without-generation-markers", "@assistant_only_loss", "{% generation %}",
         chat_template_path="{bad}/no_generation.jinja", assistant_only_loss=True),
    case("eos-token-not-in-vocab", "@eos_token", "'<|eot_id|>' is not in the tokenizer's vocabulary",
         eos_token="<|eot_id|>"),
    case("pad-token-not-in-vocab", "@pad_token", "not in the tokenizer's vocabulary", pad_token="<pad>"),
    case("pad-equals-eos-and-generation-never-stops", "@eos_token", "generation stops at <|endoftext|>",
         "run on past its answer (pad == eos '<|endoftext|>')", setup=base_model, model_name_or_path="{tmp}/base",
         eos_token="<|endoftext|>", pad_token="<|endoftext|>"),
    # 17: data
    case("data-file-missing", "{tmp}/nope.jsonl", "file not found", dataset_name="{tmp}/nope.jsonl"),
    case("malformed-jsonl-line", "malformed.jsonl:3", "malformed JSON", dataset_name="{bad}/malformed.jsonl"),
    case("mixture-column-missing", "datasets[0].columns", "columns found: 'messages'",
         datasets=[{"path": "{data}", "columns": ["conversation"]}]),
    case("missing-columns-listed", "columns found: 'question', 'answer'", dataset_name="{bad}/wrong_columns.jsonl"),
    case("forced-format-missing-column", "needs column 'text'", dataset_format="text"),
    case("empty-data-file", "empty.jsonl", "empty", dataset_name="{bad}/empty.jsonl"),
    case("blank-lines-only", "blank_lines.jsonl", "no rows", dataset_name="{bad}/blank_lines.jsonl"),
    case("empty-split", "empty_split.json", "empty", dataset_name="{bad}/empty_split.json"),
    case("missing-split", "@dataset_train_split", "splits found: train", dataset_train_split="training"),
    case("bad-role", "bad_role.jsonl[row 1]", "bot", dataset_name="{bad}/bad_role.jsonl"),
    case("system-not-first", "system_not_first.jsonl[row 0]", "system", dataset_name="{bad}/system_not_first.jsonl"),
    case("no-assistant-turn", "no_assistant.jsonl[row 0]", "assistant", dataset_name="{bad}/no_assistant.jsonl"),
    case("unreadable-image", "corrupt_image.jsonl[row 0]", "not a readable image",
         dataset_name="{bad}/corrupt_image.jsonl", **VLM),
    case("image-not-found", "missing_image.jsonl[row 0]", "no_such_image.png",
         dataset_name="{bad}/missing_image.jsonl", **VLM),
    case("images-for-a-text-model", "@dataset_name", "text-only model", dataset_name="{bad}/image_chat.jsonl"),
    case("template-fails-on-a-row", "double_user.jsonl[row 0]", "roles must alternate",
         dataset_name="{bad}/double_user.jsonl", chat_template_path="{bad}/strict_alternation.jinja"),
    # 18: model
    case("model-path-missing", "{tmp}/no-model", "does not exist", model_name_or_path="{tmp}/no-model"),
    case("model-dir-without-config", "no config.json", model_name_or_path="{bad}/models/no_config"),
    case("config-json-malformed", "cannot read config.json", model_name_or_path="{bad}/models/broken_config"),
    case("unknown-model-type", "'llamazoid' is unknown to transformers",
         model_name_or_path="{bad}/models/unknown_type"),
    case("remote-code-needed", "trust_remote_code", "off by default", "runs arbitrary Python",
         model_name_or_path="{bad}/models/remote_code"),
    case("pickle-only-weights", "allow_pickle_weights", "pytorch_model.bin", setup=pickle_only_model,
         model_name_or_path="{tmp}/pickled"),
    case("no-tokenizer-files", "{tmp}/no-tokenizer", "cannot load the tokenizer", setup=model_without_tokenizer,
         model_name_or_path="{tmp}/no-tokenizer"),
    # 19-20: output_dir
    case("finished-run-in-output-dir", "@output_dir", "finished run", "overwrite_output_dir", setup=finished_run),
    case("live-run-in-output-dir", "@output_dir", f"pid {os.getpid()}", setup=live_lock),
    case("disk-too-small", "@output_dir", "1.0 KiB free", "save_total_limit", setup=full_disk, save_steps=1),
    case("resume-from-non-checkpoint", "@resume_from_checkpoint", "not a complete checkpoint",
         resume_from_checkpoint="{tmp}"),
    # accelerate configs
    case("unknown-accelerate-config", "--accelerate_config", "zero4", argv=["--accelerate_config", "zero4"]),
    case("accelerate-config-invalid-yaml", "accelerate_broken.yaml:6", "invalid YAML",
         argv=["--accelerate_config", str(BAD / "accelerate_broken.yaml")]),
    case("accelerate-unknown-distributed-type", "accelerate_unknown_type.yaml", "MEGATRON_LM",
         argv=["--accelerate_config", str(BAD / "accelerate_unknown_type.yaml")]),
    # several at once: all reported
    case("every-problem-at-once", "@learning_rte", "@eos_token", "{tmp}/nope.jsonl", "@lora_target_modules",
         learning_rte=1.0e-5, eos_token="<|eot_id|>", dataset_name="{tmp}/nope.jsonl", use_peft=True,
         lora_target_modules=["qkv_proj"]),
]
# fmt: on


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_exits_2_naming_key_file_or_line_and_writes_nothing(
    bad: Case, tmp_path, places, monkeypatch, capsys, llama_dir
):
    if bad.setup:
        bad.setup(tmp_path, monkeypatch, places)
    recipe = write_recipe(tmp_path, places, bad.keys, bad.drop, bad.raw)
    out_existed = (tmp_path / "out").exists()
    watched = (tmp_path, llama_dir, BAD)
    before = tree(*watched)

    code, out, err = run_validate(capsys, monkeypatch, recipe, fill(list(bad.argv), places))

    assert code == 2, err
    for expected in bad.expect:
        wanted = line_of(recipe, expected[1:]) if expected.startswith("@") else fill(expected, places)
        assert wanted in err, f"{wanted!r} not in:\n{err}"
    assert "Traceback" not in err and "OK" not in out
    assert tree(*watched) == before
    assert (tmp_path / "out").exists() == out_existed
