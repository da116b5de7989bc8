"""The README's demo (`make demo` = `python -m sft_recipes.demo`) learns its task and stops at the end of turn."""

from __future__ import annotations

import json
import re

import pytest

from sft_recipes.tiny import DEMO_PROMPTS


@pytest.mark.slow
def test_demo_fine_tune_answers_the_training_prompts_correctly(tmp_path, capsys, monkeypatch):
    from sft_recipes.demo import main

    monkeypatch.chdir(tmp_path)  # an empty folder: the recipe comes from the package, not from the checkout
    # main() returns 0 only when at least 4 of the 5 prompts get exactly "The capital of X is Y." then EOS.
    assert main(["--workdir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    verdict = re.search(r"^(\d+)/(\d+) correct; ", printed, re.MULTILINE)
    assert verdict and int(verdict[2]) == len(DEMO_PROMPTS) and int(verdict[1]) >= len(DEMO_PROMPTS) - 1, printed
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["final_loss"] < 0.5
    assert (tmp_path / "out" / "recipe.yaml").read_text().count("learning_rate") == 1
