"""The (model_type, attention) pairs whose packed, padding-free batches tests/contracts/test_packing.py proves to train
exactly like the same examples padded: the only pairs a shipped recipe may pack (tests/unit/test_fast_defaults.py)."""

PACKING_CASES = [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa"), ("gemma3_text", "eager")]
