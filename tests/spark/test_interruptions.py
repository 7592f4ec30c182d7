"""Interruptions as a scheduler causes them, on commands run in subprocesses.

SIGTERM to the command's process group (what Airflow and `timeout` send; the JVM gets it too) while
the command works: exit 143 and an `interrupted` run row naming the signal. SIGKILL: `status` shows
the run `abandoned`, and the next run of the job records it so. A second `ingest` while one runs:
exit 2 before any write. Test hooks hold each command in the middle of its work until it is signalled;
the tables are read afterwards with delta-rs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

from lakeforge import config, lake, logs, runs, scoring, stages
from lakeforge.demo.summary import format_status

pytestmark = pytest.mark.spark

STOPPED = "stopped; a run it had started is recorded in ops.runs as interrupted"


def command(verb: str, settings, *extra: str) -> list[str]:
    s = settings
    return [sys.executable, "-m", "lakeforge", verb, "--env", "test", *extra,
            "--set", f"paths.landing={s.paths.landing}", "--set", f"paths.lakehouse={s.paths.lakehouse}",
            "--set", f"paths.reports={s.paths.reports}", "--set", f"paths.model_cache={s.paths.model_cache}",
            "--set", f"mlflow.tracking_uri={s.mlflow.tracking_uri}",
            "--set", f"mlflow.artifact_root={s.mlflow.artifact_root}"]


def start(args: list[str], **env: str) -> subprocess.Popen:
    """The command in a process group of its own, as a scheduler starts it."""
    return subprocess.Popen(args, env={**os.environ, **env}, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(marker: Path, job: subprocess.Popen) -> None:
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert job.poll() is None, f"exited with {job.returncode} before its work:\n{job.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the command never reached its work"
        time.sleep(0.2)


def run_rows(lakehouse: Path, job: str):
    """Every ops.runs row of `job`, read with delta-rs, oldest first."""
    rows = DeltaTable(str(lakehouse / "ops" / "runs")).to_pandas()
    return rows[rows.job == job].sort_values(["started_at", "ended_at"], na_position="first")


@pytest.fixture(scope="module")
def churn_lake(spark, settings_at, ingested_tiny, tiny_landing, tmp_path_factory):
    """The tiny demo ingested, a @champion trained, and the next day's features: ready to score."""
    lake.forget_tables(spark)
    work = tmp_path_factory.mktemp("interrupted")
    shutil.copytree(ingested_tiny, work / "lakehouse")
    ctx = stages.Context(settings_at(tiny_landing[0], work / "lakehouse", work, work / "reports"),
                         config.load_pipeline("churn"), spark_factory=lambda _: spark)
    stages.train(ctx)
    day = dt.date.fromisoformat(stages.build_features(ctx)["dates"][0])
    return ctx, day


@pytest.mark.slow
def test_sigterm_during_score_cancels_it_and_records_the_run_as_interrupted(churn_lake, tmp_path):
    ctx, day = churn_lake
    marker = tmp_path / "scoring"
    job = start(command("score", ctx.settings, "--pipeline", "churn", "--date", str(day)),
                **{scoring.STALL_AFTER_FIRST_BATCH: str(marker)})
    wait_for(marker, job)  # a scoring task runs: the driver waits inside a Py4J call for the write
    os.killpg(job.pid, signal.SIGTERM)
    _, err = job.communicate(timeout=300)

    assert job.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == f"lakeforge score: interrupted by SIGTERM: {STOPPED}"
    rows = run_rows(ctx.lakehouse, "score")
    assert rows[["status", "error", "pid", "host"]].values.tolist() == [
        ["running", None, job.pid, socket.gethostname()],
        ["interrupted", "interrupted by SIGTERM", job.pid, socket.gethostname()]]
    assert DeltaTable(str(ctx.lakehouse / "gold" / "churn_predictions")).to_pandas().empty  # the write was cancelled
    assert list(runs.heartbeat_dir(ctx.lakehouse).iterdir()) == []


@pytest.mark.slow
def test_a_killed_run_is_abandoned_in_status_and_recorded_by_the_next_run(churn_lake, tmp_path, capsys):
    ctx, day = churn_lake
    marker = tmp_path / "scoring"
    job = start(command("score", ctx.settings, "--pipeline", "churn", "--date", str(day)),
                **{scoring.STALL_AFTER_FIRST_BATCH: str(marker)})
    wait_for(marker, job)
    os.killpg(job.pid, signal.SIGKILL)  # driver, JVM and Python workers: no cleanup runs
    assert job.wait(timeout=60) == -signal.SIGKILL
    killed = run_rows(ctx.lakehouse, "score").iloc[-1]
    assert (killed.status, killed.pid) == ("running", job.pid)

    lake.register_tables(ctx.spark, ctx.lakehouse)  # the predictions table the killed process created
    status = stages.status(ctx)
    assert [(r["run_id"], r["status"]) for r in status["runs"] if r["job"] == "score"][0] == (killed.run_id, "abandoned")
    assert status["pipelines"]["churn"]["health"] == "abandoned"
    assert "  churn      abandoned (score abandoned)" in format_status(status)

    capsys.readouterr()
    stages.score(ctx, day)  # takes the lock the dead process held
    started = killed.started_at.to_pydatetime()
    assert (f"WARNING run {killed.run_id} (score churn, started {started:%Y-%m-%d %H:%M:%S} UTC on "
            f"{socket.gethostname()}, pid {job.pid}) was abandoned: its process is gone; recorded as abandoned "
            f"in ops.runs") in capsys.readouterr().err
    rows = run_rows(ctx.lakehouse, "score")
    ended = rows[rows.run_id == killed.run_id]
    assert ended.status.tolist() == ["running", "abandoned"]
    assert ended.error.iloc[-1].startswith(f"abandoned: process {job.pid} on {socket.gethostname()} is gone "
                                           f"(last heartbeat ")
    assert rows.status.iloc[-1] == "succeeded"
    assert list(runs.heartbeat_dir(ctx.lakehouse).iterdir()) == []


def events_file(path: Path, *ids: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f'{{"event_id":"{i}","user_id":"U1","event_ts":"2026-05-01T10:00:00","value":1}}\n'
                            for i in ids))


@pytest.mark.slow
def test_a_second_ingest_exits_2_while_one_runs_and_sigterm_records_the_first(settings_at, events_conf, tmp_path):
    conf = events_conf
    settings = settings_at(tmp_path / "landing", tmp_path / "lakehouse", tmp_path, tmp_path / "reports")
    args = command("ingest", settings, "--pipeline", "events")
    env = {"LAKEFORGE_CONF_DIR": str(conf)}
    landing = tmp_path / "landing" / "events"
    events_file(landing / "e1.jsonl", "E1", "E2")
    events_file(landing / "e2.jsonl", "E3")

    marker = tmp_path / "in-bronze"
    first = start(args, **env, **{runs.STALL_AT: "bronze", runs.STALL_MARKER: str(marker)})
    wait_for(marker, first)  # bronze committed, silver, quality and the ledger not yet
    events_file(landing / "e3.jsonl", "E4")
    second = subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    os.killpg(first.pid, signal.SIGTERM)
    _, err = first.communicate(timeout=300)

    assert second.returncode == 2, second.stderr[-3000:]
    assert second.stderr.strip().splitlines()[-1].startswith(
        f"lakeforge ingest: error: ingest of pipeline events is already running since "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d} ")
    assert f"(pid {first.pid}, host {socket.gethostname()}, run " in second.stderr
    assert first.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == f"lakeforge ingest: interrupted by SIGTERM: {STOPPED}"
    rows = run_rows(tmp_path / "lakehouse", "ingest")  # the second one wrote nothing, not even its run
    assert rows[["status", "error", "pid"]].values.tolist() == [["running", None, first.pid],
                                                                ["interrupted", "interrupted by SIGTERM", first.pid]]
    assert f"run {rows.run_id.iloc[0]})" in second.stderr

    third = subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    bronze = DeltaTable(str(tmp_path / "lakehouse" / "bronze" / "events")).to_pandas()
    assert sorted(zip(bronze.event_id, bronze._source_file)) == [("E1", "e1.jsonl"), ("E2", "e1.jsonl"),
                                                                  ("E3", "e2.jsonl"), ("E4", "e3.jsonl")]
    ledger = DeltaTable(str(tmp_path / "lakehouse" / "ops" / "ingested_files")).to_pandas()
    assert sorted(ledger.file) == ["e1.jsonl", "e2.jsonl", "e3.jsonl"]


def test_a_signal_during_a_spark_call_cancels_it_and_leaves_the_session_usable(spark):
    """In-process: SIGTERM while the main thread waits in a Py4J call for a Spark job."""
    from lakeforge import interrupts

    def sleep_batches(batches):  # defined here: pickled by value, the Python workers cannot import this module
        for batch in batches:
            time.sleep(30)
            yield batch

    previous = interrupts.raise_on_stop_signals()
    timer = threading.Timer(3, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        started = time.monotonic()
        try:
            spark.range(2, numPartitions=2).mapInPandas(sleep_batches, "id long").count()
        except interrupts.Interrupted as exc:  # handled as runs.recorded does, while the exception is alive
            assert str(exc) == "interrupted by SIGTERM"
            interrupts.settle(spark)
            assert spark.range(3).count() == 3  # this call's own answer, not the cancelled job's
        else:
            pytest.fail("the Spark call was not interrupted")
        assert time.monotonic() - started < 25  # the sleeping job was cancelled, not waited for
    finally:
        timer.cancel()
        interrupts.restore(previous)


def test_the_next_run_records_an_abandoned_run_in_the_same_commit_as_its_start(spark, lakehouse, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    started = dt.datetime(2026, 12, 1, 2, 30)
    start_row = {"run_id": "deadbeef00000000", "job": "score", "pipeline": "churn", "env": "test", "run_date": None,
                 "status": "running", "started_at": started, "ended_at": None, "duration_s": None, "user": "cron",
                 "host": socket.gethostname(), "git_commit": "", "lakeforge_version": "0", "inputs": {},
                 "outputs": {}, "rows": {}, "details": "{}", "error": None, "pid": gone.pid, "process_start": None}
    runs._write(spark, lakehouse, [start_row])
    beat = runs.heartbeat_dir(lakehouse) / "deadbeef00000000.json"
    beat.parent.mkdir(parents=True)
    beat.write_text(json.dumps(start_row, default=str))
    last_beat = dt.datetime(2026, 12, 1, 2, 31, tzinfo=dt.timezone.utc).timestamp()
    os.utime(beat, (last_beat, last_beat))

    logs.configure()  # warnings to stderr, as every stage's Context sets up (this test calls runs directly)
    with runs.recorded(spark, lakehouse, "monitor", "churn", "test"):  # another job: not its business
        pass
    assert "abandoned" not in capsys.readouterr().err
    with runs.recorded(spark, lakehouse, "score", "churn", "test") as run:
        pass
    assert (f"WARNING run deadbeef00000000 (score churn, started 2026-12-01 02:30:00 UTC on {socket.gethostname()}, "
            f"pid {gone.pid}) was abandoned: its process is gone; recorded as abandoned in ops.runs") in (
        capsys.readouterr().err)
    table = DeltaTable(str(lakehouse / "ops" / "runs"))
    rows = table.to_pandas().sort_values(["started_at", "ended_at"], na_position="first")
    assert rows[["run_id", "status", "ended_at"]].astype(str).values.tolist()[:2] == [
        ["deadbeef00000000", "running", "NaT"], ["deadbeef00000000", "abandoned", "2026-12-01 02:31:00+00:00"]]
    assert rows[rows.run_id == run.run_id].status.tolist() == ["running", "succeeded"]
    assert [c["operation"] for c in table.history()].count("WRITE") == 5  # 1 + 2 per run: no commit of its own
    assert not beat.exists()


def test_an_ops_runs_table_from_before_pids_takes_them_on_its_next_append(spark, lakehouse):
    old_schema = runs.SCHEMA.removesuffix(", pid bigint, process_start string")
    old_row = ("0ld", "ingest", "churn", "test", None, "succeeded", dt.datetime(2026, 11, 1), dt.datetime(2026, 11, 1, 0, 1),
               60.0, "cron", "box", "", "0", {}, {}, {}, "{}", None)
    lake.append(spark, spark.createDataFrame([old_row], old_schema), lakehouse, runs.RUNS)
    assert [tuple(r) for r in runs.read_runs(spark, lakehouse).select("run_id", "pid", "process_start").collect()] == [
        ("0ld", None, None)]

    with runs.recorded(spark, lakehouse, "ingest", "churn", "test") as run:
        pass
    rows = DeltaTable(str(lakehouse / "ops" / "runs")).to_pandas().sort_values(["started_at", "ended_at"],
                                                                               na_position="first")
    assert [(r.run_id, r.status, None if r.pid != r.pid else int(r.pid)) for r in rows.itertuples()] == [
        ("0ld", "succeeded", None), (run.run_id, "running", os.getpid()), (run.run_id, "succeeded", os.getpid())]
