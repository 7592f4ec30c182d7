"""The Airflow DAG as Airflow itself parses it (its DagBag, in a subprocess: importing Airflow configures its
logging and settings, which the rest of the suite must not inherit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FOLDER = REPO / "deploy" / "airflow"
NIGHT = "2026-11-27T02:30:00"  # data_interval_end of the run at 02:30 on 27 November
PARSE = """
import datetime as dt, json, sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
dags = {}
for dag_id, dag in bag.dags.items():
    env = dag.get_template_env()
    night = dt.datetime.fromisoformat(sys.argv[2])
    dags[dag_id] = {
        "schedule": dag.timetable.expression if hasattr(dag.timetable, "expression") else str(dag.timetable),
        "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
        "tasks": [{"task_id": t.task_id, "type": type(t).__name__, "downstream": sorted(t.downstream_task_ids),
                   "retries": t.retries, "retry_delay_s": t.retry_delay.total_seconds(),
                   "skip_on_exit_code": sorted(t.skip_on_exit_code or []), "env": t.env,
                   "command": env.from_string(t.bash_command).render(data_interval_end=night)}
                  for t in dag.topological_sort()]}
print(json.dumps({"import_errors": {str(k): v for k, v in bag.import_errors.items()}, "dags": dags}))
"""


def parse_dags(home: Path, env: dict[str, str] | None = None) -> dict:
    """deploy/airflow/*.py loaded by Airflow's DagBag with LAKEFORGE_HOME at this repository (and `env`): its
    import errors, and per DAG its schedule and tasks in topological order, each task's command rendered for NIGHT."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEFORGE_", "SPARK_", "AIRFLOW"))}
    clean |= {"AIRFLOW_HOME": str(home), "LAKEFORGE_HOME": str(REPO)} | (env or {})
    done = subprocess.run([sys.executable, "-c", PARSE, str(DAG_FOLDER), NIGHT], env=clean, cwd=home,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def airflow_dags(tmp_path_factory) -> dict:
    """The DAGs of deploy/airflow/ as Airflow parses them (parse_dags) for this repository's conf/."""
    parsed = parse_dags(tmp_path_factory.mktemp("airflow-home"))
    assert parsed["import_errors"] == {}, parsed["import_errors"]
    return parsed["dags"]


@pytest.fixture(scope="session")
def dags_for(tmp_path_factory):
    """parse_dags with LAKEFORGE_CONF_DIR at a given conf folder: its import errors and DAGs."""
    return lambda conf: parse_dags(tmp_path_factory.mktemp("airflow-home"), {"LAKEFORGE_CONF_DIR": str(conf)})
