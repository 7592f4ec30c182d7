"""The churn feature function on pandas (one process) and on Spark (all cores), over growing data sizes.

    .venv/bin/python benchmarks/features_bench.py [--customers 2000 8000 32000] [--days 180]

For each size: generate the demo data, clean it once with pandas (`lakeforge.demo.churn.read_*`)
into two Parquet files (customer history, orders), then build the features for every training
snapshot date of that data (what `lakeforge train` builds), each engine in a fresh process:
`features.build_features_pandas`, and `features.compute_features` on a `local[*]` Spark session
(forced by an aggregate over every output row; no table write). Reported per engine: the wall
time of the feature build (reading the Parquet included; for Spark the first build in a new
session, plus a second "warm" build and the session start-up apart), the peak resident memory of
the process and all of its children (for Spark: the JVM and the Python workers), and the output
rows with a checksum that must agree. The last line is one JSON object with every figure and the
smallest size from which Spark beats pandas (null if it never does in the sizes measured).

With `--event-points N [N ...]` it measures the event-level pipeline instead (delivery_time's three
feature sets, every order a prediction point): the point-in-time joins of the three sets for N
points on Spark (`points.compute_features` into Spark's no-op sink: nothing is collected) against
a plain pandas baseline of the same joins (`merge_asof` for the latest staffing row, sorted
cumulative sums searched at the instant and at the window's start for the windowed counts and
sums), in one run, each in its own process. Reported: seconds, the ratio, peak memory of the
whole process tree and of the Python driver alone (flat as points grow: no rows on the driver),
and checksums that must agree.

Linux only (memory is read from /proc). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record  # benchmarks/record.py, beside this script

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_CONF_DIR", str(REPO / "conf"))
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all of its descendants, in MB."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(frontier)
    total = 0
    for pid in tree:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError):
            pass
    return total / 2**20


def rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    except (OSError, IndexError):
        return 0.0


def measure(args: list[str], log: Path) -> dict:
    """Run this script in a child process, sampling its memory (the whole process tree, and the child itself: the
    Python driver); returns its JSON plus both peaks."""
    peak = driver = 0.0
    with open(log, "a") as stderr:
        child = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=stderr, text=True)
        while child.poll() is None:
            peak = max(peak, tree_rss_mb(child.pid))
            driver = max(driver, rss_mb(child.pid))
            time.sleep(0.1)
        out = child.stdout.read()
    if child.returncode != 0:
        raise SystemExit(f"benchmark run {args} failed (exit {child.returncode}); see {log}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": round(peak), "driver_peak_rss_mb": round(driver)}


# ---------------------------------------------------------------- one engine, in its own process


def load_inputs(data: Path):
    from lakeforge import config

    pipeline = config.load_pipeline("churn")
    meta = json.loads((data / "meta.json").read_text())
    return pipeline, [dt.date.fromisoformat(d) for d in meta["dates"]]


def run_pandas(data: Path) -> dict:
    import pandas as pd

    from lakeforge import features

    pipeline, dates = load_inputs(data)
    started = time.perf_counter()
    out = features.build_features_pandas(pd.read_parquet(data / "customers.parquet"),
                                         pd.read_parquet(data / "orders.parquet"), dates, pipeline)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "rows": len(out), "orders_180d": int(out["orders_180d"].sum()),
            "spend_90d": float(out["spend_90d"].sum())}


def run_spark(data: Path, driver_memory: str) -> dict:
    from pyspark.sql import functions as F

    from lakeforge import config, features
    from lakeforge.spark import build_session

    pipeline, dates = load_inputs(data)
    cores = os.cpu_count() or 2
    settings = config.load_settings("local", [f"paths.lakehouse={data / 'lakehouse'}", "spark.ui_enabled=false",
                                              f"spark.shuffle_partitions={2 * cores}", "spark.log_level=ERROR",
                                              f"spark.driver_memory={driver_memory}"])
    started = time.perf_counter()
    spark = build_session(settings, app_name="features-bench")
    startup = time.perf_counter() - started

    def read(name: str, source: str):
        frame = spark.read.parquet(str(data / f"{name}.parquet"))
        return frame.select(*[F.col(c).cast(t) for c, t in pipeline.sources[source].columns.items()
                              if c in frame.columns])

    def build():
        started = time.perf_counter()
        spine, orders, buckets = read("customers", "customers"), read("orders", "orders"), 2 * cores
        out = features.compute_features(spine, orders, dates, pipeline, buckets,  # as build_features calls it
                                        features.estimate_dates_per_call(spine, orders, dates, pipeline, buckets))
        row = out.agg(F.count("*").alias("rows"), F.sum("orders_180d").alias("orders_180d"),
                      F.sum("spend_90d").alias("spend_90d")).first()
        return time.perf_counter() - started, row

    # The first build pays the JVM's warm-up and the Python workers' start; a second one in the same session does not.
    cold, row = build()
    warm, _ = build()
    spark.stop()
    return {"seconds": round(cold, 2), "warm_seconds": round(warm, 2), "startup_seconds": round(startup, 2),
            "rows": row["rows"], "orders_180d": int(row["orders_180d"]), "spend_90d": float(row["spend_90d"])}


# ---------------------------------------------------------------- the event-level pipeline


EVENT_START = dt.datetime(2026, 3, 1)


def event_pipeline():
    """delivery_time with every order a point (the synthetic orders are all deliveries anyway)."""
    from lakeforge import config

    pipeline = config.load_pipeline("delivery_time")
    return pipeline.model_copy(update={"points": pipeline.points.model_copy(update={"where": None})})


def prepare_events(folder: Path, n: int, days: int = 30, seed: int = 7) -> dict:
    """Synthetic orders (every one a point), their deliveries and hourly staffing, as bronze-like Parquet files."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    stores, customers = max(10, n // 10_000), max(100, n // 10)
    at = pd.Timestamp(EVENT_START) + pd.to_timedelta(np.sort(rng.integers(0, days * 86400, n)), unit="s")
    ingested = pd.Timestamp(EVENT_START) + pd.Timedelta(days=days + 1)
    audit = {"_ingested_at": ingested, "_source_file": "bench.parquet"}
    orders = pd.DataFrame({"order_id": np.char.add("O", np.arange(n).astype(str)),
                           "customer_id": np.char.add("C", rng.integers(0, customers, n).astype(str)),
                           "store_id": np.char.add("S", rng.integers(0, stores, n).astype(str)),
                           "order_ts": at, "channel": "delivery", "items": rng.integers(1, 6, n).astype("int32"),
                           "amount": rng.gamma(4, 5, n), "promo_code": None, **audit})
    dispatched = at + pd.to_timedelta(rng.integers(300, 1800, n), unit="s")
    deliveries = pd.DataFrame({"order_id": orders["order_id"], "customer_id": orders["customer_id"],
                               "store_id": orders["store_id"], "dispatched_ts": dispatched,
                               "delivered_ts": dispatched + pd.to_timedelta(rng.integers(120, 2400, n), unit="s"),
                               **audit})
    hours = pd.date_range(EVENT_START, periods=days * 24, freq="h")
    staffing = pd.DataFrame({"store_id": np.repeat(np.char.add("S", np.arange(stores).astype(str)), len(hours)),
                             "hour_start": np.tile(hours, stores)})
    staffing = staffing.assign(drivers=rng.integers(1, 8, len(staffing)).astype("int32"),
                               cooks=rng.integers(1, 6, len(staffing)).astype("int32"), **audit)
    for name, frame in (("orders", orders), ("deliveries", deliveries), ("staffing", staffing)):
        frame.to_parquet(folder / f"{name}.parquet", index=False, coerce_timestamps="us")
    dates = sorted({d.date() for d in at})
    (folder / "meta.json").write_text(json.dumps({"dates": [d.isoformat() for d in dates]}))
    return {"points": n, "stores": stores, "customers": customers, "days": days, "staffing_rows": len(staffing)}


EVENT_SUMS = ("store_orders_1h", "store_items_1h", "customer_deliveries_90d", "drivers_on_shift")


def run_event_pandas(data: Path) -> dict:
    """The same three joins in plain pandas, the way a data scientist would write them fast."""
    import numpy as np
    import pandas as pd

    started = time.perf_counter()
    orders = pd.read_parquet(data / "orders.parquet")
    deliveries = pd.read_parquet(data / "deliveries.parquet")
    staffing = pd.read_parquet(data / "staffing.parquet")
    points = orders[["order_id", "store_id", "customer_id", "order_ts"]].rename(columns={"order_ts": "at"})

    def window_sums(rows: pd.DataFrame, key: str, time: str, values: dict, window: pd.Timedelta) -> pd.DataFrame:
        """Per point: the count and sums of its key's rows with time in [at - window, at) (cumulative sums)."""
        out = {name: np.zeros(len(points)) for name in ["count", *values]}
        rows = rows.sort_values([key, time], kind="mergesort")
        unique, first = np.unique(rows[key].to_numpy(), return_index=True)
        bounds = dict(zip(unique, zip(first, np.r_[first[1:], len(rows)])))
        times = rows[time].to_numpy()
        sums = {name: np.r_[0.0, np.cumsum(rows[column].to_numpy(dtype="float64"))] for name, column in values.items()}
        at = points["at"].to_numpy()
        for k, idx in points.groupby(key, sort=False).indices.items():
            lo, hi = bounds.get(k, (0, 0))
            t = times[lo:hi]
            end = lo + np.searchsorted(t, at[idx], side="left")
            start = lo + np.searchsorted(t, at[idx] - np.timedelta64(window), side="left")
            out["count"][idx] = end - start
            for name, cumulative in sums.items():
                out[name][idx] = cumulative[end] - cumulative[start]
        return pd.DataFrame(out, index=points.index)

    load = window_sums(orders, "store_id", "order_ts", {"items": "items"}, pd.Timedelta(hours=1))
    history = window_sums(deliveries, "customer_id", "delivered_ts", {}, pd.Timedelta(days=90))
    plan = pd.merge_asof(points.sort_values("at"), staffing.sort_values("hour_start"), left_on="at",
                         right_on="hour_start", by="store_id", tolerance=pd.Timedelta(hours=2),
                         allow_exact_matches=False, direction="backward")
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "rows": len(points), "store_orders_1h": int(load["count"].sum()),
            "store_items_1h": int(load["items"].sum()), "customer_deliveries_90d": int(history["count"].sum()),
            "drivers_on_shift": int(plan["drivers"].fillna(0).sum())}


def run_event_spark(data: Path, driver_memory: str) -> dict:
    from pyspark.sql import functions as F

    from lakeforge import config, points
    from lakeforge.spark import build_session

    pipeline = event_pipeline()
    dates = [dt.date.fromisoformat(d) for d in json.loads((data / "meta.json").read_text())["dates"]]
    cores = os.cpu_count() or 2
    settings = config.load_settings("local", [f"paths.lakehouse={data / 'lakehouse'}", "spark.ui_enabled=false",
                                              f"spark.shuffle_partitions={4 * cores}", "spark.log_level=ERROR",
                                              f"spark.driver_memory={driver_memory}"])
    spark = build_session(settings, app_name="event-features-bench")
    started = time.perf_counter()
    def read(name: str):  # typed as the sources declare (pandas' Parquet timestamps read as timestamp_ntz)
        frame = spark.read.parquet(str(data / f"{name}.parquet"))
        declared = {**pipeline.sources[name].columns, "_ingested_at": "timestamp", "_source_file": "string"}
        return frame.select(*[F.col(c).cast(declared[c]).alias(c) for c in frame.columns])

    read = {name: read(name) for name in ("orders", "deliveries", "staffing")}
    built = spark.createDataFrame([(d, dt.datetime(2100, 1, 1)) for d in dates],
                                  f"{points.AS_OF_DATE} date, {points.INGESTED_BY} timestamp")
    out = points.compute_features(points.points(read["orders"], pipeline, dates, built), read, pipeline,
                                  buckets=4 * cores)
    # The features go to the no-op sink (nothing on the driver); the checksums are a second, small job.
    out.write.format("noop").mode("overwrite").save()
    seconds = time.perf_counter() - started
    row = out.agg(F.count("*").alias("rows"), *[F.sum(c).alias(c) for c in EVENT_SUMS]).first()
    spark.stop()
    return {"seconds": round(seconds, 2), "rows": row["rows"], **{c: int(row[c] or 0) for c in EVENT_SUMS}}


def event_main(sizes: list[int], driver_memory: str, recorder: record.Recorder) -> None:
    results = []
    with tempfile.TemporaryDirectory(prefix="event-features-bench-") as tmp:
        log = Path(tmp) / "children.log"
        for n in sorted(sizes):
            folder = Path(tmp) / f"p{n}"
            folder.mkdir()
            size = prepare_events(folder, n)
            pandas_run = measure(["--run", "event-pandas", "--data", str(folder)], log)
            spark_run = measure(["--run", "event-spark", "--data", str(folder), "--driver-memory", driver_memory], log)
            checked = ("rows", *EVENT_SUMS)
            if any(pandas_run[k] != spark_run[k] for k in checked):
                raise SystemExit(f"pandas and Spark disagree at {n} points: {pandas_run} vs {spark_run}")
            results.append({**size, "spark_over_pandas_seconds": round(spark_run["seconds"] / pandas_run["seconds"], 2),
                            **{engine: {k: run[k] for k in ("seconds", "peak_rss_mb", "driver_peak_rss_mb")}
                               for engine, run in (("pandas", pandas_run), ("spark", spark_run))}})
            print(f"{n:>10,} points | pandas merge_asof {pandas_run['seconds']:7.1f} s "
                  f"{pandas_run['peak_rss_mb']:>6,} MB"
                  f" | spark {spark_run['seconds']:7.1f} s, driver {spark_run['driver_peak_rss_mb']:,} MB, all "
                  f"{spark_run['peak_rss_mb']:,} MB", flush=True)
    recorder.write({"pipeline": "delivery_time (every order a point)", "spark_master": "local[*]",
                    "baseline": "pandas merge_asof + sorted cumulative sums, one process", "sizes": results})


# ---------------------------------------------------------------- the driver


def prepare_size(folder: Path, customers: int, days: int, seed: int) -> dict:
    """Generate the demo data and write the cleaned inputs both engines read."""
    import pandas as pd

    from lakeforge import config, training
    from lakeforge.demo import churn
    from lakeforge.demo.generator import DemoSpec, generate_demo
    from lakeforge.pandas_on_spark import prepare, schema_of

    pipeline = config.load_pipeline("churn")
    generate_demo(folder / "landing", DemoSpec(seed=seed, customers=customers, stores=max(4, customers // 150),
                                               days=days))
    history = churn.read_customers(folder / "landing")
    orders = churn.read_orders(folder / "landing", pipeline.sources["orders"])
    for name, frame, source in (("customers", history, "customers"), ("orders", orders, "orders")):
        typed = prepare(frame, schema_of(pipeline.sources[source].columns.items()))
        typed.to_parquet(folder / f"{name}.parquet", index=False, coerce_timestamps="us")
    train, holdout = training.snapshot_dates(orders["order_ts"].min().date(), orders["order_ts"].max().date(),
                                             pipeline)
    dates = train + holdout
    (folder / "meta.json").write_text(json.dumps({"dates": [d.isoformat() for d in dates]}))
    window = pd.Timedelta(days=pipeline.features.events.lookback_days)
    in_windows = sum(int(orders["order_ts"].between(pd.Timestamp(d) - window, pd.Timestamp(d), inclusive="left").sum())
                     for d in dates)
    return {"customers": customers, "customer_rows": len(history), "orders": len(orders), "dates": len(dates),
            "order_rows_in_windows": in_windows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--driver-memory", default="2g")
    parser.add_argument("--event-points", type=int, nargs="+", metavar="N",
                        help="measure the event-level pipeline at these numbers of prediction points instead")
    parser.add_argument("--run", choices=["pandas", "spark", "event-pandas", "event-spark"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    record.add_argument(parser, "features_bench")
    args = parser.parse_args()
    if args.run:  # a child process: one engine on one prepared size
        runs = {"pandas": lambda: run_pandas(args.data), "spark": lambda: run_spark(args.data, args.driver_memory),
                "event-pandas": lambda: run_event_pandas(args.data),
                "event-spark": lambda: run_event_spark(args.data, args.driver_memory)}
        print(json.dumps(runs[args.run]()))
        return
    if args.event_points:  # its own results file unless --results says otherwise
        default = args.results == record.FOLDER / "features_bench.json"
        path = record.FOLDER / "features_bench_event.json" if default else args.results
        event_main(args.event_points, args.driver_memory, record.Recorder("features_bench_event", path))
        return

    recorder = record.Recorder("features_bench", args.results)
    results = []
    with tempfile.TemporaryDirectory(prefix="features-bench-") as tmp:
        log = Path(tmp) / "children.log"
        for customers in sorted(args.customers):
            folder = Path(tmp) / f"c{customers}"
            folder.mkdir()
            size = prepare_size(folder, customers, args.days, args.seed)
            pandas_run = measure(["--run", "pandas", "--data", str(folder)], log)
            spark_run = measure(["--run", "spark", "--data", str(folder), "--driver-memory", args.driver_memory], log)
            spend = pandas_run["spend_90d"]
            same = (pandas_run["rows"] == spark_run["rows"] and pandas_run["orders_180d"] == spark_run["orders_180d"]
                    and abs(spend - spark_run["spend_90d"]) <= 1e-6 * max(1.0, spend))  # sums in another order
            if not same:
                raise SystemExit(f"pandas and Spark disagree at {customers} customers: {pandas_run} vs {spark_run}")
            results.append({**size, "feature_rows": pandas_run["rows"],
                            "pandas": {k: pandas_run[k] for k in ("seconds", "peak_rss_mb")},
                            "spark": {k: spark_run[k] for k in ("seconds", "warm_seconds", "startup_seconds",
                                                                "peak_rss_mb")}})
            print(f"{customers:>9,} customers {size['orders']:>10,} orders {size['dates']:>3} dates "
                  f"{pandas_run['rows']:>10,} feature rows | pandas {pandas_run['seconds']:7.1f} s "
                  f"{pandas_run['peak_rss_mb']:>6,} MB | spark {spark_run['seconds']:7.1f} s "
                  f"(warm {spark_run['warm_seconds']:.1f} s, +{spark_run['startup_seconds']:.0f} s start-up) "
                  f"{spark_run['peak_rss_mb']:>6,} MB", flush=True)
    recorder.write({"pipeline": "churn", "days": args.days, "spark_master": "local[*]", "sizes": results,
                    "spark_overtakes_pandas_at_customers": crossover(results, "seconds"),
                    "warm_spark_overtakes_pandas_at_customers": crossover(results, "warm_seconds")})


def crossover(results: list[dict], spark_time: str) -> int | None:
    """The smallest size from which Spark is faster than pandas at every larger size measured (None: never)."""
    faster = [r["customers"] for i, r in enumerate(results)
              if all(later["spark"][spark_time] < later["pandas"]["seconds"] for later in results[i:])]
    return faster[0] if faster else None


if __name__ == "__main__":
    main()
