"""`lakeforge demo`: generate the demo data, run every stage, and say what came out."""

from __future__ import annotations

import sys
import time

from lakeforge import lake, stages
from lakeforge.scoring import predictions_table


def run_demo(ctx: stages.Context, fresh: bool = False, **size) -> str:
    """Generate, ingest, train, score; return the end-of-run summary text."""
    started = time.monotonic()
    if fresh:
        stages.reset_local_state(ctx.settings)

    def step(n: int, name: str) -> None:
        print(f"== demo step {n}/4: {name} ({time.monotonic() - started:.0f}s elapsed)", file=sys.stderr, flush=True)

    step(1, "generate landing files")
    manifest = stages.generate(ctx.settings, **size)
    step(2, "ingest into bronze/silver")
    stages.ingest(ctx)
    step(3, "build features, train, register @champion")
    trained = stages.train(ctx)
    step(4, "build features and score the next day")
    scored = stages.nightly(ctx)["score"]
    return format_summary(ctx, manifest, trained, scored, time.monotonic() - started)


def format_summary(ctx: stages.Context, manifest: dict, trained: dict, scored: dict, seconds: float) -> str:
    lakehouse = ctx.lakehouse
    lines = [f"lakeforge demo finished in {seconds:.0f}s", "", "Tables (rows):"]
    for name in lake.list_tables(lakehouse):
        rows = lake.read(ctx.spark, lakehouse, name).count()
        lines.append(f"  {name:<32} {rows:>10,}")
    orders = manifest["orders"]
    lines += ["", f"Landing: {orders['lines']:,} order lines, of which {orders['malformed_lines']} malformed and "
                  f"{orders['null_customer_id']} without a customer (both quarantined), "
                  f"{orders['duplicate_lines']} duplicates and {orders['late_lines']} late (deduplicated in silver).",
              f"Model: {ctx.pipeline.name} version {trained['version']} is @{trained['alias']}; holdout AUC "
              f"{trained['auc']:.3f} (log loss {trained['log_loss']:.3f}, churn rate {trained['positive_rate']:.1%}).",
              f"Predictions: {scored['rows']:,} rows for score_date {scored['score_date']} in "
              f"{predictions_table(ctx.pipeline.name)} at {lake.table_path(lakehouse, predictions_table(ctx.pipeline.name))}",
              "", "Open the MLflow UI on this store:",
              f"  .venv/bin/mlflow ui --backend-store-uri {ctx.settings.mlflow.tracking_uri} --port 5000",
              "Query any table by name: `spark.table('gold.churn_predictions')` in a lakeforge session, or "
              "`lakeforge status`."]
    return "\n".join(lines)


def format_status(status: dict) -> str:
    """`lakeforge status` as a readable table."""
    lines = [f"{'table':<28} {'version':>7} {'rows':>10}  {'last write':<19}  description"]
    for t in status["tables"]:
        if t["health"] != "ok":  # no figures the log cannot vouch for: what is wrong, and where to look
            version = "-" if t["version"] is None else t["version"]
            lines.append(f"{t['table']:<28} {version:>7} {'-':>10}  {'-':<19}  DAMAGED: {t['health']} "
                         f"(run `lakeforge doctor`)")
            continue
        lines.append(f"{t['table']:<28} {t['version']:>7} {t['rows']:>10,}  "
                     f"{t['last_write']:%Y-%m-%d %H:%M:%S}  {t['description']}")
    lines += ["", "last runs:"]
    for r in status["runs"]:
        took = f"{r['duration_s']:.1f}s" if r["duration_s"] is not None else "-"
        lines.append(f"  {r['started_at']:%Y-%m-%d %H:%M:%S}  {r['job']:<9} {r['pipeline']:<8} {r['status']:<11} "
                     f"{took:>8}  {_one_line(r['error'])}")
    lines += ["", "pipelines:"]
    for name, p in status["pipelines"].items():
        which = [f"{', '.join(p[f'{status}_jobs'])} {status}" for status in ("failed", "interrupted", "abandoned")
                 if p.get(f"{status}_jobs")]
        health = p["health"] + (f" ({'; '.join(which)})" if which else "")
        last = p["last_run"]
        last = f"last run {last['started_at']:%Y-%m-%d %H:%M:%S} {last['job']} {last['status']}" if last else "no runs"
        champion = f"champion: version {p['champion']}" if p["champion"] is not None else "champion: none yet"
        lines.append(f"  {name:<10} {health:<24} {last:<45} {champion}")
    return "\n".join(lines)


def format_doctor(report: list) -> str:
    """`lakeforge doctor`: one line per table (ok, or what is wrong), then how to recover each damaged one."""
    if not report:
        return "no tables under the lakehouse"
    lines = []
    for t in report:
        where = f"version {t.version}" if t.version is not None else "no readable version"
        lines.append(f"{t.table:<28} {'ok' if t.healthy else 'DAMAGED':<8} {where}")
        for problem in t.problems:
            lines.append(f"    problem: {problem}")
        for step in t.recovery:
            lines.append(f"    recover: {step}")
    bad = [t.table for t in report if not t.healthy]
    lines += ["", f"{len(report) - len(bad)} of {len(report)} tables healthy" +
              (f"; damaged: {', '.join(bad)} (see docs/operations.md)" if bad else "")]
    return "\n".join(lines)


def _one_line(error: str | None, width: int = 160) -> str:
    """An error on one line: its first line and, for a traceback, its last (the exception raised)."""
    lines = [line.strip() for line in (error or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text if len(text) <= width else text[:width - 3] + "..."
