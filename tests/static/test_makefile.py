"""The Makefile's test targets: `make test` the whole suite, `make test-fast` everything but the cluster and the
multi-night story."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def planned(target: str) -> list[str]:
    """The pytest command line `make <target>` runs (make -n: printed, not run; setup's steps left out)."""
    done = subprocess.run(["make", "-n", "-o", ".venv/.installed", "-o", "setup", target], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return shlex.split(next(line for line in done.stdout.splitlines() if "-m pytest" in line))


def collected(marker: str) -> set[str]:
    """The test files pytest selects with `-m marker`."""
    args = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", marker]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}


def test_test_is_the_whole_suite_and_test_fast_leaves_out_the_cluster_and_the_story():
    assert planned("test")[1:] == ["-m", "pytest"]
    fast = planned("test-fast")
    assert fast[1:4] == ["-m", "pytest", "-m"]
    left_out = collected(f"not ({fast[4]})")
    assert left_out == {f"tests/cluster/{name}" for name in
                        ("test_access.py", "test_mlflow_postgres.py", "test_operations.py", "test_shared_catalog.py",
                         "test_standalone_cluster.py")} | {
        "tests/e2e/test_regime_shift.py"}, left_out
