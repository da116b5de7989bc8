"""`python -m sft_recipes ...`, the same as the `sft-recipes` command (and what `accelerate launch -m` runs)."""

import sys

from sft_recipes.cli import main

sys.exit(main())
