"""`make gpu-check` (scripts/gpu_check.py): exits 0 saying why on a machine without CUDA, fits its 8 minutes by
construction, and keeps the figures the issue asks for."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())  # any tests/ folder


def load(relative: str):
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_says_so_exits_0_and_writes_no_results():
    results = ROOT / "benchmarks" / "results"
    before = {p.name: p.stat().st_mtime for p in results.iterdir()}
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "scripts/gpu_check.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "needs a CUDA GPU" in done.stdout and "nothing was run" in done.stdout
    assert {p.name: p.stat().st_mtime for p in results.iterdir()} == before


def test_the_stage_caps_fit_the_budget_and_the_budget_fits_8_minutes():
    check = load("scripts/gpu_check.py")
    stages = check.stages(dry=False)
    assert check.BUDGET_S <= 8 * 60 - 20  # Python's start, the summary
    assert sum(s.cap_s for s in stages) <= check.BUDGET_S  # so each stage can have its whole cap
    assert {s.result for s in stages} >= {"gpu_throughput.json", "plan_accuracy_cuda.json"}


def test_the_throughput_stage_measures_the_issues_two_figures_and_its_dry_run_covers_them():
    check = load("scripts/gpu_check.py")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        throughput = load("benchmarks/gpu_throughput.py")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    chosen = [c for c in throughput.CASES if c.name in check.THROUGHPUT_CASES]
    assert len(chosen) == len(check.THROUGHPUT_CASES), "a case name gpu_throughput does not know"
    assert throughput.MEMORY_CASE in chosen  # the QLoRA-8B peak at 2048
    assert any(c.shape == "qwen2.5-1.5b" and c.method == "full" for c in chosen)  # its MFU
    assert set(check.THROUGHPUT_CASES) <= {c.name for c in throughput.DRY_CASES}


def test_the_quick_calibration_measures_every_method_without_checkpointing():
    plan = load("benchmarks/plan_accuracy.py")
    grid = plan.cases("cuda")
    quick = plan.quick(grid)
    assert all(case in grid for case in quick)
    assert {c["method"] for c in quick if not c["ckpt"]} == {"full", "lora", "qlora"}
    assert {c["model"] for c in quick} == set(plan.CUDA_MODELS)
    assert [c["ckpt"] for c in quick] == sorted(c["ckpt"] for c in quick)  # those train's decision rests on first
    assert len(quick) <= len(grid) // 2
