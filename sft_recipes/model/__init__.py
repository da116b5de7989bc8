"""The model layer: what a checkpoint is (kind), attention, quantization, LoRA targets, tokenizer, loading."""
