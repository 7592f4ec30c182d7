"""lakeforge on Airflow: one SparkSubmitOperator per stage, each submitting jobs/<stage>.py.

An example DAG file to copy into Airflow's dags folder. Two DAGs:
- `lakeforge_nightly`, every night at 02:30 (like deploy/cron/lakeforge.cron and the compose
  scheduler): ingest >> features >> score for the run's date;
- `lakeforge_weekly_train`, Sundays at 04:00: train, register and set @champion.
Promotion by hand stays a command (`lakeforge promote --version N --reason ...`), not a schedule.

What the Airflow worker needs: the apache-airflow-providers-apache-spark package; a Spark connection
`spark_lakeforge` (host spark://spark-master, port 7077, deploy mode client); `spark-submit` on PATH;
and LAKEFORGE_HOME laid out as in the lakeforge image: jobs/, conf/, dist/lakeforge.zip (the wheel,
`scripts/build-dist.sh`) and the Delta jars cached by `lakeforge setup-jars` under LAKEFORGE_JAR_CACHE.
Every stage is rerunnable for its date (file ledger, MERGE, replaceWhere), so retries are safe.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

try:
    from airflow.sdk import DAG  # Airflow 3
except ImportError:  # Airflow 2
    from airflow import DAG

LAKEFORGE_HOME = os.environ.get("LAKEFORGE_HOME", "/opt/lakeforge")
LAKEFORGE_ENV = os.environ.get("LAKEFORGE_ENV", "cluster")
JAR_CACHE = os.environ.get("LAKEFORGE_JAR_CACHE", f"{LAKEFORGE_HOME}/jars")
PIPELINE = "churn"
SPARK_CONN_ID = "spark_lakeforge"
# The jars `lakeforge setup-jars` resolved (spark-submit expands the glob); on a cluster that reaches
# Maven Central, `packages="io.delta:delta-spark_4.2_2.13:4.4.0"` instead.
DELTA_JARS = f"{JAR_CACHE}/io.delta_delta-spark_4.2_2.13_4.4.0/ivy/jars/*.jar"
# The night of the run: a run at 02:30 on day D scores D (features from events before D).
SCORE_DATE = "{{ data_interval_end | ds }}"

DEFAULT_ARGS = {
    "owner": "data-platform",
    "retries": 2,
    "retry_delay": timedelta(minutes=10),
}


def stage(name: str, *args: str) -> SparkSubmitOperator:
    """A task that spark-submits jobs/<name>.py with lakeforge's own arguments."""
    return SparkSubmitOperator(
        task_id=name,
        name=f"lakeforge-{name}",
        conn_id=SPARK_CONN_ID,
        application=f"{LAKEFORGE_HOME}/jobs/{name}.py",
        # lakeforge names its Spark session itself (over `name`): this keeps one name per stage.
        application_args=["--pipeline", PIPELINE, "--env", LAKEFORGE_ENV, "--set", f"spark.app_name=lakeforge-{name}",
                          *args],
        py_files=f"{LAKEFORGE_HOME}/dist/lakeforge.zip",
        jars=DELTA_JARS,
        conf={"spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{LAKEFORGE_HOME}/conf/log4j2.properties"},
        env_vars={"LAKEFORGE_CONF_DIR": f"{LAKEFORGE_HOME}/conf", "LAKEFORGE_ENV": LAKEFORGE_ENV},
    )


with DAG(
    dag_id="lakeforge_nightly",
    description="lakeforge churn: ingest new landing files, build features, score with @champion",
    schedule="30 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["lakeforge", PIPELINE],
):
    ingest = stage("ingest")
    features = stage("features", "--date", SCORE_DATE)
    score = stage("score", "--date", SCORE_DATE)
    ingest >> features >> score

with DAG(
    dag_id="lakeforge_weekly_train",
    description="lakeforge churn: retrain, register a new version, set @champion",
    schedule="0 4 * * 0",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["lakeforge", PIPELINE],
):
    stage("train")
