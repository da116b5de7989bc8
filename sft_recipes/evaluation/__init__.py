"""`sft-recipes eval`: a trained run against its base model on held-out rows (see evaluation.command)."""
