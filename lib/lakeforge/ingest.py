"""Ingest landing files into bronze (raw + audit columns) and silver (typed, deduplicated, MERGEd).

Exactly-once per landing file: the file ledger `ops.ingested_files` is written last, and every
write before it is idempotent for the files of the batch (quarantine and bronze replace the rows
of those files, silver MERGEs latest-wins). A crash anywhere leaves the files unrecorded, and the
rerun redoes the batch without duplicating a row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from lakeforge import lake, quality
from lakeforge.config import Source
from lakeforge.errors import DataError

FILE_LEDGER = "ops.ingested_files"
QUARANTINE = "ops.quarantine"
EXTENSIONS = {"csv": (".csv",), "json": (".json", ".jsonl"), "parquet": (".parquet",)}
CORRUPT = "_corrupt_record"
AUDIT_COLUMNS = ["_ingested_at", "_source_file", "_batch_id"]


@dataclass(frozen=True)
class IngestResult:
    source: str
    batch_id: str | None
    files: int
    rows_read: int
    rows_kept: int
    rows_quarantined: int
    rows_dropped: int


def source_schema(source: Source) -> StructType:
    """The declared columns as a StructType (the explicit contract of the landing files)."""
    return StructType.fromDDL(", ".join(f"`{name}` {kind}" for name, kind in source.columns.items()))


def landing_files(landing: Path, source: Source) -> list[Path]:
    """The source's landing files, by name; hidden and underscore files are not data."""
    folder = landing / source.path
    if not folder.is_dir():
        return []
    suffixes = EXTENSIONS[source.format]
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix in suffixes and not p.name.startswith((".", "_")))


def loaded_files(spark: SparkSession, lakehouse: Path, source_name: str) -> set[str]:
    """Names of the files of this source already in the ledger."""
    if not lake.exists(lakehouse, FILE_LEDGER):
        return set()
    rows = lake.read(spark, lakehouse, FILE_LEDGER).where(F.col("source") == source_name).select("file").collect()
    return {row["file"] for row in rows}


def read_files(spark: SparkSession, files: list[Path], source: Source) -> DataFrame:
    """Parse the files with the declared schema; a line that does not fit keeps its raw text in _corrupt_record."""
    schema = source_schema(source)
    paths = [str(f) for f in files]
    if source.format == "parquet":
        df = spark.read.schema(schema).parquet(*paths).withColumn(CORRUPT, F.lit(None).cast("string"))
    else:
        reader = (spark.read.schema(schema.add(CORRUPT, "string"))
                  .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT))
        if source.format == "csv":
            df = reader.option("header", True).option("enforceSchema", False).csv(paths)
        else:
            df = reader.json(paths)
    return df.withColumn("_source_file", F.regexp_extract(F.col("_metadata.file_path"), r"([^/]+)$", 1))


def batch_id_for(source_name: str, files: list[Path]) -> str:
    """A deterministic batch id: the same files give the same id on a rerun."""
    digest = hashlib.sha256("\n".join([source_name] + [f.name for f in files]).encode()).hexdigest()
    return f"{source_name}-{digest[:12]}"


def ingest_source(spark: SparkSession, source_name: str, source: Source, landing: Path,
                  lakehouse: Path, owner: str, log=print) -> IngestResult:
    """Load the source's new landing files into bronze and silver; bad rows go to ops.quarantine."""
    new_files = [f for f in landing_files(landing, source) if f.name not in loaded_files(spark, lakehouse, source_name)]
    if not new_files:
        return IngestResult(source_name, None, 0, 0, 0, 0, 0)
    batch_id = batch_id_for(source_name, new_files)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    parsed = read_files(spark, new_files, source).withColumn("_ingested_at", F.lit(now)).withColumn(
        "_batch_id", F.lit(batch_id))
    checked = quality.check(parsed, source).persist()
    try:
        counts = quality.count_outcomes(checked, source)
        quality.raise_on_failures(counts, source_name)  # `fail` expectations stop here, before any write
        file_names = [f.name for f in new_files]
        where_files = "_source_file IN ({})".format(", ".join(f"'{n}'" for n in file_names))

        quarantined = quality.quarantine_rows(checked, source_name)
        lake.replace_where(spark, quarantined, lakehouse, QUARANTINE,
                           f"source = '{source_name}' AND file IN ({', '.join(repr(n) for n in file_names)})",
                           properties=_props("Rows that broke a data contract, with the reason", owner, "lakeforge"))
        kept = checked.where("_outcome = 'keep'").select(*source.columns, *AUDIT_COLUMNS)
        bronze, silver = f"bronze.{source_name}", f"silver.{source_name}"
        props = _props(source.description or f"{source_name} landing files", owner, str(landing / source.path))
        lake.replace_where(spark, kept, lakehouse, bronze, where_files, properties=props)
        order = [source.event_time, "_ingested_at", "_source_file"] if source.event_time else ["_ingested_at", "_source_file"]
        lake.merge_latest(spark, kept, lakehouse, silver, source.primary_key, order, properties=props)
        quality.record(spark, counts, source_name, batch_id, lakehouse, owner)
        ledger = _ledger_rows(spark, checked, source_name, batch_id, new_files, now)
        lake.append(spark, ledger, lakehouse, FILE_LEDGER,
                    properties=_props("Landing files loaded, once each, with their row accounting", owner, "lakeforge"))
    finally:
        checked.unpersist()
    result = IngestResult(source_name, batch_id, len(new_files), counts.read, counts.kept,
                          counts.quarantined, counts.dropped)
    log(f"{source_name}: {len(new_files)} new files, {counts.read:,} rows read = {counts.kept:,} kept + "
        f"{counts.quarantined:,} quarantined + {counts.dropped:,} dropped")
    return result


def _ledger_rows(spark: SparkSession, checked: DataFrame, source_name: str, batch_id: str,
                 files: list[Path], now: dt.datetime) -> DataFrame:
    """One ledger row per file, with its own accounting (an empty file has zero rows, but is recorded)."""
    per_file = {row["_source_file"]: row for row in checked.groupBy("_source_file").agg(
        F.count("*").alias("read"),
        F.sum(F.when(F.col("_outcome") == "keep", 1).otherwise(0)).alias("kept"),
        F.sum(F.when(F.col("_outcome") == "quarantine", 1).otherwise(0)).alias("quarantined"),
        F.sum(F.when(F.col("_outcome") == "drop", 1).otherwise(0)).alias("dropped"),
    ).collect()}
    rows = []
    for f in files:
        r = per_file.get(f.name)
        rows.append((source_name, f.name, batch_id, now, f.stat().st_size,
                     int(r["read"]) if r else 0, int(r["kept"]) if r else 0,
                     int(r["quarantined"]) if r else 0, int(r["dropped"]) if r else 0))
    return spark.createDataFrame(rows, "source string, file string, batch_id string, ingested_at timestamp, "
                                       "bytes bigint, rows_read bigint, rows_kept bigint, "
                                       "rows_quarantined bigint, rows_dropped bigint")


def _props(description: str, owner: str, source: str) -> dict[str, str]:
    return {"lakeforge.description": description, "lakeforge.owner": owner, "lakeforge.source": source}


def ingest_all(spark: SparkSession, sources: dict[str, Source], landing: Path, lakehouse: Path,
               owner: str, log=print) -> list[IngestResult]:
    """Ingest every declared source; a source with no landing folder is an error that names it."""
    missing = [name for name, s in sources.items() if not (landing / s.path).is_dir()]
    if missing:
        raise DataError(f"no landing folder for source(s) {', '.join(missing)} under {landing} "
                        f"(expected {', '.join(str(landing / sources[m].path) for m in missing)}); "
                        f"run `lakeforge generate` for the demo data or fix paths.landing")
    return [ingest_source(spark, name, source, landing, lakehouse, owner, log) for name, source in sources.items()]
