"""What the batch costs: the activations autograd keeps, the loss head's scratch and one layer's backward."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sft_recipes.plan.gpus import GiB
from sft_recipes.plan.inputs import PlanInput, adapter_bytes, autocast, compute_bytes, weight_bytes_per
from sft_recipes.plan.shape import Shape, Tensor, layer_linears, model_shape, resolve_targets, vision_shape

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
    if s.gemma_norm:
        return 4 * width + 4 + (4 * width if trainable else 0)
    return 4 * width + 4 + (b * width if trainable else 0)


def activation_bytes(inp: PlanInput) -> ActivationBytes:
    """Bytes autograd keeps for backward, per token, layer by layer, as measured with saved-tensor hooks on
    transformers' llama/qwen/gemma code (see plan.md for the walk through one layer)."""
    s = model_shape(inp.config)
    h, f, d = s.hidden, s.intermediate, s.head_dim
    q, kv = s.heads * d, s.kv_heads * d
    b = compute_bytes(inp)
    full = inp.method == "full"
    lora = not full
    b_ad = adapter_bytes(inp)
    r = inp.lora_r
    adapted = set(resolve_targets(s, inp.lora_targets)[0]) if lora else set()
    dropout = inp.lora_dropout > 0
    # Under autocast lora_A computes (and keeps its input) in the compute dtype, whatever the adapter's dtype
    b_lora = b if autocast(inp) else b_ad
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


def saved_activations(inp: PlanInput, s: Shape, tensors: list[Tensor], acts: ActivationBytes) -> tuple[int, str]:
    """Everything the decoder (and a VLM's vision tower) keeps for backward at the end of the forward."""
    N, L, b = inp.micro_batch_size * inp.seq_len, s.layers, compute_bytes(inp)
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
    if inp.dtype == "float32" and autocast(inp):
        # autocast's bf16 copies of the fp32 weights: cached for trainable ones, kept by backward for frozen ones
        linear_params = sum(t.numel for t in tensors if t.role == "linear")
        copies = 2 * (linear_params if full or not inp.gradient_checkpointing else linear_params // L)
        total += copies
        note += f"; {copies / GiB:.2f} GiB of bf16 weight copies made by autocast"
    vision = vision_shape(inp.config)
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
    b, wb = compute_bytes(inp), weight_bytes_per(inp)
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
    N, h, b = inp.micro_batch_size * inp.seq_len, s.hidden, compute_bytes(inp)
    work = N * (3 * s.intermediate + 2 * h) * b
    if inp.attn_implementation == "eager":
        work += N * inp.seq_len * s.heads * (4 + 2 * b)
    if inp.method == "qlora":  # bitsandbytes dequantizes one weight at a time
        work += 2 * max(fi * fo for fi, fo in layer_linears(s).values()) * b
    elif inp.method == "8bit-lora":
        work += 3 * N * max(h, s.intermediate)  # fp16 copy and int8 codes of the input
    return work + (one_layer if inp.gradient_checkpointing else 0)
