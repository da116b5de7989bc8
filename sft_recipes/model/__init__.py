"""The model layer: what a checkpoint is (kind), attention, quantization, LoRA targets, RoPE, tokenizer, loading,
and the base + adapter of a finished LoRA run."""
