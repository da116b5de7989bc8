"""Mutation testing, outside CI: plant realistic one-line bugs in the package one at a time, run the tests that should
catch each, and report the share caught as JSON (benchmarks/results/mutation.json).

Usage: python scripts/mutation_check.py [--only ID,...] [--update] [--check] [--timeout S] [--out PATH] [--no-baseline]

A mutant is a file, the exact original snippet (found there exactly once), its replacement and the tests to run
(scripts/mutants.py holds the table). Statuses: killed (the tests failed), survived (they passed), stale (the snippet
is no longer in the file, or the tests are gone: fix the entry; never counted as killed), invalid (the tests fail
without the mutant too). The file is restored after each mutant, Ctrl-C and SIGTERM included, and the mutated files
are checked clean against git at the end. --check only checks the table; --update merges the mutants run (--only)
into the rows already in --out, e.g. to rerun the survivors once their tests are written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import MUTANTS, Mutant  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "mutation.json"


def test_files(mutant: Mutant) -> list[str] | None:
    """The mutant's test files, found anywhere under tests/ by name (the suite may move them between folders);
    None when one is missing or ambiguous."""
    found = []
    for name in mutant.tests:
        matches = sorted(p for p in (ROOT / "tests").rglob(name) if p.is_file())
        if len(matches) != 1:
            return None
        found.append(str(matches[0].relative_to(ROOT)))
    return found


def staleness(mutant: Mutant) -> str | None:
    """Why the entry no longer applies to the code, or None."""
    path = ROOT / mutant.path
    if not path.is_file():
        return f"{mutant.path} does not exist"
    count = path.read_text().count(mutant.original)
    if count != 1:
        return f"the original snippet occurs {count} times in {mutant.path}, expected once"
    if test_files(mutant) is None:
        return f"test file(s) {', '.join(mutant.tests)} not found exactly once under tests/"
    return None


def pytest_command(mutant: Mutant) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "--no-header", "-p", "no:cacheprovider"]
    command += list(test_files(mutant) or [])
    return command + (["-k", mutant.k] if mutant.k else [])


def run_tests(command: list[str], timeout: float) -> tuple[str, float, str]:
    """("passed" | "failed" | "timeout" | "no tests", seconds, the first failure line) of one pytest run, in its own
    process group so that a timeout or Ctrl-C also ends the runs the tests start.

    Each run gets an empty datasets cache: a conversion cached under a mutant (datasets fingerprints the map
    function, not the code it calls) would otherwise be read back by the runs after it, unmutated ones included."""
    cache = tempfile.mkdtemp(prefix="mutation-datasets-")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}
    env |= {"HF_DATASETS_CACHE": cache, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.monotonic()
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "timeout", round(time.monotonic() - started, 1), ""
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    seconds = round(time.monotonic() - started, 1)
    first = next((line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))), "")
    if proc.returncode == 0:
        return "passed", seconds, ""
    if proc.returncode == 5:
        return "no tests", seconds, ""
    return "failed", seconds, first or output.strip().splitlines()[-1][:300]


def apply_and_test(mutant: Mutant, timeout: float) -> dict:
    """Plant the mutant, run its tests, restore the file whatever happens (bytes and mtime)."""
    path = ROOT / mutant.path
    original = path.read_bytes()
    stat = path.stat()
    try:
        path.write_text(original.decode().replace(mutant.original, mutant.replacement, 1))
        outcome, seconds, failure = run_tests(pytest_command(mutant), timeout)
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    status = {"failed": "killed", "timeout": "killed", "passed": "survived", "no tests": "invalid"}[outcome]
    return {"status": status, "outcome": outcome, "seconds": seconds, "caught_by": failure}


def dirty(paths: list[str]) -> list[str]:
    """The paths git sees changed against HEAD."""
    done = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True, text=True)
    return [line[3:] for line in done.stdout.splitlines()]


def baselines(mutants: list[Mutant], timeout: float) -> dict[tuple[str, ...], str]:
    """Each distinct test selection run once on the unmutated code: a selection that fails there catches nothing."""
    outcomes: dict[tuple[str, ...], str] = {}
    for mutant in mutants:
        command = tuple(pytest_command(mutant))
        if command not in outcomes:
            outcomes[command], seconds, failure = run_tests(list(command), timeout)
            print(f"baseline {' '.join(command[8:])}: {outcomes[command]} ({seconds} s) {failure}", flush=True)
    return outcomes


def summary(rows: list[dict]) -> dict:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("killed", "survived", "stale", "invalid")}
    scored = counts["killed"] + counts["survived"]
    pending = sum(r["status"] == "survived" and bool(r.get("pending")) for r in rows)
    return {
        "mutants": len(rows),
        **counts,
        "score": round(counts["killed"] / scored, 3) if scored else None,
        "score_without_pending": round(counts["killed"] / (scored - pending), 3) if scored - pending else None,
        "survivors_pending_elsewhere": pending,
    }


def write(out: Path, rows: list[dict], started: str, earlier: dict | None = None) -> None:
    """The result file: `rows`, after the rows of an `earlier` file for the mutants not run this time (in table
    order), and one line per run: when, at which commit, how many mutants, the score after it."""
    order = {m.id: i for i, m in enumerate(MUTANTS)}
    ran = {r["id"] for r in rows}
    kept = [r for r in (earlier or {}).get("mutants", []) if r["id"] not in ran]
    rows = sorted(kept + rows, key=lambda r: order.get(r["id"], len(order)))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    run = {"started": started, "commit": head, "mutants_run": len(ran), "summary_after": summary(rows)}
    data = {
        "what": "realistic one-line bugs planted one at a time (scripts/mutants.py); killed = the named tests fail",
        "command": "python scripts/mutation_check.py",
        "summary": summary(rows),
        "runs": [r for r in (earlier or {}).get("runs", []) if r["started"] != started] + [run],
        "mutants": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated mutant ids")
    parser.add_argument("--check", action="store_true", help="only check that every entry applies; run nothing")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for one mutant's tests")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-baseline", action="store_true", help="skip running each test selection unmutated")
    parser.add_argument("--update", action="store_true", help="keep --out's rows of the mutants not run now")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.id in args.only.split(",")]
    ids = [m.id for m in MUTANTS]
    assert len(set(ids)) == len(ids), "mutant ids must be unique"
    stale = {m.id: why for m in chosen if (why := staleness(m))}
    if args.check:
        for m in chosen:
            print(f"{m.id:32} {'stale: ' + stale[m.id] if m.id in stale else 'ok'}")
        return 1 if stale else 0
    paths = sorted({m.path for m in chosen})
    if dirty(paths):
        print(f"refusing to mutate files with uncommitted changes: {dirty(paths)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM unwinds like Ctrl-C: files get restored
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    live = [m for m in chosen if m.id not in stale]
    base = {} if args.no_baseline else baselines(live, args.timeout)
    earlier = json.loads(args.out.read_text()) if args.update and args.out.is_file() else None
    rows: list[dict] = []
    try:
        for m in chosen:
            row = {"id": m.id, "path": m.path, "bug": m.bug, "original": m.original, "replacement": m.replacement}
            row["run"] = started
            row |= {"tests": list(m.tests), "k": m.k, "pending": m.pending}
            if m.id in stale:
                row |= {"status": "stale", "why": stale[m.id]}
            elif base.get(tuple(pytest_command(m)), "passed") != "passed":
                row |= {"status": "invalid", "why": "its tests do not pass on the unmutated code"}
            else:
                row |= apply_and_test(m, args.timeout)
            rows.append(row)
            print(f"{m.id:32} {row['status']:9} {row.get('seconds', '')} {row.get('caught_by', '')}", flush=True)
            write(args.out, rows, started, earlier)
    finally:
        left = dirty(paths)
        if left:
            print(f"NOT CLEAN after restoring: {left}", file=sys.stderr)
    print(json.dumps(json.loads(args.out.read_text())["summary"] if rows else summary(rows)))
    return 1 if left else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the mutated file was restored; results so far are in --out", file=sys.stderr)
        sys.exit(130)
