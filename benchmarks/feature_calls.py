"""A backfill's feature build with one call of the pandas function per (bucket, date), against calls that take a
span of dates sized to the rows (what `lakeforge train` and `features` do), in one Spark session.

    .venv/bin/python benchmarks/feature_calls.py [--scale tiny default] [--rounds 3]

For each scale, generates the demo data (tiny: the tests' 300 customers and 4 stores over 150 days; default: the
demo's 3,000 customers and 20 stores over 180 days), ingests it, and builds the demand pipeline's features (one
row per store and date) for every training and holdout date, --rounds times each way, into Spark's no-op sink:
- per_date: `features.compute_features` with one date per call (the baseline: what lakeforge did before);
- spans: `features.build_features`, whose calls take `features.estimate_dates_per_call` dates (its estimate
  of a date's rows included in the time).
Reported per scale: median seconds each way, their ratio, the dates per call the estimate chose, the number of
calls each way, and the rows, which must be the same rows both ways (checked with exceptAll).

The figures go to benchmarks/results/feature_calls.json (date, machine, load before and after). Not part of the
test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import record  # benchmarks/record.py, beside this script

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_CONF_DIR", str(REPO / "conf"))
SCALES = {"tiny": {"customers": 300, "stores": 4, "days": 150},
          "default": {"customers": 3000, "stores": 20, "days": 180}}


def measure_scale(spark, work: Path, scale: str, rounds: int, seed: int) -> dict:
    from lakeforge import catalog, config, features, lake, stages, training
    from lakeforge.demo.generator import DemoSpec, generate_demo
    from lakeforge.pandas_on_spark import buckets_of

    generate_demo(work / "landing", DemoSpec(seed=seed, **SCALES[scale]))
    settings = config.load_settings("local", [f"paths.lakehouse={work / 'lakehouse'}",
                                              f"paths.landing={work / 'landing'}"])
    pipeline = config.load_pipeline("demand")
    stages.ingest(stages.Context(settings, pipeline, spark_factory=lambda _: spark))
    lakehouse = work / "lakehouse"
    first, last = features.event_date_range(spark, lakehouse, pipeline)
    train, holdout = training.snapshot_dates(first, last, pipeline)
    dates = train + holdout
    spine = lake.read(spark, lakehouse, catalog.bronze(pipeline.features.spine.source))
    events = lake.read(spark, lakehouse, catalog.silver(pipeline.features.events.source))
    buckets = buckets_of(spark)
    span = features.estimate_dates_per_call(spine, events, dates, pipeline, buckets)
    ways = {"per_date": lambda: features.compute_features(spine, events, dates, pipeline, buckets),
            "spans": lambda: features.build_features(spark, lakehouse, pipeline, dates)}
    per_date, spans = ways["per_date"](), ways["spans"]()
    if per_date.exceptAll(spans).count() or spans.exceptAll(per_date).count():
        raise SystemExit(f"{scale}: the two ways gave different rows")
    rows = spans.count()
    seconds = {name: [] for name in ways}
    for r in range(rounds):
        for name, build in ways.items():
            t = time.monotonic()
            build().write.format("noop").mode("overwrite").save()
            seconds[name].append(time.monotonic() - t)
            print(f"[feature_calls] {scale} round {r + 1}: {name} {seconds[name][-1]:.1f}s", file=sys.stderr,
                  flush=True)
    medians = {name: round(statistics.median(s), 2) for name, s in seconds.items()}
    return {"scale": scale, **SCALES[scale], "dates": len(dates), "rows": rows, "buckets": buckets,
            "dates_per_call": span,
            # apply_grouped's spans are of calendar days since 1970, so a backfill may start inside one
            "calls": {"per_date": buckets * len(dates),
                      "spans": buckets * len({(d - dt.date(1970, 1, 1)).days // span for d in dates})},
            "median_s": medians, "spans_over_per_date": round(medians["spans"] / medians["per_date"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", nargs="+", choices=sorted(SCALES), default=["tiny", "default"])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds each way (default 3)")
    parser.add_argument("--seed", type=int, default=42)
    record.add_argument(parser, "feature_calls")
    args = parser.parse_args()
    recorder = record.Recorder("feature_calls", args.results)

    from lakeforge import config
    from lakeforge.spark import build_session

    work = Path(tempfile.mkdtemp(prefix="feature-calls-"))
    try:
        spark = build_session(config.load_settings("local", [f"paths.lakehouse={work / 'lakehouse'}"]),
                              app_name="feature-calls")
        results = [measure_scale(spark, work / scale, scale, args.rounds, args.seed) for scale in args.scale]
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    recorder.write({"pipeline": "demand", "rounds": args.rounds, "scales": results})


if __name__ == "__main__":
    main()
