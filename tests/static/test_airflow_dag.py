"""deploy/airflow/lakeforge_nightly.py as the real Airflow (pinned in the dev extras) parses it: one DAG per
pipeline of the conf folder, each the declared flow (lakeforge.flow.NIGHTLY), each task submitting its step's job
for its pipeline with arguments lakeforge accepts."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from lakeforge import flow

REPO = Path(__file__).resolve().parents[2]
REPO_DAGS = ["lakeforge_nightly_churn", "lakeforge_nightly_delivery_time", "lakeforge_nightly_demand"]


def test_the_flow_file_next_to_the_dag_is_written_from_the_declared_flow():
    """deploy/airflow/lakeforge_flow.json is what `python -m lakeforge.flow` writes today (rerun it after a change
    to lakeforge.flow)."""
    assert (REPO / flow.EXPORT).read_text() == flow.export_text()


def test_each_pipeline_has_a_dag_that_is_the_declared_flow(airflow_dags):
    """conf/ has churn, delivery_time and demand: one DAG each, with the same steps."""
    assert sorted(p.stem for p in (REPO / "conf" / "pipelines").glob("*.yaml")) == ["churn", "delivery_time", "demand"]
    assert sorted(airflow_dags) == REPO_DAGS
    for dag_id, dag in airflow_dags.items():
        assert (dag["schedule"], dag["catchup"], dag["max_active_runs"]) == (flow.SCHEDULE, False, 1), dag_id
        tasks = dag["tasks"]
        assert [t["task_id"] for t in tasks] == flow.step_names()
        # A chain in the flow's order: each step waits for the one before it.
        assert [t["downstream"] for t in tasks] == [[s.name] for s in flow.NIGHTLY[1:]] + [[]]
        for task, step in zip(tasks, flow.NIGHTLY):
            assert task["type"] == "BashOperator"
            assert (task["retries"], task["retry_delay_s"]) == (flow.RETRIES, flow.RETRY_DELAY_MINUTES * 60)
            # Only a step with a condition may end skipped (retrain, when the policy did not fire).
            assert task["skip_on_exit_code"] == ([flow.SKIPPED_EXIT] if step.when else []), (dag_id, task["task_id"])


def test_a_conf_folder_with_two_pipelines_gives_two_dags_each_passing_its_own_pipeline(tmp_path, dags_for):
    """The pipelines come from the file names under $LAKEFORGE_CONF_DIR/pipelines; their content is never read
    (these two are not even YAML), nor is a file of another kind."""
    conf = tmp_path / "conf"
    (conf / "pipelines").mkdir(parents=True)
    for name in ("parcels", "fraud"):
        (conf / "pipelines" / f"{name}.yaml").write_text("{{ not yaml, never parsed")
    (conf / "pipelines" / "notes.txt").write_text("not a pipeline")
    parsed = dags_for(conf)
    assert parsed["import_errors"] == {}
    assert sorted(parsed["dags"]) == ["lakeforge_nightly_fraud", "lakeforge_nightly_parcels"]
    for pipeline in ("fraud", "parcels"):
        tasks = parsed["dags"][f"lakeforge_nightly_{pipeline}"]["tasks"]
        assert [t["task_id"] for t in tasks] == flow.step_names()
        for task, step in zip(tasks, flow.NIGHTLY):
            argv = shlex.split(task["command"])
            assert argv[1:3] == ["submit", step.name]
            assert argv[argv.index("--pipeline") + 1] == pipeline and argv.count("--pipeline") == 1
            assert task["env"]["LAKEFORGE_CONF_DIR"] == str(conf)


def test_a_conf_folder_without_pipelines_is_an_import_error_naming_it(tmp_path, dags_for):
    (tmp_path / "conf" / "pipelines").mkdir(parents=True)
    parsed = dags_for(tmp_path / "conf")
    assert parsed["dags"] == {}
    [error] = parsed["import_errors"].values()
    assert (f"FileNotFoundError: no pipeline to schedule: {tmp_path / 'conf'}/pipelines has no <name>.yaml (set "
            f"LAKEFORGE_CONF_DIR, or LAKEFORGE_HOME, for the Airflow workers and the DAG processor)") in error


@pytest.mark.parametrize("dag_id", REPO_DAGS)
@pytest.mark.parametrize("step", flow.NIGHTLY, ids=flow.step_names())
def test_each_task_submits_its_step_with_arguments_lakeforge_accepts(airflow_dags, step, dag_id):
    from lakeforge import config
    from lakeforge.cli import build_parser

    pipeline = dag_id.removeprefix("lakeforge_nightly_")
    task = next(t for t in airflow_dags[dag_id]["tasks"] if t["task_id"] == step.name)
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
    assert parsed.pipeline == pipeline and (REPO / "conf" / "pipelines" / f"{pipeline}.yaml").is_file()
    settings = config.load_settings(parsed.env, parsed.overrides, directory=REPO / "conf")
    assert settings.env == "cluster" and settings.spark.app_name == f"lakeforge-{step.name}"
    # The DAGs start together and share the ingest lock: a task waits for another's rather than failing.
    assert settings.lock_wait_s == 3600
    assert task["env"]["LAKEFORGE_CONF_DIR"] == str(REPO / "conf")
    assert getattr(parsed, "date", None) == (dt.date(2026, 11, 27) if step.dated else None)
    if step.when:
        assert parsed.skipped_exit == flow.SKIPPED_EXIT
