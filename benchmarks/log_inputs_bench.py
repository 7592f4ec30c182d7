"""Logging a training's input tables to MLflow: lakeforge's way against MLflow's Spark dataset, in one run.

    .venv/bin/python benchmarks/log_inputs_bench.py [--rows 5000000] [--repeats 3]

One Delta table of --rows rows (an id, a timestamp, two numbers and a string) is written once; then,
taking turns, (a) `lakeforge.registry.log_inputs` (a MetaDataset: folder, version, columns) and (b) what
training did before, `mlflow.data.from_spark(...)` + `mlflow.log_input`, each into its own MLflow run.
Reported per way, medians over --repeats: the seconds until the call returns, the Spark jobs it started
(by job group), the seconds Spark stays busy after it returned (MLflow's profile counts the rows with an
approximate count of a 5 s timeout), and, for (b), the profile MLflow computed. Goal: (a) starts no Spark
job. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import record  # benchmarks/record.py, beside this script

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_CONF_DIR", str(REPO / "conf"))


def from_spark(snapshots) -> None:
    """How training logged its inputs before: MLflow's Spark dataset (its profile and schema)."""
    import mlflow
    import mlflow.data

    for name, path, version, df in snapshots:
        dataset = mlflow.data.from_spark(df, path=path, version=str(version), name=name, digest=f"{name}@v{version}")
        mlflow.log_input(dataset, context="training")


def measure(spark, way, snapshots, group: str) -> dict:
    import mlflow

    tracker = spark.sparkContext.statusTracker()
    with mlflow.start_run():
        spark.sparkContext.setJobGroup(group, group)
        try:
            t0 = time.monotonic()
            way(snapshots)
            returned = time.monotonic() - t0
        finally:
            spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    # The job a call left running still holds the cores: wait for it before the other way's turn (the wait
    # includes ending the MLflow run, a few milliseconds).
    while tracker.getActiveJobsIds():
        time.sleep(0.05)
    busy = time.monotonic() - t0 - returned
    return {"seconds": returned, "jobs": len(tracker.getJobIdsForGroup(group)), "busy_after_s": busy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    record.add_argument(parser, "log_inputs_bench")
    args = parser.parse_args()
    recorder = record.Recorder("log_inputs_bench", args.results)

    import mlflow
    import mlflow.data
    from pyspark.sql import functions as F

    from lakeforge import config, lake, registry
    from lakeforge.spark import build_session

    with tempfile.TemporaryDirectory(prefix="lakeforge-log-inputs-") as tmp:
        work = Path(tmp)
        settings = config.load_settings("local", [f"paths.lakehouse={work / 'lakehouse'}", "spark.ui_enabled=false",
                                                  f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}"])
        spark = build_session(settings, app_name="log-inputs-bench")
        registry.connect(settings.mlflow)
        mlflow.set_experiment("log-inputs-bench")
        rows = spark.range(args.rows).select(
            F.col("id").cast("string").alias("order_id"),
            (F.lit(1_767_225_600) + F.col("id")).cast("timestamp").alias("order_ts"),
            (F.col("id") % 97).cast("double").alias("amount"), (F.col("id") % 5).alias("items"),
            F.when(F.col("id") % 2 == 0, "delivery").otherwise("dine_in").alias("channel"))
        lake.append(spark, rows, work / "lakehouse", "silver.orders")
        ways = {"lakeforge": registry.log_inputs, "mlflow_from_spark": from_spark}
        runs: dict[str, list[dict]] = {name: [] for name in ways}
        for i in range(args.repeats):
            for name, way in ways.items():
                # Fresh DataFrames each time, as each training reads them (MLflow's profile of a DataFrame it has
                # profiled before starts one short job).
                snapshots = lake.snapshots(spark, work / "lakehouse", {"silver.orders": 0})
                runs[name].append(measure(spark, way, snapshots, f"{name}-{i}"))
                print(f"{name} run {i + 1}: {runs[name][-1]}", flush=True)
        # What MLflow's profile finds (computed once more, outside the timed calls).
        name, path, version, df = lake.snapshots(spark, work / "lakehouse", {"silver.orders": 0})[0]
        profile = mlflow.data.from_spark(df, path=path, version=str(version), name=name).profile
        spark.stop()

    figures = {"rows": args.rows, "repeats": args.repeats, "runs": runs, "mlflow_from_spark_profile": profile}
    for name, measured in runs.items():
        figures[name] = {key: statistics.median(m[key] for m in measured)
                         for key in ("seconds", "jobs", "busy_after_s")}
    figures["goal_no_spark_job_met"] = figures["lakeforge"]["jobs"] == 0
    recorder.write(figures)


if __name__ == "__main__":
    main()
