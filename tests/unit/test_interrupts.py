"""Stop signals, locks and abandoned runs without Spark: the handler, the lock's message and takeover,
`process_gone` and the health words."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lakeforge import interrupts, locks, runs


def test_sigint_and_sigterm_become_interrupted_with_the_shell_exit_code():
    previous = interrupts.raise_on_stop_signals()
    try:
        for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            with pytest.raises(interrupts.Interrupted, match=rf"^interrupted by {sig.name}$") as caught:
                os.kill(os.getpid(), sig)
                time.sleep(5)  # the handler raises here, in the main thread
            assert caught.value.exit_code == code
    finally:
        interrupts.restore(previous)


def test_a_signal_during_a_deferred_block_is_raised_after_it():
    previous = interrupts.raise_on_stop_signals()
    done = []
    try:
        with pytest.raises(interrupts.Interrupted, match="interrupted by SIGTERM"):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)
                done.append("row written")
        assert done == ["row written"]
    finally:
        interrupts.restore(previous)


HOLD = """\
import sys, time
from pathlib import Path
from lakeforge import locks
with locks.held(Path(sys.argv[1]), "ingest", "ingest", "events", "abc123"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_taken_lock_names_its_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline() == "held\n"
        today = dt.datetime.now(dt.timezone.utc)
        with pytest.raises(locks.AlreadyRunning, match=(
                rf"^ingest of pipeline events is already running since {today:%Y-%m-%d} \d\d:\d\d:\d\d UTC "
                rf"\(pid {holder.pid}, host {socket.gethostname()}, run abc123\) \(waited 1s\); ingest churn did "
                rf"not start\. Wait for it to end, or set lock_wait_s to wait")):
            with locks.held(tmp_path, "ingest", "ingest", "churn", "def456", wait_s=1):
                pass
    finally:
        holder.kill()  # SIGKILL: the process cannot release anything itself
        holder.wait()
    with locks.held(tmp_path, "ingest", "ingest", "churn", "def456"):
        with locks.held(tmp_path, "ingest", "ingest", "churn", "def456"):  # again in the same process
            text = locks.lock_path(tmp_path, "ingest").read_text()
    assert f"pid={os.getpid()}\n" in text and "run_id=def456\n" in text


def test_process_gone_by_pid_and_start_here_and_by_heartbeat_elsewhere():
    here, me = socket.gethostname(), os.getpid()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not runs.process_gone(here, me, runs.process_start(me))
    assert runs.process_gone(here, dead.pid)
    assert runs.process_gone(here, me, "another-boot:123")  # the pid now belongs to another process
    assert not runs.process_gone(here, None)  # a row from before pids were recorded: no telling
    now = time.time()
    assert not runs.process_gone("elsewhere", 1, None, heartbeat=now - runs.STALE_AFTER_S + 5, now=now)
    assert runs.process_gone("elsewhere", 1, None, heartbeat=now - runs.STALE_AFTER_S - 5, now=now)
    assert not runs.process_gone("elsewhere", 1, None, heartbeat=None)


def test_health_words_from_the_latest_run_of_each_job(tmp_path):
    t = dt.datetime(2026, 12, 1)

    def row(job, status, minute, pipeline="churn", **extra):
        return {"run_id": f"{job}{minute}", "job": job, "pipeline": pipeline, "status": status,
                "started_at": t + dt.timedelta(minutes=minute), "host": socket.gethostname(), "pid": None,
                "process_start": None, **extra}

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    rows = runs.mark_abandoned([
        row("ingest", "succeeded", 0), row("score", "interrupted", 1),
        row("ingest", "succeeded", 0, "demand"), row("score", "running", 1, "demand", pid=gone.pid),
        row("ingest", "running", 0, "old"),  # no pid: written before pids were recorded
        row("ingest", "failed", 0, "bad"), row("score", "running", 1, "bad", pid=gone.pid)], tmp_path)
    health = runs.pipeline_health(rows)
    assert {p: (h["health"], h["interrupted_jobs"], h["abandoned_jobs"], h["failed_jobs"])
            for p, h in health.items()} == {
        "churn": ("interrupted", ["score"], [], []), "demand": ("abandoned", [], ["score"], []),
        "old": ("running", [], [], []), "bad": ("failing", [], ["score"], ["ingest"])}
