"""`python -m sft_recipes ...`, the same as the `sft-recipes` command (and what `accelerate launch -m` runs)."""

from sft_recipes.cli import main

raise SystemExit(main())
