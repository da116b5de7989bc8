"""The one table of recipe keys and values that TRL, transformers, alignment-handbook or open-r1 renamed or removed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIGRATE = "run `sft-recipes migrate RECIPE.yaml -o NEW.yaml`, which rewrites it"


@dataclass(frozen=True)
class Renamed:
    """An old key: what it became (`new`), how migrate rewrites it (`action`), why, and the source of that fact."""

    old: str
    new: str | None  # today's key; None when the key is gone
    action: str  # rename | flag | drop | env | warmup | liger | template | mixture | mixer | configs | splits
    reason: str
    source: str
    fix: str = ""  # validate's advice when it is more than "use `new`" (env: set it in the `env:` block)
    value: Any = None  # flag: (value of `new` for true, for false or None to drop it); env: the variable's name


TRL_SFT = "trl/trainer/sft_config.py"
TRANSFORMERS_ARGS = "transformers/training_args.py"
HANDBOOK = "alignment-handbook src/alignment"
OPEN_R1 = "open-r1 src/open_r1/configs.py"

RENAMED = {e.old: e for e in (
    # TRL
    Renamed(
        "max_seq_length", "max_length", "rename", "TRL 0.20 removed it (deprecated since 0.16 for `max_length`)",
        f"{TRL_SFT} 0.16-0.19 __post_init__: '`max_seq_length` is deprecated ... Use `max_length` instead'",
    ),
    Renamed(
        "use_liger", "use_liger_kernel", "liger", "TRL 0.18 removed it for `use_liger_kernel`, which TRL 1.16 "
        "deprecates in turn for Hub kernels", f"{TRL_SFT} 0.16 __post_init__; trl/trainer/sft_trainer.py 1.16",
        fix="remove it: TRL 1.16 deprecates Liger for Hub kernels (`model_init_kwargs: {use_kernels: true}`), "
        f"which need the `kernels` package; or {MIGRATE}",
    ),
    Renamed(
        "use_liger_kernel", None, "liger", "TRL 1.16 deprecates it (removal in 2.0) for Hub kernels, "
        "`model_init_kwargs: {use_kernels: true}`; those need kernels>=0.18.2,<0.19 (transformers' pin), which "
        "PyPI does not have yet, and Liger's Triton kernels need a CUDA GPU",
        "trl/trainer/sft_trainer.py 1.16 ('`use_liger_kernel=True` is deprecated ... Use the Hub kernels instead'); "
        "transformers/dependency_versions_table.py ('kernels>=0.18.2,<0.19')",
    ),
    Renamed(
        "chars_per_token", None, "drop", "TRL 0.18 removed it: packing fills `max_length` tokens, not characters",
        f"{TRL_SFT} 0.16 __post_init__: '`chars_per_token` is deprecated ... use `max_length`'",
    ),
    # recipes written for LLaMA-Factory
    Renamed(
        "lora_rank", "lora_r", "rename", "LLaMA-Factory calls the LoRA rank `lora_rank`; TRL's ModelConfig `lora_r`",
        "LLaMA-Factory src/llamafactory/hparams/finetuning_args.py: `lora_rank: int = 8`",
    ),
    # transformers
    Renamed(
        "torch_dtype", "dtype", "rename", "transformers 5 and TRL's ModelConfig renamed it",
        "transformers/modeling_utils.py 5.24: '`torch_dtype` is deprecated! Use `dtype` instead!'",
    ),
    Renamed(
        "use_flash_attention_2", "attn_implementation", "flag", "transformers 4.36 replaced the flag with "
        "`attn_implementation`, and TRL's ModelConfig dropped it",
        "transformers/modeling_utils.py 4.36-4.57: 'use_flash_attention_2=True ... is deprecated ... Please use "
        "attn_implementation=\"flash_attention_2\"'",
        fix="`use_flash_attention_2: true` is `attn_implementation: flash_attention_2`; `false` is "
        "`attn_implementation: sdpa` (left unset, it picks flash attention where installed)",
        value=("flash_attention_2", "sdpa"),
    ),
    Renamed(
        "evaluation_strategy", "eval_strategy", "rename", "transformers 4.46 removed it (deprecated in 4.41)",
        f"{TRANSFORMERS_ARGS} 4.41-4.45: '`evaluation_strategy` is deprecated ... Use `eval_strategy` instead'",
    ),
    Renamed(
        "no_cuda", "use_cpu", "rename", "transformers 5 removed it (deprecated in 4.34)",
        f"{TRANSFORMERS_ARGS} 4.34-4.57: 'using `no_cuda` is deprecated ... Use `use_cpu` instead'",
    ),
    Renamed(
        "push_to_hub_token", "hub_token", "rename", "transformers 5 removed it (deprecated since 4.x)",
        f"{TRANSFORMERS_ARGS} 4.x: '`--push_to_hub_token` is deprecated ... Use `--hub_token` instead'",
        fix="use `hub_token`, or better leave the token out of the recipe and set the HF_TOKEN environment variable",
    ),
    Renamed(
        "push_to_hub_model_id", "hub_model_id", "rename", "transformers 5 removed it (deprecated since 4.x)",
        f"{TRANSFORMERS_ARGS} 4.x: '`--push_to_hub_model_id` and `--push_to_hub_organization` are deprecated ... "
        "Use `--hub_model_id` instead and pass the full repo name'",
    ),
    Renamed(
        "push_to_hub_organization", None, "drop", "transformers 5 removed it (deprecated since 4.x)",
        f"{TRANSFORMERS_ARGS} 4.x: '`--push_to_hub_model_id` and `--push_to_hub_organization` are deprecated'",
        fix="write the organization into hub_model_id: `hub_model_id: ORGANIZATION/NAME`",
    ),
    Renamed(
        "per_gpu_train_batch_size", "per_device_train_batch_size", "rename", "transformers 5 removed it",
        f"{TRANSFORMERS_ARGS} 4.x: 'Using deprecated `--per_gpu_train_batch_size` argument'",
    ),
    Renamed(
        "per_gpu_eval_batch_size", "per_device_eval_batch_size", "rename", "transformers 5 removed it",
        f"{TRANSFORMERS_ARGS} 4.x: 'Using deprecated `--per_gpu_eval_batch_size` argument'",
    ),
    Renamed(
        "torchdynamo", "torch_compile_backend", "rename", "transformers 5 removed it",
        f"{TRANSFORMERS_ARGS} 4.x: '`torchdynamo` is deprecated ... Use `torch_compile_backend` instead'",
    ),
    Renamed(
        "adafactor", "optim", "flag", "transformers 5 removed the flag for `optim: adafactor`",
        f"{TRANSFORMERS_ARGS} 4.x: '`--adafactor` is deprecated ... Use `--optim adafactor` instead'",
        fix="`adafactor: true` is `optim: adafactor`; if it was false, delete the line",
        value=("adafactor", None),
    ),
    Renamed(
        "include_inputs_for_metrics", "include_for_metrics", "flag", "transformers 5 removed it",
        f"{TRANSFORMERS_ARGS} 4.x: 'Using `include_inputs_for_metrics` is deprecated ... Please use "
        "`include_for_metrics` list argument instead'",
        fix="`include_inputs_for_metrics: true` is `include_for_metrics: [inputs]`; if it was false, delete the line",
        value=(["inputs"], None),
    ),
    Renamed(
        "fp16_backend", None, "drop", "transformers 5 removed it and `half_precision_backend`: mixed precision is "
        "torch AMP through accelerate", f"{TRANSFORMERS_ARGS} 4.x: '`fp16_backend` is deprecated'; both absent in 5",
    ),
    Renamed(
        "use_mps_device", None, "drop", "transformers 5 removed it: an MPS device is used when present, as CUDA is",
        f"{TRANSFORMERS_ARGS} 4.x: '`use_mps_device` is deprecated ... `mps` device will be used by default'",
    ),
    Renamed(
        "save_safetensors", None, "drop", "transformers 5 removed it: checkpoints are always safetensors",
        f"absent from {TRANSFORMERS_ARGS} 5.x TrainingArguments",
    ),
    Renamed(
        "logging_dir", None, "env", "transformers 5 removed it: the TensorBoard callback reads "
        "TENSORBOARD_LOGGING_DIR", "transformers/integrations/integration_utils.py 5.24 (TensorBoardCallback)",
        value="TENSORBOARD_LOGGING_DIR",
    ),
    Renamed(
        "warmup_ratio", "warmup_steps", "warmup", "transformers 5 removed it: `warmup_steps` below 1 is a "
        "fraction of the training steps",
        f"{TRANSFORMERS_ARGS} 5.24 get_warmup_steps: 'int(warmup_steps) if warmup_steps >= 1 else "
        "math.ceil(num_training_steps * warmup_steps)'",
        fix="use `warmup_steps` with the same number: a value below 1 is read as a fraction of the steps",
    ),
    # alignment-handbook and open-r1: their own script arguments, which TRL's parser does not know
    Renamed(
        "dataset_mixture", "datasets", "mixture", "alignment-handbook's and open-r1's mixture (id/config/split/"
        "columns/weight, seed) has a TRL counterpart: `datasets:` (path/name/split/columns) and `test_split_size`",
        f"{HANDBOOK}/data.py get_dataset; trl/scripts/utils.py DatasetConfig, DatasetMixtureConfig",
        fix=f"{MIGRATE} into TRL's `datasets:` list (removing it leaves the recipe without training data)",
    ),
    Renamed(
        "dataset_mixer", "datasets", "mixer", "alignment-handbook 0.3's `{dataset id: fraction}` with "
        "`dataset_splits` became TRL's `dataset_name` or `datasets:`", f"{HANDBOOK}/data.py 0.3 mix_datasets",
        fix=f"{MIGRATE} into `dataset_name` (one dataset) or TRL's `datasets:` list",
    ),
    Renamed(
        "dataset_splits", "dataset_train_split", "splits", "alignment-handbook 0.3 named the train and test splits "
        "in one list; TRL names them apart", f"{HANDBOOK}/data.py 0.3 mix_datasets",
        fix=f"name them `dataset_train_split` and `dataset_test_split`, or {MIGRATE}",
    ),
    Renamed(
        "dataset_configs", "dataset_config", "configs", "alignment-handbook 0.3 and early open-r1 recipes listed "
        "the dataset's config names; TRL takes one `dataset_config`", f"{HANDBOOK}/configs.py 0.3 DataArguments",
        fix="use `dataset_config: NAME` (one name, not a list)",
    ),
    Renamed(
        "preprocessing_num_workers", "dataset_num_proc", "rename", "alignment-handbook 0.3's name for the worker "
        "count; TRL's SFTConfig calls it `dataset_num_proc`", f"{HANDBOOK}/configs.py 0.3 DataArguments",
    ),
    Renamed(
        "text_column", "dataset_text_field", "rename", "alignment-handbook's name; TRL's SFTConfig calls it "
        "`dataset_text_field`", f"{HANDBOOK}/configs.py DataArguments",
    ),
    Renamed(
        "chat_template", "chat_template_path", "template", "alignment-handbook and open-r1 took the template "
        "text inline; TRL takes `chat_template_path`, a .jinja file (or a tokenizer to copy it from)",
        f"{HANDBOOK}/configs.py, {OPEN_R1} SFTConfig.chat_template; {TRL_SFT} chat_template_path",
        fix=f"chat_template_path takes a path, not the template text: save the template as a .jinja file and "
        f"point chat_template_path at it, or {MIGRATE} (it writes the file)",
    ),
    Renamed(
        "auto_insert_empty_system_msg", None, "drop", "alignment-handbook inserted an empty system turn before "
        "templating; TRL renders the messages as they are (a template may still add its default system prompt)",
        f"{HANDBOOK}/data.py maybe_insert_system_message",
    ),
    Renamed(
        "hub_model_revision", "hub_revision", "rename", "open-r1's branch to push to; transformers' "
        "TrainingArguments now has `hub_revision`", f"{OPEN_R1} SFTConfig; {TRANSFORMERS_ARGS} 5.24 hub_revision",
    ),
    Renamed(
        "callbacks", None, "drop", "open-r1's own callbacks (push_to_hub_revision pushes each save to "
        "hub_model_revision); with `hub_revision`, push_to_hub and hub_strategy the Trainer pushes to that branch",
        f"{OPEN_R1} SFTConfig.callbacks, src/open_r1/utils/callbacks.py",
    ),
    Renamed(
        "benchmarks", None, "drop", "open-r1 launched lighteval benchmarks after training; evaluate the saved "
        "model yourself", f"{OPEN_R1} SFTConfig.benchmarks",
    ),
    Renamed(
        "system_prompt", None, "drop", "open-r1 used it only for its benchmarks", f"{OPEN_R1} SFTConfig.system_prompt"
    ),
    Renamed(
        "push_to_hub_revision", None, "drop", "open-r1's switch for its revision-push callback; `hub_revision` "
        "with push_to_hub does it", f"{OPEN_R1} SFTConfig.push_to_hub_revision",
    ),
    Renamed(
        "overwrite_hub_revision", None, "drop", "open-r1's switch for its revision-push callback",
        f"{OPEN_R1} SFTConfig.overwrite_hub_revision",
    ),
    *(
        Renamed(
            f"wandb_{name}", None, "env", f"open-r1 exported it as WANDB_{name.upper()} for wandb; the recipe's "
            "`env:` block does that", "open-r1 src/open_r1/utils/wandb_logging.py init_wandb_training",
            value=f"WANDB_{name.upper()}",
        )
        for name in ("entity", "project", "run_group")
    ),
    Renamed(
        "vision_model", None, "drop", "a fork's switch for vision-language models; sft-recipes reads the kind "
        "from the model's config.json (model_kind: auto)",
        "open-r1 recipes/Qwen2.5-VL-3B-Instruct/sft/config_agent.yaml",
    ),
    Renamed(
        "single_gpu", None, "drop", "a fork's topology switch; sft-recipes picks the topology with "
        "`--accelerate_config`", "open-r1 recipes/Qwen2.5-VL-3B-Instruct/sft/config_agent.yaml",
    ),
    Renamed(
        "tokenizer_name", "tokenizer_name_or_path", "rename", "open-instruct's name for the tokenizer to load",
        "open-instruct finetune.py FlatArguments.tokenizer_name",
    ),
)}  # fmt: skip

# (key, old value) -> (new value, reason, source): values renamed while the key stayed.
VALUES: dict[tuple[str, Any], tuple[Any, str, str]] = {
    ("packing_strategy", "ffd"): (
        "bfd",
        "TRL 0.20 renamed the best-fit packer `ffd` to `bfd` (it truncates over-long rows, as before; "
        "`bfd_split` keeps their tails)",
        f"{TRL_SFT} 1.16 packing_strategy choices ['bfd', 'bfd_split', 'wrapped']",
    ),
    ("packing_strategy", "bfd-requeue"): (
        "bfd_split",
        "TRL renamed `bfd-requeue` to `bfd_split` (removal of the old name in 2.0)",
        f"{TRL_SFT} 1.16 __post_init__: 'The `bfd-requeue` packing strategy has been renamed to `bfd_split`'",
    ),
    ("loss_type", "chunked_nll"): (
        "nll",
        "TRL 1.16 deprecates `chunked_nll`: `nll` computes the same loss without materializing the logits",
        f"{TRL_SFT} 1.16 __post_init__: '`loss_type=\\'chunked_nll\\'` is deprecated ... Use `loss_type=\\'nll\\'`'",
    ),
}

# (key, inner key) -> (reason, source): entries of a dict-valued key that TRL no longer reads.
INNER_REMOVED: dict[tuple[str, str], tuple[str, str]] = {
    ("dataset_kwargs", "add_special_tokens"): (
        "TRL 1.16 reads only `skip_prepare_dataset` from dataset_kwargs; it tokenizes templated text with "
        "add_special_tokens=False, so the template's own BOS/EOS are not doubled",
        "trl/trainer/sft_trainer.py 1.16 (_tokenize: add_special_tokens=False; dataset_kwargs.skip_prepare_dataset)",
    ),
    ("dataset_kwargs", "append_concat_token"): (
        "TRL 1.16 reads only `skip_prepare_dataset` from dataset_kwargs; packing keeps each row's own EOS",
        "trl/trainer/sft_trainer.py 1.16 (dataset_kwargs.skip_prepare_dataset only)",
    ),
}


def hint(key: str, value: Any = None, has_value: bool = False) -> str | None:
    """validate's fix for a key in the table, or None; `value` (when known) tailors a flag's advice."""
    entry = RENAMED.get(key)
    if entry is None:
        return None
    if entry.action == "flag" and has_value and value is False:
        off = entry.value[1]
        if off is None:
            return f"delete the line: `{key}: false` was the default"
        return f"use `{entry.new}: {off}`, which is what `{key}: false` meant"
    if entry.fix:
        return entry.fix
    if entry.action == "env":
        return f"set it in the recipe's `env:` block: `env: {{{entry.value}: ...}}`"
    if entry.new is None:
        return f"remove it: {entry.reason}"
    return f"renamed upstream: use `{entry.new}` ({entry.reason}); `sft-recipes migrate` rewrites old recipes"
