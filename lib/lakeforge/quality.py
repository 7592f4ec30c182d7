"""Data contracts: judge each row and each landing file against its source's expectations.

Every row read ends in exactly one outcome, so rows read = kept + quarantined + dropped:
- quarantine: the record does not parse (the reader's reason), its primary key or event time is
  null, or it breaks an expectation whose action is quarantine;
- drop: it breaks an expectation whose action is drop (and nothing that quarantines it);
- keep: everything else (a broken `warn` expectation keeps the row but is counted and logged).
A broken `fail` expectation stops the load before anything is written. File rules (freshness,
min_rows) judge whole landing files and only warn or fail.

The results are kept per landing file and check, so a file's results do not depend on which
other files happened to be loaded in the same batch.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakeforge import catalog, lake
from lakeforge.config import Expectation, Source
from lakeforge.errors import DataError

QUALITY = catalog.QUALITY
FILE_RULES = ("freshness", "min_rows")
QUALITY_SCHEMA = ("batch_id string, source string, file string, `check` string, action string, "
                  "rows_checked bigint, rows_failing bigint, passed boolean, detail string, checked_at timestamp")

# Working columns of a batch (the reader adds the first ones; `check` the rest). Names under _lf_
# are reserved, so they never clash with a source's columns.
FILE = "_source_file"
MALFORMED = "_lf_malformed"  # why the record does not parse, else null
RAW = "_lf_raw"  # the record's original text, where the reader has it
NEW_KEYS = "_lf_new_keys"  # JSON keys the schema does not know (JSON sources only)
OUTCOME = "_lf_outcome"
REASON = "_lf_reason"
NULL_KEY = "_lf_null_key"
NULL_EVENT = "_lf_null_event"


def flag(i: int) -> str:
    """The working column that is true where a row breaks expectation `i`."""
    return f"_lf_fail_{i}"


def describe_expectation(e: Expectation, source: Source | None = None) -> str:
    """A short human name: `price range [0, 500]`, `status accepted_values`, `min_rows 100`."""
    def show(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    if e.rule == "range":
        low = show(e.min) if e.min is not None else "-inf"
        high = show(e.max) if e.max is not None else "inf"
        return f"{e.column} range [{low}, {high}]"
    if e.rule == "pattern":
        return f"{e.column} pattern {e.pattern}"
    if e.rule == "min_rows":
        return f"min_rows {show(e.min)}"
    if e.rule == "freshness":
        column = e.column or (source.event_time if source else "event time")
        return f"{column} freshness {show(e.max_age_hours)}h"
    return f"{e.column} {e.rule}"


def _values_as_text(values: list) -> list[str]:
    """Accepted values as Spark casts them to string (true, not True)."""
    return [str(v).lower() if isinstance(v, bool) else str(v) for v in values]


def failing(e: Expectation) -> Column:
    """True where the row breaks a row rule (nulls pass every rule but not_null); not for `unique`."""
    column = F.col(f"`{e.column}`")
    if e.rule == "not_null":
        return column.isNull()
    if e.rule == "range":
        low = column < F.lit(e.min) if e.min is not None else F.lit(False)
        high = column > F.lit(e.max) if e.max is not None else F.lit(False)
        return column.isNotNull() & (low | high)
    if e.rule == "accepted_values":
        return column.isNotNull() & ~column.cast("string").isin(_values_as_text(e.values or []))
    if e.rule == "pattern":
        return column.isNotNull() & ~column.cast("string").rlike(e.pattern)
    raise ValueError(f"{e.rule} is not a per-row rule")


def check(df: DataFrame, source: Source) -> DataFrame:
    """Add the flags of every row rule, the row's outcome (keep/drop/quarantine) and its reason (a pure transform).

    `df` has the source's columns, `_source_file` and `_lf_malformed` (null when the record parsed).
    """
    parsed = F.col(MALFORMED).isNull()
    null_key = F.lit(False)
    for key in source.primary_key:
        null_key = null_key | F.col(f"`{key}`").isNull()
    flags = {NULL_KEY: parsed & null_key, NULL_EVENT: parsed & F.col(f"`{source.event_time}`").isNull()}
    reasons = [F.col(MALFORMED),
               F.when(F.col(NULL_KEY), F.lit(f"null primary key ({', '.join(source.primary_key)})")),
               F.when(F.col(NULL_EVENT), F.lit(f"null event time ({source.event_time})"))]
    quarantine, drop = F.col(NULL_KEY) | F.col(NULL_EVENT) | ~parsed, F.lit(False)
    for i, e in enumerate(source.expectations):
        if e.rule in FILE_RULES:
            continue
        if e.rule == "unique":
            value = F.col(f"`{e.column}`")
            occurrences = F.count(F.when(parsed & value.isNotNull(), 1)).over(Window.partitionBy(FILE, value))
            broken = value.isNotNull() & (occurrences > 1)
        else:
            broken = F.coalesce(failing(e), F.lit(False))
        flags[flag(i)] = parsed & broken
        if e.action == "quarantine":
            reasons.append(F.when(F.col(flag(i)), F.lit(f"expectation failed: {describe_expectation(e)}")))
            quarantine = quarantine | F.col(flag(i))
        elif e.action == "drop":
            drop = drop | F.col(flag(i))
    outcome = F.when(quarantine, "quarantine").when(drop, "drop").otherwise("keep")
    # Two projections, not one per column: each withColumn analyses the whole plan again on the driver.
    return df.withColumns(flags).withColumns({OUTCOME: outcome, REASON: F.concat_ws("; ", *reasons)})


@dataclass(frozen=True)
class FileCounts:
    """What one landing file's rows came to."""

    read: int = 0
    kept: int = 0
    quarantined: int = 0
    dropped: int = 0
    malformed: int = 0
    null_key: int = 0
    null_event: int = 0
    failing: tuple[int | None, ...] = ()  # per expectation: failing rows (None for file rules)
    age_hours: tuple[float | None, ...] = ()  # per expectation: freshness age of the newest value
    new_keys: tuple[str, ...] = ()


def count_files(checked: DataFrame, source: Source, now: dt.datetime) -> dict[str, FileCounts]:
    """Every count of the batch, per landing file, in one pass over the data."""
    parsed = F.col(MALFORMED).isNull()
    aggs = [F.count("*").alias("read"),
            F.count(F.when(F.col(OUTCOME) == "keep", 1)).alias("kept"),
            F.count(F.when(F.col(OUTCOME) == "quarantine", 1)).alias("quarantined"),
            F.count(F.when(F.col(OUTCOME) == "drop", 1)).alias("dropped"),
            F.count(F.when(~parsed, 1)).alias("malformed"),
            F.count(F.when(F.col(NULL_KEY), 1)).alias("null_key"),
            F.count(F.when(F.col(NULL_EVENT), 1)).alias("null_event")]
    for i, e in enumerate(source.expectations):
        if e.rule == "freshness":
            newest = F.max(F.when(parsed, F.col(f"`{e.column or source.event_time}`").cast("timestamp")))
            age = (F.unix_micros(F.lit(now)) - F.unix_micros(newest)) / F.lit(3_600_000_000)
            aggs.append(age.alias(f"age{i}"))
        elif e.rule != "min_rows":
            aggs.append(F.count(F.when(F.col(flag(i)), 1)).alias(f"f{i}"))
    if NEW_KEYS in checked.columns:
        aggs.append(F.array_distinct(F.flatten(F.collect_set(F.col(NEW_KEYS)))).alias("new_keys"))
    counts = {}
    for row in checked.groupBy(FILE).agg(*aggs).collect():
        values = row.asDict()
        counts[row[FILE]] = FileCounts(
            row["read"], row["kept"], row["quarantined"], row["dropped"], row["malformed"], row["null_key"],
            row["null_event"],
            tuple(values.get(f"f{i}") for i in range(len(source.expectations))),
            tuple(values.get(f"age{i}") for i in range(len(source.expectations))),
            tuple(sorted(values.get("new_keys") or ())))
    return counts


@dataclass(frozen=True)
class CheckResult:
    """One check of one landing file: a row of ops.quality."""

    file: str
    check: str
    action: str
    rows_checked: int
    rows_failing: int
    passed: bool
    detail: str = ""


def evaluate(counts: dict[str, FileCounts], files: list[str], source: Source) -> list[CheckResult]:
    """The results of every check on every file (files without rows count as zero rows)."""
    results = []
    for name in files:
        c = counts.get(name, FileCounts())
        parsed = c.read - c.malformed
        results += [CheckResult(name, "record parses", "quarantine", c.read, c.malformed, c.malformed == 0),
                    CheckResult(name, "primary key not null", "quarantine", parsed, c.null_key, c.null_key == 0),
                    CheckResult(name, "event time not null", "quarantine", parsed, c.null_event, c.null_event == 0)]
        for i, e in enumerate(source.expectations):
            described = describe_expectation(e, source)
            if e.rule == "min_rows":
                ok = c.read >= int(e.min)
                results.append(CheckResult(name, described, e.action, c.read, 0 if ok else c.read, ok,
                                           f"{c.read} rows, at least {int(e.min)} expected"))
            elif e.rule == "freshness":
                age = c.age_hours[i] if c.age_hours else None
                ok = age is None or age <= e.max_age_hours
                column = e.column or source.event_time
                detail = ("no rows" if age is None else
                          f"newest {column} is {age:.1f}h old, at most {e.max_age_hours:g}h allowed")
                results.append(CheckResult(name, described, e.action, parsed, 0 if ok else parsed, ok, detail))
            else:
                bad = (c.failing[i] if c.failing else 0) or 0
                results.append(CheckResult(name, described, e.action, parsed, bad, bad == 0))
        if source.max_quarantine_share is not None:
            results.append(quarantine_share_check(name, c, source.max_quarantine_share, source.on_quarantine_share))
    return results


QUARANTINE_SHARE = "quarantined share"


def quarantine_share_check(file: str, counts: FileCounts, limit: float, action: str) -> CheckResult:
    """The source's `max_quarantine_share` on one file: act (the night's verdict is ACT) or fail (no load)."""
    share = counts.quarantined / counts.read if counts.read else 0.0
    return CheckResult(file, QUARANTINE_SHARE, action, counts.read, counts.quarantined, share <= limit,
                       f"{share:.1%} of {counts.read:,} rows quarantined, at most {limit:.1%} allowed "
                       f"(max_quarantine_share)")


def quarantine_limits(sources: dict[str, Source]) -> dict[str, float]:
    """The quarantined share each source may reach (`max_quarantine_share`), by its ops.quality check name."""
    return {f"{name}: {QUARANTINE_SHARE}": source.max_quarantine_share
            for name, source in sources.items() if source.max_quarantine_share is not None}


def broken(results: list[CheckResult], action: str) -> dict[str, list[CheckResult]]:
    """Failed checks with this action, by check name (in declaration order)."""
    by_check: dict[str, list[CheckResult]] = {}
    for r in results:
        if r.action == action and not r.passed:
            by_check.setdefault(r.check, []).append(r)
    return by_check


def summarize(check: str, failed: list[CheckResult], results: list[CheckResult]) -> str:
    """`'price range [0, 500]' failed on 3 of 120 rows in 2 of 5 files (a.jsonl: 2, b.jsonl: 1)`."""
    rows_checked = sum(r.rows_checked for r in results if r.check == check)
    files_checked = sum(1 for r in results if r.check == check)
    failing_rows = sum(r.rows_failing for r in failed)
    listed = ", ".join(f"{r.file}: {r.detail or _rows(r.rows_failing)}" for r in failed[:5])
    more = f", and {len(failed) - 5} more" if len(failed) > 5 else ""
    return (f"'{check}' failed on {failing_rows:,} of {rows_checked:,} rows in {len(failed)} of {files_checked} "
            f"file(s) ({listed}{more})")


def _rows(n: int) -> str:
    return f"{n:,} row" if n == 1 else f"{n:,} rows"


def raise_on_failures(results: list[CheckResult], source_name: str) -> None:
    """Stop the load, before anything is written, when an expectation with action `fail` is broken."""
    failed = broken(results, "fail")
    if failed:
        detail = "; ".join(summarize(name, rows, results) for name, rows in failed.items())
        raise DataError(f"source {source_name}: expectation with action 'fail' broken, nothing was loaded: {detail}. "
                        f"Fix or remove the landing files, or change the expectation's action in conf/sources/{source_name}.yaml.")


def quality_rows(spark: SparkSession, results: list[CheckResult], source_name: str, batch_id: str,
                 now: dt.datetime) -> DataFrame:
    """The results in ops.quality's shape."""
    rows = [(batch_id, source_name, r.file, r.check, r.action, r.rows_checked, r.rows_failing, r.passed,
             r.detail or None, now) for r in results]
    return spark.createDataFrame(rows, QUALITY_SCHEMA)


def record(spark: SparkSession, results: list[CheckResult], source_name: str, batch_id: str, files: list[str],
           lakehouse: Path, owner: str, now: dt.datetime, replace: bool = True) -> None:
    """Store the results in ops.quality: appended, or replacing the rows of these files (a rerun of them)."""
    df = quality_rows(spark, results, source_name, batch_id, now)
    options = catalog.QUALITY_TABLE.options(owner)
    if not replace:
        lake.append(spark, df, lakehouse, QUALITY, **options)
        return
    where = f"source = {sql_string(source_name)} AND file IN ({', '.join(sql_string(f) for f in files)})"
    lake.replace_where(spark, df, lakehouse, QUALITY, where, **options)


def sql_string(text: str) -> str:
    """A Spark SQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
