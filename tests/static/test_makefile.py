"""The Makefile's test targets: `make test` the whole suite, `make test-fast` everything but the cluster, the
multi-night story and the tests marked slow."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LEFT_OUT = {"cluster", "story", "slow"}  # the markers `make test-fast` leaves out
# pytest collects the suite with -m <expression> and prints, per test id, whether it was selected and its markers.
COLLECT = """
import json, sys
import pytest

class Record:
    tests = {}

    def pytest_deselected(self, items):
        self.tests.update({i.nodeid: [False, sorted({m.name for m in i.iter_markers()})] for i in items})

    def pytest_collection_finish(self, session):
        self.tests.update({i.nodeid: [True, sorted({m.name for m in i.iter_markers()})] for i in session.items})

record = Record()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-m", sys.argv[1]], plugins=[record])
print(json.dumps({"exit": int(code), "tests": record.tests}))
"""


def planned(target: str) -> list[str]:
    """The pytest command line `make <target>` runs (make -n: printed, not run; setup's steps left out)."""
    done = subprocess.run(["make", "-n", "-o", ".venv/.installed", "-o", "setup", target], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return shlex.split(next(line for line in done.stdout.splitlines() if "-m pytest" in line))


@pytest.fixture(scope="module")
def fast() -> dict[str, tuple[bool, set[str]]]:
    """Every test of the suite: (selected by `make test-fast`'s marker expression, its markers)."""
    command = planned("test-fast")
    assert command[1:4] == ["-m", "pytest", "-m"], command
    done = subprocess.run([sys.executable, "-c", COLLECT, command[4]], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    collected = json.loads(done.stdout.strip().splitlines()[-1])
    assert collected["exit"] == 0, done.stdout[-3000:]
    return {test: (selected, set(markers)) for test, (selected, markers) in collected["tests"].items()}


def test_test_is_the_whole_suite_and_test_fast_leaves_out_the_cluster_the_story_and_the_slow_tests(fast):
    assert planned("test")[1:] == ["-m", "pytest"]
    left_out = {test.split("::")[0] for test, (selected, _) in fast.items() if not selected}
    assert left_out == {f"tests/cluster/{name}" for name in
                        ("test_access.py", "test_mlflow_postgres.py", "test_operations.py", "test_shared_catalog.py",
                         "test_standalone_cluster.py")} | {
        "tests/e2e/test_regime_shift.py", "tests/e2e/test_demo.py", "tests/e2e/test_notebooks.py"} | {
        f"tests/spark/{name}" for name in
        ("test_compiled_scoring.py", "test_estimators.py", "test_event_points.py", "test_every_pipeline.py",
         "test_features.py", "test_feature_versions.py", "test_ingest.py", "test_interruptions.py", "test_maintain.py",
         "test_monitor.py", "test_stages.py", "test_storage_failures.py", "test_training.py",
         "test_user_errors.py")}, left_out


def test_test_fast_selects_no_test_marked_cluster_story_or_slow_and_every_other_test(fast):
    selected_slow = sorted(test for test, (selected, markers) in fast.items() if selected and markers & LEFT_OUT)
    assert selected_slow == [], f"`make test-fast` runs tests marked {' or '.join(sorted(LEFT_OUT))}: {selected_slow}"
    left_out_quick = sorted(test for test, (selected, markers) in fast.items()
                            if not selected and not markers & LEFT_OUT)
    assert left_out_quick == [], (f"`make test-fast` leaves out tests marked neither cluster, story nor slow: "
                                  f"{left_out_quick}")
    assert sum(selected for selected, _ in fast.values()) > 0


def test_every_test_under_tests_cluster_is_marked_cluster(fast):
    in_cluster = {test: markers for test, (_, markers) in fast.items() if test.startswith("tests/cluster/")}
    assert in_cluster, "no test collected under tests/cluster"
    unmarked = sorted(test for test, markers in in_cluster.items() if "cluster" not in markers)
    assert unmarked == [], (f"tests under tests/cluster without the cluster marker (add pytest.mark.cluster to the "
                            f"module's pytestmark): {unmarked}")
