"""The nightly cost and upkeep of the ingested tables: exact accounting of the demo's load, a MERGE that touches
only the files its keys can be in, and `maintain` (compaction, VACUUM) recorded in ops.runs."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import Row
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lakeforge import config, ingest, lake, runs, stages

pytestmark = pytest.mark.spark

# The tiny demo (conftest TINY_DEMO, seed 42) as ingest loaded it before the faster path: rows read, kept,
# quarantined and dropped per source, and each table's rows.
DEMO_COUNTS = {"orders": (150, 2072, 2064, 8, 0), "customers": (22, 315, 315, 0, 0), "stores": (1, 4, 4, 0, 0)}
DEMO_TABLES = {"bronze.orders": 2064, "silver.orders": 2058, "bronze.customers": 315, "silver.customers": 300,
               "bronze.stores": 4, "silver.stores": 4, "ops.quarantine": 8, "ops.ingested_files": 173,
               "ops.quality": 1119}


def test_the_demo_load_keeps_every_row_accounted_for_with_the_counts_of_before(spark, ingested_tiny):
    lakehouse = ingested_tiny
    assert {name: lake.read(spark, lakehouse, name).count() for name in DEMO_TABLES} == DEMO_TABLES
    ledger = lake.read(spark, lakehouse, ingest.FILE_LEDGER)
    per_source = {r["source"]: (r["files"], r["read"], r["kept"], r["quarantined"], r["dropped"])
                  for r in ledger.groupBy("source").agg(
                      F.count("*").alias("files"), F.sum("rows_read").alias("read"), F.sum("rows_kept").alias("kept"),
                      F.sum("rows_quarantined").alias("quarantined"), F.sum("rows_dropped").alias("dropped")).collect()}
    assert per_source == DEMO_COUNTS
    # Per file: read = kept + quarantined + dropped, and the ledger's kept and quarantined rows are the tables' rows.
    assert ledger.where("rows_read != rows_kept + rows_quarantined + rows_dropped").count() == 0
    for source in DEMO_COUNTS:
        kept = {r["file"]: r["rows_kept"] for r in ledger.where(f"source = '{source}' AND rows_kept > 0").collect()}
        bronze = lake.read(spark, lakehouse, f"bronze.{source}").groupBy("_source_file").count().collect()
        assert {r["_source_file"]: r["count"] for r in bronze} == kept, source
    quarantined = {r["file"]: r["rows_quarantined"] for r in ledger.where("rows_quarantined > 0").collect()}
    by_file = lake.read(spark, lakehouse, ingest.QUARANTINE).groupBy("file").count().collect()
    assert {r["file"]: r["count"] for r in by_file} == quarantined
    assertDataFrameEqual(lake.read(spark, lakehouse, ingest.QUARANTINE).groupBy("reason").count(), [
        Row(reason="expectation failed: customer_id not_null", count=4),
        Row(reason="malformed JSON line: does not parse", count=4)])


def test_a_merge_skips_the_files_whose_keys_the_updates_cannot_match(spark, lakehouse, tmp_path):
    schema = "id string, value string, updated_at timestamp"
    t = dt.datetime(2026, 1, 1)
    for night in range(3):  # three nights, each its own file with its own key range
        rows = [(f"K{night}{i:03d}", "v1", t) for i in range(50)]
        lake.append(spark, spark.createDataFrame(rows, schema).coalesce(1), lakehouse, "silver.items",
                    properties={"delta.dataSkippingStatsColumns": "id"})
    path = lake.table_path(lakehouse, "silver.items")
    files = sorted(pa.table(DeltaTable(str(path)).get_add_actions(flatten=True)).to_pylist(), key=lambda a: a["min.id"])
    assert [(a["min.id"], a["max.id"]) for a in files] == [("K0000", "K0049"), ("K1000", "K1049"), ("K2000", "K2049")]
    # The first two nights' files are moved away: a MERGE that opened them would fail.
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for a in files[:2]:
        (path / a["path"]).rename(hidden / a["path"])
    updates = spark.createDataFrame([("K2003", "v2", t + dt.timedelta(days=1)), ("K3000", "v1", t)], schema)
    lake.merge_latest(spark, updates, lakehouse, "silver.items", ["id"], ["updated_at"])
    for a in files[:2]:
        (hidden / a["path"]).rename(path / a["path"])
    metrics = DeltaTable(str(path)).history(1)[0]["operationMetrics"]
    assert (int(metrics["numTargetFilesRemoved"]), int(metrics["numTargetRowsUpdated"]),
            int(metrics["numTargetRowsInserted"]), int(metrics["numTargetRowsCopied"])) == (1, 1, 1, 49)
    assertDataFrameEqual(lake.read(spark, lakehouse, "silver.items").where("id IN ('K2003', 'K3000', 'K0003')"), [
        Row(id="K0003", value="v1", updated_at=t), Row(id="K2003", value="v2", updated_at=t + dt.timedelta(days=1)),
        Row(id="K3000", value="v1", updated_at=t)])
    assert lake.read(spark, lakehouse, "silver.items").count() == 151


@pytest.fixture(scope="module")
def maintained(spark, settings_at, ingested_tiny, tiny_landing, tmp_path_factory):
    """The tiny demo's lakehouse with a second ingest (more small files), then `maintain` with no VACUUM retention."""
    landing, _ = tiny_landing
    tmp_path = tmp_path_factory.mktemp("maintained")
    own, ingested_lakehouse = tmp_path / "landing", tmp_path / "lakehouse"
    shutil.copytree(landing, own)
    lake.forget_tables(spark)
    shutil.copytree(ingested_tiny, ingested_lakehouse)
    (own / "orders" / "orders_extra.jsonl").write_text(
        json.dumps({"order_id": "O999999999", "customer_id": "C000001", "store_id": "S001",
                    "order_ts": "2026-09-28T10:00:00", "channel": "dine_in", "items": 1, "amount": 5.0}) + "\n")
    settings = settings_at(own, ingested_lakehouse, tmp_path)
    settings = settings.model_copy(update={"maintenance": config.MaintenanceSettings(vacuum_retention_hours=0)})
    ctx = stages.Context(settings, config.load_pipeline("churn"), spark_factory=lambda _: spark)
    stages.ingest(ctx)
    tables = ingest.ingest_tables(ctx.pipeline.sources)
    before = {name: (lake.data_files(spark, ingested_lakehouse, name),
                     sorted(map(tuple, lake.read(spark, ingested_lakehouse, name).collect()))) for name in tables}
    summary = stages.maintain(ctx)
    return {"ctx": ctx, "lakehouse": ingested_lakehouse, "tables": tables, "before": before, "summary": summary}


@pytest.mark.slow
def test_maintain_compacts_small_files_and_keeps_every_row(spark, maintained):
    lakehouse, before = maintained["lakehouse"], maintained["before"]
    for name in maintained["tables"]:
        files, rows = before[name]
        assert lake.data_files(spark, lakehouse, name) <= files, name
        assert sorted(map(tuple, lake.read(spark, lakehouse, name).collect())) == rows, name
    # Two ingests wrote each table's ledger and quality rows in at least two files: now one each.
    for name in ("ops.ingested_files", "ops.quality", "bronze.orders"):
        assert before[name][0] >= 2 and lake.data_files(spark, lakehouse, name) == 1, name
    summary = maintained["summary"]
    assert summary["files_before"] == sum(files for files, _ in before.values()) > summary["files_after"]


@pytest.mark.slow
def test_vacuum_deletes_only_files_no_current_version_needs(spark, maintained):
    lakehouse = maintained["lakehouse"]
    assert maintained["summary"]["vacuumed"] > 0
    for name in maintained["tables"]:
        path = lake.table_path(lakehouse, name)
        health = lake.check(spark, lakehouse, name)
        assert health.healthy, health.problems
        on_disk = {str(p.relative_to(path)) for p in path.rglob("*.parquet") if "_delta_log" not in p.parts}
        current = pa.table(DeltaTable(str(path)).get_add_actions(flatten=True)).column("path").to_pylist()
        assert on_disk == set(current), name  # the independent reader finds all, and no more
        assert len(DeltaTable(str(path)).to_pyarrow_table()) == len(maintained["before"][name][1]), name


@pytest.mark.slow
def test_maintain_is_recorded_in_ops_runs_with_each_tables_files(spark, maintained):
    ctx, lakehouse = maintained["ctx"], maintained["lakehouse"]
    run = runs.read_runs(spark, lakehouse).where("job = 'maintain'").collect()
    assert [(r["status"], r["pipeline"]) for r in run] == [("succeeded", "churn")]
    rows = run[0]["rows"]
    assert rows["bronze.orders.files_after"] == 1
    assert rows["ops.ingested_files.files_before"] == maintained["before"]["ops.ingested_files"][0]
    assert set(run[0]["outputs"]) == set(maintained["tables"])
    assert runs.last_succeeded(spark, lakehouse, "maintain", "churn") == run[0]["started_at"]
    assert not stages.maintenance_due(ctx)  # every_days 7: not again today
    never = stages.Context(ctx.settings, config.load_pipeline("demand"), spark_factory=lambda _: spark)
    assert stages.maintenance_due(never)  # no maintain of this pipeline yet
