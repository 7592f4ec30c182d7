"""lakeforge on Airflow: the nightly flow (lakeforge.flow.NIGHTLY) for every pipeline, one DAG per pipeline and
one task per step, each submitting its job.

An example DAG file to copy into Airflow's dags folder together with lakeforge_flow.json, the flow's steps
as data (written by `python -m lakeforge.flow` from lib/lakeforge/flow.py; this file declares no step of its
own). It makes one DAG `lakeforge_nightly_<pipeline>` for each conf/pipelines/<pipeline>.yaml under
LAKEFORGE_CONF_DIR (default $LAKEFORGE_HOME/conf), so a team's new pipeline is scheduled by adding its YAML
(pause its DAG in Airflow to leave a pipeline off the schedule). Each DAG runs at the flow's schedule (02:30,
as deploy/cron/lakeforge.cron and the compose scheduler) and chains the steps in the flow's order, each task
with `--pipeline <pipeline>`: ingest >> maintain >> features >> score >> monitor >> retrain. A step with a
condition (`maintain`: only when maintenance.every_days have passed; `retrain`: only when monitor's decision for the night fired, the policy's cooldown included) exits with the flow's
`skipped_exit` when it does not hold, and Airflow marks that task skipped.
Promotion by hand stays a command (`lakeforge promote --version N --reason ...`), not a schedule.

Each task runs `docker/entrypoint.sh submit <step>`, the same command the compose services and tests/cluster
use. What the Airflow worker needs: apache-airflow-providers-standard (BashOperator); LAKEFORGE_HOME laid out
as in the lakeforge image (jobs/, conf/, docker/entrypoint.sh, dist/lakeforge.zip from
`scripts/build-dist.sh`) with lakeforge's Python and `spark-submit` on PATH; SPARK_MASTER_URL; the Delta jars
cached by `lakeforge setup-jars` (or LAKEFORGE_DELTA_FROM=packages). Every step is rerunnable for its date
(file ledger, MERGE, replaceWhere), so retries are safe.
"""

from __future__ import annotations

import json
import os
import shlex
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, chain

FLOW = json.loads((Path(__file__).parent / "lakeforge_flow.json").read_text())
LAKEFORGE_HOME = os.environ.get("LAKEFORGE_HOME", "/opt/lakeforge")
LAKEFORGE_ENV = os.environ.get("LAKEFORGE_ENV", "cluster")
CONF_DIR = os.environ.get("LAKEFORGE_CONF_DIR", f"{LAKEFORGE_HOME}/conf")
# The pipelines are the project's, not lakeforge's: read here, at parse time, from the names of their files
# (nothing in conf is imported or run), rather than written into lakeforge_flow.json, which holds lakeforge's
# own flow and would need regenerating whenever a team adds a pipeline.
PIPELINES = sorted(path.stem for path in (Path(CONF_DIR) / "pipelines").glob("*.yaml"))
if not PIPELINES:  # shown by Airflow as this file's import error
    raise FileNotFoundError(f"no pipeline to schedule: {CONF_DIR}/pipelines has no <name>.yaml (set "
                            f"LAKEFORGE_CONF_DIR, or LAKEFORGE_HOME, for the Airflow workers and the DAG processor)")
# Every pipeline's DAG starts at the same time, and ingest and maintain take one lock for the whole lakehouse
# (pipelines share their sources): a second one waits for the first this long rather than failing into a retry.
LOCK_WAIT_S = 3600
# The night of the run: a run at 02:30 on day D scores D (features from events before D).
NIGHT = "{{ data_interval_end | ds }}"
ENV = {"LAKEFORGE_HOME": LAKEFORGE_HOME, "LAKEFORGE_ENV": LAKEFORGE_ENV,
       "LAKEFORGE_CONF_DIR": CONF_DIR, "LAKEFORGE_PY_FILES": f"{LAKEFORGE_HOME}/dist/lakeforge.zip",
       "SPARK_MASTER_URL": os.environ.get("SPARK_MASTER_URL", "spark://spark-master:7077")}


def task(step: dict, pipeline: str) -> BashOperator:
    """The step's task for the pipeline: `entrypoint.sh submit <step>` with lakeforge's own arguments."""
    args = ["--pipeline", pipeline, "--env", LAKEFORGE_ENV, "--set", f"lock_wait_s={LOCK_WAIT_S}"]
    if step["dated"]:
        args += ["--date", NIGHT]
    if step["when"]:
        args += ["--skipped-exit", str(FLOW["skipped_exit"])]
    command = shlex.join([f"{LAKEFORGE_HOME}/docker/entrypoint.sh", "submit", step["name"], *args])
    return BashOperator(
        task_id=step["name"],
        bash_command=command,  # Jinja renders NIGHT inside its quotes
        env=ENV,
        append_env=True,
        skip_on_exit_code=FLOW["skipped_exit"] if step["when"] else None,  # the others never skip
        doc_md=(f"reads: {', '.join(step['reads'])}  \nwrites: {', '.join(step['writes'])}"
                + (f"  \nonly when: {step['when']}" if step["when"] else "")),
    )


for pipeline in PIPELINES:
    with DAG(
        dag_id=f"lakeforge_nightly_{pipeline}",
        description=f"lakeforge {pipeline}: " + " >> ".join(step["name"] for step in FLOW["steps"]),
        schedule=FLOW["schedule"],
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args={"owner": "data-platform", "retries": FLOW["retries"],
                      "retry_delay": timedelta(minutes=FLOW["retry_delay_minutes"])},
        tags=["lakeforge", pipeline],
    ):
        chain(*[task(step, pipeline) for step in FLOW["steps"]])
