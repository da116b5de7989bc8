"""`sft-recipes eval --format html`: a self-contained page that a real headless browser (Debian's chromium)
renders with the figures side by side, the better model marked, and the samples coloured by exact match."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess

import pytest

from sft_recipes.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EXACT, MISS = (0xDA, 0xFB, 0xE1), (0xFF, 0xEB, 0xE9)  # the page's shades for an exact answer and a wrong one


def screenshot(page, png, tmp_path) -> None:
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={png}",
            "--window-size=1200,900",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory, demo_run_dir, demo_heldout_file):
    page = tmp_path_factory.mktemp("eval-page") / "eval.html"
    argv = ["eval", str(demo_run_dir), "--data", str(demo_heldout_file), "--n", "6", "--format", "html"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([*argv, "--out", str(page)]) == 0
    assert stdout.getvalue() == ""  # the page went to --out
    return page


def test_html_page_marks_the_better_model_and_colours_each_answer(page):
    text = page.read_text()
    assert "<script" not in text and not re.search(r"(src|href)=\"?(https?:)?//", text)  # self-contained
    # The tuned demo model wins all four figures; the base wins none.
    assert text.count('class="value tuned better"') == 4 and 'class="value base better"' not in text
    assert text.count('<tr><td class="index">') == 6
    assert text.count('class="answer exact"') == 6 and text.count('class="answer miss"') == 6


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_html_page_renders_in_a_headless_browser(tmp_path, page):
    from PIL import Image

    png = tmp_path / "eval.png"
    screenshot(page, png, tmp_path)
    image = Image.open(png).convert("RGB")
    assert image.size == (1200, 900)
    assert len(set(image.getdata())) > 200  # text, cards and shading, not a blank or error page
    table = image.crop((0, 450, 1200, 900))  # below the figures: the samples table
    colours = {colour for _, colour in (table.getcolors(1 << 20) or [])}
    assert len(colours) > 50
    assert EXACT in colours and MISS in colours  # tuned answers shaded as exact, the base's as wrong
