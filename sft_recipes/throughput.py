"""Training telemetry: real tokens per second, model FLOPs utilization and peak memory, logged beside the loss."""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

# Config keys differ between families; the first one present wins.
_HIDDEN = ("hidden_size", "n_embd", "d_model")
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers")
_HEADS = ("num_attention_heads", "n_head", "num_heads")
# Families whose MLP is up -> act -> down (2 matrices) rather than gated (gate, up, down: 3 matrices).
_UNGATED_MLP = {"gpt2", "gpt_bigcode", "gpt_neox", "gptj", "opt", "phi", "falcon", "starcoder2", "bloom", "mpt"}


def _first(config: dict[str, Any], keys: tuple[str, ...]) -> int:
    for key in keys:
        if config.get(key) is not None:
            return int(config[key])
    raise KeyError(f"model config has none of {keys}")


def model_flops_per_token(
    config_dict: dict[str, Any], trainable_fraction: float = 1.0, seq_len: int | None = None
) -> float:
    """Training FLOPs per token, (4 + 2·f)·N + 12·L·d_attn·s, counted as MFU (Kaplan et al. 2020 2.1, PaLM app. B).

    N: the matmul weights a token passes through (attention, MLP or the active experts, the LM head even if tied; no
    embeddings, norms, biases or vision tower). Forward 2N; backward 2N for the activation gradients (frozen layers
    too) + 2N·f for the weights of the trainable fraction f: 6N full, ~4N LoRA. Attention: full, non-causal QK^T and
    AV over s tokens, no recomputation."""
    config = config_dict.get("text_config") or config_dict
    hidden, layers, heads = _first(config, _HIDDEN), _first(config, _LAYERS), _first(config, _HEADS)
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    intermediate = config.get("intermediate_size") or config.get("n_inner") or 4 * hidden
    if experts := config.get("num_experts_per_tok"):  # the active experts, and the shared one if any
        intermediate = experts * (config.get("moe_intermediate_size") or intermediate)
        intermediate += config.get("shared_expert_intermediate_size") or 0
    mlp = (2 if config.get("model_type") in _UNGATED_MLP else 3) * hidden * intermediate
    n_matmul = layers * (attention + mlp) + hidden * config["vocab_size"]
    flops = (4 + 2 * min(max(trainable_fraction, 0.0), 1.0)) * n_matmul
    if seq_len:
        flops += 12 * layers * heads * head_dim * seq_len
    return float(flops)


def trainable_fraction(model: Any) -> float:
    """Trainable share of the parameters, counting ZeRO-3 shards and 4-bit packed weights at their full size."""
    total = trainable = 0
    for param in model.parameters():
        quant_shape = getattr(getattr(param, "quant_state", None), "shape", None)  # bitsandbytes packs 2 per byte
        count = math.prod(quant_shape) if quant_shape else getattr(param, "ds_numel", None) or param.numel()
        total += count
        trainable += count if param.requires_grad else 0
    return trainable / total if total else 0.0


def peak_memory(cuda: bool) -> dict[str, float]:
    """Peak memory in GiB: CUDA allocator peak of this process's device, or the process peak RSS on CPU."""
    if cuda:
        import torch

        return {"peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    import resource

    # ru_maxrss is KiB on Linux and bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30}


def device_peak_flops() -> float | None:
    """Dense bf16 peak FLOP/s of the current CUDA device, from the GPU table in sft_recipes.plan; None if unknown."""
    import torch

    from sft_recipes.plan.gpus import gpu_spec

    spec = gpu_spec(torch.cuda.get_device_name())
    return spec.bf16_tflops * 1e12 if spec else None


@dataclass(frozen=True)
class Interval:
    """One logging interval: the optimizer step it ends at, real tokens trained and seconds spent training."""

    step: int
    tokens: float
    seconds: float


class ThroughputCallback(TrainerCallback):
    """Adds tokens_per_second, tokens_per_second_per_device, mfu and peak memory to every training log.

    Tokens: the trainer's own global count of real tokens trained (TRL's `num_tokens`, else transformers'
    `num_input_tokens_seen` with include_num_input_tokens_seen="non_padding"), so eval forwards and TRL's second
    forward do not count. Seconds: wall clock between two training logs less evaluating and saving; each boundary
    follows a Trainer `.item()`, so CUDA needs no extra sync. `mfu` only on CUDA GPUs of the GPU table (or given
    `peak_tflops`), against the dense bf16 peak of all devices; on CPU, memory is `peak_rss_gib`."""

    def __init__(self, peak_tflops: float | None = None):
        self.peak_tflops = peak_tflops
        self.intervals: list[Interval] = []
        self._mark: float | None = None  # last step end or training log; None outside train()
        self._warned = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._cuda = args.device.type == "cuda"
        self._world_size = max(args.world_size, 1)
        self._last_tokens = None
        self._tokens_at_begin = state.num_input_tokens_seen
        self._last_log = self._mark = time.perf_counter()
        self._paused = 0.0
        self._flops_per_token = self._peak_flops = None
        config = getattr(model, "config", None)
        if self._cuda and config is not None:
            seq_len = getattr(args, "max_length", None)
            self._flops_per_token = model_flops_per_token(config.to_dict(), trainable_fraction(model), seq_len)
            self._peak_flops = self.peak_tflops * 1e12 if self.peak_tflops else device_peak_flops()
            if self._peak_flops is None:
                logger.warning("GPU not in the table of sft_recipes.plan and no peak_tflops given: mfu not logged")

    def on_step_end(self, args, state, control, **kwargs):
        self._mark = time.perf_counter()

    def on_evaluate(self, args, state, control, **kwargs):
        if self._mark is not None:  # evaluate() or save outside train() needs no accounting
            now = time.perf_counter()
            self._paused += now - self._mark
            self._mark = now

    on_save = on_evaluate

    def on_train_end(self, args, state, control, **kwargs):
        self._mark = None

    def _total_tokens(self, args, state, logs: dict[str, float]) -> tuple[float, float] | None:
        """(tokens so far, count at train start) from whichever trainer counter counts real tokens."""
        if "num_tokens" in logs:
            return logs["num_tokens"], 0.0  # TRL's counter lives on the trainer and starts at 0
        if args.include_num_input_tokens_seen == "non_padding":
            return state.num_input_tokens_seen, self._tokens_at_begin
        return None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or self._mark is None:
            return  # eval logs and the end-of-training summary are not training intervals
        now = time.perf_counter()
        metrics = peak_memory(self._cuda)
        counted = self._total_tokens(args, state, logs)
        seconds = now - self._last_log - self._paused
        if counted is not None and seconds > 0:
            total, at_begin = counted
            previous = at_begin if self._last_tokens is None else self._last_tokens
            tokens = total - previous if total >= previous else total  # a counter that restarted
            self._last_tokens = total
            self.intervals.append(Interval(state.global_step, tokens, seconds))
            metrics["tokens_per_second"] = tokens / seconds
            metrics["tokens_per_second_per_device"] = tokens / seconds / self._world_size
            if self._flops_per_token and self._peak_flops:
                metrics["mfu"] = self._flops_per_token * tokens / seconds / (self._peak_flops * self._world_size)
        elif counted is None and not self._warned:
            self._warned = True
            logger.warning(
                "no real-token count in the logs (TRL num_tokens, or include_num_input_tokens_seen="
                "'non_padding'): tokens_per_second not logged"
            )
        logs.update(metrics)
        # The Trainer copied `logs` into log_history before calling us; keep trainer_state.json in step
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)
        self._last_log = self._mark = now
        self._paused = 0.0


def add_throughput_callback(trainer: Any, peak_tflops: float | None = None) -> ThroughputCallback:
    """Put a ThroughputCallback first in `trainer`'s callbacks, so the reporting integrations (which Trainer runs
    before `callbacks=[...]`) and the progress bar see its metrics."""
    callback = ThroughputCallback(peak_tflops)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
