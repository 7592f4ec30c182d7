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
Reports MB/s for each and the ratios to the plain copy's and the bare writes' times; the goal is
ingest / bare writes <= 1.3 at >= 1 GB (`--mb 1024`; about 1.7 GB of memory for the generator, a few
minutes on two cores); the default is small so it runs in a couple of minutes.

Then the nightly part (skip it with --nights ''): one night of demo orders, the demo scaled (more
customers) to about --night-mb MB a night, ingested into a silver.orders that already holds 30 and then
365 nights of the same volume. The history is the first night's silver rows repeated, each night with
its own keys (ids shifted by a night's id count, event times by a day) in a file of its own, as nightly
MERGEs and `lakeforge maintain` leave them; the measured night's ids are shifted to follow the history,
its late lines into the last night's keys. Reports the night's ingest time per history length, the
ratio (goal <= 1.5) and Delta's MERGE metrics (files before and after skipping, rewritten).

The figures go to benchmarks/results/ingest_bench.json (with the date, the machine's cores, the load
average before and after, and the command line) and, as one JSON object, to the last line of output.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import re
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
# Demo order bytes a night per customer, two-day demo (measured: 27.6 MB a night from 2,872,810 customers).
ORDER_BYTES_PER_CUSTOMER_DAY = 10.1


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


def _shift_ids(text: bytes, offset: int) -> bytes:
    """The orders' ids moved up by `offset` (lines whose id does not parse are left as they are)."""
    return re.sub(rb'"order_id":"O(\d{9})"', lambda m: b'"order_id":"O%09d"' % (int(m.group(1)) + offset), text)


def nightly_growth(spark, work: Path, night_mb: float, nights: list[int], seed: int, say) -> dict:
    """One night of orders into a silver.orders of each history length: seconds, MERGE metrics."""
    import pyarrow as pa
    from deltalake import DeltaTable
    from pyspark.sql import functions as F

    from lakeforge import config, ingest, lake
    from lakeforge.demo.generator import DemoSpec, generate_demo

    source = config.load_pipeline("churn").sources["orders"]
    generated = work / "night-landing"
    t = time.monotonic()
    customers = int(night_mb * 2**20 / ORDER_BYTES_PER_CUSTOMER_DAY)
    generate_demo(generated, DemoSpec(customers=customers, stores=50, days=2, seed=seed))
    first, second = sorted((generated / source.path).glob("*.jsonl"))
    night_mb_real = second.stat().st_size / 2**20
    say(f"nightly part: generated two nights of orders ({first.stat().st_size / 2**20:.1f} and {night_mb_real:.1f} "
        f"MB, {customers:,} customers) in {time.monotonic() - t:.1f}s")
    figures = {"night_mb": round(night_mb_real, 1), "customers": customers, "nights": {}}
    for history in nights:
        root = work / f"nights-{history}"
        landing, lakehouse = root / "landing", root / "lakehouse"
        (landing / source.path).mkdir(parents=True)
        shutil.copyfile(first, landing / source.path / first.name)
        lake.forget_tables(spark)
        ingest.ingest_source(spark, "orders", source, landing, lakehouse, "bench", log=lambda *a, **k: None)
        silver = lake.read(spark, lakehouse, "silver.orders")
        per_night = int(silver.agg(F.max(F.substring("order_id", 2, 9).cast("long"))).first()[0])
        t = time.monotonic()
        nights_df = spark.range(1, history).withColumnRenamed("id", "_night")
        shifted = (silver.crossJoin(nights_df)
                   .withColumn("order_id", F.format_string("O%09d", F.substring("order_id", 2, 9).cast("long")
                                                           + F.col("_night") * per_night))
                   .withColumn("order_ts", F.col("order_ts") + F.make_interval(days=F.col("_night").cast("int")))
                   .repartitionByRange(history - 1, "_night").drop("_night"))
        lake.append(spark, shifted.select(*silver.columns), lakehouse, "silver.orders")
        rows = lake.read(spark, lakehouse, "silver.orders").count()
        files = lake.data_files(spark, lakehouse, "silver.orders")
        say(f"nightly part: silver.orders holds {history} nights ({rows:,} rows, {files} files), written in "
            f"{time.monotonic() - t:.1f}s")
        (landing / source.path / second.name).write_bytes(_shift_ids(second.read_bytes(), (history - 1) * per_night))
        t = time.monotonic()
        result = ingest.ingest_source(spark, "orders", source, landing, lakehouse, "bench", log=lambda *a, **k: None)
        seconds = time.monotonic() - t
        path = str(lake.table_path(lakehouse, "silver.orders"))
        merge = DeltaTable(path).history(1)[0]
        metrics = {k: int(v) for k, v in merge["operationMetrics"].items()
                   if k in ("numTargetFilesRemoved", "numTargetFilesAdded", "numTargetRowsInserted",
                            "numTargetRowsUpdated", "numTargetRowsCopied")}
        # The files MERGE had to read: those whose key statistics overlap the night's keys (the others it skips).
        low, high = (lake.read(spark, lakehouse, "bronze.orders").where(F.col("_batch_id") == result.batch_id)
                     .agg(F.min("order_id"), F.max("order_id")).first())
        stats = pa.table(DeltaTable(path, version=merge["version"] - 1).get_add_actions(flatten=True)).to_pylist()
        metrics["filesInNightKeyRange"] = sum(1 for a in stats
                                              if a["min.order_id"] <= high and a["max.order_id"] >= low)
        metrics["filesBeforeMerge"] = len(stats)
        say(f"nightly part: one night ({result.rows_read:,} rows) into {history} nights: {seconds:.1f}s; MERGE "
            f"{merge['operation']} {metrics}")
        figures["nights"][str(history)] = {"silver_rows_before": rows, "silver_files_before": files,
                                           "night_rows_read": result.rows_read, "ingest_s": round(seconds, 1),
                                           "merge": metrics}
        shutil.rmtree(root, ignore_errors=True)
    if len(nights) == 2:
        short, long = (figures["nights"][str(n)]["ingest_s"] for n in nights)
        figures[f"ingest_{nights[1]}_over_{nights[0]}"] = round(long / short, 3)
        figures["goal_ratio"] = 1.5
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=50, help="approximate landing size in MB (default 50; goal 1024)")
    parser.add_argument("--days", type=int, default=180, help="days of orders (default 180: 180 order files)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--env", default="local", help="conf overlay (default local: local[*])")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one, deleted at the end)")
    parser.add_argument("--night-mb", type=float, default=20, help="nightly part: MB of orders a night (default 20)")
    parser.add_argument("--nights", default="30,365", help="nightly part: history lengths, comma-separated "
                                                          "(default 30,365; '' skips the part)")
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
        shutil.rmtree(work / "landing", ignore_errors=True)
        nights = [int(n) for n in args.nights.split(",") if n.strip()]
        nightly = nightly_growth(spark, work, args.night_mb, nights, args.seed, say) if nights else None
        spark.stop()
        figures = {
            "goal_ingest_over_bare_writes": 1.3,
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
            "ingest_time_over_plain": round(ingest_s / plain_s, 3),
            "bare_writes_s": round(bare_s, 1), "bare_writes_time_over_plain": round(bare_s / plain_s, 3),
            "ingest_time_over_bare_writes": round(ingest_s / bare_s, 3),
            "rerun_no_new_files_s": round(rerun_s, 1), "rerun_committed_nothing": before == after,
            "bare_writes_mb_s": round(mb / bare_s, 2), "nightly": nightly,
        }
        recorder.write(figures)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
