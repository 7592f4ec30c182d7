"""Where the time of ingest's JSON read goes (`ingest.read_batch`), part by part, in one Spark session.

    .venv/bin/python benchmarks/json_read_parts.py [--mb 350] [--rounds 3]

Generates the demo's order files (`lakeforge.demo.generator`, JSON lines with their dirt) sized to about --mb
megabytes, then times each expression over the same files into Spark's no-op sink (nothing written), --rounds
times, and reports the median seconds and MB/s of each:
- text: the lines only (`spark.read.text`), the floor of every JSON path here;
- spark_json_reader: Spark's own JSON reader with the declared schema (no raw line, no checks);
- from_json: the lines parsed by `from_json` with the declared schema (Spark's expression);
- object_keys: `json_object_keys`, the second parse of every line on ingest's all-Spark path, which finds keys
  the schema does not know (new columns);
- one_pass: lakeforge's JSON line parser (`lib/lakeforge/jvm`, from_json's own parser with its tokens watched):
  the typed record, the undeclared keys, the text after the object and the byte tests (blank, size, UTF-8, an
  object) from one pass;
- read_batch_two_parses and read_batch: the whole JSON read of ingest (`ingest.read_batch`) on its all-Spark path
  (from_json, then json_object_keys) and with the one-pass parser; the rows must be the same both ways.

The figures go to benchmarks/results/json_read_parts.json (date, machine, load before and after). Not part of
the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import record  # benchmarks/record.py, beside this script

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_CONF_DIR", str(REPO / "conf"))
ORDER_BYTES_PER_CUSTOMER = 1310  # order-file bytes per demo customer over 180 days (280,000 customers: 351 MB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=350, help="approximate MB of order files (default 350)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of every part (default 3)")
    parser.add_argument("--seed", type=int, default=42)
    record.add_argument(parser, "json_read_parts")
    args = parser.parse_args()
    recorder = record.Recorder("json_read_parts", args.results)

    from pyspark.sql import functions as F

    from lakeforge import config, ingest
    from lakeforge.demo.generator import DemoSpec, generate_demo
    from lakeforge.spark import build_session

    work = Path(tempfile.mkdtemp(prefix="json-read-parts-"))
    try:
        customers = max(300, int(args.mb * 2**20 / ORDER_BYTES_PER_CUSTOMER))
        generate_demo(work / "landing", DemoSpec(customers=customers, stores=50, days=180, seed=args.seed))
        source = config.load_pipeline("churn").sources["orders"]
        known = {n.lower(): n for n in source.columns}
        files = [ingest.inspect_file(f, source, known)
                 for f in ingest.landing_entries(work / "landing", source, "orders") if f.bytes]
        mb = sum(f.bytes for f in files) / 2**20
        settings = config.load_settings("local", [f"paths.lakehouse={work / 'lakehouse'}"])
        spark = build_session(settings, app_name="json-read-parts")
        columns = ingest.declared_types(source)
        paths = [str(f.path) for f in files]
        value = F.col("value")

        def text():
            return spark.read.text(paths)

        parser = ingest._json_lines(spark)
        if parser is None:
            sys.exit("lakeforge's JVM jar is not in the session: run `lakeforge setup-jars` (make setup) first")
        schema = ingest._ddl(columns) + f", `{ingest.CORRUPT}` string"

        def two_parses():
            with mock.patch.object(ingest, "_json_lines", lambda _spark: None):
                return ingest.read_batch(spark, files, source, columns)

        parts = {
            "text": text,
            "spark_json_reader": lambda: spark.read.schema(ingest._ddl(columns)).json(paths),
            "from_json": lambda: text().select(F.from_json(value, ingest._ddl(columns)).alias("r")).select("r.*"),
            "object_keys": lambda: text().select(F.json_object_keys(value).alias("keys")),
            "one_pass": lambda: ingest._parse_once(spark, parser, text(), schema, {}, list(columns),
                                                   ingest.JSON_MAX_STRING).select("record.*", "new_keys", "trailing", "flaw"),
            "read_batch_two_parses": two_parses,
            "read_batch": lambda: ingest.read_batch(spark, files, source, columns),
        }
        one, two = parts["read_batch"](), two_parses()
        differ = one.exceptAll(two).count() + two.exceptAll(one).count()
        if differ:
            sys.exit(f"read_batch's two paths differ by {differ} rows")
        rows = one.count()
        parts["text"]().write.format("noop").mode("overwrite").save()  # warm-up: JIT, file listing
        seconds = {name: [] for name in parts}
        for r in range(args.rounds):
            for name, frame in parts.items():
                t = time.monotonic()
                frame().write.format("noop").mode("overwrite").save()
                seconds[name].append(time.monotonic() - t)
                print(f"[json_read_parts] round {r + 1}: {name} {seconds[name][-1]:.1f}s", file=sys.stderr, flush=True)
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    recorder.write({
        "mb": round(mb, 1), "files": len(files), "rounds": args.rounds, "cores": os.cpu_count(),
        "median_s": {name: round(s, 2) for name, s in medians.items()},
        "mb_s": {name: round(mb / s, 1) for name, s in medians.items()},
        "over_text_s": {name: round(s - medians["text"], 2) for name, s in medians.items() if name != "text"},
        "rows": rows, "same_rows_both_ways": True,
        "read_batch_over_two_parses": round(medians["read_batch"] / medians["read_batch_two_parses"], 3),
        "one_pass_over_from_json": round(medians["one_pass"] / medians["from_json"], 3),
    })


if __name__ == "__main__":
    main()
