"""The memory formula: weights, optimizer, gradients and batch terms summed at a step's peak moment (see plan.md)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from sft_recipes.plan.activations import (
    activation_bytes,
    layer_backward,
    loss_head,
    saved_activations,
)
from sft_recipes.plan.gpus import GiB
from sft_recipes.plan.inputs import PlanInput, adapter_bytes, check_input, compute_bytes, weight_bytes_per
from sft_recipes.plan.shape import (
    Shape,
    Tensor,
    count_parameters,
    layer_linears,
    model_shape,
    parameter_tensors,
    resolve_targets,
    vision_shape,
)

# bitsandbytes NF4 with nested quantization: 4-bit codes, an 8-bit absmax per 64 weights and an fp32 absmax per 256
# of those (QLoRA paper section 3: 8/64 + 32/(64*256) = 0.127 bits of constants per weight).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
NF4_BYTES_PLAIN = 0.5 + 4 / 64  # without nested quantization: an fp32 absmax per 64 weights
CUDA_CONTEXT = int(0.75 * GiB)  # CUDA context + cuBLAS workspace, outside torch.cuda.max_memory_allocated
NCCL_BUFFERS = int(0.5 * GiB)
FRAGMENTATION = 0.08  # reserved-but-unallocated share of the caching allocator at peak


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
    note = f"{total / 1e9:.2f}B params" + (
        f"; {quantized / 1e9:.2f}B linear in {how}, the rest in {inp.dtype}" if quantized else f" in {inp.dtype}"
    )
    return int(quant + (total - quantized) * weight_bytes_per(inp)), note


def _trainable_tensors(inp: PlanInput, s: Shape, tensors: list[Tensor]) -> tuple[list[Tensor], list[str]]:
    """All parameters (full) or the LoRA matrices of every layer, and warnings about unmatched targets."""
    if inp.method == "full":
        return tensors, []
    names, unmatched = resolve_targets(s, inp.lora_targets)
    shapes = layer_linears(s)
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
    shards: int = 1


@dataclass(frozen=True)
class _Batch:
    """The batch's terms, in bytes: saved activations and the scratch of the LM head and of a layer's backward."""

    activations: int
    one_layer: int
    head_saved: int
    head_forward: int
    head_backward: int
    layer_work: int


def _training_state(
    inp: PlanInput, s: Shape, tensors: list[Tensor], total: int, notes: dict[str, str], warnings: list[str]
) -> tuple[_Memory, list[Tensor]]:
    """Weights, adapters, gradients and optimizer states of one unsharded process, and the trainable tensors."""
    wb, full, deepspeed = weight_bytes_per(inp), inp.method == "full", inp.parallelism.startswith("zero")
    weights, notes["weights"] = _weight_bytes(inp, tensors, total)
    trainable, unmatched = _trainable_tensors(inp, s, tensors)
    warnings += unmatched
    n_trainable = sum(t.numel for t in trainable)
    tb = wb if full else adapter_bytes(inp)
    if inp.parallelism == "fsdp2" and inp.mixed_precision != "no" and inp.method != "qlora":
        # accelerate upcasts trainable parameters to fp32 before fully_shard (utils/fsdp_utils.py)
        weights += (n_trainable * (4 - wb)) if full else 0
        tb = 4
    optim, optim_note = optimizer_bytes(inp.optimizer, trainable, 4 if deepspeed else tb)
    warnings += [optim_note] if optim_note else []
    memory = _Memory(
        weights=weights,
        adapters=0 if full else n_trainable * tb,
        master=n_trainable * 4 if deepspeed else 0,  # ZeRO's optimizer keeps fp32 copies of the trainable weights
        optim=optim,
        grads=n_trainable * tb,
        opt_temp=_optimizer_step_temp(inp, trainable, 4 if deepspeed else tb),
        trainable_bytes=tb,
        n_trainable=n_trainable,
    )
    return memory, trainable


def _batch_terms(inp: PlanInput, s: Shape, tensors: list[Tensor], notes: dict[str, str]) -> _Batch:
    N = inp.micro_batch_size * inp.seq_len
    acts = activation_bytes(inp)
    activations, notes["activations"] = saved_activations(inp, s, tensors, acts)
    one_layer = (acts.layer + acts.per_layer_seq * inp.seq_len) * N
    head_forward, head_backward, notes["loss head"] = loss_head(inp, s)
    layer_work = layer_backward(inp, s, one_layer)
    return _Batch(activations, one_layer, acts.head_saved * N, head_forward, head_backward, layer_work)


def _distribute(inp: PlanInput, s: Shape, m: _Memory, world: int, notes: dict[str, str]) -> None:
    """Shard, gather and offload as the parallelism does (ZeRO paper: stage 2 shards gradients + optimizer, stage 3
    the weights too; FSDP2 as stage 3)."""
    deepspeed, wb = inp.parallelism.startswith("zero"), weight_bytes_per(inp)
    sharded = inp.parallelism in ("zero3", "zero3_offload", "fsdp2")
    m.shards = world if deepspeed or sharded else 1
    if sharded:
        m.weights, m.adapters = m.weights // world, m.adapters // world
        layer_params = sum(fi * fo for fi, fo in layer_linears(s).values())
        # the layer at work and the next one prefetched, unsharded (or the embedding / LM head when at work)
        gathered_bytes = compute_bytes(inp) if inp.parallelism == "fsdp2" else wb
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


def _peak(inp: PlanInput, s: Shape, m: _Memory, batch: _Batch) -> tuple[str, tuple[int, int, int, int]]:
    """The largest moment of the step, and its (gradients, activations, loss head, working memory). Gradients exist
    during the forward only with accumulation; without it they appear as backward frees the activations (lm_head's
    first, as the backward starts there)."""
    full, vh = inp.method == "full", s.vocab * s.hidden
    g_head = vh * m.trainable_bytes // m.shards if full else 0
    g_fwd = m.grads if inp.gradient_accumulation_steps > 1 else 0
    fixed = m.gathered + m.comm
    tied_head = vh * weight_bytes_per(inp) if full and s.tied else 0
    phases = {
        "forward (LM head)": (g_fwd, batch.activations, batch.head_saved + batch.head_forward, fixed),
        "backward (LM head)": (g_fwd, batch.activations, batch.head_saved + batch.head_backward, fixed),
        "backward (layers)": (max(g_fwd, g_head), batch.activations, 0, batch.layer_work + fixed),
        "end of backward": (m.grads, 0, 0, batch.layer_work + fixed + tied_head),
        "optimizer step": (m.grads, 0, 0, m.opt_temp + fixed),
    }
    return max(phases.items(), key=lambda kv: sum(kv[1]))


def _persistent(m: _Memory) -> dict[str, int]:
    persistent = {"weights": m.weights, "LoRA adapters": m.adapters, "fp32 master weights": m.master}
    return persistent | {"optimizer states": m.optim, "DDP gradient buckets": m.ddp_buckets}


def _breakdown(inp: PlanInput, m: _Memory, live: tuple[int, int, int, int], world: int) -> dict[str, int]:
    """What is live at the peak: the persistent terms, the moment's, and what torch's allocator does not count."""
    breakdown = {k: int(v) for k, v in _persistent(m).items() if v}
    breakdown.update(zip(("gradients", "activations", "loss head", "working memory"), map(int, live), strict=True))
    if inp.device != "cpu":
        breakdown["CUDA context"] = CUDA_CONTEXT + (NCCL_BUFFERS if world > 1 else 0)
        breakdown["allocator fragmentation"] = int(FRAGMENTATION * sum(breakdown.values()))
    return breakdown


def _describe(
    inp: PlanInput, s: Shape, m: _Memory, trainable: list[Tensor], live_grads: int, phase: str, world: int
) -> dict[str, str]:
    """The notes of the terms that the steps above do not write themselves."""
    tb, deepspeed = m.trainable_bytes, inp.parallelism.startswith("zero")
    sharded = f", sharded over {world}" if m.shards > 1 else ""
    notes = {"gradients": f"{m.n_trainable / 1e6:.1f}M trainable x {tb} B{sharded}"}
    if live_grads < m.grads:
        notes["gradients"] += f"; {m.grads / GiB:.2f} GiB once backward ends"
    notes["optimizer states"] = f"{inp.optimizer} on " + ("fp32 master weights" if deepspeed else f"{tb}-byte params")
    notes["working memory"] = f"peak moment: {phase}"
    adapted = ", ".join(t.name.removeprefix("lora_A.") for t in trainable if t.name.startswith("lora_A."))
    notes["LoRA adapters"] = f"r={inp.lora_r} on {adapted} of {s.layers} layers, {tb} B per parameter"
    notes["fp32 master weights"] = "DeepSpeed's fp32 copy of the trainable weights"
    notes["DDP gradient buckets"] = "a flat copy of the gradients for all-reduce"
    notes["CUDA context"] = "CUDA context + cuBLAS workspace" + (" + NCCL buffers" if world > 1 else "")
    notes["allocator fragmentation"] = f"{FRAGMENTATION:.0%}: reserved by the caching allocator, not allocated"
    return notes


def estimate(inp: PlanInput) -> Plan:
    """Peak memory per GPU of one training process; plan.md derives every term and gives its source."""
    check_input(inp)
    s, tensors, counts = model_shape(inp.config), parameter_tensors(inp.config), count_parameters(inp.config)
    world = inp.world_size if inp.parallelism != "single" else 1
    notes: dict[str, str] = {}
    warnings = [counts["note"]] if counts["note"] else []
    memory, trainable = _training_state(inp, s, tensors, counts["total"], notes, warnings)
    batch = _batch_terms(inp, s, tensors, notes)
    _distribute(inp, s, memory, world, notes)
    phase, live = _peak(inp, s, memory, batch)
    breakdown = _breakdown(inp, memory, live, world)
    notes |= _describe(inp, s, memory, trainable, breakdown["gradients"], phase, world)
    if s.experts or vision_shape(inp.config):
        warnings.append("activations of MoE layers and vision towers are estimates")
    components = _persistent(memory) | {"gradients": memory.grads, "activations": batch.activations}
    components |= {"activations of one layer": batch.one_layer}
    components |= {"loss head forward": batch.head_saved + batch.head_forward}
    components |= {"loss head backward": batch.head_saved + batch.head_backward}
    components |= {"layer backward": batch.layer_work, "optimizer step": memory.opt_temp}
    return Plan(inp, breakdown, notes, components, phase, counts, memory.n_trainable, memory.cpu_bytes, warnings)
