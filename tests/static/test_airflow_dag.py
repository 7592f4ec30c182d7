"""deploy/airflow/lakeforge_nightly.py as the real Airflow (pinned in the dev extras) parses it: the DAG is the
declared flow (lakeforge.flow.NIGHTLY), each task submits its step's job with arguments lakeforge accepts."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from lakeforge import flow

REPO = Path(__file__).resolve().parents[2]


def test_the_flow_file_next_to_the_dag_is_written_from_the_declared_flow():
    """deploy/airflow/lakeforge_flow.json is what `python -m lakeforge.flow` writes today (rerun it after a change
    to lakeforge.flow)."""
    assert (REPO / flow.EXPORT).read_text() == flow.export_text()


def test_the_dag_is_the_declared_flow(airflow_dags):
    assert list(airflow_dags) == ["lakeforge_nightly"]
    dag = airflow_dags["lakeforge_nightly"]
    assert (dag["schedule"], dag["catchup"], dag["max_active_runs"]) == (flow.SCHEDULE, False, 1)
    tasks = dag["tasks"]
    assert [t["task_id"] for t in tasks] == flow.step_names()
    # A chain in the flow's order: each step waits for the one before it.
    assert [t["downstream"] for t in tasks] == [[s.name] for s in flow.NIGHTLY[1:]] + [[]]
    for task, step in zip(tasks, flow.NIGHTLY):
        assert task["type"] == "BashOperator"
        assert (task["retries"], task["retry_delay_s"]) == (flow.RETRIES, flow.RETRY_DELAY_MINUTES * 60)
        # Only a step with a condition may end skipped (retrain, when the policy did not fire).
        assert task["skip_on_exit_code"] == ([flow.SKIPPED_EXIT] if step.when else []), task["task_id"]


@pytest.mark.parametrize("step", flow.NIGHTLY, ids=flow.step_names())
def test_each_task_submits_its_step_with_arguments_lakeforge_accepts(airflow_dags, step):
    from lakeforge import config
    from lakeforge.cli import build_parser

    task = next(t for t in airflow_dags["lakeforge_nightly"]["tasks"] if t["task_id"] == step.name)
    argv = shlex.split(task["command"])
    assert argv[:3] == [str(REPO / "docker" / "entrypoint.sh"), "submit", step.name]
    # The entrypoint accepts it with the task's environment and submits jobs/<step>.py ...
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEFORGE_", "SPARK_"))}
    done = subprocess.run(["bash", *argv], env=env | task["env"] | {"LAKEFORGE_DRY_RUN": "1"}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    submitted = shlex.split(done.stdout)
    application = submitted.index(str(REPO / "jobs" / f"{step.name}.py"))
    assert submitted[0] == "spark-submit" and Path(submitted[application]).is_file()
    assert submitted[submitted.index("--master") + 1] == task["env"]["SPARK_MASTER_URL"]
    assert submitted[submitted.index("--py-files") + 1] == str(REPO / "dist" / "lakeforge.zip")
    # ... whose arguments `lakeforge <step>` accepts (jobs/<step>.py passes them on), for the night of the run.
    parsed = build_parser().parse_args([step.name, *submitted[application + 1:]])
    assert parsed.pipeline == "churn" and (REPO / "conf" / "pipelines" / "churn.yaml").is_file()
    settings = config.load_settings(parsed.env, parsed.overrides, directory=REPO / "conf")
    assert settings.env == "cluster" and settings.spark.app_name == f"lakeforge-{step.name}"
    assert task["env"]["LAKEFORGE_CONF_DIR"] == str(REPO / "conf")
    assert getattr(parsed, "date", None) == (dt.date(2026, 11, 27) if step.dated else None)
    if step.when:
        assert parsed.skipped_exit == flow.SKIPPED_EXIT
