"""Data contracts on inline DataFrames: each row's outcome and reason, per-file counts, file rules (no Delta)."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import Row
from pyspark.testing import assertDataFrameEqual

from lakeforge import quality
from lakeforge.config import Expectation, Source
from lakeforge.errors import DataError

pytestmark = pytest.mark.spark

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 5, 3, 12, 0, tzinfo=UTC)
SCHEMA = "id string, ts timestamp, n int, s string, _source_file string, _lf_malformed string"
SOURCE = Source(
    path="t", format="json", columns={"id": "string", "ts": "timestamp", "n": "int", "s": "string"},
    primary_key=["id"], event_time="ts",
    expectations=[Expectation(rule="range", column="n", min=0, max=10),  # quarantine
                  Expectation(rule="accepted_values", column="s", values=["a", "b"], action="drop"),
                  Expectation(rule="pattern", column="id", pattern=r"^K\d$", action="warn"),
                  Expectation(rule="unique", column="n", action="warn"),
                  Expectation(rule="min_rows", min=3, action="warn"),
                  Expectation(rule="freshness", max_age_hours=24, action="fail")])


def rows(spark):
    def t(*parts):
        return dt.datetime(*parts, tzinfo=UTC)

    return spark.createDataFrame([
        ("K1", t(2026, 5, 1), 1, "a", "f1", None),        # keep
        ("K2", t(2026, 5, 1), 11, "a", "f1", None),       # quarantine: n out of range
        ("K3", t(2026, 5, 1), 1, "z", "f1", None),        # drop: s not accepted (and n=1 twice in f1: warn)
        ("K4", t(2026, 5, 1), 12, "z", "f1", None),       # quarantine wins over drop
        (None, t(2026, 5, 1), 2, "a", "f1", None),        # quarantine: null key
        ("K6", None, 3, "a", "f1", None),                 # quarantine: null event time
        ("x7", t(2026, 5, 2), 1, None, "f2", None),       # keep: nulls pass, bad pattern only warns, n=1 once in f2
        ("K8", None, None, None, "f2", "malformed JSON line: does not parse"),  # quarantine: malformed only
    ], SCHEMA)


def test_each_row_gets_one_outcome_and_every_reason(spark):
    checked = quality.check(rows(spark), SOURCE)
    assertDataFrameEqual(checked.select("id", "_lf_outcome", "_lf_reason"), [
        Row(id="K1", _lf_outcome="keep", _lf_reason=""),
        Row(id="K2", _lf_outcome="quarantine", _lf_reason="expectation failed: n range [0, 10]"),
        Row(id="K3", _lf_outcome="drop", _lf_reason=""),
        Row(id="K4", _lf_outcome="quarantine", _lf_reason="expectation failed: n range [0, 10]"),
        Row(id=None, _lf_outcome="quarantine", _lf_reason="null primary key (id)"),
        Row(id="K6", _lf_outcome="quarantine", _lf_reason="null event time (ts)"),
        Row(id="x7", _lf_outcome="keep", _lf_reason=""),
        Row(id="K8", _lf_outcome="quarantine", _lf_reason="malformed JSON line: does not parse")])


def test_counts_per_file_and_file_rules(spark):
    counts = quality.count_files(quality.check(rows(spark), SOURCE), SOURCE, NOW)
    f1, f2 = counts["f1"], counts["f2"]
    assert (f1.read, f1.kept, f1.quarantined, f1.dropped, f1.malformed, f1.null_key, f1.null_event) == (
        6, 1, 4, 1, 0, 1, 1)
    assert (f2.read, f2.kept, f2.quarantined, f2.dropped, f2.malformed) == (2, 1, 1, 0, 1)
    assert f1.failing[:4] == (2, 2, 0, 2)  # range, accepted_values, pattern (K-ids), unique (n=1 twice)
    assert f2.failing[:4] == (0, 0, 1, 0)
    assert (f1.age_hours[5], f2.age_hours[5]) == (60.0, 36.0)  # newest event time vs NOW
    results = quality.evaluate(counts, ["f1", "f2", "f3"], SOURCE)
    assert [(r.file, r.check, r.rows_checked, r.rows_failing, r.passed, r.detail) for r in results
            if r.check in ("min_rows 3", "ts freshness 24h")] == [
        ("f1", "min_rows 3", 6, 0, True, "6 rows, at least 3 expected"),
        ("f1", "ts freshness 24h", 6, 6, False, "newest ts is 60.0h old, at most 24h allowed"),
        ("f2", "min_rows 3", 2, 2, False, "2 rows, at least 3 expected"),
        ("f2", "ts freshness 24h", 1, 1, False, "newest ts is 36.0h old, at most 24h allowed"),
        ("f3", "min_rows 3", 0, 0, False, "0 rows, at least 3 expected"),
        ("f3", "ts freshness 24h", 0, 0, True, "no rows")]
    with pytest.raises(DataError) as failed:
        quality.raise_on_failures(results, "t")
    assert str(failed.value) == (
        "source t: expectation with action 'fail' broken, nothing was loaded: 'ts freshness 24h' failed on 7 of 7 "
        "rows in 2 of 3 file(s) (f1: newest ts is 60.0h old, at most 24h allowed, f2: newest ts is 36.0h old, "
        "at most 24h allowed). Fix or remove the landing files, or change the expectation's action in "
        "conf/sources/t.yaml.")
    assert quality.summarize("min_rows 3", quality.broken(results, "warn")["min_rows 3"], results) == (
        "'min_rows 3' failed on 2 of 8 rows in 2 of 3 file(s) (f2: 2 rows, at least 3 expected, "
        "f3: 0 rows, at least 3 expected)")
