"""The test suite's wall time, as a fresh clone runs it: `make test-fast` (goal: under 5 minutes on two cores), or
`make test` (the whole suite, what CI runs) with --target test.

The committed tree (`git archive HEAD`) is unpacked in a temporary folder, with `.venv` linked to an installed one
(make's setup steps are not rerun), and the target's pytest commands run there with lakeforge imported from the
copy. Run it on a quiet machine: the suite is CPU-bound, and other work on the cores shows up in its time. The
same tree's time varies from run to run on a shared host: --runs N records each run (with the one-minute load
average before and after it) and their median and maximum.

    python benchmarks/suite_bench.py [--target test-fast|test] [--runs N] [--venv PATH] [--results PATH]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record  # benchmarks/record.py, beside this script

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["test-fast", "test"], default="test-fast")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv",
                        help="an installed virtual environment (make setup), linked as the copy's .venv")
    parser.add_argument("--runs", type=int, default=1,
                        help="run the target this many times, each in a fresh copy; wall_s is their median")
    record.add_argument(parser, "suite_bench")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs {args.runs}: run the target at least once")
    venv = args.venv.resolve()
    if not (venv / "bin" / "python").exists():
        parser.error(f"--venv {venv}: no bin/python there; run `make setup` or point --venv at an installed venv")
    recorder = record.Recorder("suite_bench", args.results)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    # Archived once: every run of the series measures this tree, even if HEAD moves meanwhile.
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True).stdout
    runs = []
    for number in range(1, args.runs + 1):
        load_before = round(os.getloadavg()[0], 2)
        wall, counts, done = run_once(args.target, archive, venv)
        runs.append({"wall_s": round(wall, 1), "exit": done.returncode, "tests": counts,
                     "load_before": load_before, "load_after": round(os.getloadavg()[0], 2)})
        print(f"run {number} of {args.runs}: {wall:.1f} s, exit {done.returncode}, {counts}", file=sys.stderr)
        if done.returncode != 0:
            print(done.stdout[-5000:] + done.stderr[-3000:], file=sys.stderr)
            break  # a failing run ends the series: the last run's exit is the series'
    walls = [run["wall_s"] for run in runs]
    failed = runs[-1]["exit"]
    recorder.write({"target": args.target, "commit": commit, "wall_s": statistics.median(walls),
                    "wall_max_s": max(walls), "runs": runs, "exit": failed, "tests": runs[-1]["tests"],
                    "goal_s": 300 if args.target == "test-fast" else None})
    return failed


def run_once(target: str, archive: bytes, venv: Path) -> tuple[float, dict[str, int], subprocess.CompletedProcess]:
    """`make <target>` in a fresh unpacking of the tree's archive (no bytecode, no pytest cache): its wall time, the
    pytest summaries' counts added up, and the finished process."""
    with tempfile.TemporaryDirectory(prefix="suite-bench-") as tmp:
        clone = Path(tmp) / "lakeforge"
        clone.mkdir()
        subprocess.run(["tar", "-x", "-C", str(clone)], input=archive, check=True)
        (clone / ".venv").symlink_to(venv)
        env = {**os.environ, "PYTHONPATH": str(clone / "lib")}
        # -o: the copy's setup steps are taken as done (the linked venv is installed; its stamp is not remade).
        started = time.monotonic()
        done = subprocess.run(["make", "-o", ".venv/.installed", "-o", "setup", "-o", "setup-browser", target],
                              cwd=clone, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
    counts: dict[str, int] = {}
    for line in done.stdout.splitlines():
        if line.startswith("=") and " in " in line:  # each pytest command's closing summary line
            for n, what in SUMMARY.findall(line):
                counts[what] = counts.get(what, 0) + int(n)
    return wall, counts, done


if __name__ == "__main__":
    sys.exit(main())
