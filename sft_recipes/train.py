"""Fine-tune a model from a recipe: parse, check, load, train with trl.SFTTrainer, save.

Usage: sft-recipes train --config recipes/<model>/<method>.yaml [--key value ...] [--accelerate_config zero3]"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from sft_recipes.arguments import add_launch_flags, command_parser, launch_flags, parse_with_recipe
from sft_recipes.errors import RecipeError

logger = logging.getLogger("sft_recipes")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("train", __doc__, recipe=True)
    add_launch_flags(parser)
    return parser


def main(argv: list[str]) -> int:
    from sft_recipes.launch import launch_if_requested

    args, rest = parse_with_recipe(build_parser(), argv)
    launched = launch_if_requested("train", launch_flags(args), rest)
    if launched is not None:
        return launched
    from sft_recipes.config import parse_recipe

    try:
        run(parse_recipe(rest))
    finally:
        end_process_group()
    return 0


def end_process_group() -> None:
    """Destroy the process group (gloo/NCCL) on every way out of a run, while the interpreter is still whole: at exit,
    a gloo thread freeing a tensor needs the GIL after finalization began, and the rank aborts after training finished
    ("terminate called without an active exception", exit -6; pytorch/pytorch#179291)."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run(recipe: Any) -> Any:
    """Train one recipe to completion; returns the trainer."""
    import transformers
    from trl import SFTTrainer

    from sft_recipes.merge import merge_adapter
    from sft_recipes.model.kind import detect_model_kind
    from sft_recipes.model.loading import load_model, load_processing_class
    from sft_recipes.model.lora import build_lora_config
    from sft_recipes.run_dir import checkpoint_marker, output_lock, resume_checkpoint
    from sft_recipes.throughput import add_throughput_callback
    from sft_recipes.topology import Topology
    from sft_recipes.validate.rules import preflight

    model_args, training_args, script_args = recipe.model, recipe.training, recipe.script
    config = preflight(recipe)
    apply_fast_defaults(recipe, config)
    output_dir = training_args.output_dir
    resume = resume_checkpoint(output_dir, training_args.resume_from_checkpoint, script_args.overwrite_output_dir)
    with output_lock(output_dir):
        transformers.set_seed(training_args.seed)
        kind = detect_model_kind(config, model_args.model_kind)
        topology = Topology.from_env(training_args)
        logger.info("Model kind: %s (%s); distributed mode: %s", kind, config.get("model_type"), topology.mode)
        processing_class = load_processing_class(model_args, training_args, kind)
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        train_dataset, eval_dataset = training_datasets(recipe)  # before the weights: a stale prepared set stops here
        model = load_model(model_args, training_args, kind, config, tokenizer, topology)
        trainer = SFTTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=build_lora_config(model_args, model, kind),
            callbacks=[checkpoint_marker(training_args)],  # it takes save_total_limit over
        )
        add_throughput_callback(trainer)  # first, so tensorboard/wandb/trackio receive its metrics
        if resume:
            logger.info("Resuming from %s", resume)
        started = time.time()
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(output_dir)
        trainer.save_state()  # trainer_state.json at the top level, for `sft-recipes report`
        if trainer.accelerator.is_main_process:
            finalize_output(output_dir, trainer, recipe, result, time.time() - started)
        if script_args.merge_adapter and model_args.use_peft and trainer.accelerator.is_main_process:
            merge_adapter(output_dir, os.path.join(output_dir, "merged"))
        trainer.accelerator.wait_for_everyone()
        if hasattr(trainer, "end"):
            trainer.end()
    return trainer


def training_datasets(recipe: Any) -> tuple[Any, Any]:
    """(train, eval) for SFTTrainer: the `prepared` set (checked against the recipe), which every rank memory-maps,
    else the raw data, which rank 0 converts first so that the other ranks read its datasets cache."""
    from sft_recipes.data.loading import load_training_data
    from sft_recipes.preprocess import prepared_datasets

    if recipe.script.prepared:
        return prepared_datasets(recipe)
    with recipe.training.main_process_first(desc="load and convert the dataset"):
        return load_training_data(recipe.script, recipe.mixture, recipe.training)


# Share of the GPU a plan without activation checkpointing may fill. The planner aims at +-10%, but it has been
# measured on CPU only: until benchmarks/plan_accuracy.py --device cuda has measured it on a GPU, turning checkpointing
# off is a bet on an uncalibrated formula, and an OOM after a long download is the failure preflight exists to prevent.
UNCALIBRATED_HEADROOM = 0.7
CALIBRATED_HEADROOM = 0.9
# The lowest predicted/measured ratio in benchmarks/results/plan_accuracy_cuda.json once it is committed (`make
# gpu-check` prints it; tests/unit/test_fast_defaults.py holds the two together). None: not GPU-calibrated yet.
GPU_PLAN_RATIO: float | None = None


def plan_headroom() -> tuple[float, str]:
    """The share of the GPU a plan without checkpointing may fill, and on what evidence."""
    if GPU_PLAN_RATIO is None:
        return UNCALIBRATED_HEADROOM, "the memory plan is not calibrated on a GPU yet"
    return CALIBRATED_HEADROOM * min(1.0, GPU_PLAN_RATIO), f"GPU-calibrated plan, worst ratio {GPU_PLAN_RATIO:g}"


def apply_fast_defaults(recipe: Any, config: dict[str, Any]) -> None:
    """Give what the recipe leaves unset the fast value this machine allows (a value in the recipe or on the command
    line always wins), then log the memory plan's verdict. Attention is chosen at load time (model.loading);
    packing is a recipe key, set where tests/contracts/test_packing.py proves packed == padded."""
    import torch

    from sft_recipes.plan.fixes import verdict_line
    from sft_recipes.plan.gpus import local_gpu_memory_gib

    training = recipe.training
    gpu_gib = None if training.use_cpu else local_gpu_memory_gib()
    if not _explicit(recipe, "dataset_num_proc"):
        # min(8, usable CPUs) tokenizers on a GPU machine, where a big data set would keep the GPUs waiting; one
        # (None) on CPU, where small data sets pay more to start workers than they save and training needs the cores.
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        procs = min(8, cpus) if torch.cuda.is_available() and cpus > 1 else None
        training.dataset_num_proc = recipe.raw["dataset_num_proc"] = procs
    plan = memory_plan(recipe, config)
    if plan is not None and not _explicit(recipe, "activation_checkpointing", "gradient_checkpointing"):
        on, why = checkpointing_decision(plan, gpu_gib)
        training.activation_checkpointing = training.gradient_checkpointing = on
        recipe.raw["activation_checkpointing"] = on  # recipe.yaml records what was decided, not only what was set
        logger.info("Activation checkpointing %s: %s", "on" if on else "off", why)
        plan = memory_plan(recipe, config)
    if plan is not None and int(os.environ.get("RANK", "0")) == 0:
        logger.info("Memory plan: %s", verdict_line(plan, gpu_gib))


def _explicit(recipe: Any, *keys: str) -> bool:
    return any(k in recipe.explicit or f"no_{k}" in recipe.explicit for k in keys)


def memory_plan(recipe: Any, config: dict[str, Any]) -> Any:
    """sft_recipes.plan's estimate for this run as launched; None (with a warning) for a model it cannot model."""
    from sft_recipes.plan.command import plan_input_from_recipe
    from sft_recipes.plan.formula import estimate
    from sft_recipes.topology import Topology

    try:
        return estimate(plan_input_from_recipe(recipe, config, Topology.from_env(recipe.training)))
    except (RecipeError, KeyError, TypeError, ValueError) as err:
        logger.warning("No memory plan for this model (%s): activation checkpointing stays as configured", err)
        return None


def checkpointing_decision(plan: Any, gpu_memory_gib: float | None) -> tuple[bool, str]:
    """Activation checkpointing for a recipe that leaves it unset, and why: off when the plan without it fits in
    plan_headroom() of the GPU (it recomputes every layer's forward: ~20-30% slower), else on. Without a GPU to check
    against, TRL's default (on) stands."""
    from dataclasses import replace

    from sft_recipes.plan.formula import estimate
    from sft_recipes.plan.gpus import GiB

    if gpu_memory_gib is None:
        return True, "no GPU to check the memory plan against (TRL's default)"
    need = estimate(replace(plan.input, gradient_checkpointing=False)).total / GiB
    headroom, basis = plan_headroom()
    limit = f"{headroom:.0%} of {gpu_memory_gib:.0f} GiB; {basis}"
    if need <= headroom * gpu_memory_gib:
        return False, f"the plan fits without it ({need:.1f} GiB <= {limit})"
    return True, f"the plan needs it ({need:.1f} GiB without it > {limit})"


def finalize_output(output_dir: str, trainer: Any, recipe: Any, result: Any, seconds: float) -> None:
    """Make the saved model ready for inference and say how it was made: use_cache on, generation_config with every
    EOS id and no pad among them, an adapter's base config where training changed it, the recipe, summary and card."""
    from transformers import GenerationConfig

    from sft_recipes.card import write_model_card
    from sft_recipes.model.loading import record_base_config
    from sft_recipes.run_dir import run_summary, write_run_record

    out = Path(output_dir)
    config_path = out / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config["use_cache"] = True
        if isinstance(config.get("text_config"), dict):
            config["text_config"]["use_cache"] = True
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    model = trainer.model
    model = getattr(model, "get_base_model", lambda: model)()
    generation = getattr(model, "generation_config", None) or GenerationConfig()
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    save_generation_config(out, generation, tokenizer)
    if recipe.raw.get("attn_implementation") in (None, "auto"):
        recipe.raw["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    if recipe.model.use_peft:
        record_base_config(out, recipe.model, recipe.training)  # the adapter's base as trained (RoPE scaling)
    write_run_record(output_dir, recipe.raw, run_summary(trainer, result, seconds))
    write_model_card(out, trainer, recipe)  # last: the card reads the run summary written above


def save_generation_config(out: Path, generation: Any, tokenizer: Any) -> None:
    eos = generation.eos_token_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.insert(0, tokenizer.eos_token_id)
    generation.eos_token_id = eos_ids
    pad = tokenizer.pad_token_id
    # A pad id among the EOS ids makes generate() stop at once on some models: keep it out.
    generation.pad_token_id = pad if pad is not None and pad not in eos_ids else None
    if generation.bos_token_id is None:
        generation.bos_token_id = tokenizer.bos_token_id
    generation.save_pretrained(out)
