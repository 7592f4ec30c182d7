"""Scoring speed: lakeforge's scoring path vs the model's own predict and vs mlflow.pyfunc.spark_udf.

In one run, over the same N feature rows (the churn pipeline's columns) and the same registered
@champion:
  (a) the model's own predict in one process over the rows in memory, on every core (the physical
      limit here), and (a1) the same on one thread, as the registered model predicts in each Spark task;
  (b) mlflow.pyfunc.spark_udf(..., env_manager="local") into Spark's no-op sink;
  (c) lakeforge's scoring transform into the no-op sink, and the full `score` stage
      (Delta read, predict, Delta write of the partition, ops.runs) — `stages.score`.
Each is timed `--repeat` times; medians and ratios are reported, with the peak memory during (c) of the
Python driver and of the Spark JVM with its Python workers (local mode: the driver's JVM is the executor),
each and together. Last line: one JSON object.

    .venv/bin/python benchmarks/score_bench.py --rows 2000000
    .venv/bin/python benchmarks/score_bench.py --rows 10000000 --repeat 1 --skip-in-process
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

import record  # benchmarks/record.py, beside this script

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_CONF_DIR", str(REPO / "conf"))
SCORE_DATE = dt.date(2026, 11, 26)


def synthetic_features(n: int, seed: int = 0) -> pd.DataFrame:
    """Rows shaped like gold.churn_features, with a learnable churn signal."""
    rng = np.random.default_rng(seed)
    orders_180d = rng.poisson(8, n)
    orders_90d = rng.binomial(orders_180d, 0.5)
    orders_30d = rng.binomial(orders_90d, 0.35)
    days_since = np.where(orders_180d > 0, rng.exponential(25, n).clip(0, 180), 181.0)
    frame = pd.DataFrame({
        "customer_id": np.char.add("C", np.arange(n).astype(str)),
        "as_of_date": SCORE_DATE,
        "orders_30d": orders_30d.astype("int64"), "orders_90d": orders_90d.astype("int64"),
        "orders_180d": orders_180d.astype("int64"),
        "spend_90d": orders_90d * rng.gamma(4, 4, n), "avg_amount": rng.gamma(4, 4, n),
        "days_since_last_order": days_since, "tenure_days": rng.uniform(1, 900, n),
        "loyalty_member": rng.integers(0, 2, n).astype("int64"),
        "delivery_share_90d": rng.uniform(0, 1, n), "dine_in_share_90d": rng.uniform(0, 1, n),
        "delivery_share_4d": rng.uniform(0, 1, n), "dine_in_share_4d": rng.uniform(0, 1, n),
        "main_channel_90d": rng.choice(["delivery", "dine_in", "drive_thru", "takeaway"], n).astype(object),
    })
    churn_logit = 0.04 * days_since - 0.3 * orders_30d - 0.5 * frame.loyalty_member - 1.0
    frame["churned"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-churn_logit))).astype("int64")
    return frame


class PeakMemory:
    """Samples every 50 ms the RSS of this process (the Python driver) and of its children (the Spark JVM with
    its Python workers), and keeps the peak of each and of their sum."""

    def __enter__(self):
        self.driver = self.spark = self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                driver = me.memory_info().rss
                spark = sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                driver = spark = 0
            self.driver, self.spark = max(self.driver, driver), max(self.spark, spark)
            self.total = max(self.total, driver + spark)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-in-process", action="store_true", help="skip (a) (it holds all rows in memory)")
    parser.add_argument("--skip-spark-udf", action="store_true")
    record.add_argument(parser, "score_bench")
    args = parser.parse_args()
    recorder = record.Recorder("score_bench", args.results)

    from pyspark.sql import functions as F

    from lakeforge import config, features, lake, registry, scoring, stages

    work = Path(tempfile.mkdtemp(prefix="score-bench-"))
    settings = config.load_settings("local", [f"paths.lakehouse={work / 'lakehouse'}", f"paths.landing={work / 'landing'}",
                                              f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
                                              f"mlflow.artifact_root={work / 'artifacts'}",
                                              "spark.ui_enabled=false", "spark.driver_memory=4g"])
    pipeline = config.load_pipeline("churn")
    ctx = stages.Context(settings, pipeline)
    spark, client = ctx.spark, ctx.mlflow
    columns = features.feature_columns(pipeline)
    log = lambda msg: print(f"[score_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # A real registered champion: the churn model class, trained on 200k synthetic rows, through the registry.
    from lakeforge import training

    train = synthetic_features(200_000, seed=1)
    model = training.fit(train, columns, "churned", pipeline)
    logged = registry.log_and_register(client, "churn", settings.mlflow.artifact_root,
                                       registry.ProbabilityModel(model, columns), train[columns], {}, {}, {})
    registry.set_alias(client, "churn", registry.CHAMPION, logged.version)
    log(f"registered churn v{logged.version} as @champion")

    # The feature rows, written to gold.churn_features in chunks (no single huge driver frame).
    chunk = 1_000_000
    for start in range(0, args.rows, chunk):
        part = synthetic_features(min(chunk, args.rows - start), seed=100 + start).drop(columns="churned")
        part["customer_id"] = np.char.add("C", np.arange(start, start + len(part)).astype(str))
        df = spark.createDataFrame(part, schema=features.output_schema(pipeline))
        if start == 0:  # creates the table and replaces the date
            features.write_features(spark, df, settings.paths.lakehouse, pipeline, [SCORE_DATE], "bench")
        else:
            lake.append(spark, df, settings.paths.lakehouse, features.features_table(pipeline),
                        partition_by=["as_of_date"])
    rows_df = lake.read(spark, settings.paths.lakehouse, features.features_table(pipeline)).where(
        F.col("as_of_date") == F.lit(SCORE_DATE))
    n = rows_df.count()
    log(f"{n:,} feature rows in {features.features_table(pipeline)}")

    results: dict[str, object] = {"rows": n, "cores": os.cpu_count(), "repeat": args.repeat}
    python_model = registry.load_python_model("churn", logged.version)

    if not args.skip_in_process:
        # The registered estimator predicts on one thread (one per Spark task); the physical limit of
        # this machine is the same predict on every core, so (a) uses all of them and (a1) reports one.
        in_memory = rows_df.select(*columns).toPandas()
        all_cores = copy.deepcopy(python_model)
        all_cores.estimator.set_params(n_jobs=os.cpu_count())
        t = timed(lambda: all_cores.predict(None, in_memory), args.repeat)
        results["a_in_process_s"] = statistics.median(t)
        log(f"(a) in-process predict, {os.cpu_count()} threads: {statistics.median(t):.2f}s")
        t = timed(lambda: python_model.predict(None, in_memory), args.repeat)
        results["a1_in_process_one_thread_s"] = statistics.median(t)
        log(f"(a1) in-process predict, one thread: {statistics.median(t):.2f}s")
        del in_memory, all_cores

    if not args.skip_spark_udf:
        import mlflow

        udf = mlflow.pyfunc.spark_udf(spark, f"models:/churn/{logged.version}", env_manager="local", result_type="double")
        t = timed(lambda: rows_df.select("customer_id", udf(F.struct(*columns)).alias("prediction"))
                  .write.format("noop").mode("overwrite").save(), args.repeat)
        results["b_spark_udf_s"] = statistics.median(t)
        log(f"(b) mlflow spark_udf: {statistics.median(t):.2f}s")

    payload = scoring.broadcast_model(spark, python_model)
    with PeakMemory() as memory:
        t = timed(lambda: scoring.predict(rows_df, payload, ("churn", logged.version), "customer_id", columns)
                  .write.format("noop").mode("overwrite").save(), args.repeat)
        results["c_lakeforge_noop_s"] = statistics.median(t)
        log(f"(c) lakeforge predict, no-op sink: {statistics.median(t):.2f}s")
        t = timed(lambda: stages.score(ctx, SCORE_DATE), args.repeat)
        results["c_lakeforge_score_stage_s"] = statistics.median(t)
        log(f"(c) lakeforge score stage (Delta in and out): {statistics.median(t):.2f}s")
    # The Python driver holds no rows (nothing is collected); the JVM's share is bounded by spark.driver_memory.
    results["driver_python_peak_rss_mb"] = round(memory.driver / 2**20)
    results["spark_jvm_and_workers_peak_rss_mb"] = round(memory.spark / 2**20)
    results["driver_peak_rss_mb"] = round(memory.total / 2**20)

    def rate(key):
        return round(n / results[key]) if key in results else None

    for key in [k for k in list(results) if k.endswith("_s")]:
        results[key.removesuffix("_s") + "_rows_per_s"] = rate(key)
    if "a_in_process_s" in results:
        results["ratio_c_noop_vs_a"] = round(results["a_in_process_s"] / results["c_lakeforge_noop_s"], 3)
        results["ratio_c_noop_vs_a1"] = round(results["a1_in_process_one_thread_s"] / results["c_lakeforge_noop_s"], 3)
    if "b_spark_udf_s" in results:
        results["ratio_c_noop_vs_b"] = round(results["b_spark_udf_s"] / results["c_lakeforge_noop_s"], 3)
        results["ratio_c_stage_vs_b"] = round(results["b_spark_udf_s"] / results["c_lakeforge_score_stage_s"], 3)
    spark.stop()
    for key, value in results.items():
        print(f"{key:>32}: {value}")
    recorder.write(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
