"""The run ledger `ops.runs`: who ran what, when, on which inputs, with what result; plus progress output.

ops.runs is append-only: a run appends a `running` row when it starts and its `succeeded` or
`failed` row (with the error) when it ends, so a run killed on the way stays visible as `running`
with no end time. `read_runs` gives one row per run, its latest.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakeforge import __version__, lake

RUNS = "ops.runs"
CRASH_AFTER = "LAKEFORGE_TEST_CRASH_AFTER"
SCHEMA = ("run_id string, job string, pipeline string, env string, run_date date, status string, "
          "started_at timestamp, ended_at timestamp, duration_s double, user string, host string, "
          "git_commit string, lakeforge_version string, inputs map<string,bigint>, outputs map<string,bigint>, "
          "rows map<string,bigint>, details string, error string")


_PRINTING = threading.Lock()


class Progress:
    """Prints `[job] message (elapsed)` lines, as text or as JSON objects (log_format: json)."""

    def __init__(self, job: str, json_lines: bool = False, stream=None):
        self.job, self.json_lines, self.stream = job, json_lines, stream or sys.stderr
        self.started = time.monotonic()

    def __call__(self, message: str, **fields) -> None:
        elapsed = time.monotonic() - self.started
        if self.json_lines:
            record = {"ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "job": self.job,
                      "elapsed_s": round(elapsed, 1), "message": message, **fields}
            line = json.dumps(record, default=str)
        else:
            line = f"[{self.job} {elapsed:6.1f}s] {message}"
        # One write per line, under a lock: ingest's sources log from their own threads, and print() writes
        # the text and its newline separately, so two lines could end up on one.
        with _PRINTING:
            self.stream.write(line + "\n")
            self.stream.flush()


def crash_point(step: str) -> None:
    """Test-only: with LAKEFORGE_TEST_CRASH_AFTER=<step>, this process kills itself (SIGKILL) here, so the
    crash tests stop a job between two commits as a power cut or an OOM kill would, no cleanup run."""
    if os.environ.get(CRASH_AFTER) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def git_commit() -> str:
    """The current git commit, or '' outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except OSError:
        return ""


@dataclass
class Run:
    """What a job reports about itself while it runs; written to ops.runs when it ends."""

    run_id: str
    job: str
    pipeline: str
    inputs: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)
    log: Progress | None = None
    run_date: dt.date | None = None  # set by the job once it knows the date it works on

    def input(self, spark: SparkSession, lakehouse: Path, *tables: str) -> None:
        """Note the version of each input table as read now (lineage)."""
        for table in tables:
            v = lake.version(spark, lakehouse, table)
            if v is not None:
                self.inputs[table] = v

    def output(self, spark: SparkSession, lakehouse: Path, *tables: str) -> None:
        """Note the version of each table this run wrote."""
        for table in tables:
            v = lake.version(spark, lakehouse, table)
            if v is not None:
                self.outputs[table] = v


def _write(spark: SparkSession, lakehouse: Path, row: dict) -> None:
    """Append a run's row (its start or its end).

    Appends, not a replace of the run's row: a Delta append needs no table state, while a replace
    (replaceWhere, MERGE) first rebuilds the snapshot's state with three Spark jobs: a one-row replace
    took 1.17 s against 0.32 s for an append (medians of 25, quiet 2-core machine; 2.0 s against 0.5 s
    under load), and every stage run writes twice.
    """
    props = {"lakeforge.description": "Every lakeforge job run, appended when it starts (running) and when it "
                                      "ends: inputs and outputs with Delta versions, rows, duration, status, error",
             "lakeforge.owner": "lakeforge", "lakeforge.source": "lakeforge"}
    lake.append(spark, spark.createDataFrame([row], SCHEMA), lakehouse, RUNS, properties=props)


def latest(ledger: DataFrame) -> DataFrame:
    """One row per run: its end row where it has one, else its `running` row (a transform of ops.runs rows)."""
    newest_first = Window.partitionBy("run_id").orderBy(F.col("ended_at").desc_nulls_last())
    return ledger.withColumn("_lf_rank", F.row_number().over(newest_first)).where("_lf_rank = 1").drop("_lf_rank")


def read_runs(spark: SparkSession, lakehouse: Path) -> DataFrame:
    """ops.runs with one row per run (see `latest`)."""
    return latest(lake.read(spark, lakehouse, RUNS))


@contextmanager
def recorded(spark: SparkSession, lakehouse: Path, job: str, pipeline: str, env: str,
             run_date: dt.date | None = None, json_logs: bool = False) -> Iterator[Run]:
    """Record a job run in ops.runs around the block; a failure is recorded and re-raised."""
    run = Run(run_id=uuid.uuid4().hex[:16], job=job, pipeline=pipeline, log=Progress(job, json_logs), run_date=run_date)
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    row = {"run_id": run.run_id, "job": job, "pipeline": pipeline, "env": env, "run_date": run_date,
           "status": "running", "started_at": started, "ended_at": None, "duration_s": None,
           "user": getpass.getuser(), "host": socket.gethostname(), "git_commit": git_commit(),
           "lakeforge_version": __version__, "inputs": {}, "outputs": {}, "rows": {}, "details": "{}", "error": None}
    _write(spark, lakehouse, row)
    t0 = time.monotonic()
    status, error = "succeeded", None
    try:
        yield run
    except BaseException as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        row.update(status=status, error=error, run_date=run.run_date, ended_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
                   duration_s=round(time.monotonic() - t0, 3), inputs=run.inputs, outputs=run.outputs,
                   rows=run.rows, details=json.dumps(run.details, default=str, sort_keys=True))
        _write(spark, lakehouse, row)
        run.log(f"{status} in {row['duration_s']:.1f}s (run {run.run_id})", run_id=run.run_id, pipeline=pipeline,
                status=status, duration_s=row["duration_s"], rows=run.rows, error=error)


def pipeline_health(rows: list[dict]) -> dict[str, dict]:
    """Per pipeline, from ops.runs rows: the latest run of each job and a health word.

    `failing` when the latest run of some job failed (the next successful run of that job clears
    it), `running` when one is still open (or crashed without an end), else `ok`.
    """
    latest: dict[str, dict[str, dict]] = {}
    for row in sorted(rows, key=lambda r: r["started_at"]):
        latest.setdefault(row["pipeline"], {})[row["job"]] = row
    health = {}
    for pipeline, jobs in sorted(latest.items()):
        failed = sorted(job for job, r in jobs.items() if r["status"] == "failed")
        running = sorted(job for job, r in jobs.items() if r["status"] == "running")
        state = "failing" if failed else "running" if running else "ok"
        health[pipeline] = {"health": state, "failed_jobs": failed, "running_jobs": running,
                            "last_run": max(jobs.values(), key=lambda r: r["started_at"])}
    return health


AUDIT = "ops.audit"
AUDIT_SCHEMA = ("changed_at timestamp, user string, host string, model string, alias string, "
                "from_version int, to_version int, reason string, run_id string, status string")
# An alias move appends its `intended` row before the registry changes and its `done` row after; a
# `reconciled` row records what the registry was found to hold when the two disagreed (a kill between
# them, or a change made outside lakeforge). Rows from before the status column count as done.
INTENDED, DONE, RECONCILED = "intended", "done", "reconciled"


def record_alias_change(spark: SparkSession, lakehouse: Path, model: str, alias: str, from_version: int | None,
                        to_version: int | None, reason: str, run_id: str, status: str = DONE) -> None:
    """Append who moved which alias, when, from which version to which, why, and how far (status), to ops.audit."""
    row = (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), getpass.getuser(), socket.gethostname(), model,
           alias, from_version, to_version, reason, run_id, status)
    # mergeSchema: an ops.audit written before the status column existed takes the new column on this append.
    lake.append(spark, spark.createDataFrame([row], AUDIT_SCHEMA), lakehouse, AUDIT, merge_schema=True,
                properties={"lakeforge.description": "Every model alias change: who, when, from, to, why, and "
                                                     "whether intended, done or reconciled with the registry",
                            "lakeforge.owner": "lakeforge", "lakeforge.source": "lakeforge"})


def read_audit(spark: SparkSession, lakehouse: Path, model: str) -> list[dict]:
    """ops.audit rows of a model, oldest first, each with its status (rows without one are `done`)."""
    if not lake.exists(lakehouse, AUDIT):
        return []
    rows = lake.read(spark, lakehouse, AUDIT).where(F.col("model") == model)
    status = F.col("status") if "status" in rows.columns else F.lit(None).cast("string")
    rows = rows.withColumn("status", F.coalesce(status, F.lit(DONE)))
    return [r.asDict() for r in rows.orderBy("changed_at").collect()]


def process_gone(host: str, pid: int, started_at: float | None = None) -> bool:
    """True when process `pid` on `host` (this machine) has ended, or its pid now belongs to a process born
    after `started_at` (epoch seconds, when the run began); False when it may still run, on another host too."""
    if host != socket.gethostname():
        return False  # another machine's processes cannot be asked from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    try:  # Linux: state and start time (clock ticks after boot) follow the parenthesised command name
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, IndexError, ValueError):
        return False
    if fields[0] == "Z":  # killed, not yet reaped by its parent
        return True
    born = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    # The boot time is whole seconds: a second's slack keeps the run's own process from looking newer.
    return started_at is not None and born > started_at + 1.0
