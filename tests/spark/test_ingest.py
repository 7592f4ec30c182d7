"""Ingestion with data contracts: every landing row ends exactly once in bronze/silver or ops.quarantine.

One JSON source is loaded in two batches (module fixture `orders_lake`): the first brings every
kind of bad input, the second late and corrected records, a duplicate delivery and a repaired
file. The CSV and Parquet sources share one batch (`typed_lake`). Errors that must commit
nothing run against those lakehouses and check that no table version moved. The crash test
runs `lakeforge ingest` in a subprocess and kills it with SIGKILL between two commits.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import Row
from pyspark.testing import assertDataFrameEqual

from lakeforge import cli, ingest, lake, runs
from lakeforge.config import Expectation, Source
from lakeforge.errors import DataError

pytestmark = pytest.mark.spark

ORDERS = Source(
    path="orders", format="json",
    columns={"order_id": "string", "customer_id": "string", "order_ts": "timestamp", "channel": "string",
             "items": "int", "amount": "double"},
    primary_key=["order_id"], event_time="order_ts",
    expectations=[Expectation(rule="not_null", column="customer_id", action="quarantine"),
                  Expectation(rule="accepted_values", column="channel", values=["dine_in", "delivery"]),
                  Expectation(rule="range", column="items", min=1, max=20, action="drop"),
                  Expectation(rule="range", column="amount", min=0, max=500, action="warn")])


def order(order_id, ts, channel="dine_in", items=1, amount=5.0, customer="C1", **extra) -> str:
    """One order as a JSON line (key order as a producer would write it)."""
    record = {"order_id": order_id, "customer_id": customer, "order_ts": ts, "channel": channel, "items": items,
              "amount": amount, **extra}
    return json.dumps(record, separators=(",", ":"))


TRUNCATED = '{"order_id":"O3","customer_id":"C3","order_ts":"2026-05-01T12:00:00","chan'
WRONG_TYPE = order("O4", "2026-05-01T12:30:00", items="two")
TWO_OBJECTS = order("O10", "2026-05-01T14:00:00") + order("O11", "2026-05-01T14:00:00")
DAY1_LINES = [
    order("O1", "2026-05-01T10:00:00", items=2, amount=12.5),
    order("O2", "2026-05-01T11:00:00", "delivery", amount=600.0),  # breaks the `warn` rule: kept
    TRUNCATED,
    WRONG_TYPE,
    order(None, "2026-05-01T13:00:00"),
    order("O6", "2026-05-01T13:10:00", customer=None),
    order("O7", "2026-05-01T13:20:00", "teleport"),
    order("O8", "2026-05-01T13:30:00", items=99),  # breaks the `drop` rule
    order("O1", "2026-05-01T15:00:00", "delivery", items=3, amount=20.0),  # O1 again, later: silver keeps this
    "",  # a blank line is not a record
    TWO_OBJECTS,
    '["O12"]',
]
DAY1 = ("\n".join(DAY1_LINES) + "\n").encode() + b"\xff\xfe not UTF-8\n" + (
    order("O13", "2026-05-01T16:00:00", amount=7.0, tip=1.5) + "\n").encode()  # `tip`: a new column


def write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def versions(spark, lakehouse: Path) -> dict[str, int]:
    return {name: lake.version(spark, lakehouse, name) for name in lake.list_tables(lakehouse)}


def table(spark, lakehouse: Path, name: str, *columns: str):
    return lake.read(spark, lakehouse, name).select(*columns)


@pytest.fixture(scope="module", params=["one pass", pytest.param("spark expressions", marks=pytest.mark.slow)])
def json_path(request, spark):
    """Each of ingest's two ways to parse JSON lines, which must give the same rows: lakeforge's one-pass parser
    (its jar, which `make setup` builds) and Spark's own expressions (a session without that jar). The second, a
    fallback, runs every JSON test again: `make test` runs it, `make test-fast` only the first."""
    if request.param == "one pass":
        assert ingest._json_lines(spark) is not None, "lakeforge's JVM jar is not in the session: run `make setup`"
        yield request.param
    else:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ingest, "_json_lines", lambda _spark: None)
            yield request.param


@pytest.fixture(scope="module")
def orders_lake(spark, json_path, tmp_path_factory):
    """Two batches of the orders source, and a rerun with nothing new (once per JSON path)."""
    lake.forget_tables(spark)
    root = tmp_path_factory.mktemp("orders")
    landing, lakehouse, folder = root / "landing", root / "lakehouse", root / "landing" / "orders"
    write(folder / "day1.jsonl", DAY1)
    write(folder / "day2.jsonl.gz", gzip.compress((order("O20", "2026-05-02T10:00:00") + "\n").encode()))
    write(folder / "empty.jsonl", b"")
    write(folder / "broken.jsonl.gz", b"this is not gzip")  # unreadable (for root too)
    (folder / "link.jsonl").symlink_to(folder / "gone.jsonl")  # a broken link: refused
    write(folder / "_partial.jsonl", order("O99", "2026-05-01T00:00:00"))  # `_` names are in-flight, not data
    logged: list[str] = []
    first = ingest.ingest_all(spark, {"orders": ORDERS}, landing, lakehouse, "tests", log=logged.append)
    after_first = versions(spark, lakehouse)

    write(folder / "day3.jsonl", "\n".join([
        order("O2", "2026-05-01T09:00:00", "delivery", amount=99.0),  # late: older than silver's O2
        order("O13", "2026-05-02T08:00:00", items=2, amount=8.0),  # a correction: newer than silver's O13
        order("O30", "2026-05-03T10:00:00")]) + "\n")
    shutil.copyfile(folder / "day1.jsonl", folder / "day1_resent.jsonl")  # the same bytes under another name
    write(folder / "broken.jsonl.gz", gzip.compress((order("O40", "2026-05-03T11:00:00") + "\n").encode()))  # repaired
    second = ingest.ingest_all(spark, {"orders": ORDERS}, landing, lakehouse, "tests", log=logged.append)
    after_second = versions(spark, lakehouse)
    rerun = ingest.ingest_all(spark, {"orders": ORDERS}, landing, lakehouse, "tests", log=logged.append)
    return {"landing": landing, "lakehouse": lakehouse, "first": first[0], "second": second[0], "rerun": rerun[0],
            "after_first": after_first, "after_second": after_second, "after_rerun": versions(spark, lakehouse),
            "log": logged}


def test_every_bad_input_ends_in_the_ledger_or_quarantine_with_exact_counts(spark, orders_lake):
    first = orders_lake["first"]
    assert (first.files, first.rows_read, first.rows_kept, first.rows_quarantined, first.rows_dropped) == (
        3, 14, 5, 8, 1)
    assert (first.unreadable, first.refused, first.new_columns, first.duplicates) == (
        ("broken.jsonl.gz",), ("link.jsonl",), ("tip",), ())
    assert first.warnings == ("'amount range [0, 500]' failed on 1 of 9 rows in 1 of 3 file(s) (day1.jsonl: 1 row)",)
    ledger = lake.read(spark, orders_lake["lakehouse"], ingest.FILE_LEDGER).where(
        f"batch_id = '{first.batch_id}'")
    assertDataFrameEqual(
        ledger.select("file", "status", "rows_read", "rows_kept", "rows_quarantined", "rows_dropped", "new_columns"),
        [Row(file="day1.jsonl", status="loaded", rows_read=13, rows_kept=4, rows_quarantined=8, rows_dropped=1,
             new_columns=["tip"]),
         Row(file="day2.jsonl.gz", status="loaded", rows_read=1, rows_kept=1, rows_quarantined=0, rows_dropped=0,
             new_columns=[]),
         Row(file="empty.jsonl", status="loaded", rows_read=0, rows_kept=0, rows_quarantined=0, rows_dropped=0,
             new_columns=[]),
         Row(file="broken.jsonl.gz", status="unreadable", rows_read=0, rows_kept=0, rows_quarantined=0,
             rows_dropped=0, new_columns=[]),
         Row(file="link.jsonl", status="refused", rows_read=0, rows_kept=0, rows_quarantined=0, rows_dropped=0,
             new_columns=[])])
    errors = {r["file"]: r["error"] for r in ledger.where("status != 'loaded'").collect()}
    assert errors["broken.jsonl.gz"].startswith("not a valid gzip file")
    folder = (orders_lake["landing"] / "orders").resolve()
    assert errors["link.jsonl"] == (f"symbolic link to {folder / 'gone.jsonl'}: landing files must be regular files "
                                    f"inside {folder}")
    quarantine = table(spark, orders_lake["lakehouse"], ingest.QUARANTINE, "source", "file", "raw_record", "reason")
    assertDataFrameEqual(quarantine, [
        Row(source="orders", file="day1.jsonl", raw_record=TRUNCATED, reason="malformed JSON line: does not parse"),
        Row(source="orders", file="day1.jsonl", raw_record=WRONG_TYPE, reason="type mismatch: items (expected int)"),
        Row(source="orders", file="day1.jsonl", raw_record=DAY1_LINES[4], reason="null primary key (order_id)"),
        Row(source="orders", file="day1.jsonl", raw_record=DAY1_LINES[5],
            reason="expectation failed: customer_id not_null"),
        Row(source="orders", file="day1.jsonl", raw_record=DAY1_LINES[6],
            reason="expectation failed: channel accepted_values"),
        Row(source="orders", file="day1.jsonl", raw_record=TWO_OBJECTS,
            reason="malformed JSON line: more text after the JSON object"),
        Row(source="orders", file="day1.jsonl", raw_record='["O12"]', reason="malformed JSON line: not a JSON object"),
        Row(source="orders", file="day1.jsonl", raw_record="\ufffd\ufffd not UTF-8",
            reason="malformed JSON line: not valid UTF-8")])


def test_quality_results_are_stored_per_file_and_check(spark, orders_lake):
    quality = lake.read(spark, orders_lake["lakehouse"], "ops.quality").where("file = 'day1.jsonl'")
    assertDataFrameEqual(quality.select("check", "action", "rows_checked", "rows_failing", "passed"), [
        Row(check="record parses", action="quarantine", rows_checked=13, rows_failing=5, passed=False),
        Row(check="primary key not null", action="quarantine", rows_checked=8, rows_failing=1, passed=False),
        Row(check="event time not null", action="quarantine", rows_checked=8, rows_failing=0, passed=True),
        Row(check="customer_id not_null", action="quarantine", rows_checked=8, rows_failing=1, passed=False),
        Row(check="channel accepted_values", action="quarantine", rows_checked=8, rows_failing=1, passed=False),
        Row(check="items range [1, 20]", action="drop", rows_checked=8, rows_failing=1, passed=False),
        Row(check="amount range [0, 500]", action="warn", rows_checked=8, rows_failing=1, passed=False)])


def test_bronze_keeps_every_kept_row_once_and_silver_the_latest_per_key(spark, orders_lake):
    lakehouse, second = orders_lake["lakehouse"], orders_lake["second"]
    assert (second.files, second.rows_read, second.rows_kept, second.duplicates) == (2, 4, 4, ("day1_resent.jsonl",))
    ts = dt.datetime.fromisoformat
    assertDataFrameEqual(table(spark, lakehouse, "bronze.orders", "order_id", "order_ts", "tip", "_source_file"), [
        Row(order_id="O1", order_ts=ts("2026-05-01T10:00:00"), tip=None, _source_file="day1.jsonl"),
        Row(order_id="O2", order_ts=ts("2026-05-01T11:00:00"), tip=None, _source_file="day1.jsonl"),
        Row(order_id="O1", order_ts=ts("2026-05-01T15:00:00"), tip=None, _source_file="day1.jsonl"),
        Row(order_id="O13", order_ts=ts("2026-05-01T16:00:00"), tip="1.5", _source_file="day1.jsonl"),
        Row(order_id="O20", order_ts=ts("2026-05-02T10:00:00"), tip=None, _source_file="day2.jsonl.gz"),
        Row(order_id="O2", order_ts=ts("2026-05-01T09:00:00"), tip=None, _source_file="day3.jsonl"),
        Row(order_id="O13", order_ts=ts("2026-05-02T08:00:00"), tip=None, _source_file="day3.jsonl"),
        Row(order_id="O30", order_ts=ts("2026-05-03T10:00:00"), tip=None, _source_file="day3.jsonl"),
        Row(order_id="O40", order_ts=ts("2026-05-03T11:00:00"), tip=None, _source_file="broken.jsonl.gz")])
    # The late O2 (09:00) does not replace the stored 11:00 row; the corrected O13 replaces the whole record.
    assertDataFrameEqual(table(spark, lakehouse, "silver.orders", "order_id", "order_ts", "channel", "items", "amount",
                               "tip", "_source_file"), [
        Row(order_id="O1", order_ts=ts("2026-05-01T15:00:00"), channel="delivery", items=3, amount=20.0, tip=None,
            _source_file="day1.jsonl"),
        Row(order_id="O2", order_ts=ts("2026-05-01T11:00:00"), channel="delivery", items=1, amount=600.0, tip=None,
            _source_file="day1.jsonl"),
        Row(order_id="O13", order_ts=ts("2026-05-02T08:00:00"), channel="dine_in", items=2, amount=8.0, tip=None,
            _source_file="day3.jsonl"),
        Row(order_id="O20", order_ts=ts("2026-05-02T10:00:00"), channel="dine_in", items=1, amount=5.0, tip=None,
            _source_file="day2.jsonl.gz"),
        Row(order_id="O30", order_ts=ts("2026-05-03T10:00:00"), channel="dine_in", items=1, amount=5.0, tip=None,
            _source_file="day3.jsonl"),
        Row(order_id="O40", order_ts=ts("2026-05-03T11:00:00"), channel="dine_in", items=1, amount=5.0, tip=None,
            _source_file="broken.jsonl.gz")])


def test_bronze_and_silver_keep_file_statistics_for_key_event_time_and_audit_columns(orders_lake):
    """Delta's per-file min/max (in each commit's `add` actions) cover only the columns lakeforge filters on."""
    expected = {"order_id", "order_ts", "_ingested_at", "_source_file", "_batch_id"}
    for name in ("bronze.orders", "silver.orders"):
        log = lake.table_path(orders_lake["lakehouse"], name) / "_delta_log"
        adds = [json.loads(line)["add"] for commit in sorted(log.glob("*.json"))
                for line in commit.read_text().splitlines() if line.startswith('{"add"')]
        assert adds, name
        assert [set(json.loads(a["stats"])["minValues"]) for a in adds] == [expected] * len(adds), name


def test_duplicate_delivery_and_repaired_file_are_recorded_and_a_rerun_commits_nothing(spark, orders_lake):
    second, rerun = orders_lake["second"], orders_lake["rerun"]
    ledger = lake.read(spark, orders_lake["lakehouse"], ingest.FILE_LEDGER).where(f"batch_id = '{second.batch_id}'")
    assertDataFrameEqual(ledger.select("file", "status", "duplicate_of", "rows_read", "rows_kept"), [
        Row(file="day3.jsonl", status="loaded", duplicate_of=None, rows_read=3, rows_kept=3),
        Row(file="broken.jsonl.gz", status="loaded", duplicate_of=None, rows_read=1, rows_kept=1),
        Row(file="day1_resent.jsonl", status="duplicate", duplicate_of="day1.jsonl", rows_read=0, rows_kept=0)])
    assert (rerun.batch_id, rerun.files, rerun.rows_read) == (None, 0, 0)
    assert orders_lake["after_rerun"] == orders_lake["after_second"]
    # The duplicate delivery wrote only its ledger row: no other table moved for it.
    moved = {name for name, v in orders_lake["after_second"].items() if v != orders_lake["after_first"].get(name)}
    assert moved == {"bronze.orders", "silver.orders", "ops.quality", "ops.ingested_files"}


def test_a_fail_expectation_commits_nothing_and_names_source_rule_and_count(spark, orders_lake, tmp_path):
    landing = tmp_path / "landing"
    write(landing / "orders" / "day4.jsonl", "\n".join(
        [order("O50", "2026-05-04T10:00:00", amount=5000.0), order("O51", "2026-05-04T11:00:00", amount=7000.0),
         order("O52", "2026-05-04T12:00:00")]) + "\n")
    strict = ORDERS.model_copy(update={"expectations": [
        *ORDERS.expectations, Expectation(rule="range", column="amount", min=0, max=1000, action="fail")]})
    before = versions(spark, orders_lake["lakehouse"])
    with pytest.raises(DataError) as failed:
        ingest.ingest_all(spark, {"orders": strict}, landing, orders_lake["lakehouse"], "tests")
    assert str(failed.value).startswith(
        "source orders: expectation with action 'fail' broken, nothing was loaded: 'amount range [0, 1000]' "
        "failed on 2 of 3 rows in 1 of 1 file(s) (day4.jsonl: 2 rows).")
    assert versions(spark, orders_lake["lakehouse"]) == before


def test_a_failing_source_commits_nothing_while_the_other_sources_load(spark, tmp_path):
    """Sources load concurrently and independently; the first failure (in declaration order) is raised after
    all are done, and the later ones are logged."""
    lake.forget_tables(spark)
    landing, lakehouse = tmp_path / "landing", tmp_path / "lakehouse"
    write(landing / "orders" / "day1.jsonl", order("O1", "2026-05-01T10:00:00", amount=5000.0) + "\n")
    write(landing / "refunds" / "day1.jsonl", "\n".join([order("R1", "2026-05-01T10:00:00"),
                                                        order("R2", "2026-05-01T11:00:00")]) + "\n")
    write(landing / "returns" / "day1.jsonl", order("T1", "2026-05-01T10:00:00", amount=2000.0) + "\n")
    strict = ORDERS.model_copy(update={"expectations": [
        Expectation(rule="range", column="amount", max=1000, action="fail")]})
    logged: list[str] = []
    with pytest.raises(DataError, match=r"^source orders: expectation with action 'fail' broken, nothing was loaded"):
        ingest.ingest_all(spark, {"orders": strict, "refunds": ORDERS.model_copy(update={"path": "refunds"}),
                                  "returns": strict.model_copy(update={"path": "returns"})},
                          landing, lakehouse, "tests", log=logged.append)
    assert [line for line in logged if "ERROR" in line] == [
        "returns: ERROR source returns: expectation with action 'fail' broken, nothing was loaded: 'amount range "
        "[-inf, 1000]' failed on 1 of 1 rows in 1 of 1 file(s) (day1.jsonl: 1 row). Fix or remove the landing "
        "files, or change the expectation's action in conf/sources/returns.yaml."]
    assert lake.list_tables(lakehouse) == ["bronze.refunds", "silver.refunds", "ops.ingested_files", "ops.quality"]
    assert sorted(r.order_id for r in table(spark, lakehouse, "silver.refunds", "order_id").collect()) == ["R1", "R2"]
    assertDataFrameEqual(table(spark, lakehouse, ingest.FILE_LEDGER, "source", "file", "rows_kept"),
                         [Row(source="refunds", file="day1.jsonl", rows_kept=2)])


def test_schema_changes_fail_clearly_before_any_commit(spark, orders_lake, tmp_path):
    lakehouse = orders_lake["lakehouse"]
    before = versions(spark, lakehouse)
    write(tmp_path / "a" / "orders" / "day5.jsonl", order("O60", "2026-05-05T10:00:00", coupon="SAVE5") + "\n")
    with pytest.raises(DataError, match=r"source orders: new column\(s\) not declared "
                                        r"\(coupon in day5.jsonl\); nothing was loaded"):
        ingest.ingest_all(spark, {"orders": ORDERS.model_copy(update={"on_new_column": "fail"})}, tmp_path / "a",
                          lakehouse, "tests")
    write(tmp_path / "b" / "orders" / "day6.jsonl", order("O61", "2026-05-05T10:00:00") + "\n")
    wider = ORDERS.model_copy(update={"columns": {**ORDERS.columns, "items": "bigint"}})
    with pytest.raises(DataError, match="source orders: type change in bronze.orders: items is declared bigint but "
                                        "stored as int"):
        ingest.ingest_all(spark, {"orders": wider}, tmp_path / "b", lakehouse, "tests")
    assert versions(spark, lakehouse) == before


def delta_tables(lakehouse: Path) -> dict[str, pd.DataFrame]:
    """Every Delta table under the lakehouse folder, read with the independent reader (delta-rs)."""
    from deltalake import DeltaTable

    return {str(log.parent.relative_to(lakehouse)): DeltaTable(str(log.parent)).to_pandas()
            for log in sorted(lakehouse.rglob("_delta_log"))}


def ingest_with_timeout(spark, sources, landing: Path, lakehouse: Path, log, unblock: list[Path]):
    """`ingest_all`, failing after a timeout instead of hanging (on a FIFO opened for reading, say); the FIFOs in
    `unblock` are then opened for writing once, which frees a reader stuck in them."""
    done: dict = {}

    def run():
        try:
            done["results"] = ingest.ingest_all(spark, sources, landing, lakehouse, "tests", log=log)
        except BaseException as exc:  # handed to the test below
            done["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=300)
    if worker.is_alive():
        for fifo in unblock:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        pytest.fail("ingest did not finish within 300 s (blocked on a landing entry?)")
    if "error" in done:
        raise done["error"]
    return done["results"]


def test_links_fifos_and_other_entries_are_refused_unread_and_examined_again_when_they_change(spark, tmp_path):
    lake.forget_tables(spark)
    landing, lakehouse, folder = tmp_path / "landing", tmp_path / "lakehouse", tmp_path / "landing" / "orders"
    secret = f"SECRET-{uuid.uuid4().hex}"
    write(folder / "good.jsonl", order("O1", "2026-05-01T10:00:00") + "\n")
    outside = write(tmp_path / "elsewhere" / "secret.jsonl",
                    order(secret, "2026-05-01T10:00:00", customer=secret) + "\n" + secret + "\n")
    (folder / "outside.jsonl").symlink_to(outside)
    (folder / "inside.jsonl").symlink_to(folder / "good.jsonl")
    os.mkfifo(folder / "pipe.jsonl")
    (folder / "dir.jsonl").mkdir()
    logged: list[str] = []
    first = ingest_with_timeout(spark, {"orders": ORDERS}, landing, lakehouse, logged.append,
                                [folder / "pipe.jsonl"])[0]
    tables = delta_tables(lakehouse)
    leaks = [(name, column) for name, df in tables.items() for column in df.columns
             for cell in df[column] if secret in str(cell)]
    assert leaks == []
    assert sorted(tables) == ["bronze/orders", "ops/ingested_files", "ops/quality", "silver/orders"]

    real = folder.resolve()
    rule = f": landing files must be regular files inside {real}"
    reasons = {"dir.jsonl": "a directory" + rule, "inside.jsonl": f"symbolic link to {real / 'good.jsonl'}" + rule,
               "outside.jsonl": f"symbolic link to {outside.resolve()}" + rule,
               "pipe.jsonl": "a named pipe (FIFO)" + rule}
    assert (first.files, first.rows_read, first.rows_kept, first.rows_quarantined, first.rows_dropped) == (
        1, 1, 1, 0, 0)
    assert (first.refused, first.unreadable, first.duplicates) == (tuple(sorted(reasons)), (), ())
    assertDataFrameEqual(table(spark, lakehouse, ingest.FILE_LEDGER, "file", "status", "error", "rows_read"),
                         [Row(file="good.jsonl", status="loaded", error=None, rows_read=1)]
                         + [Row(file=name, status="refused", error=reason, rows_read=0)
                            for name, reason in reasons.items()])
    assert [line for line in logged if "refused" in line] == [
        f"orders: WARNING {name} refused, its content was not read: {reason}; recorded in ops.ingested_files, "
        f"examined again when it changes" for name, reason in sorted(reasons.items())] + [
        "orders: 1 new file(s), 1 rows read = 1 kept + 0 quarantined + 0 dropped; 4 refused (not regular files "
        "inside the folder)"]

    # Unchanged, the refused entries are not recorded again; a link replaced by the real file is loaded.
    rerun = ingest_with_timeout(spark, {"orders": ORDERS}, landing, lakehouse, logged.append, [folder / "pipe.jsonl"])
    assert (rerun[0].batch_id, rerun[0].refused) == (None, ())
    (folder / "inside.jsonl").unlink()
    write(folder / "inside.jsonl", order("O2", "2026-05-01T11:00:00") + "\n")
    fixed = ingest_with_timeout(spark, {"orders": ORDERS}, landing, lakehouse, logged.append, [folder / "pipe.jsonl"])
    assert (fixed[0].files, fixed[0].rows_kept, fixed[0].refused) == (1, 1, ())
    assert sorted(r.order_id for r in table(spark, lakehouse, "silver.orders", "order_id").collect()) == ["O1", "O2"]
    assert table(spark, lakehouse, ingest.FILE_LEDGER, "file").count() == 6


def test_a_landing_folder_leading_outside_the_landing_root_is_an_error_before_any_commit(spark, tmp_path):
    lake.forget_tables(spark)
    landing, lakehouse = tmp_path / "landing", tmp_path / "lakehouse"
    write(landing / "orders" / "day1.jsonl", order("O1", "2026-05-01T10:00:00") + "\n")
    write(tmp_path / "etc" / "passwd.jsonl", order("O9", "2026-05-01T10:00:00") + "\n")
    (landing / "leak").symlink_to(tmp_path / "etc")
    with pytest.raises(DataError, match="^" + re.escape(
            f"source leak: landing folder {landing / 'leak'} leads to {(tmp_path / 'etc').resolve()}, outside the "
            f"landing root {landing.resolve()}; nothing was loaded")):
        ingest.ingest_all(spark, {"orders": ORDERS, "leak": ORDERS.model_copy(update={"path": "leak"})},
                          landing, lakehouse, "tests")
    assert not lakehouse.exists()


def test_a_file_changed_while_spark_reads_it_stops_the_load_before_any_commit(spark, tmp_path, monkeypatch):
    """Spark opens landing files by name: one swapped after its inspection must not be loaded unchecked."""
    lake.forget_tables(spark)
    landing, lakehouse = tmp_path / "landing", tmp_path / "lakehouse"
    day1 = write(landing / "orders" / "day1.jsonl", order("O1", "2026-05-01T10:00:00") + "\n")
    counted = ingest.quality.count_files

    def count_then_swap(*args):
        counts = counted(*args)
        day1.unlink()
        day1.symlink_to(write(tmp_path / "other.jsonl", order("O9", "2026-05-01T10:00:00") + "\n"))
        return counts

    monkeypatch.setattr(ingest.quality, "count_files", count_then_swap)
    with pytest.raises(DataError, match=r"^source orders: landing file\(s\) day1.jsonl changed or were replaced "
                                        r"while they were being read; nothing was loaded"):
        ingest.ingest_all(spark, {"orders": ORDERS}, landing, lakehouse, "tests")
    assert not lakehouse.exists()


def test_a_json_record_longer_than_the_parsers_limit_is_quarantined_for_its_size(spark, json_path, tmp_path):
    """The parser refuses strings over 20,000,000 characters; the record is not blamed on its typed keys."""
    lake.forget_tables(spark)
    landing, lakehouse = tmp_path / "landing", tmp_path / "lakehouse"
    big = order("O2", "2026-05-01T11:00:00", note="x" * 25 * 2**20)
    write(landing / "orders" / "day1.jsonl", "\n".join(
        [order("O1", "2026-05-01T10:00:00"), big, order("O3", "2026-05-01T12:00:00")]) + "\n")
    result = ingest.ingest_all(spark, {"orders": ORDERS}, landing, lakehouse, "tests")[0]
    assertDataFrameEqual(lake.read(spark, lakehouse, ingest.QUARANTINE).selectExpr("reason", "length(raw_record) AS n"),
                         [Row(reason=f"record too large: {len(big.encode())} bytes", n=len(big))])
    assert (result.rows_read, result.rows_kept, result.rows_quarantined, result.rows_dropped, result.new_columns) == (
        3, 2, 1, 0, ())
    assertDataFrameEqual(table(spark, lakehouse, "bronze.orders", "order_id"), [Row(order_id="O1"), Row(order_id="O3")])
    assertDataFrameEqual(table(spark, lakehouse, ingest.FILE_LEDGER, "rows_read", "rows_kept", "rows_quarantined"),
                         [Row(rows_read=3, rows_kept=2, rows_quarantined=1)])


# ---------------------------------------------------------------- CSV and Parquet

CUSTOMERS = Source(
    path="customers", format="csv", columns={"customer_id": "string", "age": "int", "updated_at": "timestamp"},
    primary_key=["customer_id"], event_time="updated_at",
    expectations=[Expectation(rule="pattern", column="customer_id", pattern=r"^C\d+$", action="warn")])
READINGS = Source(path="readings", format="parquet", columns={"sensor": "string", "value": "bigint", "at": "timestamp"},
                  primary_key=["sensor"], event_time="at")
C1_CSV = ("customer_id,age,updated_at\n"
          "C1,30,2026-05-01 10:00:00\n"
          "C2,abc,2026-05-01 10:00:00\n"
          "C3,40\n"
          "C4,50,2026-05-01 10:00:00,extra\n"
          '"Doe, J",60,2026-05-01 10:00:00\n'
          ",70,2026-05-01 10:00:00\n")


@pytest.fixture(scope="module")
def typed_lake(spark, tmp_path_factory):
    """One batch of a CSV and a Parquet source with their bad inputs."""
    lake.forget_tables(spark)
    root = tmp_path_factory.mktemp("typed")
    landing, lakehouse = root / "landing", root / "lakehouse"
    write(landing / "customers" / "c1.csv", C1_CSV)
    # Another column order, a new column (city) and no age: read by name, not by position.
    write(landing / "customers" / "c2.csv", "updated_at,customer_id,city\n2026-05-02 10:00:00,C1,Paris\n")
    write(landing / "customers" / "c0.csv", "customer_id,age,updated_at\n")
    write(landing / "customers" / "nohead.csv", "C9,1,2026-05-01 10:00:00\n")
    (landing / "readings").mkdir(parents=True)
    pd.DataFrame({"sensor": ["s1", None, "s2"], "value": pd.array([1, 2, 3], dtype="int32"),
                  "at": [dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 2), dt.datetime(2026, 1, 3)],
                  "celsius": [20.5, 21.0, 19.5]}).to_parquet(landing / "readings" / "r1.parquet",
                                                              coerce_timestamps="us")
    write(landing / "readings" / "r2.parquet", b"PAR1 not really parquet")
    results = ingest.ingest_all(spark, {"customers": CUSTOMERS, "readings": READINGS}, landing, lakehouse, "tests")
    return {"landing": landing, "lakehouse": lakehouse, "results": {r.source: r for r in results}}


def test_csv_rows_with_wrong_fields_or_types_are_quarantined_and_columns_match_by_header(spark, typed_lake):
    lakehouse, result = typed_lake["lakehouse"], typed_lake["results"]["customers"]
    assert (result.files, result.rows_read, result.rows_kept, result.rows_quarantined, result.rows_dropped) == (
        3, 7, 3, 4, 0)
    assert (result.unreadable, result.new_columns) == (("nohead.csv",), ("city",))
    assert result.warnings == ("'customer_id pattern ^C\\d+$' failed on 1 of 4 rows in 1 of 3 file(s) "
                               "(c1.csv: 1 row)",
                               "file c2.csv has no column age: null in its rows (renamed? declare the file's name "
                               "for it in conf/sources/customers.yaml; a not_null expectation quarantines such rows)")
    assertDataFrameEqual(table(spark, lakehouse, ingest.QUARANTINE, "file", "raw_record", "reason").where(
        "source = 'customers'"), [
        Row(file="c1.csv", raw_record="C2,abc,2026-05-01 10:00:00", reason="type mismatch: age (expected int)"),
        Row(file="c1.csv", raw_record="C3,40", reason="malformed CSV record: 2 fields, expected 3"),
        Row(file="c1.csv", raw_record="C4,50,2026-05-01 10:00:00,extra",
            reason="malformed CSV record: 4 fields, expected 3"),
        Row(file="c1.csv", raw_record='{"age":70,"updated_at":"2026-05-01T10:00:00.000Z"}',
            reason="null primary key (customer_id)")])
    ts = dt.datetime.fromisoformat
    assertDataFrameEqual(table(spark, lakehouse, "bronze.customers", "customer_id", "age", "city", "_source_file"), [
        Row(customer_id="C1", age=30, city=None, _source_file="c1.csv"),
        Row(customer_id="Doe, J", age=60, city=None, _source_file="c1.csv"),
        Row(customer_id="C1", age=None, city="Paris", _source_file="c2.csv")])
    assertDataFrameEqual(table(spark, lakehouse, "silver.customers", "customer_id", "age", "city", "updated_at"), [
        Row(customer_id="C1", age=None, city="Paris", updated_at=ts("2026-05-02T10:00:00")),
        Row(customer_id="Doe, J", age=60, city=None, updated_at=ts("2026-05-01T10:00:00"))])
    ledger = lake.read(spark, lakehouse, ingest.FILE_LEDGER).where("source = 'customers'")
    assertDataFrameEqual(ledger.select("file", "status", "rows_read", "rows_kept", "rows_quarantined"), [
        Row(file="c0.csv", status="loaded", rows_read=0, rows_kept=0, rows_quarantined=0),
        Row(file="c1.csv", status="loaded", rows_read=6, rows_kept=2, rows_quarantined=4),
        Row(file="c2.csv", status="loaded", rows_read=1, rows_kept=1, rows_quarantined=0),
        Row(file="nohead.csv", status="unreadable", rows_read=0, rows_kept=0, rows_quarantined=0)])


def test_parquet_columns_are_typed_from_the_file_and_type_changes_fail(spark, typed_lake, tmp_path):
    lakehouse, result = typed_lake["lakehouse"], typed_lake["results"]["readings"]
    assert (result.files, result.rows_read, result.rows_kept, result.rows_quarantined) == (1, 3, 2, 1)
    assert (result.unreadable, result.new_columns, result.warnings) == (("r2.parquet",), ("celsius",), ())
    assert lake.read(spark, lakehouse, "bronze.readings").schema.simpleString() == (
        "struct<sensor:string,value:bigint,at:timestamp,celsius:double,_ingested_at:timestamp,"
        "_source_file:string,_batch_id:string>")
    assertDataFrameEqual(table(spark, lakehouse, "silver.readings", "sensor", "value", "celsius"), [
        Row(sensor="s1", value=1, celsius=20.5), Row(sensor="s2", value=3, celsius=19.5)])
    before = versions(spark, lakehouse)
    bad = tmp_path / "landing" / "readings"
    bad.mkdir(parents=True)
    pd.DataFrame({"sensor": ["s3"], "value": ["high"], "at": [dt.datetime(2026, 1, 4)]}).to_parquet(
        bad / "r3.parquet", coerce_timestamps="us")
    with pytest.raises(DataError, match="source readings: type change in file r3.parquet: column value is string "
                                        "in the file but bigint in the source's schema"):
        ingest.ingest_all(spark, {"readings": READINGS}, tmp_path / "landing", lakehouse, "tests")
    (bad / "r3.parquet").unlink()
    pd.DataFrame({"sensor": ["s3"], "value": [4], "at": [dt.datetime(2026, 1, 4)]}).to_parquet(bad / "r4.parquet")
    with pytest.raises(DataError, match=r"file r4.parquet: column at holds nanosecond timestamps.*"
                                        r"coerce_timestamps='us'"):
        ingest.ingest_all(spark, {"readings": READINGS}, tmp_path / "landing", lakehouse, "tests")
    assert versions(spark, lakehouse) == before


# ---------------------------------------------------------------- the command: crash and fail

def event(event_id, ts, value=1, user="U1") -> str:
    return f'{{"event_id":"{event_id}","user_id":"{user}","event_ts":"{ts}","value":{value}}}'


@pytest.fixture
def command(events_conf, tmp_path):
    """Run `lakeforge ingest --pipeline events` on tmp folders (subprocess or in-process)."""
    conf = events_conf
    args = ["ingest", "--pipeline", "events", "--env", "test", "--set", f"paths.landing={tmp_path / 'landing'}",
            "--set", f"paths.lakehouse={tmp_path / 'lakehouse'}", "--set", f"paths.reports={tmp_path / 'reports'}"]

    def run(crash_after: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "LAKEFORGE_CONF_DIR": str(conf)}
        env.pop(runs.CRASH_AFTER, None)
        if crash_after:
            env[runs.CRASH_AFTER] = crash_after
        return subprocess.run([sys.executable, "-m", "lakeforge", *args], env=env, capture_output=True, text=True,
                              timeout=600)

    return {"run": run, "args": args, "conf": conf, "landing": tmp_path / "landing" / "events",
            "lakehouse": tmp_path / "lakehouse"}


@pytest.mark.slow
def test_sigkill_mid_load_then_rerun_loads_every_row_exactly_once(spark, command):
    lake.forget_tables(spark)
    landing, lakehouse = command["landing"], command["lakehouse"]
    write(landing / "e1.jsonl", "\n".join([event("E1", "2026-05-01T10:00:00"), event("E2", "2026-05-01T11:00:00"),
                                           '{"event_id":"E3","us']) + "\n")
    write(landing / "e2.jsonl", "\n".join([event("E2", "2026-05-02T09:00:00", 5),  # E2 again, later
                                           event("E4", "2026-05-02T10:00:00", 500)]) + "\n")  # out of range

    crashed = command["run"]("silver")  # killed after quarantine, bronze and silver, before quality and ledger
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert lake.exists(lakehouse, "silver.events") and not lake.exists(lakehouse, ingest.FILE_LEDGER)
    assert lake.read(spark, lakehouse, "bronze.events").count() == 3  # written, but not yet recorded as loaded
    write(landing / "e3.jsonl", event("E5", "2026-05-03T10:00:00") + "\n")  # arrives before the rerun

    done = command["run"]()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "events: 3 new file(s), 6 rows read = 4 kept + 2 quarantined + 0 dropped" in done.stderr
    assert "FairSchedulableBuilder" not in done.stderr  # the source's scheduler pool is made without a warning
    ts = dt.datetime.fromisoformat
    assertDataFrameEqual(table(spark, lakehouse, "bronze.events", "event_id", "event_ts", "_source_file"), [
        Row(event_id="E1", event_ts=ts("2026-05-01T10:00:00"), _source_file="e1.jsonl"),
        Row(event_id="E2", event_ts=ts("2026-05-01T11:00:00"), _source_file="e1.jsonl"),
        Row(event_id="E2", event_ts=ts("2026-05-02T09:00:00"), _source_file="e2.jsonl"),
        Row(event_id="E5", event_ts=ts("2026-05-03T10:00:00"), _source_file="e3.jsonl")])
    assertDataFrameEqual(table(spark, lakehouse, "silver.events", "event_id", "value"), [
        Row(event_id="E1", value=1), Row(event_id="E2", value=5), Row(event_id="E5", value=1)])
    assertDataFrameEqual(table(spark, lakehouse, ingest.QUARANTINE, "file", "reason"), [
        Row(file="e1.jsonl", reason="malformed JSON line: does not parse"),
        Row(file="e2.jsonl", reason="expectation failed: value range [0, 100]")])
    assertDataFrameEqual(table(spark, lakehouse, ingest.FILE_LEDGER, "file", "rows_read", "rows_kept"), [
        Row(file="e1.jsonl", rows_read=3, rows_kept=2), Row(file="e2.jsonl", rows_read=2, rows_kept=1),
        Row(file="e3.jsonl", rows_read=1, rows_kept=1)])
    assert table(spark, lakehouse, "ops.quality", "file").count() == 3 * 4  # 3 built-in checks + 1 expectation


def test_fail_expectation_exits_non_zero_with_the_source_rule_and_count(spark, command, monkeypatch, capsys):
    """The command in-process on the test session (its stop() is a no-op here, the session is shared)."""
    from pyspark.sql import SparkSession

    lake.forget_tables(spark)
    write(command["landing"] / "e1.jsonl", "\n".join([event("E1", "2026-05-01T10:00:00", 7),
                                                      event("E2", "2026-05-01T11:00:00", 9)]) + "\n")
    monkeypatch.setenv("LAKEFORGE_CONF_DIR", str(command["conf"]))
    monkeypatch.setattr(SparkSession, "stop", lambda self: None)
    rule = "sources.events.expectations=[{column: value, rule: range, max: 8, action: fail}]"
    code = cli.main([*command["args"], "--set", rule])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "lakeforge ingest: error: source events: expectation with action 'fail' broken, nothing was loaded: "
        "'value range [-inf, 8]' failed on 1 of 2 rows in 1 of 1 file(s) (e1.jsonl: 1 row). Fix or remove the "
        "landing files, or change the expectation's action in conf/sources/events.yaml.")
    assert lake.list_tables(command["lakehouse"]) == ["ops.runs"]  # only the failed run was recorded


def test_every_line_with_a_key_the_schema_does_not_know_is_found(spark, json_path, tmp_path):
    """Each way a new key could hide (another case, a JSON null, a nested value, spaces), with lines that hold
    none; a line that does not parse as JSON names no key (its text is quarantined whole), and only more than white
    space after the object makes a line malformed."""
    lines = {
        "plain": order("K1", "2026-05-01T10:00:00"),
        "new key beside every declared one": order("K2", "2026-05-01T10:00:00", tip=1.5),
        "new key in place of a missing declared one": json.dumps(
            {"order_id": "K3", "customer_id": "C1", "order_ts": "2026-05-01T10:00:00", "channel": "dine_in",
             "items": 1, "coupon": "X"}),
        "new key beside a JSON null": order("K4", "2026-05-01T10:00:00", customer=None, note="n"),
        "new key spelled as a declared one in other case": order("K5", "2026-05-01T10:00:00", Amount=3.0),
        "colon in a string, no new key": order("K6", "2026-05-01T10:00:00", channel='a":b'),
        "nested object under a new key": order("K7", "2026-05-01T10:00:00", extra={"x": 1}),
        "spaces around the colon": '{"order_id" : "K8", "customer_id" :"C1", "order_ts": "2026-05-01T10:00:00", '
                                   '"channel":"dine_in", "items" : 1, "amount":5.0, "gift"  :  true}',
        "white space after the object": order("K9", "2026-05-01T10:00:00") + " \t ",
        "a word after the object": order("K10", "2026-05-01T10:00:00", late=1) + " xyz",
        "a comma after the object": order("K11", "2026-05-01T10:00:00") + ",",
        "a new key, then the line breaks off": order("K12", "2026-05-01T10:00:00", spare=1)[:-1],
        "a wrong type, then a new key": order("K13", "2026-05-01T10:00:00", items="one", after=2),
        "text and a new key beyond ASCII, as UTF-8 bytes": json.dumps(
            {"order_id": "K14", "customer_id": "C1", "order_ts": "2026-05-01T10:00:00", "channel": "café ☕ été",
             "items": 1, "größe": 2}, ensure_ascii=False),
        "white space before the object": " \t " + order("K15", "2026-05-01T10:00:00"),
    }
    blank = " \t \n"  # white space only: not a record
    path = write(tmp_path / "landing" / "orders" / "keys.jsonl", "\n".join(lines.values()) + "\n" + blank)
    files = [ingest.inspect_file(f, ORDERS, {n.lower(): n for n in ORDERS.columns})
             for f in ingest.landing_entries(tmp_path / "landing", ORDERS, "orders")]
    assert [f.path for f in files] == [path]
    batch = ingest.read_batch(spark, files, ORDERS, ingest.declared_types(ORDERS))
    rows = batch.select("order_id", ingest.NEW_KEYS, ingest.MALFORMED).collect()
    assert len(rows) == len(lines)
    # The line that breaks off parses to no field at all: it is K12.
    found = {r["order_id"] or "K12": (sorted(r[ingest.NEW_KEYS] or []), r[ingest.MALFORMED]) for r in rows}
    assert found == {"K1": ([], None), "K2": (["tip"], None), "K3": (["coupon"], None), "K4": (["note"], None),
                     "K5": ([], None), "K6": ([], None), "K7": (["extra"], None), "K8": (["gift"], None),
                     "K9": ([], None), "K10": (["late"], "malformed JSON line: more text after the JSON object"),
                     "K11": ([], "malformed JSON line: more text after the JSON object"),
                     "K12": ([], "malformed JSON line: does not parse"),
                     "K13": (["after"], "type mismatch: items (expected int)"), "K14": (["größe"], None),
                     "K15": ([], None)}
    assert batch.where("order_id = 'K14'").first()["channel"] == "café ☕ été"
