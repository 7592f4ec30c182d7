"""The run ledger `ops.runs`: who ran what, when, on which inputs, with what result.

ops.runs is append-only: a run appends a `running` row when it starts and its `succeeded`, `failed` or
`interrupted` row (with the error) when it ends. A run killed on the way (SIGKILL, power cut) has no end
row: each open run keeps a heartbeat file `<lakehouse>/_lakeforge/runs/<run_id>.json` (its start row,
its mtime touched every HEARTBEAT_S seconds) and its row carries its host, pid and process start, so
`status` shows it `abandoned` once its process is gone (`process_gone`), and the next run of the same
job and pipeline appends its `abandoned` end row. `read_runs` gives one row per run, its latest.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakeforge import __version__, catalog, interrupts, lake, logs

RUNS = catalog.RUNS
CRASH_AFTER = "LAKEFORGE_TEST_CRASH_AFTER"
STALL_AT, STALL_MARKER = "LAKEFORGE_TEST_STALL_AT", "LAKEFORGE_TEST_STALL_MARKER"
SCHEMA = ("run_id string, job string, pipeline string, env string, run_date date, status string, "
          "started_at timestamp, ended_at timestamp, duration_s double, user string, host string, "
          "git_commit string, lakeforge_version string, inputs map<string,bigint>, outputs map<string,bigint>, "
          "rows map<string,bigint>, details string, error string, pid bigint, process_start string")
# Columns added after ops.runs first shipped: older tables get them on their next append (mergeSchema),
# and their older rows read as null.
ADDED_COLUMNS = {"pid": "bigint", "process_start": "string"}
HEARTBEAT_S = 30.0
# A run of another host is abandoned when its heartbeat file is older than this (20 missed beats: a
# clock skew of minutes or a busy NFS server does not make a live run look dead).
STALE_AFTER_S = 600.0


def crash_point(step: str) -> None:
    """Test-only: with LAKEFORGE_TEST_CRASH_AFTER=<step>, this process kills itself (SIGKILL) here, so the
    crash tests stop a job between two commits as a power cut or an OOM kill would, no cleanup run.
    With LAKEFORGE_TEST_STALL_AT=<step>, it creates the file LAKEFORGE_TEST_STALL_MARKER names and waits
    here until the process gets a stop signal, so a test can signal a job in the middle of its work."""
    if os.environ.get(CRASH_AFTER) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(STALL_AT) == step:
        Path(os.environ[STALL_MARKER]).touch()
        interrupts.stopping.wait()
        raise interrupts.Interrupted(interrupts.received[-1])


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
    log: logs.Progress | None = None
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

    def record(self, spark: SparkSession, lakehouse: Path, outcome: Outcome) -> dict:
        """Note what a stage's domain function did (its rows, details and the tables it wrote); its summary."""
        self.rows.update(outcome.rows)
        self.details.update(outcome.details)
        self.output(spark, lakehouse, *outcome.outputs)
        return outcome.summary


@dataclass
class Outcome:
    """What one stage's domain function did, for the stage to record in its run: rows and details for ops.runs,
    the tables it wrote (their versions are noted as outputs) and the summary the stage returns."""

    summary: dict
    rows: dict[str, int] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)


def new_run_id() -> str:
    """A new run's id (16 hex characters)."""
    return uuid.uuid4().hex[:16]


def _write(spark: SparkSession, lakehouse: Path, rows: list[dict]) -> None:
    """Append run rows (a start, an end, or a start with the end rows of abandoned runs) in one commit.

    Appends, not a replace of the run's row: a Delta append needs no table state, while a replace
    (replaceWhere, MERGE) first rebuilds the snapshot's state with three Spark jobs, several times an
    append's time, and every stage run writes twice. mergeSchema: an ops.runs made before ADDED_COLUMNS
    gets them on this append.
    """
    lake.append(spark, spark.createDataFrame(rows, SCHEMA), lakehouse, RUNS, merge_schema=True,
                **catalog.RUNS_TABLE.options())


def latest(ledger: DataFrame) -> DataFrame:
    """One row per run: its end row where it has one, else its `running` row (a transform of ops.runs rows)."""
    newest_first = Window.partitionBy("run_id").orderBy(F.col("ended_at").desc_nulls_last())
    return ledger.withColumn("_lf_rank", F.row_number().over(newest_first)).where("_lf_rank = 1").drop("_lf_rank")


def read_runs(spark: SparkSession, lakehouse: Path) -> DataFrame:
    """ops.runs with one row per run (see `latest`); rows older than ADDED_COLUMNS have them as null."""
    ledger = lake.read(spark, lakehouse, RUNS)
    for name, kind in ADDED_COLUMNS.items():
        if name not in ledger.columns:
            ledger = ledger.withColumn(name, F.lit(None).cast(kind))
    return latest(ledger)


def last_succeeded(spark: SparkSession, lakehouse: Path, job: str, pipeline: str) -> dt.datetime | None:
    """When the latest successful run of the job for the pipeline started (UTC), None when it never succeeded."""
    if not lake.exists(lakehouse, RUNS):
        return None
    return (lake.read(spark, lakehouse, RUNS)
            .where((F.col("job") == job) & (F.col("pipeline") == pipeline) & (F.col("status") == "succeeded"))
            .agg(F.max("started_at")).first()[0])


def process_start(pid: int) -> str | None:
    """What tells process `pid` apart from a later process given the same pid: the boot and the start
    time in clock ticks (Linux /proc); None where there is no /proc or no such process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{boot}:{stat.rpartition(')')[2].split()[19]}"  # field 22, starttime, counting from `state`


def process_gone(host: str, pid: int | None, started: str | None = None, heartbeat: float | None = None,
                 now: float | None = None) -> bool:
    """True when the process that ran a run (host, pid) is gone, so the run can never end by itself.

    On this host: no process has that pid, or the one that has it started at another time than
    `started` (a `process_start` value: the pid was reused). From another host, whose processes this
    one cannot see: its `heartbeat` (epoch seconds of its last sign of life) is older than STALE_AFTER_S;
    without a heartbeat (None) or a pid there is no telling, and the process counts as alive.
    """
    if pid is None:
        return False
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, and another user's
            pass
        if _is_zombie(pid):  # killed, not yet reaped by its parent
            return True
        current = process_start(pid) if started else None
        return current is not None and current != started
    if heartbeat is None:
        return False
    return (now if now is not None else time.time()) - heartbeat > STALE_AFTER_S


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def heartbeat_dir(lakehouse: Path) -> Path:
    """Where open runs keep their heartbeat files."""
    return lakehouse / "_lakeforge" / "runs"


def _heartbeat_at(lakehouse: Path, run_id: str) -> float:
    """The run's last heartbeat (epoch seconds); 0.0, long ago, when its file is gone."""
    try:
        return (heartbeat_dir(lakehouse) / f"{run_id}.json").stat().st_mtime
    except OSError:
        return 0.0


class _Heartbeat:
    """The heartbeat file of an open run: written when it starts, its mtime touched every HEARTBEAT_S by a
    daemon thread (a file, not a Delta commit: a commit per heartbeat would bloat ops.runs' log)."""

    def __init__(self, lakehouse: Path, row: dict):
        self.path = heartbeat_dir(lakehouse) / f"{row['run_id']}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(row, default=str, sort_keys=True))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lakeforge-heartbeat-{row['run_id']}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # the folder is gone (a reset): the run's row still tells its host and pid
                pass

    def stop(self, remove: bool) -> None:
        self._stop.set()
        if remove:
            self.path.unlink(missing_ok=True)


def _abandoned(lakehouse: Path, job: str, pipeline: str, running: str) -> list[tuple[Path, dict]]:
    """The heartbeat files of earlier runs of this job and pipeline whose process is gone, with each run's
    `abandoned` end row."""
    found = []
    for path in sorted(heartbeat_dir(lakehouse).glob("*.json")):
        try:
            start, beat = json.loads(path.read_text()), path.stat().st_mtime
        except (OSError, ValueError):  # half written by a run starting now, or removed by one ending now
            continue
        if (start.get("job"), start.get("pipeline")) != (job, pipeline) or start.get("run_id") == running:
            continue
        if not process_gone(start["host"], start.get("pid"), start.get("process_start"), beat):
            continue
        last = dt.datetime.fromtimestamp(beat, dt.timezone.utc).replace(tzinfo=None)
        end = {**start, "run_date": dt.date.fromisoformat(start["run_date"]) if start.get("run_date") else None,
               "started_at": dt.datetime.fromisoformat(start["started_at"]), "status": "abandoned",
               "ended_at": last, "duration_s": None,
               "error": f"abandoned: process {start.get('pid')} on {start['host']} is gone "
                        f"(last heartbeat {last:%Y-%m-%d %H:%M:%S} UTC)"}
        found.append((path, end))
    return found


def mark_abandoned(rows: list[dict], lakehouse: Path) -> list[dict]:
    """ops.runs rows (dicts with run_id, status, host, pid, process_start), a `running` one whose process
    is gone shown as `abandoned`."""
    marked = []
    for row in rows:
        if row["status"] == "running" and process_gone(row.get("host") or "", row.get("pid"), row.get("process_start"),
                                                       _heartbeat_at(lakehouse, row["run_id"])):
            row = {**row, "status": "abandoned",
                   "error": f"abandoned: process {row['pid']} on {row['host']} is gone, the run never ended"}
        marked.append(row)
    return marked


@contextmanager
def recorded(spark: SparkSession, lakehouse: Path, job: str, pipeline: str, env: str,
             run_date: dt.date | None = None, run_id: str | None = None, user: str | None = None) -> Iterator[Run]:
    """Record a job run in ops.runs around the block; a failure or a stop signal is recorded and re-raised.

    Earlier runs of the same job and pipeline whose process is gone get their `abandoned` end row in the
    same commit as this run's start row, with a warning line each. `user`: who runs it (lakeforge.access's
    current_user: the authenticated MLflow user in the team set-up), default the operating-system account.
    """
    run = Run(run_id=run_id or new_run_id(), job=job, pipeline=pipeline, log=logs.Progress(job),
              run_date=run_date)
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    row = {"run_id": run.run_id, "job": job, "pipeline": pipeline, "env": env, "run_date": run_date,
           "status": "running", "started_at": started, "ended_at": None, "duration_s": None,
           "user": user or os_user(), "host": socket.gethostname(), "git_commit": git_commit(),
           "lakeforge_version": __version__, "inputs": {}, "outputs": {}, "rows": {}, "details": "{}", "error": None,
           "pid": os.getpid(), "process_start": process_start(os.getpid())}
    handlers = interrupts.raise_on_stop_signals()  # again: SparkContext replaced the SIGINT handler
    heartbeat, opened = None, False
    t0 = time.monotonic()
    status, error = "succeeded", None
    try:
        with interrupts.deferred():
            heartbeat = _Heartbeat(lakehouse, row)
            abandoned = _abandoned(lakehouse, job, pipeline, run.run_id)
            for _, end in abandoned:
                run.log(f"WARNING run {end['run_id']} ({job} {pipeline}, started {end['started_at']:%Y-%m-%d %H:%M:%S} "
                        f"UTC on {end['host']}, pid {end['pid']}) was abandoned: its process is gone; recorded "
                        f"as abandoned in {RUNS}", run_id=run.run_id, abandoned_run_id=end["run_id"])
            _write(spark, lakehouse, [end for _, end in abandoned] + [row])
            opened = True
            for path, _ in abandoned:
                path.unlink(missing_ok=True)
        yield run
    except interrupts.Interrupted as exc:
        status, error = "interrupted", str(exc)
        interrupts.settle(spark)  # the session must answer the end row's write
        raise
    except BaseException as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        try:
            if opened:
                row.update(status=status, error=error, run_date=run.run_date,
                           ended_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
                           duration_s=round(time.monotonic() - t0, 3), inputs=run.inputs, outputs=run.outputs,
                           rows=run.rows, details=json.dumps(run.details, default=str, sort_keys=True))
                with interrupts.deferred():
                    _write(spark, lakehouse, [row])
                    heartbeat.stop(remove=True)  # only once the end row is in: else the next run records it
                    run.log(f"{status} in {row['duration_s']:.1f}s (run {run.run_id})", run_id=run.run_id,
                            pipeline=pipeline, status=status, duration_s=row["duration_s"], rows=run.rows,
                            error=error)
        finally:
            if heartbeat is not None:
                heartbeat.stop(remove=not opened)
            interrupts.restore(handlers)


HEALTH = ("failing", "interrupted", "abandoned", "running")  # the worst first; `ok` when none applies


def pipeline_health(rows: list[dict]) -> dict[str, dict]:
    """Per pipeline, from ops.runs rows: the latest run of each job and a health word.

    `failing` when the latest run of some job failed (the next successful run of that job clears
    it), `interrupted` when one was stopped by a signal, `abandoned` when one's process is gone
    without an end (see `mark_abandoned`), `running` when one is still open, else `ok`.
    """
    latest: dict[str, dict[str, dict]] = {}
    for row in sorted(rows, key=lambda r: r["started_at"]):
        latest.setdefault(row["pipeline"], {})[row["job"]] = row
    health = {}
    for pipeline, jobs in sorted(latest.items()):
        by_status = {status: sorted(job for job, r in jobs.items() if r["status"] == status)
                     for status in ("failed", "interrupted", "abandoned", "running")}
        state = next((word for word, status in zip(HEALTH, by_status) if by_status[status]), "ok")
        health[pipeline] = {"health": state, **{f"{status}_jobs": found for status, found in by_status.items()},
                            "last_run": max(jobs.values(), key=lambda r: r["started_at"])}
    return health


def ledger(spark: SparkSession, lakehouse: Path, tables: list[dict]) -> list[dict]:
    """Every ops.runs row `status` shows, abandoned runs marked (`tables`: lake.describe of each table); none when
    the ledger is missing or damaged (its health says so)."""
    if not any(t["table"] == RUNS and t["health"] == "ok" for t in tables):
        return []
    return mark_abandoned([r.asDict() for r in read_runs(spark, lakehouse).select(
        "run_id", "started_at", "job", "pipeline", "status", "run_date", "duration_s", "error", "host", "pid",
        "process_start").collect()], lakehouse)


def status(spark: SparkSession, lakehouse: Path, shared: bool, pipeline: str, pipelines: list[str],
           champion_of: Callable[[str], int | None]) -> dict:
    """What `status` shows: every table (lake.describe; `shared`: the catalog is a shared metastore), the last runs,
    and the health and @champion version (`champion_of`) of `pipeline`, of `pipelines` and of any in ops.runs."""
    tables = [lake.describe(spark, lakehouse, name) for name in lake.table_names(spark, lakehouse, shared=shared)]
    all_runs = ledger(spark, lakehouse, tables)  # a damaged ledger is flagged in `tables`
    health = pipeline_health(all_runs)
    names = sorted({pipeline, *pipelines, *health})
    found = {name: {**health_of(health, name), "champion": champion_of(name)} for name in names}
    return {"tables": tables, "runs": sorted(all_runs, key=lambda r: r["started_at"], reverse=True)[:10],
            "pipelines": found, "champion": found[pipeline]["champion"]}


def health_of(health: dict[str, dict], pipeline: str) -> dict:
    """A pipeline's entry of `pipeline_health`, `never run` for one with no run yet."""
    return health.get(pipeline, {"health": "never run", "failed_jobs": [], "interrupted_jobs": [],
                                 "abandoned_jobs": [], "running_jobs": [], "last_run": None})


def os_user() -> str:
    """The operating-system account of this process (its uid's name: $LOGNAME and $USER can say anything)."""
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


AUDIT = catalog.AUDIT
AUDIT_SCHEMA = ("changed_at timestamp, user string, host string, model string, alias string, "
                "from_version int, to_version int, reason string, run_id string, status string, "
                "action string, metrics string")
# What a row records: an alias moved by hand (`alias`) or by a training's gate (`gate`; in the team set-up
# @champion only by the `service` user), a human @champion promotion approved
# (`approval`), one refused (`refusal`, status `refused`), an alias found moved outside lakeforge
# (`outside`), a permission changed by `lakeforge access sync` (`permission`; model and alias name the
# MLflow user and resource).
ALIAS, GATE, APPROVAL, REFUSAL, OUTSIDE, PERMISSION = "alias", "gate", "approval", "refusal", "outside", "permission"
REFUSED = "refused"
# An alias move appends its `intended` row before the registry changes and its `done` row after; a
# `reconciled` row records what the registry was found to hold when the two disagreed (a kill between
# them, or a change made outside lakeforge). Rows from before the status column count as done.
INTENDED, DONE, RECONCILED = "intended", "done", "reconciled"


def record_alias_change(spark: SparkSession, lakehouse: Path, model: str, alias: str, from_version: int | None,
                        to_version: int | None, reason: str, run_id: str, status: str = DONE, user: str | None = None,
                        action: str = ALIAS, metrics: dict | None = None) -> None:
    """Append who moved which alias, when, from which version to which, why, how far (status), as what
    (action) and the metrics the decision saw, to ops.audit."""
    row = (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), user if user is not None else os_user(),
           socket.gethostname(), model, alias, from_version, to_version, reason, run_id, status, action,
           json.dumps(metrics, sort_keys=True, default=str) if metrics else None)
    _append_audit(spark, lakehouse, [row])


def record_permission_changes(spark: SparkSession, lakehouse: Path, user: str, changes: list) -> None:
    """One ops.audit row per permission `lakeforge access sync` changed (lakeforge.access.Change)."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = [(now, user, socket.gethostname(), c.user, c.resource, None, None,
             f"{c.before or 'none'} -> {c.after}", None, DONE, PERMISSION, None) for c in changes]
    _append_audit(spark, lakehouse, rows)


def _append_audit(spark: SparkSession, lakehouse: Path, rows: list[tuple]) -> None:
    # mergeSchema: an ops.audit written before the status, action or metrics column takes them on this append.
    lake.append(spark, spark.createDataFrame(rows, AUDIT_SCHEMA), lakehouse, AUDIT, merge_schema=True,
                **catalog.AUDIT_TABLE.options())


def read_audit(spark: SparkSession, lakehouse: Path, model: str) -> list[dict]:
    """ops.audit rows of a model's alias changes, oldest first, each with its status (rows without one are
    `done`)."""
    if not lake.exists(lakehouse, AUDIT):
        return []
    rows = lake.read(spark, lakehouse, AUDIT).where(F.col("model") == model)
    if "action" in rows.columns:  # refusals moved nothing; permission rows are about users, not aliases
        rows = rows.where(F.col("action").isNull() | F.col("action").isin(ALIAS, GATE, APPROVAL, OUTSIDE))
    status = F.col("status") if "status" in rows.columns else F.lit(None).cast("string")
    rows = rows.withColumn("status", F.coalesce(status, F.lit(DONE)))
    return [r.asDict() for r in rows.orderBy("changed_at").collect()]
