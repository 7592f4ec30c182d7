"""Storage that refuses writes: the command fails with exit 1 and one line naming the cause, the tables intact.

A read-only lakehouse (a read-only bind mount: we run as root, whom file permissions do not stop) and a full
disk (a 1 MB tmpfs). Both need root to mount; elsewhere they are skipped with the reason. The failing command
runs in a subprocess, as a scheduler would run it; the tables are checked afterwards with delta-rs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import deltalake
import pytest

from lakeforge import config, lake, stages

pytestmark = pytest.mark.spark

HINT = " (rerun with --debug for the traceback; the run is recorded in ops.runs)"


def event(event_id: str, day: int) -> str:
    return f'{{"event_id":"{event_id}","user_id":"U1","event_ts":"2026-05-0{day}T10:00:00","value":1}}\n'


@contextmanager
def mounted(target: Path, *commands: list[str]):
    """Run the mount commands on `target`, and unmount it however the block ends; skip when mounting fails."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only or full filesystem needs root (CI runs as root)")
    target.mkdir(parents=True, exist_ok=True)
    done = []
    try:
        for command in commands:
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"cannot mount here ({' '.join(command)}: {result.stderr.strip()})")
            done.append(command)
        yield target
    finally:
        if done:
            subprocess.run(["umount", str(target)], check=True)


@pytest.fixture
def events_lake(spark, events_conf, tmp_path, monkeypatch, settings_at):
    """A lakehouse with one ingested landing file, and a second landing file waiting; `ingest(lakehouse)` runs
    `lakeforge ingest` on it in a subprocess."""
    monkeypatch.setenv("LAKEFORGE_CONF_DIR", str(events_conf))
    landing, lakehouse = tmp_path / "landing", tmp_path / "lakehouse"
    (landing / "events").mkdir(parents=True)
    (landing / "events" / "e1.jsonl").write_text(event("E1", 1))
    lake.forget_tables(spark)
    stages.ingest(stages.Context(settings_at(landing, lakehouse, tmp_path), config.load_pipeline("events"),
                                 spark_factory=lambda _: spark))
    (landing / "events" / "e2.jsonl").write_text(event("E2", 2))

    def ingest(at: Path) -> subprocess.CompletedProcess:
        args = ["ingest", "--pipeline", "events", "--env", "test", "--set", f"paths.landing={landing}",
                "--set", f"paths.lakehouse={at}", "--set", f"paths.reports={tmp_path / 'reports'}"]
        return subprocess.run([sys.executable, "-m", "lakeforge", *args], env=dict(os.environ), capture_output=True,
                              text=True, timeout=600)

    return {"lakehouse": lakehouse, "ingest": ingest, "tmp": tmp_path}


def tables_by_delta_rs(lakehouse: Path) -> dict[str, tuple[int, list]]:
    """Each table's version and sorted event ids (or row count) as delta-rs reads them."""
    seen = {}
    for name in lake.list_tables(lakehouse):
        table = deltalake.DeltaTable(str(lake.table_path(lakehouse, name)))
        frame = table.to_pandas()
        seen[name] = (table.version(), sorted(frame.event_id) if "event_id" in frame else len(frame))
    return seen


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_a_read_only_lakehouse_fails_with_one_line_naming_the_cause(events_lake):
    lakehouse = events_lake["lakehouse"]
    before = tables_by_delta_rs(lakehouse)
    assert before["bronze.events"][1] == ["E1"]
    read_only = events_lake["tmp"] / "read-only"
    with mounted(read_only, ["mount", "--bind", str(lakehouse), str(read_only)],
                 ["mount", "-o", "remount,bind,ro", str(read_only)]):
        failed = events_lake["ingest"](read_only)
        assert failed.returncode == 1, failed.stderr[-3000:]
        # The first write is the job's lock file, before Spark starts: the cause is named all the same.
        assert last_line(failed) == ("lakeforge ingest: failed: OSError: [Errno 30] Read-only file system: "
                                     f"'{read_only / '_lakeforge' / 'locks' / 'ingest.lock'}'" + HINT)
    assert tables_by_delta_rs(lakehouse) == before


@pytest.mark.slow
def test_a_full_disk_fails_with_one_line_naming_the_cause(events_lake):
    full = events_lake["tmp"] / "full"
    with mounted(full, ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)]):
        shutil.copytree(events_lake["lakehouse"], full / "lakehouse")
        before = tables_by_delta_rs(full / "lakehouse")
        filler = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)  # fill what is left of the 1 MB
        try:
            while os.write(filler, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(filler)
        failed = events_lake["ingest"](full / "lakehouse")
        assert failed.returncode == 1, failed.stderr[-3000:]
        assert last_line(failed) == "lakeforge ingest: failed: OSError: [Errno 28] No space left on device" + HINT
        (full / "filler").unlink()
        assert tables_by_delta_rs(full / "lakehouse") == before
