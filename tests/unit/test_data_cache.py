"""The conversion's datasets cache follows the data layer's code: a conversion cached by other row checks is never
read back (datasets fingerprints the map function by its own code, not by the functions it calls)."""

from __future__ import annotations

import json

import datasets

from sft_recipes.data import formats


def test_the_cached_conversion_is_reused_until_the_data_layers_code_changes(tmp_path, monkeypatch):
    rows = tmp_path / "rows.jsonl"
    turns = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    rows.write_text(json.dumps({"conversations": turns}) + "\n")
    raw = datasets.load_dataset("json", data_files=str(rows), split="train", cache_dir=str(tmp_path / "cache"))
    first = formats.to_trl_format(raw, "auto", str(rows))
    again = formats.to_trl_format(raw, "auto", str(rows))
    assert again._fingerprint == first._fingerprint and again.cache_files == first.cache_files
    monkeypatch.setattr(formats, "conversion_code", lambda: "other row checks")
    changed = formats.to_trl_format(raw, "auto", str(rows))
    assert changed._fingerprint != first._fingerprint and changed.cache_files != first.cache_files
