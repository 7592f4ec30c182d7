"""Landing entries are examined without following links or opening them; an entry swapped for a link or a
FIFO between the listing and the inspection is refused, unread (no Spark)."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from lakeforge import ingest
from lakeforge.config import Source

ORDERS = Source(path="orders", format="json", columns={"order_id": "string", "order_ts": "timestamp"},
                primary_key=["order_id"], event_time="order_ts")


@pytest.fixture
def folder(tmp_path) -> Path:
    folder = tmp_path / "landing" / "orders"
    folder.mkdir(parents=True)
    (folder / "day1.jsonl").write_text('{"order_id":"O1","order_ts":"2026-05-01T10:00:00"}\n')
    return folder


class Blocked(Exception):
    """Not an OSError, which lakeforge would take for a file it cannot open."""


@pytest.fixture
def no_hang():
    """Fail instead of hanging when an open blocks (a FIFO opened for reading without a writer)."""
    def expired(*_):
        raise Blocked("a landing entry was opened as if it were a file, and blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_regular_file_is_inspected_and_hashed(folder):
    [entry] = ingest.landing_entries(folder.parent, ORDERS)
    found = ingest.inspect_file(entry, ORDERS, {})
    assert (found.name, found.refused, found.problem, found.bytes) == ("day1.jsonl", None, None, 51)
    assert found.sha256 is not None


def test_a_file_swapped_for_a_link_after_the_listing_is_refused_unread(folder, tmp_path):
    [entry] = ingest.landing_entries(folder.parent, ORDERS)
    secret = tmp_path / "secret.jsonl"
    secret.write_text("secret\n")
    (folder / "day1.jsonl").unlink()
    (folder / "day1.jsonl").symlink_to(secret)
    found = ingest.inspect_file(entry, ORDERS, {})
    real = folder.resolve()
    assert (found.refused, found.sha256) == (
        f"symbolic link to {secret.resolve()}: landing files must be regular files inside {real}", None)


def test_a_file_swapped_for_a_fifo_after_the_listing_is_refused_without_blocking(folder, no_hang):
    [entry] = ingest.landing_entries(folder.parent, ORDERS)
    (folder / "day1.jsonl").unlink()
    os.mkfifo(folder / "day1.jsonl")
    found = ingest.inspect_file(entry, ORDERS, {})
    assert (found.refused, found.sha256) == (
        f"a named pipe (FIFO): landing files must be regular files inside {folder.resolve()}", None)


def test_links_in_a_loop_and_sockets_are_refused_from_the_listing(folder):
    import socket

    (folder / "a.jsonl").symlink_to(folder / "b.jsonl")
    (folder / "b.jsonl").symlink_to(folder / "a.jsonl")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "s.jsonl"))
        entries = {f.name: f.refused for f in ingest.landing_entries(folder.parent, ORDERS)}
    real = folder.resolve()
    rule = f": landing files must be regular files inside {real}"
    assert entries == {"a.jsonl": f"symbolic link to {real / 'a.jsonl'}" + rule,
                       "b.jsonl": f"symbolic link to {real / 'b.jsonl'}" + rule,
                       "day1.jsonl": None, "s.jsonl": "a socket" + rule}


def test_the_json_record_limit_follows_the_source_and_a_bad_one_is_named():
    from lakeforge import config
    from lakeforge.errors import DataError

    orders = config.load_source("orders")
    assert ingest.max_record_bytes(orders) == ingest.JSON_MAX_STRING
    assert ingest.max_record_bytes(orders.model_copy(update={"options": {"maxStringLen": "50000000"}})) == 50_000_000
    with pytest.raises(DataError, match=r"landing folder orders: option maxStringLen 'lots' is not a whole number "
                                        r"of characters; fix it under options in the source's conf/sources/"):
        ingest.max_record_bytes(orders.model_copy(update={"options": {"maxStringLen": "lots"}}))


def test_a_declared_column_missing_from_a_csv_header_or_a_parquet_schema_is_named_and_json_names_none(tmp_path):
    """The columns ingest warns about (a column renamed upstream would load as nulls): from what the file's
    inspection read, its CSV header or its Parquet schema; a JSON line may leave out any key."""
    source = Source(path="agents", format="csv", columns={"agent_id": "string", "skill_level": "int",
                                                          "updated_at": "timestamp"},
                    primary_key=["agent_id"], event_time="updated_at")
    found = ingest.LandingFile(tmp_path / "a.csv", 1, None)
    renamed = replace(found, header=("agent_id", "skill", "Updated_At"))
    parquet = replace(found, types=(("agent_id", "string"), ("updated_at", "timestamp")))
    complete = replace(found, header=("updated_at", "skill_level", "agent_id", "extra"))
    assert [ingest._declared_but_absent(source, f) for f in (renamed, parquet, complete, found)] == [
        ["skill_level"], ["skill_level"], [], []]
