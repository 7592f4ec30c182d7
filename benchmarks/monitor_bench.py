"""Monitoring's cost as a fraction of the scoring job's, on the same date and the same data.

Generates the demo (size from the flags), ingests it, trains @champion, builds the features of the last
night D and of the night D - horizon, scores D - horizon (so D has one matured window to judge), then times
the `score` stage for D and the `monitor` stage for D (drift of every feature and of the predictions,
matured performance with segments, quality trend, decision, the HTML report and its MLflow run), each
`--repeat` times. Both are whole stages: Delta in and out, ops.runs. Last line: one JSON object.

    .venv/bin/python benchmarks/monitor_bench.py --customers 3000 --stores 20 --days 180
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import record  # benchmarks/record.py, beside this script

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_CONF_DIR", str(REPO / "conf"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--stores", type=int, default=20)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--env", default="local")
    record.add_argument(parser, "monitor_bench")
    args = parser.parse_args()
    recorder = record.Recorder("monitor_bench", args.results)

    from lakeforge import config, features, stages
    from lakeforge.demo.generator import DemoSpec, generate_demo

    work = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    settings = config.load_settings(args.env, [f"paths.lakehouse={work / 'lakehouse'}", f"paths.landing={work / 'landing'}",
                                               f"paths.reports={work / 'reports'}",
                                               f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
                                               f"mlflow.artifact_root={work / 'artifacts'}", "spark.ui_enabled=false"])
    pipeline = config.load_pipeline("churn")
    manifest = generate_demo(settings.paths.landing, DemoSpec(customers=args.customers, stores=args.stores,
                                                              days=args.days))
    ctx = stages.Context(settings, pipeline)
    log = lambda msg: print(f"[monitor_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
    stages.ingest(ctx)
    stages.train(ctx)
    night = dt.date.fromisoformat(manifest["end_date"]) + dt.timedelta(days=1)
    matured = night - dt.timedelta(days=pipeline.label.horizon_days)
    stages.build_features(ctx, [matured, night])
    stages.score(ctx, matured)
    stages.score(ctx, night)   # warm-up: the first run of a stage pays one-off JVM and import costs
    stages.monitor(ctx, night)
    log(f"ready: {args.customers} customers, night {night}, matured window ending {matured}")

    def timed(fn) -> list[float]:
        out = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out

    score_s = timed(lambda: stages.score(ctx, night))
    log(f"score: {statistics.median(score_s):.2f}s")
    monitor_s = timed(lambda: stages.monitor(ctx, night))
    log(f"monitor: {statistics.median(monitor_s):.2f}s")
    rows = ctx.spark.table(features.features_table(pipeline)).where(f"as_of_date = DATE'{night}'").count()
    results = {"customers": args.customers, "stores": args.stores, "days": args.days, "date": night.isoformat(),
               "feature_rows": rows, "repeat": args.repeat,
               "score_s": round(statistics.median(score_s), 3), "monitor_s": round(statistics.median(monitor_s), 3),
               "monitor_over_score": round(statistics.median(monitor_s) / statistics.median(score_s), 3)}
    ctx.spark.stop()
    for key, value in results.items():
        print(f"{key:>20}: {value}")
    recorder.write(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
