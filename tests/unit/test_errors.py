"""`root_cause`: the one line the CLI prints for a failure is its deepest cause, from real exception texts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lakeforge import cli, errors
from lakeforge.errors import root_cause, root_cause_of_text

TEXTS = Path(__file__).resolve().parents[1] / "fixtures" / "exceptions"
# A Py4JJavaError without a `Caused by` (a table whose log lost a commit in the middle), as Py4J renders it.
NO_CAUSE = """An error occurred while calling z:io.delta.tables.DeltaTable.forPath.
: org.apache.spark.sql.delta.DeltaIllegalStateException: [DELTA_VERSIONS_NOT_CONTIGUOUS] Versions (0, 1, 3, 4) are not contiguous. 
A gap in the delta log between versions 0 and 4 was detected while trying to load version -1.
\tat org.apache.spark.sql.delta.DeltaErrorsBase.deltaVersionsNotContiguousException(DeltaErrors.scala:1370)
"""


class FakePy4JError(Exception):
    """Renders as a Py4JJavaError does: the call, then the Java stack trace with its causes."""


@pytest.mark.parametrize("name, cause", [
    ("read_only_save.txt", "java.io.FileNotFoundException: /tmp/h5exp/m/ro/ops/runs/"
                           "part-00001-9bd64784-46b3-45f1-aba4-75407fa681c4-c000.snappy.parquet (Read-only file system)"),
    ("disk_full_save.txt", "java.io.IOException: No space left on device"),
    ("python_worker.txt", "ValueError: feature function churn_features: column 'orders_30d' is missing "
                          "(raised in boom, /srv/pipelines/churn.py, line 9)"),
])
def test_the_deepest_cause_of_real_failures(name, cause):
    assert root_cause_of_text((TEXTS / name).read_text()) == cause


def test_a_java_exception_without_cause_is_its_own_first_line():
    assert root_cause(FakePy4JError(NO_CAUSE)) == (
        "org.apache.spark.sql.delta.DeltaIllegalStateException: [DELTA_VERSIONS_NOT_CONTIGUOUS] Versions "
        "(0, 1, 3, 4) are not contiguous. ")


def test_a_python_worker_failure_inside_a_java_trace_is_the_worker_exception():
    text = ("An error occurred while calling o88.save.\n: org.apache.spark.SparkException: Job aborted.\n"
            "\tat org.apache.spark.sql.errors.QueryExecutionErrors$.jobAbortedError(QueryExecutionErrors.scala:652)\n"
            "Caused by: org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
            "  File \"/srv/pipelines/churn.py\", line 9, in boom\n"
            "KeyError: 'orders_30d'\n\n"
            "\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:581)\n")
    assert root_cause(FakePy4JError(text)) == "KeyError: 'orders_30d' (raised in boom, /srv/pipelines/churn.py, line 9)"


def test_any_other_error_is_its_type_and_first_line():
    assert root_cause(KeyError("model churn has no alias champion")) == "KeyError: 'model churn has no alias champion'"
    assert root_cause(RuntimeError("two\nlines")) == "RuntimeError: two"
    assert root_cause(RuntimeError()) == "RuntimeError"


def test_the_cli_prints_the_cause_on_one_line(monkeypatch, capsys):
    def fail(args):
        raise FakePy4JError((TEXTS / "disk_full_save.txt").read_text())

    monkeypatch.setattr(cli, "run", fail)
    assert cli.main(["ingest"]) == 1
    assert capsys.readouterr().err == (
        "lakeforge ingest: failed: java.io.IOException: No space left on device (rerun with --debug for the "
        "traceback; the run is recorded in ops.runs)\n")


def test_a_user_functions_failure_names_the_users_frame_not_lakeforges():
    assert root_cause_of_text((TEXTS / "user_function.txt").read_text()) == (
        "ValueError: bad row 7 (raised in customer_activity, /srv/pipelines/failing_features.py, line 11)")


def test_a_failure_inside_pandas_names_the_user_line_that_called_it():
    text = ("An exception was thrown from the Python worker: Traceback (most recent call last):\n"
            '  File "/opt/venv/lib/python3.11/site-packages/pyspark/worker.py", line 2011, in main\n'
            '  File "/opt/lakeforge/lib/lakeforge/pandas_on_spark.py", line 277, in run\n'
            '  File "/srv/pipelines/churn.py", line 14, in activity\n'
            '    rows["order_total"]\n'
            '  File "/opt/venv/lib/python3.11/site-packages/pandas/core/frame.py", line 4107, in __getitem__\n'
            '  File "/usr/lib/python3.11/functools.py", line 909, in wrapper\n'
            "KeyError: 'order_total'\n")
    assert root_cause_of_text(text) == "KeyError: 'order_total' (raised in activity, /srv/pipelines/churn.py, line 14)"


def _users_function():
    raise ValueError("bad row 7")


def test_a_failure_on_the_driver_names_the_users_frame():
    with pytest.raises(ValueError) as raised:
        _users_function()
    line = _users_function.__code__.co_firstlineno + 1
    assert root_cause(raised.value) == f"ValueError: bad row 7 (raised in _users_function, {__file__}, line {line})"


def _worker_failure(last_line: str) -> FakePy4JError:
    """A Spark job failed by an exception in a Python worker whose traceback ends with `last_line`."""
    return FakePy4JError(
        "An error occurred while calling o88.collectToPython.\n: org.apache.spark.SparkException: Job aborted.\n"
        "Caused by: org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
        '  File "/venv/lib/python3.11/site-packages/lakeforge/pandas_on_spark.py", line 229, in conform\n'
        f"{last_line}\n\n\tat org.apache.spark.api.python.BasePythonRunner.handlePythonException(PythonRunner.scala)\n")


def test_a_lakeforge_error_raised_on_a_worker_is_the_users_mistake_with_exit_2(monkeypatch, capsys):
    def fail(args):
        raise _worker_failure("lakeforge.errors.DataError: feature function m.f: column 'x' is declared bigint")

    monkeypatch.setattr(cli, "run", fail)
    assert cli.main(["features"]) == 2
    assert capsys.readouterr().err == ("lakeforge features: error: feature function m.f: column 'x' is declared "
                                       "bigint\n")


@pytest.mark.parametrize("last_line", [
    "lakeforge.errors.PlainError: a lakeforge module's class, but not a LakeforgeError",
    "lakeforge.errors.TextError: a lakeforge module's name, but not a class",
    "lakeforge.not_loaded.DataError: a module no one imported is not imported because a traceback names it",
    "KeyError: 'x'",
])
def test_any_other_worker_failure_stays_a_failure_with_exit_1(monkeypatch, capsys, last_line):
    monkeypatch.setattr(errors, "PlainError", ValueError, raising=False)
    monkeypatch.setattr(errors, "TextError", "text", raising=False)

    def fail(args):
        raise _worker_failure(last_line)

    monkeypatch.setattr(cli, "run", fail)
    assert cli.main(["features"]) == 1
    assert capsys.readouterr().err == f"lakeforge features: failed: {last_line} (rerun with --debug for the " \
                                      f"traceback; the run is recorded in ops.runs)\n"
    assert "lakeforge.not_loaded" not in sys.modules
