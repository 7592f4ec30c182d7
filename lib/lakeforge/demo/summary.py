"""`lakeforge demo`: generate the demo data, run every stage, and say what came out."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lakeforge import flow, lake, metrics, ownership, stages
from lakeforge.demo.commands import generate
from lakeforge.scoring import predictions_table


def run_demo(ctx: stages.Context, fresh: bool = False, pipelines: list[str] | None = None, **size) -> str:
    """Generate, ingest, then train and score every pipeline (or those named); return the end-of-run summary."""
    from lakeforge.config import available_pipelines, load_pipeline

    started = time.monotonic()
    if fresh:  # what lakeforge made for this project; anything else is refused (lakeforge.ownership)
        ownership.remove(ctx.settings, Path.cwd())
    names = pipelines or available_pipelines()
    contexts = [ctx if name == ctx.pipeline.name else
                stages.Context(ctx.settings, load_pipeline(name), spark_factory=lambda _: ctx.spark) for name in names]
    steps = 2 + 2 * len(contexts)
    done = 0

    def step(name: str) -> None:
        nonlocal done
        done += 1
        print(f"== demo step {done}/{steps}: {name} ({time.monotonic() - started:.0f}s elapsed)", file=sys.stderr,
              flush=True)

    step("generate landing files")
    manifest = generate(ctx.settings, **size)
    step("ingest into bronze/silver")
    for each in contexts:  # each pipeline's sources; a source already loaded has no new files
        stages.ingest(each)
    results = []
    tonight = flow.Tonight()  # one night for every pipeline: a table they share is maintained once
    for each in contexts:
        step(f"{each.pipeline.name}: build features, train, register @champion")
        trained = stages.train(each)
        step(f"{each.pipeline.name}: build features and score the next night")
        results.append((each.pipeline, trained, stages.nightly(each, tonight=tonight)["score"]))
    return format_summary(ctx, manifest, results, time.monotonic() - started)


def _model_line(pipeline, trained: dict) -> str:
    """The model's holdout metric beside the naive answers it must beat (on the same rows)."""
    metric = pipeline.model.metric
    naive = ", ".join(f"{name.replace('_', ' ')} {value:.3f}" for name, value in trained.get("naive", {}).items())
    better = "higher" if metrics.higher_is_better(metric) else "lower"
    return (f"  {pipeline.name:<14} version {trained['version']} @{trained['alias']:<10} holdout {metric} "
            f"{trained[metric]:.3f} ({better} is better" + (f"; naive: {naive})" if naive else ")"))


def format_summary(ctx: stages.Context, manifest: dict, results: list, seconds: float) -> str:
    lakehouse = ctx.lakehouse
    lines = [f"lakeforge demo finished in {seconds:.0f}s", "", "Tables (rows):"]
    for name in lake.list_tables(lakehouse):
        rows = lake.read(ctx.spark, lakehouse, name).count()
        lines.append(f"  {name:<32} {rows:>10,}")
    orders = manifest["orders"]
    lines += ["", f"Landing: {orders['lines']:,} order lines, of which {orders['malformed_lines']} malformed and "
                  f"{orders['null_customer_id']} without a customer (both quarantined), "
                  f"{orders['duplicate_lines']} duplicates and {orders['late_lines']} late (deduplicated in silver).",
              "", "Models (holdout metric against the naive answer on the same rows):"]
    lines += [_model_line(pipeline, trained) for pipeline, trained, _ in results]
    lines += ["", "Predictions:"]
    for pipeline, _, scored in results:
        table = predictions_table(pipeline.name)
        lines.append(f"  {table:<32} {scored['rows']:>6,} rows for {scored['score_date']} at "
                     f"{lake.table_path(lakehouse, table)}")
    lines += ["", "Open the MLflow UI on this store:",
              f"  .venv/bin/mlflow ui --backend-store-uri {ctx.settings.mlflow.tracking_uri} --port 5000",
              f"Query any table by name: `spark.table('{predictions_table(results[0][0].name)}')` in a lakeforge "
              f"session, or `lakeforge status`."]
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
