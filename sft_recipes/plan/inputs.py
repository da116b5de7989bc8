"""A training run as the memory model sees it (PlanInput), its checks, and the bytes per element its dtypes imply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sft_recipes.errors import Problem, RecipeError

METHODS = ("full", "lora", "qlora", "8bit-lora")
PARALLELISMS = ("single", "ddp", "zero2", "zero3", "zero3_offload", "fsdp2")
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass
class PlanInput:
    """A training run as the memory model sees it; `config` is the model's config.json."""

    config: dict[str, Any]
    method: str = "lora"  # full | lora | qlora | 8bit-lora
    lora_r: int = 16
    lora_targets: str | tuple[str, ...] | list[str] | None = (
        None  # None / "all-linear": every linear projection of the decoder
    )
    lora_dropout: float = 0.05
    dtype: str = "bfloat16"  # the dtype weights are loaded in
    micro_batch_size: int = 1
    seq_len: int = 1024  # max_length (packing fills every row to it)
    gradient_checkpointing: bool = True
    checkpoint_every_n_layers: int = 1  # activation_checkpointing_kwargs: only every n-th layer is checkpointed
    checkpoint_offload: bool = False  # activation_checkpointing_kwargs: checkpointed inputs wait in host memory
    gradient_accumulation_steps: int = 1
    optimizer: str = "adamw_torch_fused"
    parallelism: str = "single"
    world_size: int = 1
    mixed_precision: str = "bf16"  # the Trainer's bf16/fp16 autocast: "bf16" | "fp16" | "no"
    attn_implementation: str = "sdpa"  # eager keeps the seq x seq scores; sdpa/flash do not
    attention_mask: bool = True  # padded or packed rows: sdpa gets a mask (and repeats the KV heads)
    fused_loss: bool = True  # TRL's chunked LM head; False = full logits (transformers' own loss)
    liger: bool = False  # Liger RMSNorm/SwiGLU kernels (TRL 1.16 keeps its own fused loss)
    nested_quant: bool = True
    images_per_sample: int = 1
    device: str = "cuda"  # "cpu": the calibration mode (no CUDA context, torch fallbacks)


def check_input(inp: PlanInput) -> None:
    problems = []
    if inp.method not in METHODS:
        problems.append(Problem("method", f"unknown method {inp.method!r}", f"one of {', '.join(METHODS)}"))
    if inp.parallelism not in PARALLELISMS:
        problems.append(Problem("parallelism", f"unknown {inp.parallelism!r}", f"one of {', '.join(PARALLELISMS)}"))
    if inp.dtype not in DTYPE_BYTES:
        problems.append(Problem("dtype", f"unknown dtype {inp.dtype!r}", "bfloat16, float16 or float32"))
    if inp.micro_batch_size < 1 or inp.seq_len < 1 or inp.world_size < 1:
        problems.append(Problem("per_device_train_batch_size", "batch size, length and world size must be >= 1"))
    if problems:
        raise RecipeError(problems)


def autocast(inp: PlanInput) -> bool:
    """Trainer runs the forward under torch.autocast with bf16/fp16 on (accelerate's mixed precision)."""
    return inp.device != "cpu" and inp.mixed_precision in ("bf16", "fp16")


def compute_bytes(inp: PlanInput) -> int:
    """Bytes per element of activations: the weights' dtype, or 2 under bf16/fp16 autocast of fp32 weights."""
    return 2 if autocast(inp) else DTYPE_BYTES[inp.dtype]  # the bnb compute dtype follows the precision too


def weight_bytes_per(inp: PlanInput) -> int:
    """Bytes of an unquantized weight: the loaded dtype, except that DeepSpeed with bf16/fp16 casts the whole
    module to 16 bits (its optimizer keeps the fp32 master copy)."""
    if inp.parallelism.startswith("zero") and inp.mixed_precision in ("bf16", "fp16"):
        return 2
    return DTYPE_BYTES[inp.dtype]


def adapter_bytes(inp: PlanInput) -> int:
    """LoRA adapters: PEFT upcasts them to fp32; TRL casts them to bf16 on quantized models and keeps the base
    dtype under ZeRO-3 (trl#6089); DeepSpeed casts everything it trains to 16 bits."""
    if inp.method in ("qlora", "8bit-lora"):
        return 2
    if inp.parallelism.startswith("zero"):
        return weight_bytes_per(inp)
    return 4
