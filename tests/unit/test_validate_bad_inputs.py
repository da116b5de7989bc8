"""`sft-recipes validate` on bad inputs: exit 2, the problem named by key/file:line with its fix, nothing written.
The cases are in tests/helpers/bad_cases.py, the machinery in tests/helpers/bad_inputs.py."""

from __future__ import annotations

import pytest
from helpers.bad_cases import CASES
from helpers.bad_inputs import BAD, Case, fill, line_of, places_for, run_validate, tree, write_recipe


@pytest.fixture
def places(tmp_path, llama_dir, demo_data_path, vlm_dirs) -> dict[str, str]:
    return places_for(tmp_path, llama_dir, demo_data_path, vlm_dirs)


def test_the_suite_has_at_least_120_cases():
    assert len(CASES) >= 120
    assert len({param.id for param in CASES}) == len(CASES)


def test_every_range_is_a_numeric_recipe_field_with_a_case_outside_it():
    import typing

    from sft_recipes.config import field_types
    from sft_recipes.validate.recipe_checks import RANGES

    hints = field_types()
    named = {expected[1:] for param in CASES for expected in param.values[0].expect if expected.startswith("@")}
    for key in RANGES:
        assert {int, float} & set(typing.get_args(hints[key]) or (hints[key],)), key
        assert key in named, f"no bad-input case for the range of {key}"


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_exits_2_naming_key_file_or_line_and_writes_nothing(
    bad: Case, tmp_path, places, monkeypatch, capsys, llama_dir
):
    if bad.setup:
        bad.setup(tmp_path, monkeypatch, places)
    recipe = write_recipe(tmp_path, places, bad.keys, bad.drop, bad.raw)
    out_existed = (tmp_path / "out").exists()
    watched = (tmp_path, llama_dir, BAD)
    before = tree(*watched)

    code, out, err = run_validate(capsys, monkeypatch, recipe, fill(list(bad.argv), places))

    assert code == 2, err
    for expected in bad.expect:
        wanted = line_of(recipe, expected[1:]) if expected.startswith("@") else fill(expected, places)
        assert wanted in err, f"{wanted!r} not in:\n{err}"
    assert "Traceback" not in err and "OK" not in out
    assert tree(*watched) == before
    assert (tmp_path / "out").exists() == out_existed
