"""The model layer: what a checkpoint is (kind), how training loads it (loading), LoRA targets, RoPE scaling."""
