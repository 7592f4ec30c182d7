"""Ingest throughput: `lakeforge ingest` (contracts, quarantine, bronze, silver MERGE, ledger) vs a plain
Spark read-and-write-Parquet of the same landing files, in one Spark session.

    .venv/bin/python benchmarks/ingest_bench.py [--mb 50] [--env local] [--set spark.driver_memory=4g]

Generates the demo landing files (`lakeforge.demo.generator`, the churn pipeline's three sources:
orders JSON lines with their dirt, customers and stores CSV) sized to about --mb megabytes, warms
the session up on a tiny demo (both paths), then times, on the same files:
- plain: for each source, `spark.read` with the declared schema and `write.parquet` (no checks);
- bare writes: the same read, then only the two Delta writes the issue asks for (bronze with the audit
  columns, silver's latest row per key), no checks: the floor under any ingest built this way;
- ingest: `lakeforge.ingest.ingest_all` into an empty lakehouse (every commit included);
- rerun: `ingest_all` again with no new files (must commit nothing).
Reports MB/s for each and the ratios to the plain copy's time. The issue's goal is a run of >= 1 GB
(`--mb 1024`; about 1.7 GB of memory for the generator, a few minutes on two cores); the default is
small so it runs in a couple of minutes. The last line of output is one JSON object with every
figure, including the size actually run. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import record  # benchmarks/record.py, beside this script

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_CONF_DIR", str(REPO / "conf"))
BYTES_PER_CUSTOMER = 1370  # landing bytes per demo customer over 180 days (measured: 791,572 customers = 984 MB)
GOAL_MB = 1024


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.startswith("_")) / 2**20


def generate(landing: Path, mb: float, days: int, seed: int) -> dict:
    from lakeforge.demo.generator import DemoSpec, generate_demo

    customers = max(300, int(mb * 2**20 * 180 / days / BYTES_PER_CUSTOMER))
    return generate_demo(landing, DemoSpec(customers=customers, stores=50, days=days, seed=seed))


def read_declared(spark, source, landing: Path):
    """The source's landing files read by Spark's own reader with the declared schema: no checks at all."""
    from lakeforge.ingest import _ddl, declared_types

    reader = spark.read.schema(_ddl(declared_types(source)))
    folder = str(landing / source.path)
    return reader.json(folder) if source.format == "json" else reader.option("header", True).csv(folder)


def plain_copy(spark, sources: dict, landing: Path, out: Path) -> None:
    """What a bare Spark job does with the same files: read with the declared schema, write Parquet."""
    for name, source in sources.items():
        read_declared(spark, source, landing).write.mode("overwrite").parquet(str(out / name))


def bare_writes(spark, sources: dict, landing: Path, lakehouse: Path) -> None:
    """The writes the issue asks of any ingest, with no checks: every row appended to a Delta bronze table
    with the audit columns, and the latest row per primary key inserted into a Delta silver table. The
    batch is cached between the two writes, as ingest caches its checked batch (on 256 MB: 10.7-11.2 s
    cached, 11.9-12.3 s parsed twice). A floor for ingest's time: contracts, quarantine and ledger come on
    top of it."""
    from pyspark.sql import functions as F

    from lakeforge import ingest, lake

    lake.forget_tables(spark)  # names an earlier run registered would point at its folders
    for name, source in sources.items():
        audited = read_declared(spark, source, landing).select(
            "*", F.current_timestamp().alias("_ingested_at"), ingest._file_name(),  # _source_file, as ingest names it
            F.lit("bench").alias("_batch_id")).persist()
        props = {"delta.dataSkippingStatsColumns": ingest._stats_columns(source)}
        lake.append(spark, audited, lakehouse, f"bronze.{name}", properties=props)
        latest = lake.latest_per_key(audited, source.primary_key, [source.event_time, "_ingested_at", ingest.FILE])
        lake.append(spark, latest, lakehouse, f"silver.{name}", properties=props)
        audited.unpersist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=50, help="approximate landing size in MB (default 50; goal 1024)")
    parser.add_argument("--days", type=int, default=180, help="days of orders (default 180: 180 order files)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--env", default="local", help="conf overlay (default local: local[*])")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one, deleted at the end)")
    record.add_argument(parser, "ingest_bench")
    args = parser.parse_args()
    recorder = record.Recorder("ingest_bench", args.results)

    from lakeforge import config, ingest, lake
    from lakeforge.spark import build_session

    work = args.dir or Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    say = lambda message: print(f"[ingest_bench {time.monotonic() - started:7.1f}s] {message}", file=sys.stderr,
                                flush=True)
    started = time.monotonic()
    try:
        settings = config.load_settings(args.env, [*args.overrides, f"paths.lakehouse={work / 'warm' / 'lakehouse'}"])
        sources = config.load_pipeline("churn").sources
        t = time.monotonic()
        manifest = generate(work / "landing", args.mb, args.days, args.seed)
        mb = folder_mb(work / "landing")
        say(f"generated {mb:.1f} MB of landing files ({manifest['orders']['lines']:,} order lines, "
            f"{manifest['customers']['rows']:,} customer rows) in {time.monotonic() - t:.1f}s")

        spark = build_session(settings, app_name="ingest-bench")
        t = time.monotonic()
        generate(work / "warm" / "landing", 0.3, 60, args.seed)  # JIT and Delta warm-up for both paths
        plain_copy(spark, sources, work / "warm" / "landing", work / "warm" / "plain")
        bare_writes(spark, sources, work / "warm" / "landing", work / "warm" / "bare")
        ingest.ingest_all(spark, sources, work / "warm" / "landing", work / "warm" / "lakehouse", "bench",
                          log=lambda *a, **k: None)
        warm_s = time.monotonic() - t
        say(f"warm-up on a tiny demo: {warm_s:.1f}s")

        t = time.monotonic()
        plain_copy(spark, sources, work / "landing", work / "plain")
        plain_s = time.monotonic() - t
        plain_rows = sum(spark.read.parquet(str(work / "plain" / name)).count() for name in sources)
        say(f"plain read + write Parquet: {plain_s:.1f}s, {mb / plain_s:.2f} MB/s, {plain_rows:,} rows")

        t = time.monotonic()
        bare_writes(spark, sources, work / "landing", work / "bare")
        bare_s = time.monotonic() - t
        say(f"bare bronze + silver Delta writes, no checks: {bare_s:.1f}s, {mb / bare_s:.2f} MB/s, "
            f"{bare_s / plain_s:.2f}x the plain copy's time")
        shutil.rmtree(work / "bare")

        lakehouse = work / "lakehouse"
        lake.forget_tables(spark)  # the bare writes' tables hold the same names in this session's catalog
        t = time.monotonic()
        results = ingest.ingest_all(spark, sources, work / "landing", lakehouse, "bench", log=say)
        ingest_s = time.monotonic() - t
        read = sum(r.rows_read for r in results)
        say(f"lakeforge ingest: {ingest_s:.1f}s, {mb / ingest_s:.2f} MB/s, {read:,} rows read")

        before = {name: lake.version(spark, lakehouse, name) for name in lake.list_tables(lakehouse)}
        t = time.monotonic()
        ingest.ingest_all(spark, sources, work / "landing", lakehouse, "bench", log=say)
        rerun_s = time.monotonic() - t
        after = {name: lake.version(spark, lakehouse, name) for name in lake.list_tables(lakehouse)}
        spark.stop()
        figures = {
            "mb": round(mb, 1), "goal_mb": GOAL_MB, "size_note": (
                f"ran {mb:.0f} MB; the goal is >= {GOAL_MB} MB (--mb {GOAL_MB})" if mb < GOAL_MB else
                f"ran {mb:.0f} MB (>= the {GOAL_MB} MB goal)"),
            "files": sum(r.files for r in results), "rows_read": read,
            "rows_kept": sum(r.rows_kept for r in results),
            "rows_quarantined": sum(r.rows_quarantined for r in results),
            "plain_rows": plain_rows, "master": settings.spark.master, "cores": os.cpu_count(),
            "warmup_s": round(warm_s, 1), "plain_s": round(plain_s, 1), "plain_mb_s": round(mb / plain_s, 2),
            "ingest_s": round(ingest_s, 1), "ingest_mb_s": round(mb / ingest_s, 2),
            "ratio_ingest_to_plain": round(plain_s / ingest_s, 3),  # speed: 1.0 = as fast as the plain copy
            "ingest_time_over_plain": round(ingest_s / plain_s, 3), "goal_time_ratio": 1.3,
            "bare_writes_s": round(bare_s, 1), "bare_writes_time_over_plain": round(bare_s / plain_s, 3),
            "ingest_time_over_bare_writes": round(ingest_s / bare_s, 3),
            "rerun_no_new_files_s": round(rerun_s, 1), "rerun_committed_nothing": before == after,
        }
        recorder.write(figures)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
