"""ThroughputCallback on a real SFTTrainer run, and the FLOPs-per-token formula against hand counts."""

import time
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    PreTrainedTokenizerFast,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)
from trl import SFTConfig, SFTTrainer

from sft_recipes import throughput
from sft_recipes.throughput import add_throughput_callback, model_flops_per_token, trainable_fraction

WORDS = [f"w{i}" for i in range(100)]
LENGTHS = [3, 5, 8, 11, 14, 20]  # words per example, all different so every batch of 3 is padded
TOKENS_PER_EPOCH = sum(n + 1 for n in LENGTHS)  # one token per word, plus the EOS that TRL appends
EVAL_SLEEP = 0.2


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def tiny_llama_config(**overrides) -> LlamaConfig:
    fields = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4)
    fields |= dict(num_key_value_heads=2, vocab_size=128, pad_token_id=0, eos_token_id=2, bos_token_id=None)
    return LlamaConfig(**(fields | overrides))


class SlowEval(TrainerCallback):
    """Makes every evaluation take EVAL_SLEEP seconds more, which must not count as training time."""

    def on_prediction_step(self, args, state, control, **kwargs):
        time.sleep(EVAL_SLEEP)


class Recorder(TrainerCallback):
    def __init__(self):
        self.train_logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs:
            self.train_logs.append(dict(logs))


def train(tmp_path, packing=False, eval_steps=None):
    dataset = Dataset.from_dict({"text": [" ".join(WORDS[:n]) for n in LENGTHS]})
    # Each optimizer step sees all 6 examples (2 micro-batches of 3), whatever the shuffle order
    args = SFTConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], logging_steps=1, max_length=32,
        per_device_train_batch_size=3, per_device_eval_batch_size=6, gradient_accumulation_steps=2,
        num_train_epochs=3, save_strategy="no", disable_tqdm=True, packing=packing,
        eval_strategy="steps" if eval_steps else "no", eval_steps=eval_steps,
    )  # fmt: skip
    recorder = Recorder()
    trainer = SFTTrainer(
        model=LlamaForCausalLM(tiny_llama_config()), args=args, train_dataset=dataset,
        eval_dataset=dataset if eval_steps else None, processing_class=tiny_tokenizer(),
        callbacks=[SlowEval(), recorder],
    )  # fmt: skip
    batches = []
    collate = trainer.data_collator
    trainer.data_collator = lambda examples: batches.append(collate(examples)) or batches[-1]
    callback = add_throughput_callback(trainer)
    start = time.perf_counter()
    trainer.train()
    return trainer, callback, recorder, batches, time.perf_counter() - start


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("throughput"), eval_steps=1)


def test_logged_tokens_are_the_non_padding_tokens_of_each_step(run):
    trainer, callback, _, batches, _ = run
    train_batches = [b for b in batches if b["input_ids"].shape[0] == 3]  # eval batches hold all 6 examples
    assert sum(int(b["attention_mask"].sum()) for b in train_batches) == 3 * TOKENS_PER_EPOCH
    assert sum(b["input_ids"].numel() for b in train_batches) > 3 * TOKENS_PER_EPOCH  # the padding we must skip
    assert [i.step for i in callback.intervals] == [1, 2, 3]
    assert [i.tokens for i in callback.intervals] == [TOKENS_PER_EPOCH] * 3


def test_tokens_per_second_is_tokens_over_training_seconds_without_eval_time(run):
    trainer, callback, recorder, _, wall = run
    assert len(recorder.train_logs) == 3
    for interval, logs in zip(callback.intervals, recorder.train_logs, strict=True):
        assert logs["tokens_per_second"] == pytest.approx(interval.tokens / interval.seconds, rel=1e-9)
        assert logs["tokens_per_second"] > 0
        assert logs["tokens_per_second_per_device"] == logs["tokens_per_second"]  # one process
    evaluations = sum("eval_loss" in entry for entry in trainer.state.log_history)
    assert evaluations == 3
    training_seconds = sum(i.seconds for i in callback.intervals)
    assert 0 < training_seconds < wall - evaluations * EVAL_SLEEP


def test_metrics_reach_other_callbacks_and_trainer_state(run):
    trainer, callback, recorder, _, _ = run
    assert trainer.callback_handler.callbacks[0] is callback  # ahead of tensorboard/wandb/trackio
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["tokens_per_second"] for entry in history] == [
        log["tokens_per_second"] for log in recorder.train_logs
    ]
    assert all(entry["peak_rss_gib"] > 0.1 for entry in history)  # a Python process with torch loaded
    assert not any("mfu" in entry or "peak_memory_gib" in entry for entry in history)  # CPU: no peak FLOP/s


def test_padding_free_packing_counts_the_packed_tokens(tmp_path):
    trainer, callback, _, batches, _ = train(tmp_path, packing=True)
    assert all("attention_mask" not in b for b in batches)
    assert sum(b["input_ids"].numel() for b in batches) == 3 * TOKENS_PER_EPOCH
    assert sum(i.tokens for i in callback.intervals) == 3 * TOKENS_PER_EPOCH


def test_flops_per_token_matches_a_hand_count_for_grouped_query_llama():
    config = tiny_llama_config().to_dict()
    attention = 16 * 16 + 16 * 8 + 16 * 8 + 16 * 16  # q, k, v (2 of 4 heads), o; head_dim 4
    mlp = 3 * 16 * 32  # gate, up, down
    n = 2 * (attention + mlp) + 16 * 128  # + LM head
    assert n == 6656
    assert model_flops_per_token(config, 1.0) == 6 * n
    assert model_flops_per_token(config, 0.0) == 4 * n
    assert model_flops_per_token(config, 1.0, seq_len=32) == 6 * n + 12 * 2 * 16 * 32


def test_flops_per_token_counts_every_matmul_weight_of_a_real_model():
    model = LlamaForCausalLM(tiny_llama_config(hidden_size=24, intermediate_size=40, num_hidden_layers=3))
    no_matmul = {"model.embed_tokens.weight"} | {name for name, _ in model.named_parameters() if "norm" in name}
    n = sum(p.numel() for name, p in model.named_parameters() if name not in no_matmul)
    assert model_flops_per_token(model.config.to_dict(), 1.0) == 6 * n


def test_flops_per_token_counts_only_the_active_experts_of_a_moe():
    fields = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=128)
    config = MixtralConfig(**fields, num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2).to_dict()
    n = 2 * (4 * 16 * 16 + 2 * 3 * 16 * 32) + 16 * 128
    assert model_flops_per_token(config, 1.0) == 6 * n


def test_trainable_fraction_of_a_model_with_only_the_head_trainable():
    model = LlamaForCausalLM(tiny_llama_config())
    for name, param in model.named_parameters():
        param.requires_grad = name == "lm_head.weight"
    total = sum(p.numel() for p in model.parameters())
    assert trainable_fraction(model) == 16 * 128 / total


def test_mfu_divides_model_flops_per_second_by_the_peak_of_every_device(monkeypatch):
    # The CUDA path, driven by hand: no GPU needed, the clock and the memory probe are stubbed
    clock = iter([100.0, 102.0])  # train begin, then the first log 2 s later
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(throughput, "peak_memory", lambda cuda: {"peak_memory_gib": 1.5} if cuda else {})
    args = SimpleNamespace(device=torch.device("cuda"), world_size=2, max_length=32)
    state, model = TrainerState(), LlamaForCausalLM(tiny_llama_config())
    callback = throughput.ThroughputCallback(peak_tflops=1.0e-6)  # 1 MFLOP/s per device
    callback.on_train_begin(args, state, TrainerControl(), model=model)
    logs = {"loss": 1.0, "num_tokens": 10.0}
    callback.on_log(args, state, TrainerControl(), logs=logs)
    assert logs["tokens_per_second"] == 5.0 and logs["tokens_per_second_per_device"] == 2.5
    assert logs["mfu"] == pytest.approx(model_flops_per_token(model.config.to_dict(), 1.0, 32) * 5.0 / 2.0e6)
    assert logs["peak_memory_gib"] == 1.5
