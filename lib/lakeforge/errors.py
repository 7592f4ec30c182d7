"""Errors a user can cause and fix; the CLI prints them as one line, without a traceback.

Also the one-line cause of any other failure (`root_cause`): what the CLI prints for a Spark error.
"""

from __future__ import annotations

import re
import sys
import traceback


class LakeforgeError(Exception):
    """A problem the user can fix: the message names the thing and the fix."""


class ConfigError(LakeforgeError):
    """A configuration file, key or value is wrong."""


class EnvironmentProblem(LakeforgeError):
    """The machine lacks something lakeforge needs (Java, cached jars, ...)."""


class DataError(LakeforgeError):
    """Input data or a table is missing or breaks its contract."""


class DeletionRefused(LakeforgeError):
    """lakeforge was asked to delete a folder it did not create for this project."""


# A Java exception line: `java.io.IOException: No space left on device` (the class has a package, or ends in
# Exception/Error, so a prose line with a colon is not taken for one).
_JAVA_LINE = re.compile(r"^(?:Caused by: |: )?((?:[a-z_$][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error|Throwable)?|"
                        r"[A-Z][\w$]*(?:Exception|Error))(?:: (.*))?$")
# The last line of a Python traceback: `ValueError: boom` or `pkg.module.CustomError: boom`.
_PYTHON_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)): (.*)$")
_PYTHON_WORKER = "org.apache.spark.api.python.PythonException"
# A frame of a Python traceback, and the paths of code that is not the user's: the standard library, installed
# packages (pyspark's worker among them) and lakeforge itself, except its demo (the demo's functions are a user's).
_FRAME = re.compile(r'^  File "(.+)", line (\d+), in (.+)$')
_LIBRARY = re.compile(r"(/site-packages/|/dist-packages/|/lib/python3[.\d]*/|/pyspark/|^<|"
                      r"/lakeforge/(?!demo/)[^/]+\.py$)")


def root_cause(exc: BaseException) -> str:
    """One line naming the deepest cause of a failure: the innermost `Caused by:` of a Java exception, a Python
    worker's own exception, else the exception itself (`Type: first line`)."""
    try:
        text = str(exc)
    except Exception:  # a Py4J error whose JVM is gone cannot render its Java stack
        text = ""
    found = root_cause_of_text(text) if text else None
    if found:
        return found
    first = text.strip().splitlines()[0] if text.strip() else ""
    frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(exc.__traceback__)]
    return f"{type(exc).__name__}: {first}" + _located(frames) if first else type(exc).__name__ + _located(frames)


# A worker's last line naming one of lakeforge's own error classes: `lakeforge.errors.DataError: ...`.
_OWN_ERROR = re.compile(r"^(lakeforge(?:\.\w+)*)\.(\w+): (.*)$")


def users_mistake(exc: BaseException) -> LakeforgeError | None:
    """The LakeforgeError behind a failure, else None: the exception itself, or one a Python worker raised (a
    feature function's output checked on the executors), rebuilt from the Spark exception that wraps it. Only a
    class of a lakeforge module already loaded is taken; nothing is imported or evaluated from the text."""
    if isinstance(exc, LakeforgeError):
        return exc
    try:
        text = str(exc)
    except Exception:  # a Py4J error whose JVM is gone cannot render its Java stack
        return None
    match = _OWN_ERROR.match(root_cause_of_text(text) or "")
    found = match and getattr(sys.modules.get(match[1]), match[2], None)
    if isinstance(found, type) and issubclass(found, LakeforgeError):
        return found(match[3])
    return None


def _located(frames: list[tuple[str, int, str]]) -> str:
    """Where the user's code raised: its innermost frame that is not Python's, a package's or lakeforge's own."""
    mine = [f for f in frames if not _LIBRARY.search(f[0].replace("\\", "/"))]
    if not mine:
        return ""
    path, line, function = mine[-1]
    return f" (raised in {function}, {path}, line {line})"


def root_cause_of_text(text: str) -> str | None:
    """The deepest cause named in an exception's text (a Java stack trace, a Python worker's traceback), or None."""
    lines = text.splitlines()
    causes = [i for i, line in enumerate(lines) if line.startswith("Caused by: ")]
    if causes:
        start = causes[-1]
    else:  # no cause: the first Java exception line (a Py4JJavaError's text starts `An error occurred ... \n: ...`)
        start = next((i for i, line in enumerate(lines) if line.startswith(": ") and _JAVA_LINE.match(line)), None)
    if start is not None:
        match = _JAVA_LINE.match(lines[start])
        if match and match.group(1) != _PYTHON_WORKER:
            return f"{match.group(1)}: {match.group(2)}" if match.group(2) else match.group(1)
        # A Python worker failed: its traceback follows the Java line, up to the Java frames.
        worker = []
        for line in lines[start + 1:]:
            if line.startswith("\tat "):
                break
            worker.append(line)
        return _last_python_error(worker)
    return _last_python_error(lines)


def _last_python_error(lines: list[str]) -> str | None:
    """The last `Type: message` line of a Python traceback, with where the user's code raised it."""
    for i in range(len(lines) - 1, -1, -1):
        match = _PYTHON_LINE.match(lines[i])
        if match:
            frames = [(m[1], int(m[2]), m[3]) for m in map(_FRAME.match, lines[:i]) if m]
            return f"{match.group(1)}: {match.group(2)}" + _located(frames)
    return None
