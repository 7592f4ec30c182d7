"""The pipeline on a Spark standalone cluster (a master and two one-core workers on loopback), submitted
with spark-submit through docker/entrypoint.sh: where the work runs, what the shipped wheel is, and
what a failed stage leaves behind (exit code, ops.runs) and how a rerun repairs it without duplicates."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.cluster


def test_stages_run_as_applications_on_both_workers(trained, spark_cluster):
    status = spark_cluster.status()
    assert [(w["state"], w["cores"]) for w in status["workers"]] == [("ALIVE", 1), ("ALIVE", 1)]
    apps = {app["name"]: app for app in status["completedapps"]}
    assert {"lakeforge-ingest", "lakeforge-train"} <= set(apps), sorted(apps)
    assert apps["lakeforge-train"]["cores"] == 2  # one executor on each worker
    # Each worker's executor received the lakeforge wheel (as .zip) that spark-submit --py-files shipped.
    for work_dir in spark_cluster.worker_dirs:
        shipped = list(work_dir.glob(f"app-*/*/{trained.py_files.name}"))
        assert shipped, f"no {trained.py_files.name} in {work_dir}: the executors did not get the wheel"


def test_a_stage_failing_on_the_executors_exits_nonzero_and_is_recorded(night, trained):
    assert night.failed.returncode == 1, night.failed.stdout[-3000:]
    # Raised in an executor's Python worker: the message is the worker's own exception, not the Java wrapper's.
    # Then where the model's code raised it (the worker's traceback names the file and line), then the hint.
    assert re.search(r"lakeforge run: failed: RuntimeError: injected executor failure \(lakeforge cluster test\) "
                     r"\(raised in predict, \S*lakeforge_chaos\.py, line 13\) \(rerun with --debug",
                     night.failed.stdout), night.failed.stdout[-3000:]
    assert "recorded in ops.runs" in night.failed.stdout
    runs = trained.runs()
    failed_night = runs.iloc[night.runs_before:night.runs_before + 3]
    assert list(zip(failed_night["job"], failed_night["status"])) == [
        ("ingest", "succeeded"), ("features", "succeeded"), ("score", "failed")], failed_night
    score = failed_night.iloc[-1]
    assert "injected executor failure" in score["error"]
    assert str(score["run_date"]) == night.score_date.isoformat() and score["ended_at"] is not None


def test_the_rerun_completes_without_duplicates(night, trained):
    runs = trained.runs()
    rerun = runs.iloc[night.runs_before + 3:]
    assert list(zip(rerun["job"], rerun["status"])) == [("ingest", "succeeded"), ("features", "succeeded"),
                                                        ("score", "succeeded"), ("monitor", "succeeded")], rerun
    # Each run appended exactly two rows: `running` when it started, its outcome when it ended.
    ledger = trained.read("ops.runs")
    assert (ledger.groupby("run_id").size() == 2).all(), ledger
    assert sorted(ledger[ledger["status"] == "running"]["run_id"]) == sorted(runs["run_id"])
    # Both nights wrote the features of the date; the rerun replaced them.
    features = trained.read("gold.churn_features")
    assert not features.duplicated(["customer_id", "as_of_date"]).any()
    assert (features["as_of_date"].astype(str) == night.score_date.isoformat()).sum() > 0
    # Both nights ingested (no new files): every landing file and order is in the lakehouse once.
    assert not trained.read("ops.ingested_files").duplicated(["source", "file"]).any()
    assert trained.read("silver.orders")["order_id"].is_unique
    tonight = trained.predictions_for(night.score_date)
    population = trained.churn_population(night.score_date)
    assert len(tonight) == len(population) == tonight["customer_id"].nunique()
    assert set(tonight["run_id"]) == {rerun["run_id"].iloc[-2]}  # written by the rerun's score stage (then monitor)
