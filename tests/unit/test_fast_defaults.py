"""Fast defaults: the attention, packing, activation checkpointing and tokenizing choices sft-recipes makes for what a
recipe leaves unset, each with its CPU fallback. The hardware is faked at torch.cuda and importlib, never inside
sft_recipes."""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from helpers.packing_proofs import PACKING_CASES
from helpers.runs import CPU_DEFAULTS
from transformers import Gemma2ForCausalLM, LlamaForCausalLM  # noqa: F401  (imported before fake_gpu: see there)

from sft_recipes import train
from sft_recipes.model.kind import detect_model_kind
from sft_recipes.model.loading import best_attn_implementation, resolve_attn_implementation
from sft_recipes.plan.command import plan_input_from_recipe
from sft_recipes.plan.formula import estimate
from sft_recipes.plan.gpus import GiB
from sft_recipes.train import apply_fast_defaults, checkpointing_decision, plan_headroom

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if p.parent.name != "demo")
LLAMA = {"model_type": "llama"}
real_find_spec = importlib.util.find_spec


def fake_gpu(monkeypatch, capability=(8, 0), installed=("flash_attn",), memory_gib=80.0, cpus=None):
    """A CUDA GPU of this compute capability and memory, with these flash-attn packages importable. The model classes
    the code under test looks up are imported at the top of this file: their lazy import probes, and caches, what is
    installed, which must not happen under the fakes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(total_memory=int(memory_gib * GiB))
    )
    fake_packages(monkeypatch, installed)
    if cpus is not None:
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)))


def fake_packages(monkeypatch, installed):
    flash = ("flash_attn", "flash_attn_interface")

    def find_spec(name, *args):
        if name in flash:
            return SimpleNamespace(name=name) if name in installed else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


# -- attention ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capability", "installed", "expected"),
    [
        ((8, 0), ("flash_attn",), "flash_attention_2"),  # A100
        ((8, 9), ("flash_attn",), "flash_attention_2"),  # L4, RTX 4090
        ((9, 0), ("flash_attn", "flash_attn_interface"), "flash_attention_3"),  # H100 with FA3
        ((9, 0), ("flash_attn",), "flash_attention_2"),  # H100, FA2 only
        ((8, 0), ("flash_attn_interface",), "sdpa"),  # FA3 is Hopper-only
        ((7, 5), ("flash_attn",), "sdpa"),  # T4: flash attention needs Ampere
        ((8, 0), (), "sdpa"),  # flash-attn not installed
    ],
)
def test_auto_attention_picks_the_fastest_kernel_the_gpu_and_packages_allow(
    monkeypatch, capability, installed, expected
):
    fake_gpu(monkeypatch, capability, installed)
    choice, why = best_attn_implementation(LLAMA, torch.bfloat16)
    assert choice == expected, why


def test_auto_attention_never_picks_flash_for_fp32_weights(monkeypatch):
    fake_gpu(monkeypatch, (9, 0), ("flash_attn", "flash_attn_interface"))
    choice, why = best_attn_implementation(LLAMA, torch.float32)
    assert choice == "sdpa" and "float32" in why


def test_auto_attention_falls_back_to_sdpa_on_cpu_and_eager_for_models_without_sdpa(monkeypatch):
    fake_packages(monkeypatch, ("flash_attn", "flash_attn_interface"))
    assert best_attn_implementation(LLAMA, torch.bfloat16) == ("sdpa", "no CUDA GPU")
    assert best_attn_implementation({"model_type": "gemma2"}, torch.bfloat16)[0] == "eager"


def test_auto_and_unset_attention_resolve_alike_and_log_the_decision(monkeypatch, caplog):
    fake_gpu(monkeypatch, (8, 0), ("flash_attn",))
    with caplog.at_level(logging.INFO, logger="sft_recipes"):
        assert resolve_attn_implementation("auto", False, LLAMA, torch.bfloat16) == "flash_attention_2"
        assert resolve_attn_implementation(None, False, LLAMA, torch.bfloat16) == "flash_attention_2"
    assert "Attention: flash_attention_2 (flash-attn installed, GPU compute capability 8.0)" in caplog.text


def test_a_named_attention_is_kept_even_where_a_faster_one_exists(monkeypatch):
    fake_gpu(monkeypatch, (9, 0), ("flash_attn", "flash_attn_interface"))
    assert resolve_attn_implementation("sdpa", False, LLAMA, torch.bfloat16) == "sdpa"
    assert resolve_attn_implementation("eager", True, LLAMA, torch.bfloat16) == "eager"


def test_auto_attention_recipe_loads_a_model_with_the_chosen_kernel(tmp_path, llama_dir):
    from helpers.prepared import recipe_for

    from sft_recipes.model.loading import load_model, load_processing_class

    recipe = recipe_for(tmp_path, llama_dir, [{"text": "hi"}], attn_implementation="auto")
    tokenizer = load_processing_class(recipe.model, recipe.training, "causal_lm")
    model = load_model(recipe.model, recipe.training, "causal_lm", LLAMA, tokenizer)
    assert model.config._attn_implementation == "sdpa"  # this CPU's best


# -- packing --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipes_pack_only_where_packed_equals_padded_is_proven(path):
    recipe = yaml.safe_load(path.read_text())
    if not recipe.get("packing"):
        return
    config = json.loads((path.parent / "config.json").read_text())
    assert detect_model_kind(config) == "causal_lm", "TRL refuses packing for vision-language models"
    pair = (config["model_type"], recipe["attn_implementation"])
    assert pair in PACKING_CASES, f"{pair}: prove it in tests/contracts/test_packing.py (PACKING_CASES) first"
    # Padding-free sdpa/eager attend across the whole flattened micro-batch: one packed row per micro-batch.
    assert recipe["per_device_train_batch_size"] == 1


# -- activation checkpointing ---------------------------------------------------------------------------------------


def qwen_full_plan(tmp_path):
    from sft_recipes.config import parse_recipe

    path = ROOT / "recipes" / "qwen2.5-1.5b-instruct" / "full.yaml"
    config = json.loads((path.parent / "config.json").read_text())
    recipe = parse_recipe(["--config", str(path), "--bf16", "false", "--output_dir", str(tmp_path)])
    return estimate(plan_input_from_recipe(recipe, config))


def test_checkpointing_goes_off_only_when_the_plan_fits_without_it_with_headroom(tmp_path):
    plan = qwen_full_plan(tmp_path)
    need = estimate(replace(plan.input, gradient_checkpointing=False)).total / GiB
    assert need > plan.total / GiB  # checkpointing does save memory in this plan
    headroom, _ = plan_headroom()
    assert checkpointing_decision(plan, need / headroom + 0.5)[0] is False
    on, why = checkpointing_decision(plan, need / headroom - 0.5)
    assert on is True and "needs it" in why
    assert checkpointing_decision(plan, None) == (True, "no GPU to check the memory plan against (TRL's default)")


def test_an_uncalibrated_plan_turns_checkpointing_off_only_within_70_percent_of_the_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "GPU_PLAN_RATIO", None)
    plan = qwen_full_plan(tmp_path)
    need = estimate(replace(plan.input, gradient_checkpointing=False)).total / GiB
    assert plan_headroom()[0] == 0.7
    on, why = checkpointing_decision(plan, need / 0.8)  # the plan fills 80%: fine for a calibrated one, not here
    assert on is True and "not calibrated on a GPU" in why
    on, why = checkpointing_decision(plan, need / 0.7 + 0.1)
    assert on is False and "70%" in why and "not calibrated on a GPU" in why


@pytest.mark.parametrize(("ratio", "headroom"), [(0.95, 0.855), (0.8, 0.72), (1.2, 0.9)])
def test_measured_gpu_ratios_narrow_the_margin_never_past_90_percent(tmp_path, monkeypatch, ratio, headroom):
    """A plan that underestimated the GPU by 5% may fill 0.9 * 0.95 of it; one that overestimated gains nothing."""
    monkeypatch.setattr(train, "GPU_PLAN_RATIO", ratio)
    assert plan_headroom()[0] == pytest.approx(headroom)
    plan = qwen_full_plan(tmp_path)
    need = estimate(replace(plan.input, gradient_checkpointing=False)).total / GiB
    assert checkpointing_decision(plan, need / headroom + 0.1)[0] is False
    on, why = checkpointing_decision(plan, need / headroom - 0.1)
    assert on is True and "GPU-calibrated" in why


def test_the_margin_narrows_only_on_gpu_ratios_committed_in_the_benchmark_results():
    measured = ROOT / "benchmarks" / "results" / "plan_accuracy_cuda.json"
    if not measured.is_file():
        assert train.GPU_PLAN_RATIO is None, "GPU_PLAN_RATIO needs benchmarks/results/plan_accuracy_cuda.json"
        return
    ratios = [row["ratio"] for row in json.loads(measured.read_text())["rows"] if "ratio" in row]
    assert ratios, f"{measured} holds no measured case"
    assert train.GPU_PLAN_RATIO is not None and min(ratios) >= train.GPU_PLAN_RATIO


def write_unset_recipe(tmp_path, llama_dir, demo_data_path, **keys):
    """A recipe leaving activation checkpointing and dataset_num_proc unset (the shared CPU defaults set them)."""
    from sft_recipes.config import parse_recipe

    base = {k: v for k, v in CPU_DEFAULTS.items() if k != "gradient_checkpointing"}
    base |= {"model_name_or_path": str(llama_dir), "dataset_name": str(demo_data_path)}
    base |= {"output_dir": str(tmp_path / "out"), **keys}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(base))
    return parse_recipe(["--config", str(path)])


def test_on_a_gpu_that_fits_the_run_checkpointing_goes_off_and_tokenizing_uses_up_to_8_processes(
    tmp_path, llama_dir, demo_data_path, monkeypatch, caplog
):
    recipe = write_unset_recipe(tmp_path, llama_dir, demo_data_path, use_cpu=False)
    assert recipe.training.gradient_checkpointing is True  # TRL's default, before the plan is asked
    fake_gpu(monkeypatch, memory_gib=80.0, cpus=32)
    with caplog.at_level(logging.INFO, logger="sft_recipes"):
        apply_fast_defaults(recipe, json.loads((llama_dir / "config.json").read_text()))
    assert recipe.training.gradient_checkpointing is False and recipe.training.activation_checkpointing is False
    assert recipe.raw["activation_checkpointing"] is False  # recipe.yaml records what was decided
    assert recipe.training.dataset_num_proc == 8
    assert "Activation checkpointing off: the plan fits without it" in caplog.text
    assert "Memory plan: fits on 80 GiB" in caplog.text


def test_values_set_in_the_recipe_always_win(tmp_path, llama_dir, demo_data_path, monkeypatch):
    recipe = write_unset_recipe(
        tmp_path, llama_dir, demo_data_path, use_cpu=False, gradient_checkpointing=True, dataset_num_proc=3
    )
    fake_gpu(monkeypatch, memory_gib=80.0, cpus=32)
    apply_fast_defaults(recipe, json.loads((llama_dir / "config.json").read_text()))
    assert recipe.training.gradient_checkpointing is True and recipe.training.dataset_num_proc == 3


@pytest.mark.parametrize(("cpus", "expected"), [(4, 4), (1, None)])
def test_tokenizing_processes_follow_the_usable_cpus_on_a_gpu_machine(
    tmp_path, llama_dir, demo_data_path, monkeypatch, cpus, expected
):
    recipe = write_unset_recipe(tmp_path, llama_dir, demo_data_path, use_cpu=False)
    fake_gpu(monkeypatch, cpus=cpus)
    apply_fast_defaults(recipe, json.loads((llama_dir / "config.json").read_text()))
    assert recipe.training.dataset_num_proc == expected


def test_train_on_cpu_keeps_trl_defaults_and_logs_the_plan_verdict_before_loading_weights(
    tmp_path, llama_dir, demo_data_path, caplog
):
    from sft_recipes.cli import main

    write_unset_recipe(tmp_path, llama_dir, demo_data_path, max_steps=1)
    with caplog.at_level(logging.INFO, logger="sft_recipes"):
        assert main(["train", "--config", str(tmp_path / "recipe.yaml")]) == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "sft_recipes"]
    verdict = next(i for i, m in enumerate(messages) if m.startswith("Memory plan: "))
    loading = next(i for i, m in enumerate(messages) if m.startswith("Loading "))
    assert verdict < loading and "no GPU here" in messages[verdict]
    assert "Activation checkpointing on: no GPU to check the memory plan against (TRL's default)" in messages


# -- loss -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipes_keep_trls_chunked_loss_that_never_builds_the_full_logits(path):
    """TRL 1.16 scores tokens through its fused LM head (Triton on CUDA, torch tiles on CPU) unless label smoothing
    or a custom loss asks for the logits; the deprecated Liger path is not needed for that."""
    recipe = yaml.safe_load(path.read_text())
    assert not recipe.get("label_smoothing_factor") and not recipe.get("use_liger_kernel")
    assert recipe.get("loss_type", "nll") in ("nll", "dft")
