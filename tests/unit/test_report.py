"""`sft-recipes report`: PNG + HTML from trainer_state.json, its fallbacks and its refusals."""

import base64
import json
import re
import sys

import pytest

from sft_recipes.cli import main as cli
from sft_recipes.errors import RecipeError
from sft_recipes.report import main as report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def trainer_state(steps: int = 20, eval_every: int = 5) -> dict:
    """The shape Trainer writes: train logs, eval logs and the end-of-training summary in log_history."""
    history = []
    for step in range(1, steps + 1):
        history.append(
            {"loss": 3.0 / step + 0.123456, "grad_norm": 1.0, "learning_rate": 2.0e-4 * (1 - step / steps),
             "num_tokens": 500.0 * step, "tokens_per_second": 1000.0 + step, "tokens_per_second_per_device": 1000.0,
             "peak_rss_gib": 0.5 + step / 100, "epoch": step / steps, "step": step}
        )  # fmt: skip
        if step % eval_every == 0:
            history.append({"eval_loss": 2.0 / step + 0.5, "eval_runtime": 0.1, "epoch": step / steps, "step": step})
    history.append({"train_runtime": 123.4, "train_loss": 1.0, "total_flos": 1.0, "epoch": 1.0, "step": steps})
    return {"global_step": steps, "max_steps": steps, "epoch": 1.0, "log_history": history}


def write_state(directory, state) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trainer_state.json").write_text(json.dumps(state))


def test_report_writes_a_png_and_an_html_with_the_final_loss(tmp_path):
    state = trainer_state()
    write_state(tmp_path, state)
    assert report([str(tmp_path)]) == 0
    png = (tmp_path / "report.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000
    page = (tmp_path / "report.html").read_text()
    final_loss = [entry["loss"] for entry in state["log_history"] if "loss" in entry][-1]
    assert f"<td>{final_loss:.4f}</td>" in page
    assert "<td>0.6000 at step 20</td>" in page  # best eval loss is the last one: 2/20 + 0.5
    assert "<td>10,000</td>" in page  # tokens seen
    embedded = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(embedded) == png


def test_report_falls_back_to_the_highest_numbered_checkpoint(tmp_path):
    write_state(tmp_path / "checkpoint-9", trainer_state(steps=9))
    write_state(tmp_path / "checkpoint-10", trainer_state(steps=10))  # sorts before checkpoint-9 as text
    (tmp_path / "checkpoint-11").mkdir()  # cut off before its state was written
    assert report([str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "checkpoint-10/trainer_state.json" in page
    assert "<td>10 of 10</td>" in page


def test_report_on_a_missing_directory_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert cli(["report", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_report_without_trainer_state_names_the_expected_file(tmp_path):
    with pytest.raises(RecipeError, match=re.escape(str(tmp_path / "trainer_state.json"))):
        report([str(tmp_path)])


def test_report_replaces_its_own_files_but_no_other(tmp_path):
    write_state(tmp_path, trainer_state())
    assert report([str(tmp_path)]) == 0
    first = (tmp_path / "report.png").read_bytes()
    write_state(tmp_path, trainer_state(steps=10))
    assert report([str(tmp_path)]) == 0  # a rerun replaces the previous report
    assert "<td>10 of 10</td>" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "report.png").read_bytes() != first
    foreign = tmp_path / "plots" / "loss.png"
    foreign.parent.mkdir()
    foreign.write_bytes(PNG_MAGIC + b"someone else's plot")
    with pytest.raises(RecipeError, match="not a report"):
        report([str(tmp_path), "--out", str(foreign)])
    assert foreign.read_bytes() == PNG_MAGIC + b"someone else's plot"
    assert not (tmp_path / "plots" / "loss.html").exists()


def test_report_writes_where_out_says(tmp_path):
    write_state(tmp_path / "run", trainer_state())
    assert report([str(tmp_path / "run"), "--out", str(tmp_path / "reports" / "run.png")]) == 0
    assert (tmp_path / "reports" / "run.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "reports" / "run.html").is_file()
    assert not (tmp_path / "run" / "report.png").exists()


def test_report_without_matplotlib_says_which_extra_to_install(tmp_path, monkeypatch, capsys):
    write_state(tmp_path, trainer_state())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes find_spec and import both fail
    assert cli(["report", str(tmp_path)]) == 2
    assert "pip install 'sft-recipes[tracking]'" in capsys.readouterr().err
    assert not (tmp_path / "report.png").exists()
