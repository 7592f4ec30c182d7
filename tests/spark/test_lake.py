"""Delta I/O in lake.py: rerunnable writes, latest-wins MERGE, the by-name catalog, the run ledger."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import Row
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lakeforge import lake, runs

pytestmark = pytest.mark.spark

D1, D2 = dt.date(2026, 11, 25), dt.date(2026, 11, 26)
SCHEMA = "id string, score double, day date"


def test_replace_where_replaces_only_its_slice(spark, lakehouse):
    first = spark.createDataFrame([("a", 1.0, D1), ("b", 2.0, D1), ("a", 3.0, D2)], SCHEMA)
    lake.replace_where(spark, first, lakehouse, "gold.scores", "day >= DATE'2026-11-25'", partition_by=["day"])
    rerun = spark.createDataFrame([("a", 9.0, D2)], SCHEMA)
    for _ in range(2):  # twice: a rerun of the same slice must not duplicate
        lake.replace_where(spark, rerun, lakehouse, "gold.scores", "day = DATE'2026-11-26'", partition_by=["day"])
    assertDataFrameEqual(lake.read(spark, lakehouse, "gold.scores"),
                         [Row(id="a", score=1.0, day=D1), Row(id="b", score=2.0, day=D1), Row(id="a", score=9.0, day=D2)])
    assert lake.version(spark, lakehouse, "gold.scores") == 3  # create, write, two replaces
    # Time travel still shows the slice before the replace: one commit each, never a mix.
    assertDataFrameEqual(lake.read(spark, lakehouse, "gold.scores", version=1).where("day = DATE'2026-11-26'"),
                         [Row(id="a", score=3.0, day=D2)])


def test_merge_latest_keeps_the_newest_row_per_key(spark, lakehouse):
    schema = "id string, value string, updated_at timestamp"
    t = dt.datetime
    lake.merge_latest(spark, spark.createDataFrame(
        [("a", "v1", t(2026, 1, 1)), ("a", "v2", t(2026, 1, 3)), ("b", "v1", t(2026, 1, 2))], schema),
        lakehouse, "silver.items", ["id"], ["updated_at"])
    # A late record (older than the stored one) must not overwrite; a newer one must.
    lake.merge_latest(spark, spark.createDataFrame(
        [("a", "late", t(2026, 1, 2)), ("b", "v2", t(2026, 1, 5)), ("c", "v1", t(2026, 1, 1))], schema),
        lakehouse, "silver.items", ["id"], ["updated_at"])
    assertDataFrameEqual(lake.read(spark, lakehouse, "silver.items"), [
        Row(id="a", value="v2", updated_at=t(2026, 1, 3)), Row(id="b", value="v2", updated_at=t(2026, 1, 5)),
        Row(id="c", value="v1", updated_at=t(2026, 1, 1))])


def test_tables_are_queryable_by_name_with_catalog_properties(spark, lakehouse):
    df = spark.createDataFrame([("a", 1.0, D1)], SCHEMA)
    props = {"lakeforge.description": "scores per day", "lakeforge.owner": "team-x", "lakeforge.source": "unit"}
    lake.append(spark, df, lakehouse, "gold.named", properties=props)
    lake.forget_tables(spark)  # as a new process would start: nothing registered
    assert lake.register_tables(spark, lakehouse) == ["gold.named"]
    assertDataFrameEqual(spark.sql("SELECT id, score FROM gold.named"), [Row(id="a", score=1.0)])
    described = lake.describe(spark, lakehouse, "gold.named")
    assert (described["description"], described["owner"], described["source"], described["rows"]) == (
        "scores per day", "team-x", "unit", 1)
    assert lake.list_tables(lakehouse) == ["gold.named"]
    assert spark.catalog.getTable("gold.named").description == "scores per day"
    location = str(lake.table_path(lakehouse, "gold.elsewhere"))  # a table made outside lakeforge: its comment
    spark.sql(f"CREATE TABLE gold.elsewhere (a INT) USING DELTA LOCATION '{location}' COMMENT 'made by hand'")
    assert lake.describe(spark, lakehouse, "gold.elsewhere")["description"] == "made by hand"


def test_bad_table_name_and_missing_table_are_clear(spark, lakehouse):
    from lakeforge.errors import DataError

    with pytest.raises(DataError, match=r"must be <layer>.<table>"):
        lake.table_path(lakehouse, "orders")
    with pytest.raises(DataError, match=r"table silver.nothing does not exist yet"):
        lake.read(spark, lakehouse, "silver.nothing")


def test_run_ledger_records_success_and_failure(spark, lakehouse):
    with runs.recorded(spark, lakehouse, "ingest", "churn", "test", D1) as run:
        run.rows["orders.read"] = 7
    with pytest.raises(RuntimeError, match="boom"):
        with runs.recorded(spark, lakehouse, "score", "churn", "test", D2):
            raise RuntimeError("boom")
    appended = lake.read(spark, lakehouse, runs.RUNS).groupBy("job").agg(F.sort_array(F.collect_list("status")))
    assertDataFrameEqual(appended, [Row("ingest", ["running", "succeeded"]), Row("score", ["failed", "running"])])
    ledger = runs.read_runs(spark, lakehouse).select("job", "run_date", "status", "rows", "error")
    assertDataFrameEqual(ledger, [
        Row(job="ingest", run_date=D1, status="succeeded", rows={"orders.read": 7}, error=None),
        Row(job="score", run_date=D2, status="failed", rows={}, error="RuntimeError: boom")])
