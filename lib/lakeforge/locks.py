"""One writer per lakehouse and job: an exclusive `flock` on `<lakehouse>/_lakeforge/locks/<name>.lock`.

The operating system releases a flock when the process holding it ends, however it ends (SIGKILL,
OOM kill), so a lock left by a dead process is simply taken by the next one. The file's text says
who holds it (job, pipeline, pid, host, run id, since when) for the message of a process that
finds it taken. flock needs a filesystem that supports it: a local disk, or NFSv4 (which locks
across hosts). On an object store mounted with FUSE (s3fs, gcsfuse) flock either fails, and
lakeforge then stops with exit 2 and says so, or locks within one host only.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lakeforge.errors import LakeforgeError

# How long a second process polls for a taken lock when it waits (settings: lock_wait_s).
POLL_S = 1.0


# One writer per lakehouse and job: ingest per lakehouse (pipelines share their sources), score per pipeline,
# and train, retrain and promote share one lock per pipeline (each moves the pipeline's aliases). `run nightly`
# and `demo` take each stage's lock while that stage runs, so one process never waits for itself.
JOBS = {"ingest": "ingest", "maintain": "ingest", "score": "score-{pipeline}", "train": "train-{pipeline}",
        "retrain": "train-{pipeline}", "promote": "train-{pipeline}"}


class AlreadyRunning(LakeforgeError):
    """Another process holds the lock of this job."""


_held: dict[Path, list] = {}  # this process's locks: path -> [fd, depth]; a stage inside another may take it again


def lock_path(lakehouse: Path, name: str) -> Path:
    """The lock file of `name` (e.g. `ingest`, `score-<pipeline>`)."""
    return lakehouse / "_lakeforge" / "locks" / f"{name}.lock"


@contextmanager
def held(lakehouse: Path, name: str, job: str, pipeline: str, run_id: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold lock `name` for the block; if another process holds it, wait up to `wait_s` seconds, then
    raise AlreadyRunning naming that process and its run."""
    path = lock_path(lakehouse, name)
    if path in _held:
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _acquire(fd, path, job, pipeline, wait_s)
        since = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"job={job}\npipeline={pipeline}\npid={os.getpid()}\nhost={socket.gethostname()}\n"
                       f"run_id={run_id}\nsince={since}\n").encode(), 0)
        _held[path] = [fd, 1]
    except BaseException:
        os.close(fd)
        raise
    try:
        yield
    finally:
        del _held[path]
        os.close(fd)  # releases the flock; the text stays, and is ignored by whoever takes the lock next


def _acquire(fd: int, path: Path, job: str, pipeline: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise AlreadyRunning(_taken_message(path, job, pipeline, wait_s)) from None
            time.sleep(POLL_S)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            raise LakeforgeError(f"cannot lock {path}: {exc.strerror}. lakeforge keeps one writer per job with "
                                 f"flock, which needs a local disk or NFSv4 under paths.lakehouse") from None


def _taken_message(path: Path, job: str, pipeline: str, wait_s: float) -> str:
    holder = {}
    for _ in range(3):  # the holder writes its text right after taking the lock: read again if it is empty
        holder = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        if holder:
            break
        time.sleep(0.2)
    waited = f" (waited {wait_s:.0f}s)" if wait_s else ""
    return (f"{holder.get('job', 'another job')} of pipeline {holder.get('pipeline', '?')} is already running "
            f"since {holder.get('since', '?')} (pid {holder.get('pid', '?')}, host {holder.get('host', '?')}, "
            f"run {holder.get('run_id', '?')}){waited}; {job} {pipeline} did not start. Wait for it to end, or "
            f"set lock_wait_s to wait ({path})")
