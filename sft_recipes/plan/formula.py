"""The memory formula: weights, optimizer, gradients and the batch's activations, summed at a step's peak (plan.md)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from sft_recipes.plan.gpus import GiB
from sft_recipes.plan.inputs import PlanInput, Shape, Tensor, count_parameters, model_shape, parameter_tensors

# bitsandbytes NF4 with nested quantization: 4-bit codes, an 8-bit absmax per 64 weights and an fp32 absmax per 256
# of those (QLoRA paper section 3: 8/64 + 32/(64*256) = 0.127 bits of constants per weight).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
NF4_BYTES_PLAIN = 0.5 + 4 / 64  # without nested quantization: an fp32 absmax per 64 weights
CUDA_CONTEXT = int(0.75 * GiB)  # CUDA context + cuBLAS workspace, outside torch.cuda.max_memory_allocated
NCCL_BUFFERS = int(0.5 * GiB)
FRAGMENTATION = 0.08  # reserved-but-unallocated share of the caching allocator at peak
# TRL's fused LM head (trl.kernels.chunked_logprob): tiles of 4096 tokens x 32768 vocabulary entries.
HEAD_TOKENS, HEAD_VOCAB = 4096, 32768


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
    return 4 * width + 4 + ((4 if s.gemma_norm else b) * width if trainable else 0)  # gemma's output is fp32


def activation_bytes(inp: PlanInput) -> ActivationBytes:
    """Bytes autograd keeps for backward per token, as saved-tensor hooks measure them on transformers' code."""
    s = model_shape(inp.config)
    h, f, d = s.hidden, s.intermediate, s.head_dim
    q, kv = s.heads * d, s.kv_heads * d
    b, b_ad, full = inp.compute_bytes, inp.adapter_bytes, inp.method == "full"
    adapted = set() if full else set(s.resolve_targets(inp.lora_targets)[0])
    dropout = inp.lora_dropout > 0
    # Under autocast lora_A computes (and keeps its input) in the compute dtype, whatever the adapter's dtype
    b_lora = b if inp.autocast else b_ad
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
        k, fe = max(s.experts_per_token, 1), s.moe_intermediate
        mlp = k * (4 * fe * b + h * b) + 4 * s.experts + 8 * k  # routed copies + router softmax, an estimate
        if s.shared_intermediate:
            mlp += 4 * s.shared_intermediate * b
        moe_share = s.moe_layers / s.layers
        mlp = int(moe_share * mlp + (1 - moe_share) * 4 * s.intermediate * b)
    else:
        mlp = (2 if inp.liger else 3) * f * b  # gate out (for SiLU), SiLU out and up out (for the product)
    # Inputs of the projections, grouped by the tensor they read; module names as in Shape.linears
    qkv = ["qkv_proj"] if s.fused_projections else ["q_proj", "k_proj", "v_proj"]
    gate_up = ["gate_up_proj"] if s.fused_projections else ["gate_proj", "up_proj"]
    groups = [(h, qkv, False), (q, ["o_proj"], not eager), (h, gate_up, False), (f, ["down_proj"], False)]
    inputs = 0
    for width, consumers, already_saved in groups:
        group_tensor_saved = base_saves_input and not already_saved
        for _ in adapted.intersection(consumers):
            if dropout:
                inputs += width * (b_lora + mask_bytes)  # dropout output (lora_A's input) + its mask
            elif b_ad != b:
                inputs += width * b_lora  # peft casts the input to the adapter's dtype, once per adapter
            else:
                group_tensor_saved = group_tensor_saved or not already_saved
            inputs += inp.lora_r * b_lora  # lora_A's output, kept by lora_B
        if group_tensor_saved:
            inputs += width * b
    layer = s.norms_per_layer * norm + attention + mlp + inputs
    # LoRA without checkpointing: the embeddings need no gradient, so layer 0's input norm and the dropout masks
    # of the adapters reading it keep nothing.
    first = layer
    if not full and not inp.gradient_checkpointing:
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


def saved_activations(inp: PlanInput, s: Shape, tensors: list[Tensor], acts: ActivationBytes) -> tuple[int, str]:
    """Everything the decoder (and a VLM's vision tower) keeps for backward at the end of the forward."""
    N, L, b = inp.micro_batch_size * inp.seq_len, s.layers, inp.compute_bytes
    full = inp.method == "full"
    seq_terms = acts.per_layer_seq * inp.seq_len
    rope = 2 * inp.seq_len * s.head_dim * b  # cos and sin, shared by the layers that keep their activations
    if inp.gradient_checkpointing:
        checkpointed = math.ceil(L / max(inp.checkpoint_every_n_layers, 1))  # layers 0, n, 2n, ...
        kept = 0 if inp.checkpoint_offload else checkpointed * acts.layer_input * N
        total = kept + (L - checkpointed) * (acts.layer + seq_terms) * N
        total += rope if checkpointed < L else 0
        note = f"checkpointed: the input of {checkpointed} of {L} layers, {N} tokens"
        note += " (offloaded to host memory)" if inp.checkpoint_offload else ""
    else:
        total = (acts.first_layer + (L - 1) * acts.layer + L * seq_terms) * N + rope
        note = f"{L} layers x {N} tokens x {(acts.layer + seq_terms) / 1024:.1f} KiB"
    if inp.dtype == "float32" and inp.autocast:
        # autocast's bf16 copies of the fp32 weights: cached for trainable ones, kept by backward for frozen ones
        linear_params = sum(t.numel for t in tensors if t.role == "linear")
        copies = 2 * (linear_params if full or not inp.gradient_checkpointing else linear_params // L)
        total += copies
        note += f"; {copies / GiB:.2f} GiB of bf16 weight copies made by autocast"
    vision = s.vision
    if vision and full:  # LoRA leaves the vision tower frozen (model.lora.resolve_lora_targets): it keeps nothing
        hv = vision.hidden
        per_token = 2 * (4 * hv + 4 + b * hv) + 4 * hv * b + 4 * vision.heads + 3 * vision.intermediate * b
        images = vision.patches * inp.images_per_sample * inp.micro_batch_size
        vision_bytes = (1 if inp.gradient_checkpointing else vision.layers) * per_token * images
        total += vision_bytes
        note += f"; vision tower ~{vision_bytes / GiB:.2f} GiB (estimate)"
    return total, note


def loss_head(inp: PlanInput, s: Shape) -> tuple[int, int, str]:
    """Scratch of the LM head + loss, forward and backward: TRL's chunked log-softmax tiles (or full logits)."""
    N, V, h = inp.micro_batch_size * inp.seq_len, s.vocab, s.hidden
    b, wb = inp.compute_bytes, inp.weight_bytes
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


def layer_backward(inp: PlanInput, s: Shape, one_layer: int) -> int:
    """One layer's backward: gradients of its activations (+ the recomputed layer under checkpointing)."""
    N, h, b = inp.micro_batch_size * inp.seq_len, s.hidden, inp.compute_bytes
    work = N * (3 * s.intermediate + 2 * h) * b
    if inp.attn_implementation == "eager":
        work += N * inp.seq_len * s.heads * (4 + 2 * b)
    if inp.method == "qlora":  # bitsandbytes dequantizes one weight at a time
        work += 2 * max(fi * fo for fi, fo in s.linears.values()) * b
    elif inp.method == "8bit-lora":
        work += 3 * N * max(h, s.intermediate)  # fp16 copy and int8 codes of the input
    return work + (one_layer if inp.gradient_checkpointing else 0)


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
    rest = f"; {quantized / 1e9:.2f}B linear in {how}, the rest in {inp.dtype}" if quantized else f" in {inp.dtype}"
    return int(quant + (total - quantized) * inp.weight_bytes), f"{total / 1e9:.2f}B params{rest}"


def _trainable_tensors(inp: PlanInput, s: Shape, tensors: list[Tensor]) -> tuple[list[Tensor], list[str]]:
    """All parameters (full) or the LoRA matrices of every layer, and warnings about unmatched targets."""
    if inp.method == "full":
        return tensors, []
    names, unmatched = s.resolve_targets(inp.lora_targets)
    shapes = s.linears
    lora = [Tensor(f"lora_A.{n}", (inp.lora_r, shapes[n][0]), s.layers, "lora") for n in names]
    lora += [Tensor(f"lora_B.{n}", (shapes[n][1], inp.lora_r), s.layers, "lora") for n in names]
    return lora, [f"LoRA targets {unmatched} match no linear layer of {s.model_type}"] if unmatched else []


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

    def to_dict(self) -> dict[str, Any]:
        inp = {key: value for key, value in asdict(self.input).items() if key != "config"}
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


@dataclass
class _Memory:
    """One process's sizes in bytes, before the peak moment is chosen: what persists, then what comes and goes."""

    weights: int
    adapters: int
    master: int  # ZeRO's fp32 copy of the trainable weights
    optim: int
    grads: int
    opt_temp: int  # scratch of the optimizer step
    trainable_bytes: int  # bytes of a trainable parameter, and of its gradient
    n_trainable: int
    ddp_buckets: int = 0
    gathered: int = 0  # unsharded parameters (and FSDP2 gradients) of the layer at work
    comm: int = 0
    cpu_bytes: int = 0
    world: int = 1  # the processes a sharding parallelism spreads over
    shards: int = 1


def _training_state(
    inp: PlanInput, s: Shape, tensors: list[Tensor], total: int, notes: dict[str, str], warnings: list[str]
) -> tuple[_Memory, list[Tensor]]:
    """Weights, adapters, gradients and optimizer states of one unsharded process, and the trainable tensors."""
    wb, full, deepspeed = inp.weight_bytes, inp.method == "full", inp.parallelism.startswith("zero")
    weights, notes["weights"] = _weight_bytes(inp, tensors, total)
    trainable, unmatched = _trainable_tensors(inp, s, tensors)
    warnings += unmatched
    n_trainable = sum(t.numel for t in trainable)
    tb = wb if full else inp.adapter_bytes
    if inp.parallelism == "fsdp2" and inp.mixed_precision != "no" and inp.method != "qlora":
        # accelerate upcasts trainable parameters to fp32 before fully_shard (utils/fsdp_utils.py)
        weights += (n_trainable * (4 - wb)) if full else 0
        tb = 4
    optim, optim_note = optimizer_bytes(inp.optimizer, trainable, 4 if deepspeed else tb)
    warnings += [optim_note] if optim_note else []
    adapters = 0 if full else n_trainable * tb
    master = n_trainable * 4 if deepspeed else 0  # ZeRO's optimizer keeps fp32 copies of the trainable weights
    opt_temp = _optimizer_step_temp(inp, trainable, 4 if deepspeed else tb)
    world = inp.world_size if inp.parallelism != "single" else 1
    memory = _Memory(weights, adapters, master, optim, n_trainable * tb, opt_temp, tb, n_trainable, world=world)
    return memory, trainable


def _batch_terms(inp: PlanInput, s: Shape, tensors: list[Tensor], notes: dict[str, str]) -> dict[str, int]:
    """The batch's components: saved activations and the scratch of the LM head and of a layer's backward."""
    N = inp.micro_batch_size * inp.seq_len
    acts = activation_bytes(inp)
    activations, notes["activations"] = saved_activations(inp, s, tensors, acts)
    one_layer = (acts.layer + acts.per_layer_seq * inp.seq_len) * N
    head_forward, head_backward, notes["loss head"] = loss_head(inp, s)
    head_saved = acts.head_saved * N
    batch = {"activations": activations, "activations of one layer": one_layer}
    batch |= {"loss head forward": head_saved + head_forward, "loss head backward": head_saved + head_backward}
    return batch | {"layer backward": layer_backward(inp, s, one_layer)}


def _distribute(inp: PlanInput, s: Shape, m: _Memory, notes: dict[str, str]) -> None:
    """Shard, gather and offload as the parallelism does (ZeRO-2 gradients + optimizer, ZeRO-3/FSDP2 weights too)."""
    deepspeed, wb, world = inp.parallelism.startswith("zero"), inp.weight_bytes, m.world
    sharded = inp.parallelism in ("zero3", "zero3_offload", "fsdp2")
    m.shards = world if deepspeed or sharded else 1
    if sharded:
        m.weights, m.adapters = m.weights // world, m.adapters // world
        layer_params = sum(fi * fo for fi, fo in s.linears.values())
        # the layer at work and the next one prefetched, unsharded (or the embedding / LM head when at work)
        gathered_bytes = inp.compute_bytes if inp.parallelism == "fsdp2" else wb
        m.gathered = max(2 * layer_params, s.vocab * s.hidden) * gathered_bytes
        if inp.parallelism == "fsdp2" and inp.method == "full":
            m.gathered += layer_params * m.trainable_bytes  # a layer's unsharded gradients before the reduce-scatter
    m.grads, m.optim, m.master = m.grads // m.shards, m.optim // m.shards, m.master // m.shards
    if deepspeed:
        m.comm = 2 * s.hidden * s.hidden * wb  # reduce buckets (HF "auto": hidden_size^2 elements)
        m.opt_temp = 4 * m.n_trainable // world  # the fp32 gradient partition of the optimizer step
    if inp.parallelism == "zero3_offload":
        m.cpu_bytes = m.weights + m.master + m.optim + 4 * m.n_trainable // world
        m.weights = m.master = m.optim = m.grads = m.opt_temp = 0
        notes["weights"] += f"; {m.cpu_bytes / GiB:.1f} GiB offloaded to host memory"
    m.ddp_buckets = m.grads if inp.parallelism == "ddp" else 0  # DDP all-reduces a flat copy of every gradient


def _peak(inp: PlanInput, s: Shape, m: _Memory, batch: dict[str, int]) -> tuple[str, tuple[int, int, int, int]]:
    """The largest moment of the step and its (gradients, activations, loss head, working memory). Gradients exist in
    the forward only with accumulation, else they appear as backward frees the activations (lm_head's first)."""
    full, vh = inp.method == "full", s.vocab * s.hidden
    g_head = vh * m.trainable_bytes // m.shards if full else 0
    g_fwd = m.grads if inp.gradient_accumulation_steps > 1 else 0
    fixed = m.gathered + m.comm
    tied_head = vh * inp.weight_bytes if full and s.tied else 0
    acts, layer_work = batch["activations"], batch["layer backward"]
    phases = {
        "forward (LM head)": (g_fwd, acts, batch["loss head forward"], fixed),
        "backward (LM head)": (g_fwd, acts, batch["loss head backward"], fixed),
        "backward (layers)": (max(g_fwd, g_head), acts, 0, layer_work + fixed),
        "end of backward": (m.grads, 0, 0, layer_work + fixed + tied_head),
        "optimizer step": (m.grads, 0, 0, m.opt_temp + fixed),
    }
    return max(phases.items(), key=lambda kv: sum(kv[1]))


def _persistent(m: _Memory) -> dict[str, int]:
    persistent = {"weights": m.weights, "LoRA adapters": m.adapters, "fp32 master weights": m.master}
    return persistent | {"optimizer states": m.optim, "DDP gradient buckets": m.ddp_buckets}


def _breakdown(inp: PlanInput, m: _Memory, live: tuple[int, int, int, int]) -> dict[str, int]:
    """What is live at the peak: the persistent terms, the moment's, and what torch's allocator does not count."""
    breakdown = {k: int(v) for k, v in _persistent(m).items() if v}
    breakdown.update(zip(("gradients", "activations", "loss head", "working memory"), map(int, live), strict=True))
    if inp.device != "cpu":
        breakdown["CUDA context"] = CUDA_CONTEXT + (NCCL_BUFFERS if m.world > 1 else 0)
        breakdown["allocator fragmentation"] = int(FRAGMENTATION * sum(breakdown.values()))
    return breakdown


def _describe(inp: PlanInput, s: Shape, m: _Memory, trainable: list[Tensor], live_grads: int) -> dict[str, str]:
    """The notes of the terms that the steps above do not write themselves."""
    tb, deepspeed = m.trainable_bytes, inp.parallelism.startswith("zero")
    sharded = f", sharded over {m.world}" if m.shards > 1 else ""
    notes = {"gradients": f"{m.n_trainable / 1e6:.1f}M trainable x {tb} B{sharded}"}
    if live_grads < m.grads:
        notes["gradients"] += f"; {m.grads / GiB:.2f} GiB once backward ends"
    notes["optimizer states"] = f"{inp.optimizer} on " + ("fp32 master weights" if deepspeed else f"{tb}-byte params")
    adapted = ", ".join(t.name.removeprefix("lora_A.") for t in trainable if t.name.startswith("lora_A."))
    notes["LoRA adapters"] = f"r={inp.lora_r} on {adapted} of {s.layers} layers, {tb} B per parameter"
    notes["fp32 master weights"] = "DeepSpeed's fp32 copy of the trainable weights"
    notes["DDP gradient buckets"] = "a flat copy of the gradients for all-reduce"
    notes["CUDA context"] = "CUDA context + cuBLAS workspace" + (" + NCCL buffers" if m.world > 1 else "")
    notes["allocator fragmentation"] = f"{FRAGMENTATION:.0%}: reserved by the caching allocator, not allocated"
    return notes


def estimate(inp: PlanInput) -> Plan:
    """Peak memory per GPU of one training process; plan.md derives every term and gives its source."""
    inp.check()
    s, tensors, counts = model_shape(inp.config), parameter_tensors(inp.config), count_parameters(inp.config)
    notes: dict[str, str] = {}
    warnings = [counts["note"]] if counts["note"] else []
    memory, trainable = _training_state(inp, s, tensors, counts["total"], notes, warnings)
    batch = _batch_terms(inp, s, tensors, notes)
    _distribute(inp, s, memory, notes)
    phase, live = _peak(inp, s, memory, batch)
    breakdown = _breakdown(inp, memory, live)
    notes |= _describe(inp, s, memory, trainable, breakdown["gradients"])
    notes["working memory"] = f"peak moment: {phase}"
    if s.experts or s.vision:
        warnings.append("activations of MoE layers and vision towers are estimates")
    components = _persistent(memory) | {"gradients": memory.grads} | batch | {"optimizer step": memory.opt_temp}
    return Plan(inp, breakdown, notes, components, phase, counts, memory.n_trainable, memory.cpu_bytes, warnings)
