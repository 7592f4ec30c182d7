"""deploy/airflow/lakeforge_nightly.py without installing Airflow: its imports are Airflow's real ones
(checked with ast), and run against stand-ins for DAG and SparkSubmitOperator it builds one task per
stage whose application is the stage's jobs/*.py and whose arguments lakeforge's own CLI accepts."""

from __future__ import annotations

import ast
import datetime as dt
import runpy
import sys
import types
from pathlib import Path

import jinja2
import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "deploy" / "airflow" / "lakeforge_nightly.py"
SPARK_SUBMIT = "airflow.providers.apache.spark.operators.spark_submit"
# SparkSubmitOperator's parameters (apache-airflow-providers-apache-spark) and BaseOperator's used here.
OPERATOR_PARAMETERS = {"application", "conf", "conn_id", "files", "py_files", "archives", "driver_class_path", "jars",
                       "java_class", "packages", "exclude_packages", "repositories", "total_executor_cores",
                       "executor_cores", "executor_memory", "driver_memory", "keytab", "principal", "proxy_user",
                       "name", "num_executors", "status_poll_interval", "application_args", "env_vars", "verbose",
                       "spark_binary", "properties_file", "yarn_queue", "deploy_mode", "task_id"}
DAG_PARAMETERS = {"dag_id", "description", "schedule", "start_date", "catchup", "max_active_runs", "default_args", "tags"}


class StubDAG:
    current: "StubDAG | None" = None
    created: list["StubDAG"] = []

    def __init__(self, **kwargs):
        assert set(kwargs) <= DAG_PARAMETERS, set(kwargs) - DAG_PARAMETERS
        self.kwargs, self.tasks = kwargs, {}
        StubDAG.created.append(self)

    def __enter__(self):
        StubDAG.current = self
        return self

    def __exit__(self, *exc):
        StubDAG.current = None


class StubSparkSubmitOperator:
    def __init__(self, **kwargs):
        assert set(kwargs) <= OPERATOR_PARAMETERS, set(kwargs) - OPERATOR_PARAMETERS
        assert StubDAG.current is not None, "an operator outside a DAG"
        self.kwargs, self.downstream = kwargs, []
        StubDAG.current.tasks[kwargs["task_id"]] = self

    def __rshift__(self, other):
        self.downstream.append(other.kwargs["task_id"])
        return other


@pytest.fixture(scope="module")
def dags(tmp_path_factory) -> dict[str, StubDAG]:
    """The DAG file executed with LAKEFORGE_HOME at this repository and stand-ins for Airflow."""
    stubs = {name: types.ModuleType(name) for name in
             ["airflow", "airflow.sdk", "airflow.providers", "airflow.providers.apache",
              "airflow.providers.apache.spark", "airflow.providers.apache.spark.operators", SPARK_SUBMIT]}
    stubs["airflow.sdk"].DAG = StubDAG
    stubs[SPARK_SUBMIT].SparkSubmitOperator = StubSparkSubmitOperator
    saved = {name: sys.modules.get(name) for name in stubs}
    mp = pytest.MonkeyPatch()
    mp.setenv("LAKEFORGE_HOME", str(REPO))
    mp.setenv("LAKEFORGE_JAR_CACHE", str(tmp_path_factory.mktemp("jars")))
    mp.delenv("LAKEFORGE_ENV", raising=False)
    sys.modules.update(stubs)
    StubDAG.created = []
    try:
        runpy.run_path(str(DAG_FILE), run_name="lakeforge_nightly")
    finally:
        mp.undo()
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return {dag.kwargs["dag_id"]: dag for dag in StubDAG.created}


def render(value: str, when: dt.datetime) -> str:
    """Airflow's templating for the fields used here: data_interval_end and the `ds` filter."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    environment.filters["ds"] = lambda d: d.strftime("%Y-%m-%d")
    return environment.from_string(value).render(data_interval_end=when)


def test_dag_file_imports_airflow_and_the_spark_provider_only():
    tree = ast.parse(DAG_FILE.read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert f"{SPARK_SUBMIT}" in imported and "airflow.sdk" in imported and "airflow" in imported
    assert not any(name.startswith(("lakeforge", "pyspark")) for name in imported if name), imported
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert {"SparkSubmitOperator", "DAG"} <= names


def test_nightly_dag_is_ingest_then_features_then_score_at_0230(dags):
    nightly = dags["lakeforge_nightly"]
    assert nightly.kwargs["schedule"] == "30 2 * * *"  # as deploy/cron/lakeforge.cron and the compose scheduler
    assert nightly.kwargs["catchup"] is False and nightly.kwargs["max_active_runs"] == 1
    assert list(nightly.tasks) == ["ingest", "features", "score"]
    assert nightly.tasks["ingest"].downstream == ["features"]
    assert nightly.tasks["features"].downstream == ["score"]
    assert dags["lakeforge_weekly_train"].tasks.keys() == {"train"}


@pytest.mark.parametrize("dag_id, stage", [("lakeforge_nightly", "ingest"), ("lakeforge_nightly", "features"),
                                           ("lakeforge_nightly", "score"), ("lakeforge_weekly_train", "train")])
def test_each_task_submits_its_stage_job_with_arguments_lakeforge_accepts(dags, dag_id, stage):
    from lakeforge import config
    from lakeforge.cli import build_parser

    task = dags[dag_id].tasks[stage].kwargs
    assert task["application"] == str(REPO / "jobs" / f"{stage}.py") and Path(task["application"]).is_file()
    assert task["name"] == f"lakeforge-{stage}"  # as docker/entrypoint.sh names the applications
    assert task["py_files"] == str(REPO / "dist" / "lakeforge.zip")  # scripts/build-dist.sh's .zip, as in the image
    assert task["conf"]["spark.driver.extraJavaOptions"].endswith(f"file:{REPO}/conf/log4j2.properties")
    assert (REPO / "conf" / "log4j2.properties").is_file()

    night = dt.datetime(2026, 11, 27, 2, 30)
    args = [render(arg, night) for arg in task["application_args"]]
    parsed = build_parser().parse_args([stage, *args])  # jobs/<stage>.py passes them to `lakeforge <stage>`
    assert parsed.pipeline == "churn" and (REPO / "conf" / "pipelines" / "churn.yaml").is_file()
    settings = config.load_settings(parsed.env, parsed.overrides, directory=REPO / "conf")
    assert settings.env == "cluster" and settings.spark.app_name == task["name"]
    assert task["env_vars"] == {"LAKEFORGE_CONF_DIR": str(REPO / "conf"), "LAKEFORGE_ENV": parsed.env}
    if stage in ("features", "score"):
        assert parsed.date == dt.date(2026, 11, 27)  # the run at 02:30 on the 27th scores the 27th


def test_delta_jars_glob_is_the_cache_lakeforge_fills(dags, tmp_path, monkeypatch):
    """The jars glob names the same folder `lakeforge setup-jars` writes its manifest into."""
    from lakeforge import jars

    pattern = dags["lakeforge_nightly"].tasks["score"].kwargs["jars"]
    cache_root = Path(pattern.split("/io.delta_")[0])
    monkeypatch.setenv("LAKEFORGE_JAR_CACHE", str(cache_root))
    cached = jars.cache_dir()
    assert Path(pattern).parent.parent.parent == cached  # <cache>/<package>/ivy/jars/*.jar
    assert pattern.endswith("/ivy/jars/*.jar")
    # And a filled cache on this machine (make setup) lists exactly the jars the glob finds.
    monkeypatch.delenv("LAKEFORGE_JAR_CACHE")
    manifest = jars.cache_dir() / jars.MANIFEST
    if manifest.is_file():
        listed = sorted(manifest.read_text().split())
        found = sorted(str(p) for p in (jars.cache_dir() / "ivy" / "jars").glob("*.jar"))
        assert listed == found
