"""Predict peak GPU memory per device for a recipe, from config.json alone; the formula is in plan.md.

Usage: sft-recipes plan --config recipes/<model>/<method>.yaml [--accelerate_config zero3] [--num_processes N]
       [--gpu-memory GiB] [--json] [--key value ...]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from sft_recipes.arguments import add_launch_flags, command_parser, launch_flags, parse_with_recipe
from sft_recipes.errors import Problem, RecipeError
from sft_recipes.model.kind import text_config

GiB = 2**30
METHODS = ("full", "lora", "qlora", "8bit-lora")
PARALLELISMS = ("single", "ddp", "zero2", "zero3", "zero3_offload", "fsdp2")
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# bitsandbytes NF4 with nested quantization: 4-bit codes, an 8-bit absmax per 64 weights and an fp32 absmax per 256
# of those (QLoRA paper section 3: 8/64 + 32/(64*256) = 0.127 bits of constants per weight).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
NF4_BYTES_PLAIN = 0.5 + 4 / 64  # without nested quantization: an fp32 absmax per 64 weights
# TRL's fused LM head (trl.kernels.chunked_logprob): tiles of 4096 tokens x 32768 vocabulary entries.
HEAD_TOKENS, HEAD_VOCAB = 4096, 32768
CUDA_CONTEXT = int(0.75 * GiB)  # CUDA context + cuBLAS workspace, outside torch.cuda.max_memory_allocated
NCCL_BUFFERS = int(0.5 * GiB)
FRAGMENTATION = 0.08  # reserved-but-unallocated share of the caching allocator at peak


# ---------------------------------------------------------------------------------------------------------- GPUs
@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gib: float  # total memory as nvidia-smi reports it, in GiB (torch sees ~1-2% less)
    bf16_tflops: float  # peak dense tensor-core TFLOP/s, no sparsity; fp16 where the GPU has no bf16
    bf16: bool = True


# NVIDIA datasheets, dense (the "with sparsity" figures are twice these).
KNOWN_GPUS: dict[str, GpuSpec] = {
    "H100 SXM": GpuSpec("H100 SXM", 79.6, 989.0),
    "H100 PCIe": GpuSpec("H100 PCIe", 79.6, 756.0),
    "H200": GpuSpec("H200", 140.4, 989.0),
    "A100 80GB": GpuSpec("A100 80GB", 80.0, 312.0),
    "A100 40GB": GpuSpec("A100 40GB", 40.0, 312.0),
    "L40S": GpuSpec("L40S", 45.0, 362.0),
    "A10G": GpuSpec("A10G", 22.5, 70.0),  # AWS's A10 variant; the datacenter A10 is 125
    "L4": GpuSpec("L4", 22.5, 121.0),
    "RTX 4090": GpuSpec("RTX 4090", 24.0, 165.0),  # fp32 accumulation (GeForce runs it at half the fp16 rate)
    "RTX 3090": GpuSpec("RTX 3090", 24.0, 71.0),
    "T4": GpuSpec("T4", 15.0, 65.0, bf16=False),
    "V100 32GB": GpuSpec("V100 32GB", 32.0, 125.0, bf16=False),
    "V100 16GB": GpuSpec("V100 16GB", 16.0, 125.0, bf16=False),
}
# torch.cuda.get_device_name() spellings, most specific first: "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", ...
_GPU_PATTERNS = (
    ("H100", "PCIE", "H100 PCIe"),
    ("H100", "", "H100 SXM"),
    ("H200", "", "H200"),
    ("A100", "40G", "A100 40GB"),
    ("A100", "", "A100 80GB"),
    ("L40S", "", "L40S"),
    ("A10G", "", "A10G"),
    ("L4", "", "L4"),
    ("4090", "", "RTX 4090"),
    ("3090", "", "RTX 3090"),
    ("T4", "", "T4"),
    ("V100", "16G", "V100 16GB"),
    ("V100", "", "V100 32GB"),
)


def gpu_spec(name: str) -> GpuSpec | None:
    """A KNOWN_GPUS entry from its key or a torch.cuda.get_device_name() string; None when unknown."""
    if name in KNOWN_GPUS:
        return KNOWN_GPUS[name]
    words = name.upper().replace("-", " ").replace("_", " ").split()
    text = " ".join(words)
    for model, variant, key in _GPU_PATTERNS:
        # "L4" must not match "L40S", "T4" not "RTX 4090": compare whole words, then the variant anywhere
        whole = any(w == model or w.startswith(model) and not w[len(model) :].isdigit() for w in words)
        if whole and variant in text:
            return KNOWN_GPUS[key]
    return None


# --------------------------------------------------------------------------------------------------- model shape
@dataclass(frozen=True)
class Shape:
    """What memory depends on in a decoder, read from config.json (text part)."""

    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norms_per_layer: int = 2
    qk_norm: bool = False
    gemma_norm: bool = False  # (1 + weight) * x in fp32 instead of weight * x.to(dtype)
    fused_projections: bool = False  # phi3: qkv_proj and gate_up_proj
    experts: int = 0
    experts_per_token: int = 0
    moe_intermediate: int = 0
    shared_intermediate: int = 0
    moe_layers: int = 0
    softcap: bool = False  # gemma2's tanh soft-capping of attention scores (eager attention)
    known: bool = True


@dataclass(frozen=True)
class VisionShape:
    """A ViT-style vision tower, estimated from vision_config (LayerNorm, biases, gelu MLP)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    patches: int  # patches of one image
    patch_size: int


_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text"}
_HEAD_DIM_DEFAULT = {"qwen3": 128, "qwen3_moe": 128, "gemma": 256, "gemma2": 256, "gemma3_text": 256}
_KNOWN_TYPES = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "smollm3",
}


def model_shape(config: dict[str, Any]) -> Shape:
    text = text_config(config)
    model_type = text.get("model_type") or config.get("model_type") or "unknown"
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if not text.get(k)]
    if missing:
        raise RecipeError(Problem("config.json", f"missing {', '.join(missing)}: cannot size the model"))
    h, heads = text["hidden_size"], text["num_attention_heads"]
    experts = text.get("num_local_experts") or text.get("num_experts") or 0
    moe_layers = 0
    if experts:
        step = text.get("decoder_sparse_step") or 1
        only = set(text.get("mlp_only_layers") or [])
        moe_layers = sum(1 for i in range(text["num_hidden_layers"]) if i not in only and (i + 1) % step == 0)
    tied = text.get("tie_word_embeddings", config.get("tie_word_embeddings"))
    is_gemma = model_type in ("gemma", "gemma2", "gemma3_text", "gemma3")
    return Shape(
        model_type=model_type,
        vocab=text["vocab_size"],
        hidden=h,
        layers=text["num_hidden_layers"],
        heads=heads,
        kv_heads=text.get("num_key_value_heads") or heads,
        head_dim=text.get("head_dim") or _HEAD_DIM_DEFAULT.get(model_type) or h // heads,
        intermediate=text.get("intermediate_size") or 4 * h,
        tied=model_type in _TIED_BY_DEFAULT if tied is None else bool(tied),
        qkv_bias=model_type in ("qwen2", "qwen2_moe") or bool(text.get("attention_bias")),
        o_bias=bool(text.get("attention_bias")),
        mlp_bias=bool(text.get("mlp_bias")),
        norms_per_layer=4 if model_type in ("gemma2", "gemma3_text", "gemma3") else 2,
        qk_norm=model_type in ("qwen3", "qwen3_moe", "gemma3_text", "gemma3"),
        gemma_norm=is_gemma,
        fused_projections=model_type == "phi3",
        softcap=bool(text.get("attn_logit_softcapping")),
        experts=experts,
        experts_per_token=text.get("num_experts_per_tok") or 0,
        moe_intermediate=text.get("moe_intermediate_size") or text.get("intermediate_size") or 4 * h,
        shared_intermediate=text.get("shared_expert_intermediate_size") or 0,
        moe_layers=moe_layers,
        known=model_type in _KNOWN_TYPES,
    )


def vision_shape(config: dict[str, Any]) -> VisionShape | None:
    vision = config.get("vision_config")
    if not vision:
        return None
    patch = vision.get("patch_size") or 14
    side = (vision.get("image_size") or 224) // patch
    return VisionShape(
        hidden=vision.get("hidden_size") or 1024,
        layers=vision.get("num_hidden_layers") or vision.get("depth") or 24,
        heads=vision.get("num_attention_heads") or vision.get("num_heads") or 16,
        intermediate=vision.get("intermediate_size") or 4 * (vision.get("hidden_size") or 1024),
        patches=side * side,
        patch_size=patch,
    )


def layer_linears(s: Shape) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each dense nn.Linear of one decoder layer, by module name."""
    q, kv, h, f = s.heads * s.head_dim, s.kv_heads * s.head_dim, s.hidden, s.intermediate
    if s.fused_projections:
        return {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * f), "down_proj": (f, h)}
    attention = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}
    if s.experts:
        return attention  # expert weights are 3-D parameters, not nn.Linear: LoRA and bitsandbytes skip them
    return {**attention, "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}


@dataclass(frozen=True)
class Tensor:
    """`count` parameters of `shape`; role: embedding, lm_head, linear, bias, norm, expert, router, vision."""

    name: str
    shape: tuple[int, ...]
    count: int
    role: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape) * self.count


def parameter_tensors(config: dict[str, Any]) -> list[Tensor]:
    """Every parameter tensor of the model (vision tower estimated), with the number of layers it repeats in."""
    s = model_shape(config)
    h, L = s.hidden, s.layers
    out = [Tensor("embed_tokens", (s.vocab, h), 1, "embedding")]
    for name, (fan_in, fan_out) in layer_linears(s).items():
        out.append(Tensor(name, (fan_out, fan_in), L, "linear"))
        if (name in ("q_proj", "k_proj", "v_proj", "qkv_proj") and s.qkv_bias) or (name == "o_proj" and s.o_bias):
            out.append(Tensor(f"{name}.bias", (fan_out,), L, "bias"))
        if name in ("gate_proj", "up_proj", "down_proj") and s.mlp_bias:
            out.append(Tensor(f"{name}.bias", (fan_out,), L, "bias"))
    if s.experts:
        dense = L - s.moe_layers
        f, fe = s.intermediate, s.moe_intermediate
        out += [Tensor(n, shape, dense, "linear") for n, shape in (("gate_proj", (f, h)), ("up_proj", (f, h)))]
        out.append(Tensor("down_proj", (h, f), dense, "linear"))
        out.append(Tensor("experts.gate_up_proj", (s.experts, 2 * fe, h), s.moe_layers, "expert"))
        out.append(Tensor("experts.down_proj", (s.experts, h, fe), s.moe_layers, "expert"))
        out.append(Tensor("router", (s.experts, h), s.moe_layers, "router"))
        if s.shared_intermediate:
            fs = s.shared_intermediate
            out.append(Tensor("shared_expert.gate_proj", (fs, h), s.moe_layers, "linear"))
            out.append(Tensor("shared_expert.up_proj", (fs, h), s.moe_layers, "linear"))
            out.append(Tensor("shared_expert.down_proj", (h, fs), s.moe_layers, "linear"))
            out.append(Tensor("shared_expert_gate", (1, h), s.moe_layers, "linear"))
    out.append(Tensor("layer norms", (h,), L * s.norms_per_layer, "norm"))
    if s.qk_norm:
        out.append(Tensor("q_norm/k_norm", (s.head_dim,), 2 * L, "norm"))
    out.append(Tensor("norm", (h,), 1, "norm"))
    if not s.tied:
        out.append(Tensor("lm_head", (s.vocab, h), 1, "lm_head"))
    v = vision_shape(config)
    if v:
        hv, iv = v.hidden, v.intermediate
        out += [
            Tensor("vision.attention", (4 * hv, hv), v.layers, "vision"),
            Tensor("vision.mlp", (2 * iv, hv), v.layers, "vision"),
            Tensor("vision.biases+norms", (9 * hv + iv,), v.layers, "vision_small"),
            Tensor("vision.patch+position", (3 * v.patch_size**2 + v.patches + 3, hv), 1, "vision_small"),
            Tensor("projector", (h, hv + h), 1, "vision"),
        ]
    return out


def count_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """Parameter counts by part, exact for llama/mistral/qwen2/qwen3/gemma(2,3)/phi3 and their MoE cousins; the
    vision tower of a VLM is an estimate. `exact` is False when anything was estimated."""
    s = model_shape(config)
    tensors = parameter_tensors(config)
    parts: dict[str, int] = {}
    for t in tensors:
        part = {"linear": "layers", "bias": "layers", "norm": "norms", "expert": "layers", "router": "layers"}.get(
            t.role, t.role
        )
        part = "vision" if part.startswith("vision") else part
        parts[part] = parts.get(part, 0) + t.numel
    total = sum(parts.values())
    return {
        **parts,
        "total": total,
        "quantizable": sum(t.numel for t in tensors if t.role in ("linear", "vision")),
        "exact": s.known and "vision" not in parts,
        "note": "" if s.known else f"model_type {s.model_type!r} sized as a llama-like decoder: an estimate",
    }


def resolve_targets(s: Shape, targets: str | tuple[str, ...] | list[str] | None) -> tuple[list[str], list[str]]:
    """(module names of one decoder layer that LoRA adapts, requested names that match nothing)."""
    linears = layer_linears(s)
    if targets is None or targets == "all-linear" or (not isinstance(targets, str) and "all-linear" in targets):
        return list(linears), []
    if isinstance(targets, str):  # a regex (VLM default): the language model's projections it names
        import re

        return [n for n in linears if re.search(targets, f"model.language_model.layers.0.self_attn.{n}")], []
    return [t for t in linears if t in targets], [t for t in targets if t not in linears]


def lora_parameters(config: dict[str, Any], targets: str | tuple[str, ...] | list[str] | None, r: int) -> int:
    """Sum over adapted linears in all layers of r * (in + out) (A is r x in, B is out x r)."""
    s = model_shape(config)
    linears = layer_linears(s)
    names, _ = resolve_targets(s, targets)
    return sum(r * (linears[n][0] + linears[n][1]) for n in names) * s.layers


# ---------------------------------------------------------------------------------------------------------- input
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


def _check(inp: PlanInput) -> None:
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


# ----------------------------------------------------------------------------------------------------- optimizers
def optimizer_bytes(optim: str, tensors: list[Tensor], state_bytes: int) -> tuple[int, str]:
    """Bytes of optimizer state for these trainable tensors, and a note; state_bytes = the param dtype's size."""
    name = optim.lower()
    total = 0
    for t in tensors:
        n = t.numel
        if "8bit" in name:  # bitsandbytes: uint8 states + an fp32 absmax per 256; fp32 below 4096 elements
            per = 1 if "lion" in name else 2
            total += 4 * per * n if n // t.count < 4096 else per * (n + 4 * math.ceil(n / 256))
        elif "4bit" in name:
            total += n + 8 * math.ceil(n / 128)
        elif "32bit" in name or name.startswith("paged_"):
            total += 4 * n if "lion" in name else 8 * n  # bitsandbytes 32-bit states are fp32 whatever the params
        elif name.startswith("adafactor"):  # factored second moment: rows + columns of each matrix
            rows_cols = sum(t.shape[:-1]) + t.shape[-1] if len(t.shape) > 1 else t.shape[0]
            total += rows_cols * t.count * state_bytes
        elif name.startswith("sgd"):
            total += 0  # Trainer's SGD has no momentum, so no state
        elif "lion" in name or name.startswith(("adagrad", "rmsprop")):
            total += n * state_bytes
        elif "ademamix" in name:
            total += 3 * n * state_bytes  # two first moments and a second one
        else:  # adamw_torch, adamw_torch_fused, adamw_hf, ...: exp_avg + exp_avg_sq in the params' dtype
            total += 2 * n * state_bytes
    known = ("adamw", "adam", "8bit", "32bit", "adafactor", "sgd", "lion", "adagrad", "rmsprop", "4bit")
    note = "" if any(k in name for k in known) else f"unknown optimizer {optim!r}: sized as AdamW"
    return total, note


def _optimizer_step_temp(inp: PlanInput, trainable: list[Tensor], state_bytes: int) -> int:
    """Scratch memory of one optimizer step: torch's foreach AdamW (CUDA, not fused) keeps a sqrt(exp_avg_sq) copy
    of every state at once; the single-tensor path on CPU holds two temporaries of the largest parameter."""
    name = inp.optimizer.lower()
    if "fused" in name or not name.startswith("adam") or "8bit" in name or "32bit" in name:
        return 0
    if inp.device == "cpu":
        return 2 * max((t.numel // t.count for t in trainable), default=0) * state_bytes
    return sum(t.numel for t in trainable) * state_bytes


# ---------------------------------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class ActivationBytes:
    """Sizes that depend on the batch: per token unless named otherwise."""

    layer: int  # saved for backward by one decoder layer (all of it), per token
    first_layer: int  # the first layer, whose input needs no gradient under LoRA without checkpointing
    layer_input: int  # what a checkpointed layer keeps: its input
    head_saved: int  # final norm + the LM head's saved hidden states and per-token outputs
    per_layer_seq: int  # per token *per token of context*: seq x seq terms (eager scores, sdpa masks)


def _norm_bytes(s: Shape, width: int, b: int, trainable: bool, liger: bool) -> int:
    """RMSNorm: fp32 upcast of the input + rsqrt, and the pre-weight output when the weight trains."""
    if liger:
        return b * width + 4  # Liger's kernel keeps only its input and rstd
    if s.gemma_norm:
        return 4 * width + 4 + (4 * width if trainable else 0)
    return 4 * width + 4 + (b * width if trainable else 0)


def activation_bytes(inp: PlanInput) -> ActivationBytes:
    """Bytes autograd keeps for backward, per token, layer by layer, as measured with saved-tensor hooks on
    transformers' llama/qwen/gemma code (see plan.md for the walk through one layer)."""
    s = model_shape(inp.config)
    h, f, d = s.hidden, s.intermediate, s.head_dim
    q, kv = s.heads * d, s.kv_heads * d
    b = _compute_bytes(inp)
    full = inp.method == "full"
    lora = not full
    b_ad = _adapter_bytes(inp)
    r = inp.lora_r
    adapted = set(resolve_targets(s, inp.lora_targets)[0]) if lora else set()
    dropout = inp.lora_dropout > 0
    # Under autocast lora_A computes (and keeps its input) in the compute dtype, whatever the adapter's dtype
    b_lora = b if _autocast(inp) else b_ad
    mask_bytes = b_lora if inp.device == "cpu" else 1  # CPU dropout keeps a float noise tensor, CUDA a bool mask
    base_saves_input = full or inp.method == "8bit-lora"  # bnb int8 matmul keeps its input; NF4 does not
    eager = inp.attn_implementation == "eager"

    norm = _norm_bytes(s, h, b, full, inp.liger)
    # query, and output + fp32 logsumexp of the fused kernels; eager's output is a copy counted with o_proj's input
    attention = q * b + (0 if eager else q * b + 4 * s.heads)
    # sdpa with a mask (padding, packing) cannot use GQA: transformers repeats the KV heads and sdpa keeps the copies
    attention += 2 * (q if eager or (inp.attn_implementation == "sdpa" and inp.attention_mask) else kv) * b
    if s.fused_projections:
        attention += (q + kv) * b  # phi3's value is a view of the fused qkv output, which it keeps whole
    if s.qk_norm:
        attention += _norm_bytes(s, q + kv, b, full, inp.liger) - 4 + 4 * (s.heads + s.kv_heads)
    if s.experts:
        k = max(s.experts_per_token, 1)
        fe = s.moe_intermediate
        mlp = k * (4 * fe * b + h * b) + 4 * s.experts + 8 * k  # routed copies + router softmax, an estimate
        if s.shared_intermediate:
            mlp += 4 * s.shared_intermediate * b
        moe_share = s.moe_layers / s.layers
        mlp = int(moe_share * mlp + (1 - moe_share) * 4 * s.intermediate * b)
    else:
        mlp = (2 if inp.liger else 3) * f * b  # gate out (for SiLU), SiLU out and up out (for the product)

    # Inputs of the projections, grouped by the tensor they read; module names as in layer_linears
    if s.fused_projections:
        groups = [(h, ["qkv_proj"], False), (q, ["o_proj"], not eager), (h, ["gate_up_proj"], False)]
        groups.append((f, ["down_proj"], False))
    else:
        groups = [(h, ["q_proj", "k_proj", "v_proj"], False), (q, ["o_proj"], not eager)]
        groups += [(h, ["gate_proj", "up_proj"], False), (f, ["down_proj"], False)]
    inputs = 0
    for width, consumers, already_saved in groups:
        targeted = [c for c in consumers if c in adapted]
        group_tensor_saved = base_saves_input and not already_saved
        for _ in targeted:
            if dropout:
                inputs += width * (b_lora + mask_bytes)  # dropout output (lora_A's input) + its mask
            elif b_ad != b:
                inputs += width * b_lora  # peft casts the input to the adapter's dtype, once per adapter
            else:
                group_tensor_saved = group_tensor_saved or not already_saved
            inputs += r * b_lora  # lora_A's output, kept by lora_B
        if group_tensor_saved:
            inputs += width * b
    layer = s.norms_per_layer * norm + attention + mlp + inputs
    # LoRA without checkpointing: the embeddings need no gradient, so layer 0's input norm and the dropout masks
    # of the adapters reading it keep nothing.
    first = layer
    if lora and not inp.gradient_checkpointing:
        first -= norm + (len([c for c in groups[0][1] if c in adapted]) * h * mask_bytes if dropout else 0)
    per_layer_seq = 0
    if eager:  # fp32 softmax output (+ its cast to the compute dtype, + gemma2's tanh soft-capping)
        per_layer_seq = s.heads * (4 + (b if b != 4 else 0) + (b if s.softcap else 0))
    elif inp.attn_implementation == "sdpa" and inp.attention_mask:
        per_layer_seq = b  # sdpa turns the boolean mask into an additive one per layer and keeps it
    # TRL's head keeps a copy of the hidden states, labels (int64), log Z and entropy (fp32), two bool masks; the
    # per-token outputs (log-probs, entropy, top-1) stay alive until the loss is reduced
    head = _norm_bytes(s, h, b, full, inp.liger) + (h * b + 18 + 12 if inp.fused_loss else s.vocab * (b + 4))
    if full:
        head += 8 + (0 if inp.fused_loss else h * b)  # the embedding keeps the token ids; lm_head its input
    return ActivationBytes(layer, first, h * b, head, per_layer_seq)


def _autocast(inp: PlanInput) -> bool:
    """Trainer runs the forward under torch.autocast with bf16/fp16 on (accelerate's mixed precision)."""
    return inp.device != "cpu" and inp.mixed_precision in ("bf16", "fp16")


def _compute_bytes(inp: PlanInput) -> int:
    """Bytes per element of activations: the weights' dtype, or 2 under bf16/fp16 autocast of fp32 weights."""
    return 2 if _autocast(inp) else DTYPE_BYTES[inp.dtype]  # the bnb compute dtype follows the precision too


def _weight_bytes_per(inp: PlanInput) -> int:
    """Bytes of an unquantized weight: the loaded dtype, except that DeepSpeed with bf16/fp16 casts the whole
    module to 16 bits (its optimizer keeps the fp32 master copy)."""
    if inp.parallelism.startswith("zero") and inp.mixed_precision in ("bf16", "fp16"):
        return 2
    return DTYPE_BYTES[inp.dtype]


def _adapter_bytes(inp: PlanInput) -> int:
    """LoRA adapters: PEFT upcasts them to fp32; TRL casts them to bf16 on quantized models and keeps the base
    dtype under ZeRO-3 (trl#6089); DeepSpeed casts everything it trains to 16 bits."""
    if inp.method in ("qlora", "8bit-lora"):
        return 2
    if inp.parallelism.startswith("zero"):
        return _weight_bytes_per(inp)
    return 4


# ------------------------------------------------------------------------------------------------------------ plan
@dataclass
class Plan:
    """Peak memory per GPU: `breakdown` holds what is live at the peak, in bytes; `components` the full sizes."""

    input: PlanInput
    breakdown: dict[str, int]
    notes: dict[str, str]
    components: dict[str, int]
    peak_phase: str
    parameters: dict[str, Any]
    trainable_parameters: int
    cpu_bytes: int = 0  # offloaded to host memory, per process
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.breakdown.values())

    @property
    def allocated(self) -> int:
        """What torch.cuda.max_memory_allocated() should report: the total less context and fragmentation."""
        return self.total - self.breakdown.get("CUDA context", 0) - self.breakdown.get("allocator fragmentation", 0)

    def fits(self, gpu_memory_gib: float) -> bool:
        return self.total <= gpu_memory_gib * GiB

    def max_micro_batch(self, gpu_memory_gib: float, limit: int = 4096) -> int:
        """The largest per-device batch that fits (0: not even 1); memory grows with the batch, so bisect."""
        low, high = 0, 1
        while high <= limit and _fits(self.input, gpu_memory_gib, micro_batch_size=high):
            low, high = high, high * 2
        high = min(high, limit + 1)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if _fits(self.input, gpu_memory_gib, micro_batch_size=mid) else (low, mid)
        return low

    def fixes(self, gpu_memory_gib: float) -> list[tuple[str, dict[str, Any]]]:
        """(recipe change, PlanInput changes) that make the run fit, cheapest first; [] if it already fits.
        Single changes when any is enough, else the first stack of them, in order, that is."""
        if self.fits(gpu_memory_gib):
            return []
        inp, gib = self.input, gpu_memory_gib
        candidates = [fix for fix in (make(inp, gib) for make in FIXES) if fix]
        singles = [fix for fix in candidates if _fits(inp, gib, **fix[1])]
        if singles:
            return singles
        texts, current = [], inp
        for make in FIXES:
            fix = make(current, gib)
            if fix:
                texts.append(fix[0])
                current = replace(current, **fix[1])
                if estimate(current).fits(gib):
                    changes = {f.name: getattr(current, f.name) for f in fields(inp)}
                    return [(" + ".join(texts), {k: v for k, v in changes.items() if v != getattr(inp, k)})]
        return []

    def suggestions(self, gpu_memory_gib: float) -> list[str]:
        """The fixes as lines, each with the peak it re-estimates to."""
        return [
            f"{text} ({estimate(replace(self.input, **changes)).total / GiB:.1f} GiB)"
            for text, changes in self.fixes(gpu_memory_gib)
        ]

    def to_dict(self) -> dict[str, Any]:
        inp = asdict(self.input)
        inp.pop("config")
        return {
            "total_bytes": self.total,
            "total_gib": round(self.total / GiB, 2),
            "peak_phase": self.peak_phase,
            "breakdown": [
                {"component": k, "bytes": v, "gib": round(v / GiB, 2), "note": self.notes.get(k, "")}
                for k, v in self.breakdown.items()
            ],
            "components": self.components,
            "parameters": self.parameters,
            "trainable_parameters": self.trainable_parameters,
            "cpu_offload_bytes": self.cpu_bytes,
            "warnings": self.warnings,
            "input": inp,
        }


def _fits(inp: PlanInput, gib: float, **changes: Any) -> bool:
    return estimate(replace(inp, **changes)).fits(gib)


def _fix_checkpointing(inp: PlanInput, gib: float) -> tuple[str, dict[str, Any]] | None:
    return None if inp.gradient_checkpointing else ("gradient_checkpointing: true", {"gradient_checkpointing": True})


def _fix_batch(inp: PlanInput, gib: float) -> tuple[str, dict[str, Any]] | None:
    """The largest micro-batch that fits (1 at least), with more accumulation to keep the effective batch."""
    best = max(estimate(inp).max_micro_batch(gib), 1)
    if best >= inp.micro_batch_size:
        return None
    steps = inp.gradient_accumulation_steps * math.ceil(inp.micro_batch_size / best)
    text = f"per_device_train_batch_size: {best}, gradient_accumulation_steps: {steps}"
    return text, {"micro_batch_size": best, "gradient_accumulation_steps": steps}


def _fix_length(inp: PlanInput, gib: float) -> tuple[str, dict[str, Any]] | None:
    for length in (inp.seq_len // 2, inp.seq_len // 4):
        if length >= 256 and _fits(inp, gib, seq_len=length):
            return f"max_length: {length}", {"seq_len": length}
    return None


def _fix_optimizer(inp: PlanInput, gib: float) -> tuple[str, dict[str, Any]] | None:
    if inp.method != "full" or "8bit" in inp.optimizer:
        return None
    return "optim: adamw_8bit", {"optimizer": "adamw_8bit"}


def _fix_lora(inp: PlanInput, gib: float) -> tuple[str, dict[str, Any]] | None:
    return ("use_peft: true (LoRA)", {"method": "lora"}) if inp.method == "full" else None


def _fix_qlora(inp: PlanInput, gib: float) -> tuple[str, dict[str, Any]] | None:
    return None if inp.method == "qlora" else ("load_in_4bit: true, use_peft: true (QLoRA)", {"method": "qlora"})


def _fix_zero3(inp: PlanInput, gib: float) -> tuple[str, dict[str, Any]] | None:
    if inp.world_size == 1 or inp.parallelism in ("zero3", "zero3_offload", "fsdp2"):
        return None
    return f"--accelerate_config zero3 (on the same {inp.world_size} GPUs)", {"parallelism": "zero3"}


def _fix_more_gpus(inp: PlanInput, gib: float) -> tuple[str, dict[str, Any]] | None:
    parallel = inp.parallelism if inp.parallelism in ("zero3", "fsdp2") else "zero3"
    for world in (2, 4, 8, 16, 32, 64):
        changes = {"world_size": world, "parallelism": parallel}
        if world > inp.world_size and _fits(inp, gib, **changes):
            return f"--accelerate_config {parallel} --num_processes {world}", changes
    return None


def _fix_offload(inp: PlanInput, gib: float) -> tuple[str, dict[str, Any]] | None:
    if inp.parallelism == "zero3_offload":
        return None
    return "--accelerate_config zero3_offload (optimizer and weights in host memory)", {"parallelism": "zero3_offload"}


# Cheapest first: nothing that changes what is learned, then the method, then the hardware.
FIXES = (
    _fix_checkpointing,
    _fix_batch,
    _fix_length,
    _fix_optimizer,
    _fix_lora,
    _fix_qlora,
    _fix_zero3,
    _fix_more_gpus,
    _fix_offload,
)


def _weight_bytes(inp: PlanInput, tensors: list[Tensor], total: int) -> tuple[int, str]:
    """Quantized linears + everything else in the loaded dtype."""
    linears = [t for t in tensors if t.role in ("linear", "vision")]
    quantized = sum(t.numel for t in linears) if inp.method in ("qlora", "8bit-lora") else 0
    if inp.method == "qlora":
        per = NF4_BYTES if inp.nested_quant else NF4_BYTES_PLAIN
        quant, how = quantized * per, f"NF4 ({8 * per:.3f} bits)"
    elif inp.method == "8bit-lora":
        quant, how = quantized + 4 * sum(t.shape[0] * t.count for t in linears), "int8 + fp32 row scales"
    else:
        quant, how = 0, ""
    note = f"{total / 1e9:.2f}B params" + (
        f"; {quantized / 1e9:.2f}B linear in {how}, the rest in {inp.dtype}" if quantized else f" in {inp.dtype}"
    )
    return int(quant + (total - quantized) * _weight_bytes_per(inp)), note


def _trainable_tensors(inp: PlanInput, s: Shape, tensors: list[Tensor]) -> tuple[list[Tensor], list[str]]:
    """All parameters (full) or the LoRA matrices of every layer, and warnings about unmatched targets."""
    if inp.method == "full":
        return tensors, []
    names, unmatched = resolve_targets(s, inp.lora_targets)
    shapes = layer_linears(s)
    lora = [Tensor(f"lora_A.{n}", (inp.lora_r, shapes[n][0]), s.layers, "lora") for n in names]
    lora += [Tensor(f"lora_B.{n}", (shapes[n][1], inp.lora_r), s.layers, "lora") for n in names]
    return lora, [f"LoRA targets {unmatched} match no linear layer of {s.model_type}"] if unmatched else []


def _saved_activations(inp: PlanInput, s: Shape, tensors: list[Tensor], acts: ActivationBytes) -> tuple[int, str]:
    """Everything the decoder (and a VLM's vision tower) keeps for backward at the end of the forward."""
    N, L, b = inp.micro_batch_size * inp.seq_len, s.layers, _compute_bytes(inp)
    full = inp.method == "full"
    seq_terms = acts.per_layer_seq * inp.seq_len
    rope = 2 * inp.seq_len * s.head_dim * b  # cos and sin, shared by the layers that keep their activations
    if inp.gradient_checkpointing:
        checkpointed = math.ceil(L / max(inp.checkpoint_every_n_layers, 1))  # layers 0, n, 2n, ...
        total = (0 if inp.checkpoint_offload else checkpointed * acts.layer_input * N) + (L - checkpointed) * (
            (acts.layer + seq_terms) * N
        )
        total += rope if checkpointed < L else 0
        note = f"checkpointed: the input of {checkpointed} of {L} layers, {N} tokens"
        note += " (offloaded to host memory)" if inp.checkpoint_offload else ""
    else:
        total = (acts.first_layer + (L - 1) * acts.layer + L * seq_terms) * N + rope
        note = f"{L} layers x {N} tokens x {(acts.layer + seq_terms) / 1024:.1f} KiB"
    if inp.dtype == "float32" and _autocast(inp):
        # autocast's bf16 copies of the fp32 weights: cached for trainable ones, kept by backward for frozen ones
        linear_params = sum(t.numel for t in tensors if t.role == "linear")
        copies = 2 * (linear_params if full or not inp.gradient_checkpointing else linear_params // L)
        total += copies
        note += f"; {copies / GiB:.2f} GiB of bf16 weight copies made by autocast"
    vision = vision_shape(inp.config)
    if vision and full:  # LoRA leaves the vision tower frozen (model.default_lora_targets): it keeps nothing
        hv = vision.hidden
        per_token = 2 * (4 * hv + 4 + b * hv) + 4 * hv * b + 4 * vision.heads + 3 * vision.intermediate * b
        images = vision.patches * inp.images_per_sample * inp.micro_batch_size
        vision_bytes = (1 if inp.gradient_checkpointing else vision.layers) * per_token * images
        total += vision_bytes
        note += f"; vision tower ~{vision_bytes / GiB:.2f} GiB (estimate)"
    return total, note


def _loss_head(inp: PlanInput, s: Shape) -> tuple[int, int, str]:
    """Scratch of the LM head + loss, forward and backward: TRL's chunked log-softmax tiles (or full logits)."""
    N, V, h = inp.micro_batch_size * inp.seq_len, s.vocab, s.hidden
    b, wb = _compute_bytes(inp), _weight_bytes_per(inp)
    n_tile = min(N, HEAD_TOKENS)
    if not inp.fused_loss:
        forward, backward = N * V * 4, N * V * (8 + b)
        note = f"full logits: {N} tokens x {V} vocabulary"
    elif inp.device == "cpu":  # torch fallback: fp32 temporaries of the tile's size (3 forward, 7 + a bool backward)
        tile = n_tile * min(V, HEAD_VOCAB)  # only the touched part of the [4096 x 32768] buffer is resident
        forward = tile * b + 3 * tile * 4 + 7 * N * 4
        backward = tile * b + 7 * tile * 4 + tile + N * h * (4 + b)
        note = "TRL's chunked LM head (torch fallback)"
    else:  # Triton: one [4096 x 32768] buffer in the compute dtype
        forward = n_tile * HEAD_VOCAB * b + 7 * N * 4
        backward = n_tile * HEAD_VOCAB * b + N * h * (4 + b)
        note = "TRL's chunked LM head: the full logits are never built"
    if inp.method == "full":  # the fp32 gradient accumulator of lm_head, then its cast to the weights' dtype
        backward += V * h * (4 + (wb if wb != 4 else 0))
    return forward, backward, note


def _layer_backward(inp: PlanInput, s: Shape, one_layer: int) -> int:
    """One layer's backward: gradients of its activations (+ the recomputed layer under checkpointing)."""
    N, h, b = inp.micro_batch_size * inp.seq_len, s.hidden, _compute_bytes(inp)
    work = N * (3 * s.intermediate + 2 * h) * b
    if inp.attn_implementation == "eager":
        work += N * inp.seq_len * s.heads * (4 + 2 * b)
    if inp.method == "qlora":  # bitsandbytes dequantizes one weight at a time
        work += 2 * max(fi * fo for fi, fo in layer_linears(s).values()) * b
    elif inp.method == "8bit-lora":
        work += 3 * N * max(h, s.intermediate)  # fp16 copy and int8 codes of the input
    return work + (one_layer if inp.gradient_checkpointing else 0)


def estimate(inp: PlanInput) -> Plan:
    """Peak memory per GPU of one training process; plan.md derives every term and gives its source."""
    _check(inp)
    s, tensors, counts = model_shape(inp.config), parameter_tensors(inp.config), count_parameters(inp.config)
    N, V, h, wb = inp.micro_batch_size * inp.seq_len, s.vocab, s.hidden, _weight_bytes_per(inp)
    world = inp.world_size if inp.parallelism != "single" else 1
    deepspeed, full = inp.parallelism.startswith("zero"), inp.method == "full"
    sharded = inp.parallelism in ("zero3", "zero3_offload", "fsdp2")
    notes: dict[str, str] = {}
    weights, notes["weights"] = _weight_bytes(inp, tensors, counts["total"])
    trainable, warnings = _trainable_tensors(inp, s, tensors)
    warnings = ([counts["note"]] if counts["note"] else []) + warnings
    n_trainable = sum(t.numel for t in trainable)
    tb = wb if full else _adapter_bytes(inp)
    if inp.parallelism == "fsdp2" and inp.mixed_precision != "no" and inp.method != "qlora":
        # accelerate upcasts trainable parameters to fp32 before fully_shard (utils/fsdp_utils.py)
        weights += (n_trainable * (4 - wb)) if full else 0
        tb = 4
    adapters, grads = (0 if full else n_trainable * tb), n_trainable * tb
    optim, optim_note = optimizer_bytes(inp.optimizer, trainable, 4 if deepspeed else tb)
    warnings += [optim_note] if optim_note else []
    master = n_trainable * 4 if deepspeed else 0  # ZeRO's optimizer keeps fp32 copies of the trainable weights
    opt_temp = _optimizer_step_temp(inp, trainable, 4 if deepspeed else tb)

    acts = activation_bytes(inp)
    activations, notes["activations"] = _saved_activations(inp, s, tensors, acts)
    one_layer = (acts.layer + acts.per_layer_seq * inp.seq_len) * N
    head_saved = acts.head_saved * N
    head_fwd, head_bwd, notes["loss head"] = _loss_head(inp, s)
    layer_work = _layer_backward(inp, s, one_layer)

    # Parallelism (ZeRO paper: stage 2 shards gradients + optimizer, stage 3 the weights too; FSDP2 as stage 3)
    shards = world if deepspeed or sharded else 1
    gathered = comm = cpu_bytes = 0
    if sharded:
        weights, adapters = weights // world, adapters // world
        layer_params = sum(fi * fo for fi, fo in layer_linears(s).values())
        # the layer at work and the next one prefetched, unsharded (or the embedding / LM head when at work)
        gathered = max(2 * layer_params, V * h) * (_compute_bytes(inp) if inp.parallelism == "fsdp2" else wb)
        if inp.parallelism == "fsdp2" and full:
            gathered += layer_params * tb  # a layer's unsharded gradients before the reduce-scatter
    grads, optim, master = grads // shards, optim // shards, master // shards
    if deepspeed:
        comm = 2 * h * h * wb  # reduce buckets (HF "auto": hidden_size^2 elements)
        opt_temp = 4 * n_trainable // world  # the fp32 gradient partition of the optimizer step
    if inp.parallelism == "zero3_offload":
        cpu_bytes = weights + master + optim + 4 * n_trainable // world
        weights = master = optim = grads = opt_temp = 0
        notes["weights"] += f"; {cpu_bytes / GiB:.1f} GiB offloaded to host memory"
    ddp_buckets = grads if inp.parallelism == "ddp" else 0  # DDP all-reduces a flat copy of every gradient

    # Peak: the largest of these moments. Gradients exist during the forward only with accumulation; without it
    # they appear as backward frees the activations (lm_head's first, as the backward starts there).
    g_head = V * h * tb // shards if full else 0
    g_fwd = grads if inp.gradient_accumulation_steps > 1 else 0
    fixed = gathered + comm
    phases = {
        "forward (LM head)": (g_fwd, activations, head_saved + head_fwd, fixed),
        "backward (LM head)": (g_fwd, activations, head_saved + head_bwd, fixed),
        "backward (layers)": (max(g_fwd, g_head), activations, 0, layer_work + fixed),
        "end of backward": (grads, 0, 0, layer_work + fixed + (V * h * wb if full and s.tied else 0)),
        "optimizer step": (grads, 0, 0, opt_temp + fixed),
    }
    phase, live = max(phases.items(), key=lambda kv: sum(kv[1]))
    persistent = {"weights": weights, "LoRA adapters": adapters, "fp32 master weights": master}
    persistent |= {"optimizer states": optim, "DDP gradient buckets": ddp_buckets}
    breakdown = {k: int(v) for k, v in persistent.items() if v}
    breakdown.update(zip(("gradients", "activations", "loss head", "working memory"), map(int, live), strict=True))
    if inp.device != "cpu":
        breakdown["CUDA context"] = CUDA_CONTEXT + (NCCL_BUFFERS if world > 1 else 0)
        breakdown["allocator fragmentation"] = int(FRAGMENTATION * sum(breakdown.values()))

    notes["gradients"] = f"{n_trainable / 1e6:.1f}M trainable x {tb} B" + (
        f", sharded over {world}" if shards > 1 else ""
    )
    if breakdown["gradients"] < grads:
        notes["gradients"] += f"; {grads / GiB:.2f} GiB once backward ends"
    notes["optimizer states"] = f"{inp.optimizer} on " + ("fp32 master weights" if deepspeed else f"{tb}-byte params")
    notes["working memory"] = f"peak moment: {phase}"
    adapted = ", ".join(t.name.removeprefix("lora_A.") for t in trainable if t.name.startswith("lora_A."))
    notes["LoRA adapters"] = f"r={inp.lora_r} on {adapted} of {s.layers} layers, {tb} B per parameter"
    notes["fp32 master weights"] = "DeepSpeed's fp32 copy of the trainable weights"
    notes["DDP gradient buckets"] = "a flat copy of the gradients for all-reduce"
    notes["CUDA context"] = "CUDA context + cuBLAS workspace" + (" + NCCL buffers" if world > 1 else "")
    notes["allocator fragmentation"] = f"{FRAGMENTATION:.0%}: reserved by the caching allocator, not allocated"
    if s.experts or vision_shape(inp.config):
        warnings.append("activations of MoE layers and vision towers are estimates")
    components = persistent | {"gradients": grads, "activations": activations, "activations of one layer": one_layer}
    components |= {"loss head forward": head_saved + head_fwd, "loss head backward": head_saved + head_bwd}
    components |= {"layer backward": layer_work, "optimizer step": opt_temp}
    return Plan(inp, breakdown, notes, components, phase, counts, n_trainable, cpu_bytes, warnings)


def verdict_line(plan: Plan, gpu_memory_gib: float | None) -> str:
    """One line for `train` and `plan`: fits or not on this GPU size, and the cheapest fix."""
    peak = plan.total / GiB
    if gpu_memory_gib is None:
        return f"peak {peak:.1f} GiB per GPU (no GPU here: `sft-recipes plan --gpu-memory GiB` gives a verdict)"
    share = plan.total / (gpu_memory_gib * GiB)
    if plan.fits(gpu_memory_gib):
        return f"fits on {gpu_memory_gib:g} GiB: {peak:.1f} GiB peak per GPU ({share:.0%})"
    fixes = plan.suggestions(gpu_memory_gib)
    fix = f"; cheapest fix: {fixes[0]}" if fixes else "; no single change found that makes it fit"
    return f"does NOT fit on {gpu_memory_gib:g} GiB: {peak:.1f} GiB peak per GPU ({share:.0%}){fix}"


# ------------------------------------------------------------------------------------------------------- command
def parallelism_from_accelerate_config(path: str) -> tuple[str, int]:
    """(parallelism, number of processes) from an accelerate config YAML."""
    from sft_recipes.launch import read_accelerate_config

    config = read_accelerate_config(path)
    return config["parallelism"], config["num_processes"]


def plan_input_from_recipe(
    recipe: Any, config: dict[str, Any], parallelism: str = "single", world_size: int = 1
) -> PlanInput:
    """The PlanInput of a parsed recipe (sft_recipes.config.Recipe) and its model's config.json."""
    from sft_recipes.model.kind import resolve_dtype_name

    model, training = recipe.model, recipe.training
    if model.load_in_4bit:
        method = "qlora"
    elif model.load_in_8bit:
        method = "8bit-lora"
    else:
        method = "lora" if model.use_peft else "full"
    optim = getattr(training.optim, "value", training.optim)
    targets = model.lora_target_modules
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing (the old name mirrors the new one)
    checkpointing = getattr(training, "activation_checkpointing", None)
    checkpointing = training.gradient_checkpointing if checkpointing is None else checkpointing
    kwargs = getattr(training, "activation_checkpointing_kwargs", None) or getattr(
        training, "gradient_checkpointing_kwargs", None
    )
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    return PlanInput(
        config=config,
        method=method,
        lora_r=model.lora_r,
        lora_targets=targets if isinstance(targets, str) or targets is None else tuple(targets),
        lora_dropout=model.lora_dropout,
        dtype=resolve_dtype_name(model.dtype, training, config),
        micro_batch_size=training.per_device_train_batch_size,
        seq_len=training.max_length or DEFAULT_SEQ_LEN,
        gradient_checkpointing=bool(checkpointing),
        checkpoint_every_n_layers=int(kwargs.get("every_n_layers", 1)),
        checkpoint_offload=bool(kwargs.get("offload", False)),
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        optimizer=str(optim),
        parallelism="fsdp2" if parallelism == "fsdp" else parallelism,  # model.distributed_mode() says "fsdp"
        world_size=world_size,
        mixed_precision="bf16" if training.bf16 else "fp16" if training.fp16 else "no",
        attn_implementation=model.attn_implementation or "sdpa",
        liger=bool(getattr(training, "use_liger_kernel", False)),
        nested_quant=bool(getattr(model, "use_bnb_nested_quant", True)),
    )


DEFAULT_SEQ_LEN = 2048  # assumed per row when max_length is None (VLM recipes), since the data decides it


def local_gpu_memory_gib() -> float | None:
    """Total memory of this machine's first CUDA GPU, None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / GiB


def _load_config(recipe: Any) -> dict[str, Any]:
    from sft_recipes.model.kind import load_config_or_snapshot

    return load_config_or_snapshot(recipe.model, recipe.training.trust_remote_code, recipe.path)[0]


def report(plan: Plan, gpu_memory_gib: float | None) -> dict[str, Any]:
    """The plan with its verdict: what --json prints and the table shows."""
    out = plan.to_dict()
    out["gpu_memory_gib"] = gpu_memory_gib
    out["verdict"] = verdict_line(plan, gpu_memory_gib)
    if gpu_memory_gib is not None:
        out["fits"] = plan.fits(gpu_memory_gib)
        out["max_micro_batch"] = plan.max_micro_batch(gpu_memory_gib)
        out["suggestions"] = plan.suggestions(gpu_memory_gib)
    return out


def print_report(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    inp = data["input"]
    checkpointing = "on" if inp["gradient_checkpointing"] else "off"
    title = (
        f"{inp['method']} · {inp['dtype']} · {inp['micro_batch_size']} x {inp['seq_len']} tokens · "
        f"{inp['parallelism']} x {inp['world_size']} · gradient checkpointing {checkpointing}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("component")
    table.add_column("GiB", justify="right")
    table.add_column("note")
    for row in data["breakdown"]:
        table.add_row(row["component"], f"{row['gib']:.2f}", row["note"])
    table.add_row("peak per GPU", f"{data['total_gib']:.2f}", f"at {data['peak_phase']}", style="bold")
    console = Console()
    console.print(table)
    for warning in data["warnings"]:
        console.print(f"warning: {warning}", style="yellow", markup=False)
    console.print(data["verdict"], style="bold", markup=False)
    if data["gpu_memory_gib"] is not None:
        gib = data["gpu_memory_gib"]
        best = data["max_micro_batch"] or "none (1 does not fit)"
        console.print(f"max per_device_train_batch_size on {gib:g} GiB: {best}", markup=False)
        for fix in data["suggestions"][1:]:
            console.print(f"  or: {fix}", markup=False)


def _gpu_memory_arg(value: str) -> float:
    """--gpu-memory: GiB, or a GPU of KNOWN_GPUS ("A10G", "H100 SXM")."""
    try:
        return float(value)
    except ValueError:
        spec = gpu_spec(value)
        if spec is None:
            problem = Problem("--gpu-memory", f"neither GiB nor a known GPU: {value!r}", ", ".join(KNOWN_GPUS))
            raise RecipeError(problem) from None
        return spec.memory_gib


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("plan", __doc__, recipe=True)
    add_launch_flags(parser)
    parser.add_argument(
        "--gpu-memory",
        metavar="GiB|NAME",
        help="memory per GPU for the verdict, or a GPU name (default: the local GPU)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser


def main(argv: list[str]) -> int:
    from sft_recipes.config import parse_recipe
    from sft_recipes.launch import resolve_accelerate_config

    own, rest = parse_with_recipe(build_parser(), argv)
    gpu_memory = _gpu_memory_arg(own.gpu_memory) if own.gpu_memory else None
    flags = launch_flags(own)
    recipe = parse_recipe(rest)
    parallelism, world = "single", 1
    if "accelerate_config" in flags:
        path = resolve_accelerate_config(flags["accelerate_config"])
        parallelism, world = parallelism_from_accelerate_config(str(path))
    if "num_processes" in flags:
        world = int(flags["num_processes"])
        parallelism = "ddp" if parallelism == "single" and world > 1 else parallelism
    plan = estimate(plan_input_from_recipe(recipe, _load_config(recipe), parallelism, world))
    if recipe.training.max_length is None:
        plan.warnings.append(f"max_length is null: sized for {DEFAULT_SEQ_LEN} tokens per row")
    if gpu_memory is None:
        gpu_memory = local_gpu_memory_gib()
    data = report(plan, gpu_memory)
    if own.json:
        print(json.dumps(data, indent=1))
    else:
        print_report(data)
    return 0
