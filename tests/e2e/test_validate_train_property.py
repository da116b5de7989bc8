"""validate => train: every recipe `validate` accepts trains one step (`max_steps: 1`) without a traceback.

Over every bad-input case (tests/helpers/bad_cases.py: validate must refuse them, so they pass by exiting 2) and
ACCEPTED: the edges just inside validate's ranges and other recipes it lets through with warnings at most. One
session: validate each in this process, then train one step of each accepted one."""

from __future__ import annotations

import json

import pytest
from helpers.bad_cases import CASES, QLORA, VLM
from helpers.bad_inputs import case, fill, no_flash_attn, places_for, run_command, write_recipe

LORA = {"use_peft": True}
CPU_8BIT = {"load_in_8bit": True, "use_peft": True, "bf16": False}


def empty_output_dir(tmp, _, places) -> None:
    (tmp / "out").mkdir()


# fmt: off
ACCEPTED = [
    # the inner edge of each range of sft_recipes/validate/recipe_checks.py
    case("lora-r-one", lora_r=1, **LORA),
    case("lora-alpha-one", lora_alpha=1, **LORA),
    case("lora-dropout-zero", lora_dropout=0.0, **LORA),
    case("batch-size-one", per_device_train_batch_size=1, per_device_eval_batch_size=1),
    case("gradient-accumulation-one", gradient_accumulation_steps=1, eval_accumulation_steps=1),
    case("learning-rate-zero", learning_rate=0.0, weight_decay=0.0),
    case("adam-edges", adam_beta1=0.0, adam_beta2=0.0, adam_epsilon=0.0, max_grad_norm=0.0),
    case("label-smoothing-and-neftune", label_smoothing_factor=0.5, neftune_noise_alpha=0.0),
    case("max-length-two", max_length=2),
    case("pad-to-multiple-of-one", pad_to_multiple_of=1, model_max_length=1),
    case("one-dataset-process", dataset_num_proc=1, dataloader_num_workers=0),
    case("seed-edges", seed=0, data_seed=2**32 - 1, ddp_timeout=1),
    case("largest-seed", seed=2**32 - 1),
    case("fractional-steps", logging_steps=0.5, save_strategy="steps", save_steps=0.5),
    case("eval-every-step", eval_strategy="steps", eval_steps=1, test_split_size=8),
    case("a-tenth-of-an-epoch", max_steps=-1, num_train_epochs=0.1),
    # other libraries' objects with values they accept
    case("lora-task-type", lora_task_type="CAUSAL_LM", **LORA),
    case("attention-eager", attn_implementation="eager"),
    case("attention-sdpa", attn_implementation="sdpa"),
    case("attention-auto", attn_implementation="auto"),
    case("flash-attn-missing-falls-back", setup=no_flash_attn, attn_implementation="flash_attention_2"),
    case("qlora-on-cpu", bnb_4bit_quant_storage="uint8", **{**QLORA, "bf16": False}),
    case("8-bit-lora-on-cpu", **CPU_8BIT),
    # outside the run, switched off or already there
    case("output-dir-exists-and-is-empty", setup=empty_output_dir),
    case("integrations-off", push_to_hub=False, report_to="none", use_liger_kernel=False),
    # warnings only
    case("max-length-unset", drop=["max_length"]),
    case("learning-rate-as-a-yaml-string", learning_rate="1e-5"),
    case("truncating", max_length=12),
    case("packed-bfd", packing=True, assistant_only_loss=True),
    case("packed-bfd-split", packing=True, packing_strategy="bfd_split"),
    case("packed-wrapped", packing=True, packing_strategy="wrapped"),
    case("assistant-only-loss", assistant_only_loss=True),
    case("vlm-full", dataset_name="{bad}/image_chat.jsonl", per_device_train_batch_size=2, **VLM),
]
# fmt: on


@pytest.mark.slow
def test_every_recipe_validate_accepts_trains_one_step(tmp_path, llama_dir, demo_data_path, vlm_dirs, capsys):
    trained, refused = [], []
    for param in [*CASES, *ACCEPTED]:
        recipe_case, root = param.values[0], tmp_path / param.id
        root.mkdir()
        places = places_for(root, llama_dir, demo_data_path, vlm_dirs)
        with pytest.MonkeyPatch.context() as monkeypatch:
            if recipe_case.setup:
                recipe_case.setup(root, monkeypatch, places)
            keys = {"max_steps": 1, **recipe_case.keys}
            recipe = write_recipe(root, places, keys, recipe_case.drop, recipe_case.raw)
            argv = fill(list(recipe_case.argv), places)
            code, _, err = run_command("validate", capsys, monkeypatch, recipe, argv)
            assert code in (0, 2) and "Traceback" not in err, f"{param.id}: validate\n{err}"
            if code == 2:
                refused.append(param.id)
                continue
            code, _, err = run_command("train", capsys, monkeypatch, recipe, argv)
            assert code == 0 and "Traceback" not in err, f"{param.id}: validate accepted it, train failed\n{err}"
            state = json.loads((root / "out" / "trainer_state.json").read_text())
            assert state["global_step"] >= 1, param.id
            trained.append(param.id)
    accepted = {param.id for param in ACCEPTED}
    # The edges are accepted (the ranges are no stricter than the libraries); every bad case is refused.
    assert accepted - {"max-length-two"} <= set(trained), sorted(accepted - set(trained))
    assert {param.id for param in CASES} <= set(refused)
