"""Training patterns on the tiny demo: per-store models with a fallback (demand), a parallel hyperopt search
that repeats exactly, the distributed MLlib learner, and kills of `lakeforge train` between its steps."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import deltalake
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from lakeforge import config, lake, many_models, monitoring, registry, runs, stages, training, tuning
from lakeforge.config import SearchParam
from lakeforge.errors import DataError

pytestmark = pytest.mark.spark


@pytest.fixture
def ctx_for(spark, settings_at, ingested_lakehouse, tmp_path, tiny_landing):
    """A stage Context for a pipeline on a copy of the ingested lakehouse, with its own MLflow store."""
    landing, _ = tiny_landing
    local = settings_at(landing, ingested_lakehouse, tmp_path)

    def make(name: str, overrides: list[str] | None = None) -> stages.Context:
        return stages.Context(local, config.load_pipeline(name, overrides), spark_factory=lambda _: spark)

    return make


def _artifacts(client, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.slow
def test_demand_trains_one_model_per_store_with_a_fallback_and_scoring_routes_by_store(ctx_for, spark, lakehouse):
    ctx = ctx_for("demand")
    # S004 opened recently: too few training snapshots for its own model, so the fallback serves it.
    first, last = lake.read(spark, lakehouse, "silver.orders").agg(F.min(F.to_date("order_ts")),
                                                                    F.max(F.to_date("order_ts"))).first()
    train_dates, holdout_dates = training.snapshot_dates(first, last, ctx.pipeline)
    opened = holdout_dates[0] - dt.timedelta(days=20)
    DeltaTable.forPath(spark, str(lake.table_path(lakehouse, "bronze.stores"))).update(
        "store_id = 'S004'", {"opened_date": F.lit(opened)})

    trained = stages.train(ctx)
    assert (trained["version"], trained["alias"]) == (1, "champion")

    manifest = lake.read(spark, lakehouse, "gold.demand_models").orderBy("store_id")
    rows = [(r.store_id, r.model_version, r.fallback_used, r.train_rows, r.holdout_rows)
            for r in manifest.collect()]
    n_train, n_holdout = len(train_dates), len(holdout_dates)
    # S004's training rows: the snapshot dates after it opened whose label window ends before the holdout.
    s004_rows = sum(1 for d in train_dates if d > opened)
    assert rows == [("S001", 1, False, n_train, n_holdout), ("S002", 1, False, n_train, n_holdout),
                    ("S003", 1, False, n_train, n_holdout), ("S004", 1, True, s004_rows, n_holdout)]
    assert s004_rows == 19

    # MAE/MAPE per store and overall, logged with the run; the overall MAE weighs every holdout row.
    run = ctx.mlflow.get_run(trained["mlflow_run_id"])
    per_store = {r.store_id: r.mae for r in manifest.collect()}
    # The gate metric per store (demand's is MAE: the same figure, by scikit-learn rather than a pandas mean).
    assert [(r.metric, r.metric_value) for r in manifest.collect()] == [("mae", pytest.approx(per_store[f"S00{i}"]))
                                                                        for i in range(1, 5)]
    assert run.data.metrics["mae"] == pytest.approx(sum(per_store.values()) / 4)
    assert {f"store_id.S00{i}.mae" for i in range(1, 5)} <= set(run.data.metrics)
    assert {"plots/error_by_store_id.png", "plots/feature_importance.png",
            "per_group_metrics.json"} <= _artifacts(ctx.mlflow, trained["mlflow_run_id"])
    inputs = {(d.dataset.name, d.dataset.source_type) for d in run.inputs.dataset_inputs}
    assert inputs == {("bronze.stores", "delta_table"), ("silver.orders", "delta_table"),
                      ("gold.demand_features", "delta_table")}
    assert run.data.tags["lakeforge.config_hash"] == ctx.pipeline.config_hash()

    # Scoring routes each store to its own model (S004 to the fallback): compare with each model on its rows.
    stages.build_features(ctx)
    scored = stages.score(ctx)
    assert scored["rows"] == 4
    # Three store models and the fallback, compiled (the routing itself runs from model.json).
    assert (scored["scored_from"], scored["scoring"]) == ("model files", "compiled")
    assert scored["compiled_now"] + scored["compiled_from_cache"] == 4
    model = registry.load_python_model("demand", 1)
    assert sorted(model.models) == ["S001", "S002", "S003"]
    features = lake.read(spark, lakehouse, "gold.demand_features").where(
        F.col("as_of_date") == F.lit(dt.date.fromisoformat(scored["score_date"]))).toPandas()
    predictions = lake.read(spark, lakehouse, "gold.demand_predictions").toPandas().set_index("store_id")
    for _, row in features.iterrows():
        estimator = model.models.get(row["store_id"], model.fallback)
        expected = float(estimator.predict(row[model.inputs].to_frame().T.astype(features[model.inputs].dtypes))[0])
        assert predictions.loc[row["store_id"], "prediction"] == pytest.approx(expected, rel=1e-12)
    assert model.models["S001"] is not model.fallback

    # Monitoring's baseline: the seasonal features per weekday, the error model that estimates MAE before labels.
    baseline = registry.load_baseline(ctx.mlflow, "demand", 1)
    assert sorted(baseline["seasonal"]) == ["orders_1d", "same_weekday_last_week"]
    assert sorted(baseline["seasonal"]["orders_1d"]["by"]) == [str(d) for d in range(7)]
    weekday = int(features.day_of_week.iloc[0])
    tests = monitoring.drift_tests(baseline, features, None, {"day_of_week"}, min_rows=1).set_index("name")
    assert tests.loc["orders_1d", "detail"] == (f"drift if ks_pvalue < 0.05; against the baseline's rows with "
                                                f"day_of_week = {weekday} (monitoring.seasonal_features)")
    assert tests.loc["orders_7d", "detail"] == "drift if ks_pvalue < 0.05"
    stages.monitor(ctx, dt.date.fromisoformat(scored["score_date"]))
    night = lake.read(spark, lakehouse, "ops.monitoring").where("kind = 'estimated_performance'").toPandas()
    assert night[["metric", "rows"]].values.tolist() == [["mae", 4]] and night.value.iloc[0] > 0
    assert night.threshold.iloc[0] == pytest.approx(baseline["error_model"]["holdout_estimate"]["mae"])


def test_a_manifest_written_before_the_metric_columns_gains_them_and_keeps_its_rows(spark, lakehouse):
    pipeline = config.load_pipeline("demand")
    old = spark.createDataFrame(
        [("demand", 1, "S001", False, 30, 5, 1.5, 0.2, "run-a", "lf-a")],
        "model_name string, model_version int, store_id string, fallback_used boolean, train_rows bigint, "
        "holdout_rows bigint, mae double, mape double, mlflow_run_id string, run_id string")
    lake.replace_where(spark, old, lakehouse, "gold.demand_models", "model_version = 1")
    groups = pd.DataFrame({"store_id": ["S001"], "train_rows": [31], "own_model": [True], "holdout_rows": [5],
                           "mae": [1.25], "mape": [0.1], "metric": ["mae"], "metric_value": [1.25]})
    many_models.write_manifest(spark, lakehouse, pipeline, groups, 2, "run-b", "lf-b", "tests")
    rows = (lake.read(spark, lakehouse, "gold.demand_models").orderBy("model_version")
            .select("model_version", "train_rows", "mae", "metric", "metric_value").collect())
    assert [tuple(r) for r in rows] == [(1, 30, 1.5, None, None), (2, 31, 1.25, "mae", 1.25)]


def test_per_group_training_gives_each_task_an_even_share_of_the_rows(spark):
    """Groups go to the tasks largest first, each to the emptiest (local[2]: 4 tasks), one slot per task."""
    sizes = {"G1": 70, "G2": 50, "G3": 40, "G4": 30, "G5": 20, "G6": 10}
    rows = pd.DataFrame([(g, day, float(day), 1.0) for g, n in sizes.items() for day in range(n)],
                        columns=["store", "day", "x", "y"])
    fitted = many_models.fit_per_group(spark.createDataFrame(rows), "store", ["x"], "y", "regression",
                                       {"n_estimators": 2, "verbose": -1}, 50, ["day"])
    per_task = fitted.groupBy(F.spark_partition_id().alias("task")).agg(F.sum("train_rows").alias("rows"))
    assert sorted(r["rows"] for r in per_task.collect()) == [50, 50, 50, 70]  # G1; G2; G3+G6; G4+G5
    models = fitted.toPandas().sort_values("store")
    assert models[["store", "train_rows"]].values.tolist() == [[g, n] for g, n in sizes.items()]
    assert models["model"].notna().tolist() == [True, True, False, False, False, False]  # min_rows 50


@pytest.mark.slow
def test_parallel_search_runs_trials_nested_under_one_parent(ctx_for):
    # demand (a 1-day horizon) has enough training dates for a purged validation split on the tiny demo.
    space = ["pipeline.model.pattern=global",
             "pipeline.model.search_space.num_leaves={type: quniform, low: 3, high: 15, q: 1}",
             "pipeline.model.search_space.learning_rate={type: loguniform, low: 0.02, high: 0.2}",
             "pipeline.model.tuning.max_evals=4", "pipeline.model.tuning.parallelism=2",
             "pipeline.model.params.n_estimators=40"]
    ctx = ctx_for("demand", space)
    trained = stages.train(ctx)
    client = ctx.mlflow
    parent = client.get_run(trained["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4
    losses = sorted(c.data.metrics["validation_loss"] for c in children)
    assert parent.data.metrics["search.best_validation_loss"] == losses[0]
    assert parent.data.metrics["search.parallelism"] == 2.0
    best = next(c for c in children if c.data.metrics["validation_loss"] == losses[0])
    # The refit on the whole training window uses the best trial's parameters.
    assert {k: best.data.params[k] for k in ("num_leaves", "learning_rate")} == {
        "num_leaves": str(trained["params"]["num_leaves"]), "learning_rate": str(trained["params"]["learning_rate"])}
    assert parent.data.params["best.num_leaves"] == best.data.params["num_leaves"]
    assert {"mae", "mape"} <= set(parent.data.metrics)
    assert "plots/feature_importance.png" in _artifacts(client, parent.info.run_id)
    assert parent.data.tags["lakeforge.version"] and "lakeforge.git_commit" in parent.data.tags
    signature = mlflow.models.get_model_info(f"models:/demand/{trained['version']}").signature
    assert signature.inputs.input_names() == registry.load_python_model("demand", trained["version"]).feature_names


def test_parallel_search_repeats_exactly_past_tpe_start_up(spark):
    """TPE draws its first 20 trials at random; later ones depend on the finished trials, which a parallel
    search must not let timing decide (3 slots, each trial its own Spark job, finishing in any order). Same
    data, space, seed and parallelism: the same trials, the same best parameters, the same refitted model and
    holdout metrics."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 3))
    rows = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                         "y": (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=500) > 0).astype("int64")})
    fit, valid, holdout = rows.iloc[:300], rows.iloc[300:400], rows.iloc[400:]
    train = rows.iloc[:400]
    space = {"num_leaves": SearchParam(type="quniform", low=3, high=15, q=1),
             "learning_rate": SearchParam(type="loguniform", low=0.02, high=0.3)}
    base = {"random_state": 7, "verbose": -1, "n_estimators": 10}

    def run(parallelism: int) -> tuple[tuning.SearchResult, dict]:
        found = tuning.search(fit, valid, ["a", "b", "c"], "y", "classification", base, space, 24, parallelism,
                              seed=11, spark=spark)
        model = training.fit_estimator("classification", {**base, **found.best_params}, train[["a", "b", "c"]],
                                       train["y"])
        return found, training.evaluate(model, holdout, ["a", "b", "c"], "y")

    (first, metrics), (again, metrics_again) = run(3), run(3)
    assert len(first.trials) == 24 and first.parallelism == 3
    assert first.trials == again.trials
    assert (first.best_params, first.best_loss) == min(first.trials, key=lambda t: t[1])
    assert (again.best_params, again.best_loss) == (first.best_params, first.best_loss)
    assert metrics == metrics_again
    # The random start-up trials are the sequential search's: trial k's seed depends on the seed and k only.
    assert first.trials[:20] == run(1)[0].trials[:20]


@pytest.mark.slow
def test_distributed_learner_trains_on_the_executors_and_scores_like_any_model(ctx_for, spark, lakehouse):
    ctx = ctx_for("churn", ["pipeline.model.distributed=true", "pipeline.model.mllib_params.regParam=0.05",
                            "pipeline.gate.min_auc=0.5"])
    trained = stages.train(ctx)
    assert (trained["version"], trained["alias"]) == (1, "champion")
    assert trained["params"]["learner"] == "spark.ml.LogisticRegression"
    assert trained["auc"] > 0.6
    assert {"auc", "log_loss", "precision_at_k"} <= set(ctx.mlflow.get_run(trained["mlflow_run_id"]).data.metrics)
    assert {"plots/roc.png", "plots/precision_recall.png", "plots/calibration.png",
            "plots/feature_importance.png"} <= _artifacts(ctx.mlflow, trained["mlflow_run_id"])
    model = registry.load_python_model("churn", 1)
    assert type(model.estimator).__name__ == "LinearProbability"
    stages.build_features(ctx)
    scored = stages.score(ctx)
    predictions = lake.read(spark, lakehouse, "gold.churn_predictions")
    assert predictions.count() == scored["rows"] > 0
    assert predictions.where((F.col("prediction") <= 0) | (F.col("prediction") >= 1)).count() == 0


def _train_killed_at(ctx: stages.Context, step: str, log: Path) -> int:
    """Run `lakeforge train` (the CLI, its own driver and JVM) until it SIGKILLs itself at crash point `step`;
    returns its process id."""
    s = ctx.settings
    with log.open("w") as out:
        job = subprocess.Popen(
            [sys.executable, "-m", "lakeforge", "train", "--pipeline", "churn", "--env", "test",
             "--set", f"paths.landing={s.paths.landing}", "--set", f"paths.lakehouse={s.paths.lakehouse}",
             "--set", f"mlflow.tracking_uri={s.mlflow.tracking_uri}",
             "--set", f"mlflow.artifact_root={s.mlflow.artifact_root}",
             "--set", "pipeline.model.params.n_estimators=30"],
            env={**os.environ, runs.CRASH_AFTER: step}, start_new_session=True, stdout=out,
            stderr=subprocess.STDOUT)
        returncode = job.wait(timeout=900)
    with contextlib.suppress(ProcessLookupError):  # the hook killed the driver; its JVM goes with the job too
        os.killpg(job.pid, signal.SIGKILL)
    assert returncode == -signal.SIGKILL, log.read_text()[-3000:]
    return job.pid


@pytest.mark.slow
def test_killing_training_between_model_logging_and_alias_change_leaves_one_ready_champion(ctx_for, spark,
                                                                                           lakehouse, tmp_path,
                                                                                           monkeypatch):
    """SIGKILL `lakeforge train` right after the new version is registered and before the gate moves an
    alias: nothing changes @champion, and a rerun leaves exactly one, READY."""
    ctx = ctx_for("churn", ["pipeline.model.params.n_estimators=30"])
    _train_killed_at(ctx, "train.model_logged", tmp_path / "train.log")
    client = ctx.mlflow
    # Version 1 is registered but no alias points at it: scoring has nothing to resolve yet.
    assert [(int(mv.version), mv.aliases) for mv in client.search_model_versions("name = 'churn'")] == [(1, [])]
    with pytest.raises(DataError, match="has no @champion"):
        stages.score(ctx)

    rerun = stages.train(ctx)
    assert (rerun["version"], rerun["alias"]) == (2, "champion")
    versions = {int(mv.version): (mv.status, client.get_model_version("churn", mv.version).aliases)
                for mv in client.search_model_versions("name = 'churn'")}
    assert versions == {1: ("READY", []), 2: ("READY", ["champion"])}
    stages.build_features(ctx)
    assert stages.score(ctx)["version"] == 2
    # The killed run left only its `running` row in ops.runs; the rerun found its process gone, recorded it as
    # abandoned, and appended its own end.
    ledger = runs.read_runs(spark, lakehouse).where("job = 'train'").orderBy("started_at").collect()
    assert [(r.status, r.ended_at is None) for r in ledger] == [("abandoned", False), ("succeeded", False)]

    # Scoring only ever resolves a READY version: an alias on a version still registering is refused.
    real = client.get_model_version

    def pending(name, version):
        mv = real(name, version)
        return type(mv)(mv.name, mv.version, mv.creation_timestamp, status="PENDING_REGISTRATION")

    monkeypatch.setattr(client, "get_model_version", pending)
    with pytest.raises(DataError, match="points at version 2, which is PENDING_REGISTRATION, not READY"):
        stages.score(ctx)


def _delta_rows(lakehouse: Path, name: str, order_by: str) -> list[dict]:
    """A table's rows as read by delta-rs (independent of Spark), in `order_by` order."""
    layer, table = name.split(".")
    return sorted(deltalake.DeltaTable(str(lakehouse / layer / table)).to_pyarrow_table().to_pylist(),
                  key=lambda r: r[order_by])


@pytest.mark.slow
def test_a_train_killed_after_moving_the_alias_is_reconciled_and_its_orphan_mlflow_run_ended(ctx_for, spark,
                                                                                             lakehouse, tmp_path):
    """Two `lakeforge train` runs SIGKILLed: the first while its MLflow run is open (the version registered),
    the second right after it moved @champion, before its ops.audit `done` row. The second ends the first's
    MLflow run as KILLED; the next score reconciles ops.audit with the registry. The ops.audit it finds was
    written before the status column, and takes the new rows."""
    ctx = ctx_for("churn", ["pipeline.model.params.n_estimators=30"])
    client, host = ctx.mlflow, socket.gethostname()
    first_pid = _train_killed_at(ctx, "train.model_registered", tmp_path / "first.log")
    experiment = client.get_experiment_by_name("lakeforge/churn").experiment_id
    (orphan,) = client.search_runs([experiment], "attributes.status = 'RUNNING'")
    (first_run,) = [r for r in _delta_rows(lakehouse, "ops.runs", "started_at") if r["job"] == "train"]
    assert {k: orphan.data.tags[k] for k in (registry.RUN_TAG, registry.PID_TAG, registry.HOST_TAG)} == {
        registry.RUN_TAG: first_run["run_id"], registry.PID_TAG: str(first_pid), registry.HOST_TAG: host}

    # ops.audit as lakeforge wrote it before the status column: @challenger -> v1, as the registry has it.
    old_schema = runs.AUDIT_SCHEMA.partition(", status string")[0]
    lake.append(spark, spark.createDataFrame([(dt.datetime(2026, 11, 1, 3), "ops", "old-host", "churn", "challenger",
                                               None, 1, "promote: before the status column", "old")], old_schema),
                lakehouse, runs.AUDIT)
    client.set_registered_model_alias("churn", registry.CHALLENGER, "1")

    second_log = tmp_path / "second.log"
    _train_killed_at(ctx, "train.alias_moved", second_log)
    ended = client.get_run(orphan.info.run_id).info
    assert (ended.status, ended.end_time is not None) == ("KILLED", True)
    assert (f"MLflow run {orphan.info.run_id} of lakeforge run {first_run['run_id']} was still RUNNING but its "
            f"process (pid {first_pid} on {host}) is gone: ended as KILLED") in second_log.read_text()
    # In start order; the second run also appended the first one's `abandoned` row (with the first's start time).
    second_run = list(dict.fromkeys(r["run_id"] for r in _delta_rows(lakehouse, "ops.runs", "started_at")
                                    if r["job"] == "train"))[1]
    assert registry.alias_version(client, "churn", registry.CHAMPION) == 2
    audit = _delta_rows(lakehouse, runs.AUDIT, "changed_at")
    intent = audit[1]["reason"]
    assert intent.startswith("train: holdout AUC ")
    assert [(r["alias"], r["from_version"], r["to_version"], r["run_id"], r["status"]) for r in audit] == [
        ("challenger", None, 1, "old", None), ("champion", None, 2, second_run, "intended")]

    stages.build_features(ctx)
    assert stages.score(ctx)["version"] == 2
    (score_run,) = {r["run_id"] for r in _delta_rows(lakehouse, "ops.runs", "started_at") if r["job"] == "score"}
    audit = _delta_rows(lakehouse, runs.AUDIT, "changed_at")
    assert [(r["alias"], r["from_version"], r["to_version"], r["reason"], r["run_id"], r["status"])
            for r in audit] == [
        ("challenger", None, 1, "promote: before the status column", "old", None),
        ("champion", None, 2, intent, second_run, "intended"),
        ("champion", None, 2, f"reconciled: registry has @champion -> v2, ops.audit said nothing; the intent of run "
                              f"{second_run} (-> v2, {intent}) was completed", score_run, "reconciled")]
    # Registry and ops.audit agree: the last completed row of each alias names the version the alias points at.
    completed = {r["alias"]: r["to_version"] for r in audit if r["status"] != runs.INTENDED}
    assert completed == {a: int(v) for a, v in client.get_registered_model("churn").aliases.items()} == {
        "champion": 2, "challenger": 1}
    assert registry.reconcile_aliases(client, spark, lakehouse, "churn", "again") == []


def test_a_trainings_input_tables_are_logged_by_folder_version_and_columns_without_a_spark_job(spark, lakehouse,
                                                                                                tmp_path):
    rows = spark.createDataFrame([("a", 1.0, {"k": 1}), ("b", 2.0, {"j": 2})], "id string, amount double, "
                                                                              "extra map<string,int>")
    lake.append(spark, rows.drop("extra"), lakehouse, "silver.things")
    lake.append(spark, rows, lakehouse, "bronze.things")
    lake.append(spark, rows.selectExpr("id", "cast(amount as decimal(10, 2)) as amount"), lakehouse, "gold.things")
    snapshots = lake.snapshots(spark, lakehouse, {"silver.things": 0, "bronze.things": 0, "gold.things": 0})
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("inputs")  # this store's: an earlier test's active experiment is another store's
    group = "log-inputs"
    with mlflow.start_run() as run:
        spark.sparkContext.setJobGroup(group, "logging a training's inputs")
        try:
            registry.log_inputs(snapshots)
        finally:
            spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)

    # Logging reads no row: MLflow's Spark dataset would count them in a job of Python workers.
    assert spark.sparkContext.statusTracker().getJobIdsForGroup(group) == []
    logged = {d.dataset.name: d.dataset for d in mlflow.get_run(run.info.run_id).inputs.dataset_inputs}
    assert {name: (d.source_type, json.loads(d.source), d.digest) for name, d in logged.items()} == {
        name: ("delta_table", {"path": str(lakehouse / name.replace(".", "/")), "delta_table_version": "0"},
               f"{name}@v0") for name in ("silver.things", "bronze.things", "gold.things")}
    assert json.loads(logged["silver.things"].schema)["mlflow_colspec"] == [
        {"type": "string", "name": "id", "required": True}, {"type": "double", "name": "amount", "required": True}]
    assert logged["bronze.things"].schema is None  # a map column: MLflow would collect its keys from every row
    assert logged["gold.things"].schema is None  # a decimal: MLflow would warn and log one untyped column
