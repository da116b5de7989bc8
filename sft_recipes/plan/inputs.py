"""What the planner reads: the run (PlanInput, its checks and dtype sizes) and the model's shape from config.json."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sft_recipes.errors import Problem, RecipeError
from sft_recipes.model.kind import text_config

METHODS = ("full", "lora", "qlora", "8bit-lora")
PARALLELISMS = ("single", "ddp", "zero2", "zero3", "zero3_offload", "fsdp2")
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass
class PlanInput:
    """A training run as the memory model sees it, and its dtypes' sizes; `config` is the model's config.json."""

    config: dict[str, Any]
    method: str = "lora"  # full | lora | qlora | 8bit-lora
    lora_r: int = 16
    lora_targets: str | tuple[str, ...] | list[str] | None = None  # None / "all-linear": every decoder linear
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

    def check(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(Problem("method", f"unknown method {self.method!r}", f"one of {', '.join(METHODS)}"))
        if self.parallelism not in PARALLELISMS:
            fix = f"one of {', '.join(PARALLELISMS)}"
            problems.append(Problem("parallelism", f"unknown {self.parallelism!r}", fix))
        if self.dtype not in DTYPE_BYTES:
            problems.append(Problem("dtype", f"unknown dtype {self.dtype!r}", "bfloat16, float16 or float32"))
        if self.micro_batch_size < 1 or self.seq_len < 1 or self.world_size < 1:
            problems.append(Problem("per_device_train_batch_size", "batch size, length and world size must be >= 1"))
        if problems:
            raise RecipeError(problems)

    @property
    def autocast(self) -> bool:
        """Trainer runs the forward under torch.autocast with bf16/fp16 on (accelerate's mixed precision)."""
        return self.device != "cpu" and self.mixed_precision in ("bf16", "fp16")

    @property
    def compute_bytes(self) -> int:
        """Bytes per element of activations: the weights' dtype, or 2 under bf16/fp16 autocast of fp32 weights."""
        return 2 if self.autocast else DTYPE_BYTES[self.dtype]  # the bnb compute dtype follows the precision too

    @property
    def weight_bytes(self) -> int:
        """Bytes of an unquantized weight: the loaded dtype, but 2 under DeepSpeed with bf16/fp16 (fp32 master)."""
        sixteen_bit = self.parallelism.startswith("zero") and self.mixed_precision in ("bf16", "fp16")
        return 2 if sixteen_bit else DTYPE_BYTES[self.dtype]

    @property
    def adapter_bytes(self) -> int:
        """LoRA adapters: PEFT upcasts them to fp32; TRL casts them to bf16 on quantized models and keeps the base
        dtype under ZeRO-3 (trl#6089); DeepSpeed casts everything it trains to 16 bits."""
        if self.method in ("qlora", "8bit-lora"):
            return 2
        return self.weight_bytes if self.parallelism.startswith("zero") else 4


@dataclass(frozen=True)
class VisionShape:
    """A ViT-style vision tower, estimated from vision_config (LayerNorm, biases, gelu MLP)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    patches: int  # patches of one image
    patch_size: int


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
    vision: VisionShape | None = None  # a VLM's vision tower

    @property
    def linears(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each dense nn.Linear of one decoder layer, by module name."""
        q, kv, h, f = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        if self.fused_projections:
            return {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * f), "down_proj": (f, h)}
        attention = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}
        if self.experts:
            return attention  # expert weights are 3-D parameters, not nn.Linear: LoRA and bitsandbytes skip them
        return {**attention, "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}

    def resolve_targets(self, targets: str | tuple[str, ...] | list[str] | None) -> tuple[list[str], list[str]]:
        """(module names of one decoder layer that LoRA adapts, requested names that match nothing)."""
        linears = self.linears
        if targets is None or targets == "all-linear" or (not isinstance(targets, str) and "all-linear" in targets):
            return list(linears), []
        if isinstance(targets, str):  # a regex (VLM default): the language model's projections it names
            import re

            return [n for n in linears if re.search(targets, f"model.language_model.layers.0.self_attn.{n}")], []
        return [t for t in linears if t in targets], [t for t in targets if t not in linears]


_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text"}
_HEAD_DIM_DEFAULT = {"qwen3": 128, "qwen3_moe": 128, "gemma": 256, "gemma2": 256, "gemma3_text": 256}
_DENSE_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "smollm3"}
_KNOWN_TYPES = _DENSE_TYPES | {"mixtral", "qwen2_moe", "qwen3_moe"}


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
        gemma_norm=model_type in ("gemma", "gemma2", "gemma3_text", "gemma3"),
        fused_projections=model_type == "phi3",
        softcap=bool(text.get("attn_logit_softcapping")),
        experts=experts,
        experts_per_token=text.get("num_experts_per_tok") or 0,
        moe_intermediate=text.get("moe_intermediate_size") or text.get("intermediate_size") or 4 * h,
        shared_intermediate=text.get("shared_expert_intermediate_size") or 0,
        moe_layers=moe_layers,
        known=model_type in _KNOWN_TYPES,
        vision=vision_shape(config),
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


def _mlp(prefix: str, h: int, f: int, count: int) -> list[Tensor]:
    # none when every layer is a MoE layer (Mixtral): a tensor in 0 layers would divide the 8-bit optimizer's sizes
    shapes = {"gate_proj": (f, h), "up_proj": (f, h), "down_proj": (h, f)}
    return [Tensor(prefix + name, shape, count, "linear") for name, shape in shapes.items()] if count else []


def parameter_tensors(config: dict[str, Any]) -> list[Tensor]:
    """Every parameter tensor of the model (vision tower estimated), with the number of layers it repeats in."""
    s = model_shape(config)
    h, L = s.hidden, s.layers
    out = [Tensor("embed_tokens", (s.vocab, h), 1, "embedding")]
    for name, (fan_in, fan_out) in s.linears.items():
        out.append(Tensor(name, (fan_out, fan_in), L, "linear"))
        if (name in ("q_proj", "k_proj", "v_proj", "qkv_proj") and s.qkv_bias) or (name == "o_proj" and s.o_bias):
            out.append(Tensor(f"{name}.bias", (fan_out,), L, "bias"))
        if name in ("gate_proj", "up_proj", "down_proj") and s.mlp_bias:
            out.append(Tensor(f"{name}.bias", (fan_out,), L, "bias"))
    if s.experts:
        fe = s.moe_intermediate
        out += _mlp("", h, s.intermediate, L - s.moe_layers)  # the dense layers' MLP
        out.append(Tensor("experts.gate_up_proj", (s.experts, 2 * fe, h), s.moe_layers, "expert"))
        out.append(Tensor("experts.down_proj", (s.experts, h, fe), s.moe_layers, "expert"))
        out.append(Tensor("router", (s.experts, h), s.moe_layers, "router"))
        if s.shared_intermediate:
            out += _mlp("shared_expert.", h, s.shared_intermediate, s.moe_layers)
            out.append(Tensor("shared_expert_gate", (1, h), s.moe_layers, "linear"))
    out.append(Tensor("layer norms", (h,), L * s.norms_per_layer, "norm"))
    if s.qk_norm:
        out.append(Tensor("q_norm/k_norm", (s.head_dim,), 2 * L, "norm"))
    out.append(Tensor("norm", (h,), 1, "norm"))
    if not s.tied:
        out.append(Tensor("lm_head", (s.vocab, h), 1, "lm_head"))
    if v := s.vision:
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
    """Parameter counts by part; `exact` is False for a model_type not in _KNOWN_TYPES or a VLM's vision tower."""
    s = model_shape(config)
    tensors = parameter_tensors(config)
    parts: dict[str, int] = {}
    for t in tensors:
        part = {"norm": "norms", "vision_small": "vision"}.get(t.role, t.role)
        part = "layers" if t.role in ("linear", "bias", "expert", "router") else part
        parts[part] = parts.get(part, 0) + t.numel
    return {
        **parts,
        "total": sum(parts.values()),
        "quantizable": sum(t.numel for t in tensors if t.role in ("linear", "vision")),
        "exact": s.known and "vision" not in parts,
        "note": "" if s.known else f"model_type {s.model_type!r} sized as a llama-like decoder: an estimate",
    }


def lora_parameters(config: dict[str, Any], targets: str | tuple[str, ...] | list[str] | None, r: int) -> int:
    """Sum over adapted linears in all layers of r * (in + out) (A is r x in, B is out x r)."""
    s = model_shape(config)
    return r * s.layers * sum(sum(s.linears[name]) for name in s.resolve_targets(targets)[0])
