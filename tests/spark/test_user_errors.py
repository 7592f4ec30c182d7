"""A user's feature function that raises: the CLI shows the user's own exception, file and line (exit 1), not the
JVM's log. The real `lakeforge features` runs in a subprocess (its own session) on the ingested tiny demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


def test_a_feature_function_that_raises_is_named_with_its_file_and_line(ingested_lakehouse, tmp_path):
    conf = tmp_path / "conf"
    (conf / "pipelines").mkdir(parents=True)
    for name in ("base.yaml", "test.yaml", "log4j2.properties"):
        shutil.copy(REPO / "conf" / name, conf / name)
    shutil.copytree(REPO / "conf" / "sources", conf / "sources")
    churn = yaml.safe_load((REPO / "conf" / "pipelines" / "churn.yaml").read_text())
    churn["features"]["function"] = "failing_features.customer_activity"
    (conf / "pipelines" / "failing.yaml").write_text(yaml.safe_dump(churn, sort_keys=False))
    source = FIXTURES / "failing_features.py"
    line = source.read_text().splitlines().index('    raise ValueError("bad row 7")  # the line the CLI must name') + 1

    # The user's module is importable on the driver and in the Python workers (PYTHONPATH reaches both).
    env = {**os.environ, "LAKEFORGE_CONF_DIR": str(conf),
           "PYTHONPATH": os.pathsep.join([str(FIXTURES), str(REPO / "lib"), os.environ.get("PYTHONPATH", "")])}
    env.pop("LAKEFORGE_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-m", "lakeforge", "features", "--pipeline", "failing", "--env", "test",
         "--set", f"paths.lakehouse={ingested_lakehouse}", "--set", f"paths.landing={tmp_path / 'landing'}",
         "--set", f"paths.reports={tmp_path / 'reports'}",
         "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
         "--set", f"mlflow.artifact_root={tmp_path / 'mlartifacts'}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)

    assert done.returncode == 1, done.stderr[-3000:]
    failure = [x for x in done.stderr.splitlines() if x.startswith("lakeforge features: failed: ")]
    assert failure == [f"lakeforge features: failed: ValueError: bad row 7 (raised in customer_activity, {source}, "
                       f"line {line}) (rerun with --debug for the traceback; the run is recorded in ops.runs)"], \
        done.stderr[-3000:]
    # Nothing else but the progress line: no JVM log of the task's failure, no traceback (those are --debug's).
    assert [x for x in done.stderr.splitlines() if not x.startswith(("[features ", "WARNING: Using incubator"))] \
        == failure, done.stderr[-3000:]
