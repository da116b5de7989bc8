"""`sft-recipes inspect`: TRL's real preparation of a recipe's data on a meta-device model, shown and checked."""
