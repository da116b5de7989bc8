"""`sft-recipes env` and the optional-import helpers."""

import importlib.util
import json
from importlib.metadata import version

import pytest

from sft_recipes.environment import EXTRAS, has_package, main, require_extra
from sft_recipes.errors import RecipeError

SECRET = "hf_thisMustNeverBePrinted42"


def env_json(capsys) -> dict:
    assert main(["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_env_json_lists_every_extra_as_find_spec_sees_it(capsys):
    info = env_json(capsys)
    assert set(info["extras"]) == set(EXTRAS)
    for module, found in info["extras"].items():
        assert found["present"] is (importlib.util.find_spec(module) is not None), module
    assert info["extras"]["matplotlib"] == {"present": True, "version": version("matplotlib")}
    assert info["packages"]["trl"] == version("trl")
    assert info["cuda"]["available"] in (True, False)


@pytest.mark.parametrize("argv", [["--json"], []], ids=["json", "table"])
def test_env_never_prints_the_value_of_a_token(argv, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    if argv:
        assert json.loads(out)["secrets"] == {
            "HF_TOKEN": "set",
            "HUGGING_FACE_HUB_TOKEN": "unset",
            "WANDB_API_KEY": "set",
        }
    else:
        assert "HF_TOKEN" in out


def test_env_reports_hub_offline_mode(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert env_json(capsys)["hub"]["HF_HUB_OFFLINE"] == "1"


def test_has_package_finds_a_module_without_importing_it(tmp_path, monkeypatch):
    (tmp_path / "explodes_on_import.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert has_package("explodes_on_import")
    assert not has_package("no_such_module_anywhere")


def test_require_extra_names_the_pip_command_for_a_missing_module():
    require_extra("json", "tracking", "sft-recipes report")  # present: no error
    with pytest.raises(RecipeError) as raised:
        require_extra("no_such_module_anywhere", "tracking", "sft-recipes report")
    assert "sft-recipes report needs no_such_module_anywhere" in str(raised.value)
    assert "pip install 'sft-recipes[tracking]'" in str(raised.value)
