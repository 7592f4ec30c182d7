"""Data contracts: check each row against its source's expectations and decide keep / drop / quarantine.

Every row read ends in exactly one outcome, so rows read = kept + quarantined + dropped.
A row that does not parse, or lacks its primary key, is always quarantined; declared
expectations act as configured (warn keeps the row but counts it; fail stops the load).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakeforge import lake
from lakeforge.config import Expectation, Source
from lakeforge.errors import DataError

QUALITY = "ops.quality"


def describe_expectation(e: Expectation) -> str:
    """A short human name: `amount range [0, 500]`, `channel accepted_values`."""
    if e.rule == "range":
        return f"{e.column} range [{e.min if e.min is not None else '-inf'}, {e.max if e.max is not None else 'inf'}]"
    return f"{e.column} {e.rule}"


def failing(e: Expectation) -> Column:
    """True where the row breaks the expectation (nulls pass every rule but not_null)."""
    column = F.col(f"`{e.column}`")
    if e.rule == "not_null":
        return column.isNull()
    if e.rule == "range":
        low = column < F.lit(e.min) if e.min is not None else F.lit(False)
        high = column > F.lit(e.max) if e.max is not None else F.lit(False)
        return column.isNotNull() & (low | high)
    return column.isNotNull() & ~column.cast("string").isin(e.values or [])


def check(df: DataFrame, source: Source) -> DataFrame:
    """Add `_fail_<i>` flags, the row's `_outcome` (keep/drop/quarantine) and its `_reason` (a pure transform)."""
    corrupt = F.col("_corrupt_record").isNotNull()
    null_key = F.lit(False)
    for key in source.primary_key:
        null_key = null_key | F.col(f"`{key}`").isNull()
    flagged = df
    for i, e in enumerate(source.expectations):
        flagged = flagged.withColumn(f"_fail_{i}", F.coalesce(failing(e), F.lit(False)) & ~corrupt)
    by_action = {action: F.lit(False) for action in ("quarantine", "drop")}
    reasons = [F.when(corrupt, F.lit(f"malformed record: does not parse as {source.format} with the declared schema")),
               F.when(~corrupt & null_key, F.lit(f"null primary key ({', '.join(source.primary_key)})"))]
    for i, e in enumerate(source.expectations):
        if e.action in by_action:
            by_action[e.action] = by_action[e.action] | F.col(f"_fail_{i}")
            reasons.append(F.when(F.col(f"_fail_{i}"), F.lit(f"expectation failed: {describe_expectation(e)}")))
    outcome = (F.when(corrupt | null_key | by_action["quarantine"], "quarantine")
               .when(by_action["drop"], "drop").otherwise("keep"))
    return flagged.withColumn("_outcome", outcome).withColumn("_reason", F.concat_ws("; ", *reasons))


@dataclass(frozen=True)
class Counts:
    read: int
    kept: int
    quarantined: int
    dropped: int
    malformed: int
    null_key: int
    failing: dict[int, int] = field(default_factory=dict)  # expectation index -> failing rows
    expectations: tuple[Expectation, ...] = ()


def count_outcomes(checked: DataFrame, source: Source) -> Counts:
    """Every count of the batch in one pass over the data."""
    key_null = F.lit(False)
    for key in source.primary_key:
        key_null = key_null | F.col(f"`{key}`").isNull()
    aggs = [F.count("*").alias("read"),
            F.count(F.when(F.col("_outcome") == "keep", 1)).alias("kept"),
            F.count(F.when(F.col("_outcome") == "quarantine", 1)).alias("quarantined"),
            F.count(F.when(F.col("_outcome") == "drop", 1)).alias("dropped"),
            F.count(F.when(F.col("_corrupt_record").isNotNull(), 1)).alias("malformed"),
            F.count(F.when(F.col("_corrupt_record").isNull() & key_null, 1)).alias("null_key")]
    aggs += [F.count(F.when(F.col(f"_fail_{i}"), 1)).alias(f"f{i}") for i in range(len(source.expectations))]
    row = checked.agg(*aggs).first()
    return Counts(row["read"], row["kept"], row["quarantined"], row["dropped"], row["malformed"], row["null_key"],
                  {i: row[f"f{i}"] for i in range(len(source.expectations))}, tuple(source.expectations))


def raise_on_failures(counts: Counts, source_name: str) -> None:
    """Stop the load, before anything is written, when a `fail` expectation has failing rows."""
    broken = [(e, counts.failing[i]) for i, e in enumerate(counts.expectations)
              if e.action == "fail" and counts.failing[i] > 0]
    if broken:
        detail = "; ".join(f"'{describe_expectation(e)}' failed on {n:,} of {counts.read:,} rows" for e, n in broken)
        raise DataError(f"source {source_name}: expectation with action 'fail' broken, nothing was loaded: {detail}. "
                        f"Fix the landing files or change the action in the pipeline YAML.")


def quarantine_rows(checked: DataFrame, source_name: str) -> DataFrame:
    """The quarantined rows in ops.quarantine's shape: where from, the raw record and why."""
    data_columns = [c for c in checked.columns if not c.startswith("_")]
    raw = F.coalesce(F.col("_corrupt_record"), F.to_json(F.struct(*[F.col(f"`{c}`") for c in data_columns])))
    return checked.where("_outcome = 'quarantine'").select(
        F.lit(source_name).alias("source"), F.col("_source_file").alias("file"), raw.alias("raw_record"),
        F.col("_reason").alias("reason"), F.col("_batch_id").alias("batch_id"),
        F.col("_ingested_at").alias("quarantined_at"))


def record(spark: SparkSession, counts: Counts, source_name: str, batch_id: str, lakehouse: Path, owner: str) -> None:
    """Store the batch's results per expectation in ops.quality (rerunning a batch replaces its rows)."""
    checks = [("record parses", "quarantine", counts.malformed), ("primary key not null", "quarantine", counts.null_key)]
    checks += [(describe_expectation(e), e.action, counts.failing[i]) for i, e in enumerate(counts.expectations)]
    rows = [(batch_id, source_name, name, action, counts.read, failing_rows) for name, action, failing_rows in checks]
    df = spark.createDataFrame(rows, "batch_id string, source string, `check` string, action string, "
                                     "rows_checked bigint, rows_failing bigint").withColumn("checked_at", F.current_timestamp())
    lake.replace_where(spark, df, lakehouse, QUALITY, f"batch_id = '{batch_id}'",
                       properties={"lakeforge.description": "Data-contract results per ingest batch",
                                   "lakeforge.owner": owner, "lakeforge.source": "lakeforge"})
