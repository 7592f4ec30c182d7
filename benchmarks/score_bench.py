"""Scoring speed: lakeforge's scoring paths vs the model's own predict and vs mlflow.pyfunc.spark_udf.

In one run, for the churn model (one LightGBM classifier, 200 trees) and the demand routing model (one
LightGBM regressor per store and a fallback), over the same N feature rows and the same registered @champion:
  (a) the model's own predict (LightGBM) in one process over the rows in memory, on every core, and (a1)
      the same on one thread, as the model predicts in each Spark task;
  (e) the compiled model (lakeforge.compiled, lleaves) in one process on every core: the new limit;
  (b) mlflow.pyfunc.spark_udf(..., env_manager="local") into Spark's no-op sink;
  (c) lakeforge scoring from the model files with LightGBM's own predict (native), no-op sink;
  (d) lakeforge scoring with the compiled model, no-op sink; and the whole `score` stage (Delta read,
      predict, Delta write of the partition, ops.runs) with the share of its time outside (d);
  (f) the same Arrow UDF with no model in it, no-op sink: the JVM-Python transfer ceiling of any Spark scoring.
Also: the compile time (empty cache), the maximum |compiled - LightGBM| over all rows, the peak memory
during the churn stage runs. Each timing is the median of `--repeat` runs. Writes
benchmarks/results/score_bench.json (with date, cores, load average before and after, command line);
last line: the same JSON.

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
from typing import Iterator

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa  # at module level: the Arrow UDF's string annotations are resolved in this module

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


def synthetic_demand(n: int, stores: int, seed: int = 0) -> pd.DataFrame:
    """Rows shaped like gold.demand_features, spread over `stores` stores, with a per-store level."""
    rng = np.random.default_rng(seed)
    store = rng.integers(0, stores, n)
    level = np.random.default_rng(7).gamma(4, 10, stores)[store]
    orders_7d = rng.poisson(7 * level)
    frame = pd.DataFrame({
        "store_id": np.char.add("S", np.char.zfill(store.astype(str), 3)), "as_of_date": SCORE_DATE,
        "orders_1d": rng.poisson(level), "orders_7d": orders_7d, "orders_28d": rng.poisson(28 * level),
        "same_weekday_last_week": rng.poisson(level), "day_of_week": rng.integers(0, 7, n),
        "seats": (level * 2).astype("int64"), "has_drive_thru": (store % 3 == 0).astype("int64"),
        "delivery_share_7d": rng.uniform(0, 1, n),
    })
    weekday = np.where(frame.day_of_week >= 5, 1.3, 1.0)
    frame["orders_next_day"] = rng.poisson(level * weekday * (1 - 0.3 * frame.delivery_share_7d)).astype("int64")
    return frame


def with_threads(python_model, threads: int):
    """A copy of a lakeforge pyfunc model whose LightGBM estimators predict on `threads` threads."""
    model = copy.deepcopy(python_model)
    for fitted in [getattr(model, "estimator", None), getattr(model, "fallback", None),
                   *getattr(model, "models", {}).values()]:
        if fitted is not None:
            fitted.estimator.set_params(n_jobs=threads)  # estimators.Fitted wraps the LightGBM estimator
    return model


def profile_batches(native_payload: dict, compiled_payload: dict, rows: pd.DataFrame, size: int = 10_000) -> dict:
    """Where one scoring task's time goes outside Spark: per row, on one thread, over Arrow batches of `size` rows
    (Spark's default spark.sql.execution.arrow.maxRecordsPerBatch) as the scoring UDF gets them."""
    import pyarrow as pa

    from lakeforge import compiled

    table = pa.Table.from_pandas(rows, preserve_index=False)
    batches = [pa.StructArray.from_arrays(b.columns, b.schema.names) for b in table.to_batches(size)]
    native, fast = compiled.build(native_payload, threads=1), compiled.build(compiled_payload, threads=1)
    profile = {}
    for name, fn in (("arrow_to_matrix", native.matrix), ("lightgbm_predict_with_matrix", native.predict),
                     ("compiled_predict_with_matrix", fast.predict)):
        started = time.perf_counter()
        for batch in batches:
            fn(batch)
        profile[name] = round((time.perf_counter() - started) / len(rows) * 1e6, 3)
    return profile


def _transfer_only():
    """(f): scoring's Arrow UDF shape (the feature struct in, one double per row out) with no model in it: the
    most any Spark scoring of these rows can do on this machine, the ceiling (c) and (d) are measured against."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType

    @F.arrow_udf(DoubleType())
    def zeros(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
        for batch in batches:
            yield pa.array(np.zeros(len(batch)))

    return zeros


def bench_model(ctx, version: int, make_rows, args, log) -> dict:
    """(a), (a1), (e), (b), (c), (d) and the score stage for the @champion of ctx's pipeline."""
    import mlflow
    from pyspark.sql import functions as F

    from lakeforge import compiled, features, lake, registry, scoring, stages

    spark, pipeline, name = ctx.spark, ctx.pipeline, ctx.pipeline.name
    transfer_only = _transfer_only()
    settings = ctx.settings
    chunk = 1_000_000
    for start in range(0, args.rows, chunk):  # written in chunks: no single huge driver frame
        part = make_rows(min(chunk, args.rows - start), 100 + start)
        df = spark.createDataFrame(part[list(pipeline.features.columns)], schema=features.output_schema(pipeline))
        if start == 0:  # creates the table and replaces the date
            features.write_features(spark, df, settings.paths.lakehouse, pipeline, [SCORE_DATE], "bench")
        else:
            lake.append(spark, df, settings.paths.lakehouse, features.features_table(pipeline),
                        partition_by=["as_of_date"])
    rows_df = features.in_population(lake.read(spark, settings.paths.lakehouse, features.features_table(pipeline))
                                     .where(F.col("as_of_date") == F.lit(SCORE_DATE)), pipeline)
    n = rows_df.count()
    log(f"{name}: {n:,} feature rows in {features.features_table(pipeline)}")
    cores = os.cpu_count()
    results: dict[str, object] = {"rows": n}
    python_model = registry.load_python_model(name, version)
    columns = python_model.feature_names
    entity = pipeline.features.entity

    # (e) and the compile time: the first load compiles into an empty cache.
    native = scoring.load(ctx.mlflow, name, version, settings.paths.model_cache, log, compile_trees=False)
    fast = scoring.load(ctx.mlflow, name, version, settings.paths.model_cache, log)
    results["compile_s"] = fast.details["compile_seconds"]
    results["compiled_estimators"] = fast.details["compiled_now"]
    if not args.skip_in_process:
        in_memory = rows_df.select(*columns).toPandas()
        all_cores = with_threads(python_model, cores)
        t = timed(lambda: all_cores.predict(None, in_memory), args.repeat)
        results["a_in_process_s"] = statistics.median(t)
        log(f"{name} (a) in-process LightGBM predict, {cores} threads: {statistics.median(t):.2f}s")
        t = timed(lambda: python_model.predict(None, in_memory), args.repeat)
        results["a1_in_process_one_thread_s"] = statistics.median(t)
        log(f"{name} (a1) in-process LightGBM predict, one thread: {statistics.median(t):.2f}s")
        scorer = compiled.build(fast.payload, threads=cores)
        t = timed(lambda: scorer.predict(in_memory), args.repeat)
        results["e_compiled_in_process_s"] = statistics.median(t)
        log(f"{name} (e) in-process compiled predict, {cores} threads: {statistics.median(t):.2f}s")
        results["max_abs_diff_compiled_vs_lightgbm"] = float(
            np.abs(scorer.predict(in_memory) - all_cores.predict(None, in_memory)).max())
        results["profile_one_thread_us_per_row"] = profile_batches(native.payload, fast.payload, in_memory[columns])
        del in_memory, all_cores, scorer

    if not args.skip_spark_udf:
        udf = mlflow.pyfunc.spark_udf(spark, f"models:/{name}/{version}", env_manager="local", result_type="double")
        t = timed(lambda: rows_df.select(entity, udf(F.struct(*columns)).alias("prediction"))
                  .write.format("noop").mode("overwrite").save(), args.repeat)
        results["b_spark_udf_s"] = statistics.median(t)
        log(f"{name} (b) mlflow spark_udf: {statistics.median(t):.2f}s")

    t = timed(lambda: rows_df.select(entity, transfer_only(F.struct(*columns)).alias("prediction"))
              .write.format("noop").mode("overwrite").save(), args.repeat)
    results["f_transfer_only_noop_s"] = statistics.median(t)
    log(f"{name} (f) the same Arrow UDF with no model (the JVM-Python transfer ceiling): {statistics.median(t):.2f}s")

    for key, loaded, what in (("c_lakeforge_native_noop_s", native, "native"),
                              ("d_lakeforge_compiled_noop_s", fast, "compiled")):
        payload = scoring.broadcast_model(spark, loaded)
        t = timed(lambda: scoring.predict(rows_df, payload, loaded.fingerprint, [entity], columns)
                  .write.format("noop").mode("overwrite").save(), args.repeat)
        results[key] = statistics.median(t)
        log(f"{name} ({key[0]}) lakeforge {what} scoring, no-op sink: {statistics.median(t):.2f}s")
    with PeakMemory() as memory:
        t = timed(lambda: stages.score(ctx, SCORE_DATE), args.repeat)
    results["d_lakeforge_score_stage_s"] = statistics.median(t)
    log(f"{name} (d) lakeforge score stage (Delta in and out, compiled): {statistics.median(t):.2f}s")
    results["stage_share_outside_predict"] = round(1 - results["d_lakeforge_compiled_noop_s"] /
                                                   results["d_lakeforge_score_stage_s"], 3)
    # The Python driver holds no rows (nothing is collected); the JVM's share is bounded by spark.driver_memory.
    results["stage_driver_python_peak_rss_mb"] = round(memory.driver / 2**20)
    results["stage_spark_jvm_and_workers_peak_rss_mb"] = round(memory.spark / 2**20)

    for key in [k for k in list(results) if k.endswith("_s") and k != "compile_s"]:
        rate = n / results[key]
        results[key.removesuffix("_s") + "_rows_per_s"] = round(rate)
        results[key.removesuffix("_s") + "_rows_per_s_per_core"] = round(rate / cores)

    def ratio(fast_key, slow_key):
        if fast_key in results and slow_key in results:
            results[f"ratio_{fast_key.split('_')[0]}_vs_{slow_key.split('_')[0]}"] = round(
                results[slow_key] / results[fast_key], 3)

    for fast_key in ("d_lakeforge_compiled_noop_s", "c_lakeforge_native_noop_s"):
        for slow_key in ("a_in_process_s", "b_spark_udf_s", "e_compiled_in_process_s", "f_transfer_only_noop_s"):
            ratio(fast_key, slow_key)
    ratio("e_compiled_in_process_s", "a_in_process_s")
    ratio("f_transfer_only_noop_s", "e_compiled_in_process_s")  # below 1: no Spark path can reach (e)
    if "b_spark_udf_s" in results:
        results["ratio_stage_vs_b"] = round(results["b_spark_udf_s"] / results["d_lakeforge_score_stage_s"], 3)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--stores", type=int, default=100, help="stores (group models) of the demand routing model")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-in-process", action="store_true", help="skip (a) and (e) (they hold all rows in memory)")
    parser.add_argument("--skip-spark-udf", action="store_true")
    parser.add_argument("--skip-demand", action="store_true")
    record.add_argument(parser, "score_bench")
    args = parser.parse_args()
    recorder = record.Recorder("score_bench", args.results)

    from lakeforge import config, features, models, registry, stages, training

    work = Path(tempfile.mkdtemp(prefix="score-bench-"))
    settings = config.load_settings("local", [f"paths.lakehouse={work / 'lakehouse'}", f"paths.landing={work / 'landing'}",
                                              f"paths.model_cache={work / 'model_cache'}",
                                              f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
                                              f"mlflow.artifact_root={work / 'artifacts'}",
                                              "spark.ui_enabled=false", "spark.driver_memory=4g"])
    log = lambda msg: print(f"[score_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
    results: dict[str, object] = {"repeat": args.repeat}

    # Real registered champions, through the registry: churn trained on 200k synthetic rows ...
    churn = stages.Context(settings, config.load_pipeline("churn"))
    columns = features.feature_columns(churn.pipeline)
    train = synthetic_features(200_000, seed=1)
    model = registry.ProbabilityModel(training.fit(train, columns, "churned", churn.pipeline), columns)
    logged = registry.log_and_register(churn.mlflow, "churn", settings.mlflow.artifact_root, model, train[columns],
                                       {}, {}, {})
    registry.set_alias(churn.mlflow, "churn", registry.CHAMPION, logged.version)
    log(f"registered churn v{logged.version} ({model.estimator.estimator.n_estimators} trees) as @champion")

    def churn_rows(n, seed):
        part = synthetic_features(n, seed=seed).drop(columns="churned")
        part["customer_id"] = np.char.add("C", np.arange(seed, seed + n).astype(str))
        return part

    results["churn"] = bench_model(churn, logged.version, churn_rows, args, log)

    if not args.skip_demand:
        # ... and demand: one regressor per store (the pipeline's parameters) and a fallback, as one routing model.
        demand = stages.Context(settings, config.load_pipeline("demand"))
        pipeline = demand.pipeline
        inputs = [c for c in features.feature_columns(pipeline) if c != "store_id"]
        train = synthetic_demand(100 * args.stores, args.stores, seed=1)
        params = training.estimator_params(pipeline)
        per_store = {store: training.fit_estimator("regression", params, rows[inputs], rows["orders_next_day"])
                     for store, rows in train.groupby("store_id")}
        fallback = training.fit_estimator("regression", params, train[inputs], train["orders_next_day"])
        routing = models.RoutingModel(per_store, fallback, "store_id", inputs, "regression")
        logged = registry.log_and_register(demand.mlflow, "demand", settings.mlflow.artifact_root, routing,
                                           train[routing.feature_names], {}, {}, {})
        registry.set_alias(demand.mlflow, "demand", registry.CHAMPION, logged.version)
        log(f"registered demand v{logged.version} ({len(per_store)} store models + fallback) as @champion")
        results["demand"] = bench_model(demand, logged.version,
                                        lambda n, seed: synthetic_demand(n, args.stores, seed), args, log)
        results["demand"]["stores"] = args.stores
    churn.spark.stop()
    for section in ("churn", "demand"):
        for key, value in results.get(section, {}).items():
            print(f"{section + '.' + key:>56}: {value}")
    recorder.write(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
