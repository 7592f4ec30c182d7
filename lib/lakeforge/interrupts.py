"""Stop signals (SIGTERM, SIGINT) as a Python exception, so an interrupted stage records its end in ops.runs.

Schedulers stop a job with SIGTERM (cron wrappers, Airflow, systemd, `docker stop`); a terminal with
SIGINT. The handler raises `Interrupted` in the main thread, which may be inside a Py4J call to
Spark's JVM: `settle` then cancels the running Spark jobs and drops that call's connection, so the
session answers the next call (the run's end row) instead of the interrupted one's late reply.
Spark's JVM, started by this process, ignores SIGTERM (`children_ignore_sigterm`): a scheduler that
signals the whole process group (Airflow, `timeout`, systemd with KillMode=control-group) would
otherwise stop the JVM before the run's end row is written; the JVM exits when its Python process does.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A stop signal received by this process; not an Exception, so `except Exception` does not swallow it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process ended by it: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum


stopping = threading.Event()  # set by the first stop signal: long waits in lakeforge's threads can watch it
received: list[int] = []      # the stop signals received, in order
_deferring = 0                # > 0 while a run's row is written: a signal then waits until the row is committed
_pending: list[int] = []
_cancelling: list[threading.Thread] = []
_ignore_sigterm_in_children = False


def _on_stop_signal(signum: int, frame) -> None:
    received.append(signum)
    stopping.set()
    if _deferring:
        _pending.append(signum)
        return
    _cancel_spark_jobs()
    raise Interrupted(signum)


def _cancel_spark_jobs() -> None:
    """Cancel this process's running Spark jobs from a thread of its own.

    The main thread may be waiting inside a Py4J call, so its connection cannot carry the request;
    a new thread gets a connection of its own (PySpark's own SIGINT handler uses the busy one).
    """
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is None:
        return

    def cancel() -> None:
        try:
            sc.cancelAllJobs()
        except Exception:  # the JVM is gone already: nothing left to cancel
            pass

    thread = threading.Thread(target=cancel, name="lakeforge-cancel-jobs", daemon=True)
    thread.start()
    _cancelling.append(thread)


def raise_on_stop_signals() -> dict[int, object]:
    """Make SIGTERM and SIGINT raise `Interrupted` in the main thread; returns the handlers they replace.

    A no-op ({}) outside the main thread, where Python cannot set signal handlers. SparkContext
    installs its own SIGINT handler when it starts, so `runs.recorded` calls this again for each run.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS}


def restore(previous: dict[int, object]) -> None:
    """Put back the handlers `raise_on_stop_signals` replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold stop signals while the block runs (a run's start or end row); raise `Interrupted` after it."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and _pending:
        signum = _pending.pop(0)
        _pending.clear()
        _cancel_spark_jobs()
        raise Interrupted(signum)


def settle(spark) -> None:
    """After an `Interrupted`: wait for the job cancellation, and drop the main thread's Py4J connection.

    A call interrupted while it waited for the JVM leaves its reply unread on that connection; the
    next call on it would read that reply as its own. Py4J opens a new connection for the next call.
    """
    for thread in _cancelling:
        thread.join(timeout=60)
    _cancelling.clear()
    client = getattr(getattr(spark.sparkContext, "_gateway", None), "_gateway_client", None)
    connection = client.get_thread_connection() if hasattr(client, "get_thread_connection") else None
    if connection is not None:
        connection.close()


@contextmanager
def children_ignore_sigterm() -> Iterator[None]:
    """Processes this thread starts in the block (Spark's JVM) ignore SIGTERM; this process still handles it.

    An ignored signal stays ignored across exec, and the JVM then installs no SIGTERM handler of its own
    (as PySpark already does for SIGINT). The disposition is set in the child only, right after the
    fork, so this process never misses a SIGTERM meanwhile.
    """
    global _ignore_sigterm_in_children
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _ignore_sigterm_in_children = True
    try:
        yield
    finally:
        _ignore_sigterm_in_children = False


def _after_fork_in_child() -> None:
    if _ignore_sigterm_in_children:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


# Python runs these hooks in a child forked by os.fork() and by subprocess when given a preexec_fn,
# which PySpark's JVM launcher always passes.
os.register_at_fork(after_in_child=_after_fork_in_child)

