"""`sft-recipes validate` on good recipes: exit 0, a summary whose figures match the real thing, warnings that say
what will happen; and `train` refusing a bad recipe before it loads any weight."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.bad_inputs import BAD, BASE, fill, run_validate, tree, write_recipe


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A base model: its tokenizer and generation config end text with <|endoftext|>, its chat template ends turns
    with <|im_end|>."""
    from sft_recipes.tiny import build_causal_lm, build_tokenizer

    tokenizer = build_tokenizer(eos_token="<|endoftext|>", pad_token="<unk>")
    return build_causal_lm("llama", tmp_path_factory.mktemp("base"), tokenizer=tokenizer)


@pytest.fixture
def places(tmp_path, llama_dir, demo_data_path, base_dir) -> dict[str, str]:
    return {"llama": str(llama_dir), "data": str(demo_data_path), "tmp": str(tmp_path), "base": str(base_dir)}


def parsed(tmp_path: Path, places: dict[str, str], **keys):
    from sft_recipes.config import parse_recipe

    return parse_recipe(["--config", str(write_recipe(tmp_path, places, keys))])


def peft_trainable(model_dir: Path, kind: str, **lora) -> int:
    """What PEFT itself makes trainable on the real model with our LoraConfig."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from sft_recipes.config import ModelConfig
    from sft_recipes.model.lora import build_lora_config

    auto = AutoModelForImageTextToText if kind == "image_text_to_text" else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir)
    args = ModelConfig(model_name_or_path=str(model_dir), use_peft=True, **lora)
    peft_model = get_peft_model(model, build_lora_config(args, model, kind))
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_good_recipe_exits_0_with_a_summary_and_writes_nothing(tmp_path, places, llama_dir, capsys, monkeypatch):
    recipe = write_recipe(tmp_path, places, {"use_peft": True, "lora_r": 4})
    before = tree(tmp_path, llama_dir)
    code, out, err = run_validate(capsys, monkeypatch, recipe)
    assert code == 0, err
    trainable = peft_trainable(llama_dir, "causal_lm", lora_r=4)
    for expected in (
        f"{recipe}: OK",
        "(llama, causal_lm)",
        "dtype           float32",
        "attention",
        "quantization    none",
        "q_proj",
        f"{trainable:,} of",
        "64 (model context 256)",
        "packing         off",
        "64 examples",
    ):
        assert expected in out, f"{expected!r} not in:\n{out}"
    # Without assistant_only_loss every token is trained but each row's first, which the loss never predicts.
    share, tokens = re.search(r"trained tokens  (\d+)% of ([\d,]+) tokens in the first 32 rows", out).groups()
    assert int(share) == round(100 * (int(tokens.replace(",", "")) - 32) / int(tokens.replace(",", "")))
    assert tree(tmp_path, llama_dir) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("family", "lora"),
    [("llama", {}), ("phi3", {}), ("qwen2", {"lora_target_modules": "all-linear"}), ("llava", {"use_dora": True})],
)
def test_trainable_count_from_config_alone_equals_peft_on_the_real_model(
    family, lora, tmp_path, causal_lm_dirs, vlm_dirs, demo_data_path
):
    from sft_recipes.validate.rules import validate

    model_dir = {**causal_lm_dirs, **vlm_dirs}[family]
    kind = "image_text_to_text" if family in vlm_dirs else "causal_lm"
    places = {"model": str(model_dir), "data": str(demo_data_path), "tmp": str(tmp_path)}
    keys = {"model_name_or_path": "{model}", "use_peft": True, "lora_r": 8, **lora}
    if kind == "image_text_to_text":
        keys["max_length"] = None
    v = validate(parsed(tmp_path, places, **keys), data=False)
    assert v.errors == []
    assert v.trainable == peft_trainable(model_dir, kind, lora_r=8, **lora)


DROP = "<drop this key>"
WARNINGS = [
    pytest.param({"max_length": DROP}, ["max_length: not set", "1024 tokens"], id="max-length-unset"),
    pytest.param({"learning_rate": "1e-5"}, ["read by YAML as a string", "learning_rate: 1.0e-05"], id="yaml-1e-5"),
    pytest.param(
        {"load_in_4bit": True, "use_peft": True, "dtype": "auto", "bf16": False},
        ["compute dtype resolves to float32", "QLoRA computes in fp32"],
        id="auto-dtype-with-4bit",
    ),
    pytest.param(
        {"max_length": 12},
        ["longer than max_length 12", "drops the rest, EOS included", "packing_strategy: bfd_split"],
        id="truncation",
    ),
    pytest.param({"model_init_kwargs": {"device_map": {"": 0}}}, ["device_map is ignored"], id="device-map-ignored"),
    pytest.param(
        {"model_name_or_path": "{base}"},
        ["eos_token: the chat template ends assistant turns with <|im_end|> but generation stops at <|endoftext|>"],
        id="generation-does-not-stop-at-the-end-of-turn",
    ),
]


@pytest.mark.parametrize(("keys", "expected"), WARNINGS)
def test_warnings_print_and_exit_0(keys, expected, tmp_path, places, capsys, monkeypatch):
    drop = [key for key, value in keys.items() if value == DROP]
    recipe = write_recipe(tmp_path, places, keys, drop=drop)
    code, out, err = run_validate(capsys, monkeypatch, recipe)
    assert code == 0, err
    assert "warning:" in err and "OK (" in out
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in:\n{err}"


def test_an_end_of_turn_outside_the_loss_is_a_warning_naming_the_stop_token(tmp_path, places, capsys, monkeypatch):
    from sft_recipes.tiny import chatml_template

    template = chatml_template().replace(
        "{{- '<|im_end|>' -}}\n        {%- endgeneration -%}", "{%- endgeneration -%}\n        {{- '<|im_end|>' -}}"
    )
    (tmp_path / "template.jinja").write_text(template)
    keys = {"assistant_only_loss": True, "chat_template_path": str(tmp_path / "template.jinja")}
    code, out, err = run_validate(capsys, monkeypatch, write_recipe(tmp_path, places, keys))
    assert code == 0, err
    assert "loss mask: 32 of 32 whole documents never train the stop token <|im_end|>" in err


def test_an_eos_that_is_not_the_end_of_turn_is_fine_while_generation_stops_at_the_end_of_turn(
    tmp_path, places, capsys, monkeypatch
):
    """The tiny chat model's generation config stops at <|im_end|>, which the template trains: the model stops,
    whatever eos_token says (validate used to warn that the EOS itself was never trained)."""
    keys = {"eos_token": "<|endoftext|>", "pad_token": "<unk>", "assistant_only_loss": True}
    code, out, err = run_validate(capsys, monkeypatch, write_recipe(tmp_path, places, keys))
    assert code == 0, err
    assert "warning:" not in err, err


def test_rope_plan_and_vlm_kind_are_in_the_summary(tmp_path, places, vlm_dirs, capsys, monkeypatch):
    code, out, err = run_validate(capsys, monkeypatch, write_recipe(tmp_path, places, {"max_length": 600}))
    assert code == 0, err
    assert "600 (model context 256, RoPE: linear scaling x3)" in out
    image_chat = BAD / "image_chat.jsonl"
    vlm = {"model_name_or_path": str(vlm_dirs["llava"]), "max_length": None, "dataset_name": str(image_chat)}
    code, out, err = run_validate(capsys, monkeypatch, write_recipe(tmp_path, places, vlm))
    assert code == 0, err
    assert "(llava, image_text_to_text)" in out and "1 examples" in out


def test_explicit_bf16_on_a_machine_without_gpu_is_a_warning_stating_cpu(tmp_path, places, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, out, err = run_validate(capsys, monkeypatch, write_recipe(tmp_path, places, {"bf16": True}))
    assert code == 0, err
    assert "no GPU here: bf16 will be checked at launch; on this machine training would run on CPU" in err


def test_missing_flash_attn_falls_back_to_sdpa_and_says_so(tmp_path, places, capsys, monkeypatch):
    from helpers.bad_inputs import no_flash_attn

    no_flash_attn(tmp_path, monkeypatch, places)
    recipe = write_recipe(tmp_path, places, {"attn_implementation": "flash_attention_2"})
    code, out, err = run_validate(capsys, monkeypatch, recipe)
    assert code == 0, err
    assert "falling back to sdpa" in err and "attn_strict: true" in err
    assert "sdpa (fallback: flash_attention_2 not installed)" in out


def test_gpu_without_bf16_is_an_error_naming_fp16(tmp_path, places, monkeypatch):
    import torch

    from sft_recipes.validate.recipe_checks import check_hardware
    from sft_recipes.validate.validation import Validation

    v = Validation(parsed(tmp_path, places, bf16=True))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: False)
    check_hardware(v)
    (problem,) = v.errors
    assert "(bf16)" in problem.where and "Tesla T4" in problem.message and "fp16: true" in problem.fix


def test_accelerate_config_is_read_into_the_summary(tmp_path, places, capsys, monkeypatch):
    code, out, err = run_validate(
        capsys, monkeypatch, write_recipe(tmp_path, places, {}), ["--accelerate_config", "zero3"]
    )
    assert code == 0, err
    assert "distributed" in out and "zero3 x 8" in out


@pytest.mark.parametrize(
    ("data", "keys"),
    [
        ("messages", {}),
        ("messages", {"assistant_only_loss": True}),
        ("prompt_completion", {}),
        ("text", {}),
    ],
)
def test_validate_counts_the_tokens_plain_trl_trains_on_the_real_model(data, keys, tmp_path, places, llama_dir):
    """validate prepares its sample with SFTTrainer on a meta-device model; plain TRL on the real model is the
    reference."""
    import json

    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from sft_recipes.validate.rules import validate

    rows = [json.loads(line) for line in Path(places["data"]).read_text().splitlines()[:16]]
    if data == "prompt_completion":
        rows = [{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in rows]
    elif data == "text":
        rows = [{"text": f"Q: {r['messages'][0]['content']} A: {r['messages'][1]['content']}"} for r in rows]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    v = validate(parsed(tmp_path, {**places, "data": str(path)}, max_length=None, **keys))
    assert v.errors == []
    plain = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(llama_dir),
        args=SFTConfig(str(tmp_path / "plain"), max_length=None, report_to="none", use_cpu=True, **keys),
        train_dataset=load_dataset("json", data_files=str(path), split="train"),
        processing_class=AutoTokenizer.from_pretrained(llama_dir),
    )
    tokens = sum(len(row["input_ids"]) for row in plain.train_dataset)
    trained = sum(label != -100 for row in plain.train_dataset for label in row["labels"][1:])  # labels shift by one
    assert v.statistics is not None and v.statistics["sample"] == len(rows)
    assert (v.statistics["tokens"], v.statistics["trained_tokens"]) == (tokens, trained)
    assert 0 < trained < tokens


def test_train_refuses_a_bad_recipe_before_loading_weights(tmp_path, places, capsys, monkeypatch):
    from sft_recipes.cli import main
    from sft_recipes.model import loading as model

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(model, "load_model", never)
    recipe = write_recipe(tmp_path, places, {"eos_token": "<|eot_id|>", "dataset_name": "{tmp}/nope.jsonl"})
    assert main(["train", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "(eos_token)" in err and "nope.jsonl: file not found" in err
    assert not (tmp_path / "out").exists()


def test_validate_in_a_subprocess_exits_2_without_traceback(tmp_path, places):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(fill({**BASE, "dataset_name": "{tmp}/nope.jsonl"}, places)))
    done = subprocess.run(
        [sys.executable, "-m", "sft_recipes", "validate", "--config", str(recipe)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "nope.jsonl: file not found" in done.stderr and "Traceback" not in done.stderr


def test_zero3_qlora_with_storage_unset_is_valid_because_the_loader_sets_it(
    tmp_path, capsys, monkeypatch, llama_dir, demo_data_path
):
    places = {"llama": str(llama_dir), "data": str(demo_data_path), "tmp": str(tmp_path)}
    recipe = write_recipe(tmp_path, places, {"load_in_4bit": True, "use_peft": True, "bf16": True})
    code, out, err = run_validate(capsys, monkeypatch, recipe, ["--accelerate_config", "zero3"])
    assert code == 0, err
    assert "bnb_4bit_quant_storage" not in err
