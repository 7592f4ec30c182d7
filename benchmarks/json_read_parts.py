"""Where the time of ingest's JSON read goes (`ingest.read_batch`), part by part, in one Spark session.

    .venv/bin/python benchmarks/json_read_parts.py [--mb 350] [--rounds 3]

Generates the demo's order files (`lakeforge.demo.generator`, JSON lines with their dirt) sized to about --mb
megabytes, then times each expression over the same files into Spark's no-op sink (nothing written), --rounds
times, and reports the median seconds and MB/s of each:
- text: the lines only (`spark.read.text`), the floor of every JSON path here;
- spark_json_reader: Spark's own JSON reader with the declared schema (no raw line, no checks);
- from_json: the lines parsed by `from_json` with the declared schema, as read_batch parses them;
- object_keys: the second parse read_batch makes of every line, `json_object_keys`, which finds keys the
  schema does not know (new columns);
- string_gate / instr_gate: two ways tried to skip that second parse on the usual line: count the `":` pairs
  left once every declared `"name":` is taken out with `replace` (string_gate), or compare a `":` count with the
  declared names found by `instr` (instr_gate), each with the tests for the spellings the count cannot see
  (`\\"`, `'`, white space after a quote). A gate pays only if it costs less than object_keys;
- read_batch_without_new_keys and read_batch: the whole JSON read, without and with the new-key column.

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
from functools import reduce
from pathlib import Path

import record  # benchmarks/record.py, beside this script

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_CONF_DIR", str(REPO / "conf"))
ORDER_BYTES_PER_CUSTOMER = 1310  # order-file bytes per demo customer over 180 days (280,000 customers: 351 MB)


def _removed(text, tokens):
    from pyspark.sql import functions as F

    return reduce(lambda t, token: F.replace(t, F.lit(token), F.lit("")), tokens, text)


ODD = ['\\"', "'", '" ', '"\t', '"\r']  # spellings a `":` count does not see


def string_gate(value, columns):
    from pyspark.sql import functions as F

    stripped = _removed(value, [f'"{n}":' for n in columns])
    left = F.octet_length(stripped) > F.octet_length(F.replace(stripped, F.lit('":'), F.lit("")))
    return (F.octet_length(value) > F.octet_length(_removed(value, ODD))) | left


def instr_gate(value, columns):
    from pyspark.sql import functions as F

    pairs = (F.octet_length(value) - F.octet_length(F.replace(value, F.lit('":'), F.lit("")))) / 2
    known = reduce(lambda a, b: a + b, [F.when(F.instr(value, f'"{n}":') > 0, 1).otherwise(0) for n in columns])
    return reduce(lambda a, b: a | b, [F.instr(value, s) > 0 for s in ODD]) | (pairs > known)


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

        parts = {
            "text": text,
            "spark_json_reader": lambda: spark.read.schema(ingest._ddl(columns)).json(paths),
            "from_json": lambda: text().select(F.from_json(value, ingest._ddl(columns)).alias("r")).select("r.*"),
            "object_keys": lambda: text().select(F.json_object_keys(value).alias("keys")),
            "string_gate": lambda: text().select(string_gate(value, columns).alias("gate")),
            "instr_gate": lambda: text().select(instr_gate(value, columns).alias("gate")),
            "read_batch_without_new_keys": lambda: ingest.read_batch(spark, files, source, columns).drop(
                ingest.NEW_KEYS),
            "read_batch": lambda: ingest.read_batch(spark, files, source, columns),
        }
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
        "new_keys_share_of_read_batch": round(1 - medians["read_batch_without_new_keys"] / medians["read_batch"], 3),
        "string_gate_over_object_keys": round(medians["string_gate"] / medians["object_keys"], 3),
        "instr_gate_over_object_keys": round(medians["instr_gate"] / medians["object_keys"], 3),
    })


if __name__ == "__main__":
    main()
