"""sft-recipes: supervised fine-tuning recipes on top of Hugging Face TRL."""

__version__ = "0.1.0"
