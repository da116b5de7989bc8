"""Packing is exact: a packed, padding-free batch trains like the same examples padded, and only because documents
are isolated (position_ids restart per document, so transformers builds a block-diagonal mask on sdpa and eager).

Both batches come from TRL's own pipeline (bfd packing and its collators); per-token log-probabilities and the loss
come from the fused LM head SFTTrainer trains with, in fp32.
"""

from __future__ import annotations

import pytest
import torch
from helpers.packing_proofs import PACKING_CASES
from helpers.prepared import prepared_trainer, recipe_for

ROWS = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    for q, a in [
        ("What is the capital of France?", "The capital of France is Paris."),
        ("capital of Peru?", "Lima."),
        ("Tell me the capital of Kenya.", "The capital of Kenya is Nairobi, a large city."),
        ("Hi", "Hello! How can I help you today?"),
        ("Name the capital city of Norway.", "Oslo."),
        ("Which city is the capital of Japan?", "Tokyo is the capital of Japan."),
    ]
]
TOLERANCE = 1e-5


def packed_and_padded(tmp_path, model_dir, attn):
    """(model with the fused LM head, packed batch, padded batch of the packed batch's documents, document count)."""
    from trl.trainer.utils import add_fused_lm_head

    from sft_recipes.model.loading import load_model, load_processing_class

    keys = {"assistant_only_loss": True, "max_length": 128, "per_device_train_batch_size": 8}
    packed = prepared_trainer(tmp_path / "packed", model_dir, ROWS, packing=True, **keys)
    padded = prepared_trainer(tmp_path / "padded", model_dir, ROWS, packing=False, **keys)
    batch = next(iter(packed.get_train_dataloader()))
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    documents = [
        {"input_ids": batch["input_ids"][0, a:b].tolist(), "labels": batch["labels"][0, a:b].tolist()}
        for a, b in zip(starts, starts[1:], strict=False)
    ]
    assert len(documents) >= 3, "the packed row must hold several documents for this test to mean anything"
    recipe = recipe_for(tmp_path / "model", model_dir, ROWS, attn_implementation=attn, dtype="float32")
    tokenizer = load_processing_class(recipe.model, recipe.training, "causal_lm")
    model = load_model(recipe.model, recipe.training, "causal_lm", {}, tokenizer)
    assert model.config._attn_implementation == attn
    add_fused_lm_head(model)
    return model, batch, padded.data_collator(documents), len(documents)


def document_bounds(packed):
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist()
    return list(zip(starts, starts[1:] + [packed["input_ids"].shape[1]], strict=True))


def forward(model, batch, bounds=None):
    """(per-token log-probs per document, loss, gradients) exactly as SFTTrainer.compute_loss computes them.

    `bounds` are the documents of a packed row; without them every row is one document, padded at its end."""
    model.zero_grad()
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "labels", "attention_mask", "position_ids")}
    outputs = model(**inputs, use_cache=False, fused_lm_head=True)
    loss = -outputs.log_probs.sum() / outputs.label_mask.sum()
    loss.backward()
    log_probs = outputs.log_probs.detach()  # log_probs[:, i] scores token i + 1
    if bounds is None:
        lengths = batch["attention_mask"].sum(1).tolist()
        per_document = [row[: n - 1] for row, n in zip(log_probs, lengths, strict=True)]
    else:
        per_document = [log_probs[0, a : b - 1] for a, b in bounds]
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return per_document, loss.detach(), grads


def largest_difference(a, b):
    per_token = max((x - y).abs().max().item() for x, y in zip(a[0], b[0], strict=True))
    grads = max((a[2][name] - b[2][name]).abs().max().item() for name in a[2])
    return per_token, abs(a[1] - b[1]).item(), grads


@pytest.mark.parametrize(("family", "attn"), PACKING_CASES, ids=[f"{f}-{a}" for f, a in PACKING_CASES])
def test_packed_batch_gives_the_same_per_token_loss_and_gradients_as_padding(family, attn, tmp_path, causal_lm_dirs):
    model, packed, padded, _ = packed_and_padded(tmp_path, causal_lm_dirs[family], attn)
    result = forward(model, packed, document_bounds(packed))
    per_token, loss, grads = largest_difference(result, forward(model, padded))
    assert per_token < TOLERANCE and loss < TOLERANCE and grads < TOLERANCE, (per_token, loss, grads)


@pytest.mark.parametrize(
    "corruption",
    ["position_ids continue across documents", "attention_mask of ones hides the packing"],
)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packing_without_document_isolation_fails_the_same_comparison(corruption, attn, tmp_path, llama_dir):
    model, packed, padded, documents = packed_and_padded(tmp_path, llama_dir, attn)
    broken = dict(packed)
    if corruption.startswith("position_ids"):
        broken["position_ids"] = torch.arange(packed["input_ids"].shape[1])[None]
    else:
        broken["attention_mask"] = torch.ones_like(packed["input_ids"])
    leaked = forward(model, broken, document_bounds(packed))
    per_token, loss, grads = largest_difference(leaked, forward(model, padded))
    # Every document after the first sees the ones before it: far above rounding (isolated packing differs by 0.0).
    assert per_token > 100 * TOLERANCE and grads > 10 * TOLERANCE, (per_token, grads, documents)


def test_models_loaded_for_training_isolate_packed_documents_even_in_a_plain_forward(tmp_path, llama_dir):
    """A KV cache turns transformers' packed-sequence detection off; load_model leaves use_cache off."""
    model, packed, padded, _ = packed_and_padded(tmp_path, llama_dir, "sdpa")
    assert model.config.use_cache is False
    with torch.no_grad():
        plain = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits
        reference = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    for row, (a, b) in enumerate(document_bounds(packed)):
        assert torch.allclose(plain[0, a:b], reference[row, : b - a], atol=TOLERANCE)
