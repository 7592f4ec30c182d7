"""Progress and log lines through Python's `logging`: the `lakeforge` logger, text or JSON lines, one handler per
stream (stderr by default), levels from the settings (`log_format`, `log_level`)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import time

LOGGER = "lakeforge"
# A message that says WARNING or ERROR up front (after an optional `source:`) is logged at that level.
_LEVEL_WORD = re.compile(r"^(?:[\w.-]+: )?(WARNING|ERROR)\b")


class TextFormatter(logging.Formatter):
    """`[job elapsed] message`: the line a person reads."""

    def format(self, record: logging.LogRecord) -> str:
        elapsed = getattr(record, "elapsed_s", None)
        when = f" {elapsed:6.1f}s" if elapsed is not None else ""
        return f"[{getattr(record, 'job', record.name)}{when}] {record.getMessage()}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, job, elapsed_s, message and the fields the caller gave."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="seconds"),
                "level": record.levelname, "job": getattr(record, "job", record.name),
                "elapsed_s": getattr(record, "elapsed_s", None), "message": record.getMessage(),
                **getattr(record, "fields", {})}
        return json.dumps(line, default=str)


class _Stderr(logging.StreamHandler):
    """stderr as it is when a line is written, not when the handler was made (a redirect, pytest's capture);
    as logging's own last-resort handler does."""

    def __init__(self):
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


def configure(log_format: str = "text", level: str | int = "INFO", stream=None) -> logging.Handler:
    """Send the lakeforge logger's records to `stream` (default: stderr) as text or JSON lines at `level` and up.
    Configuring a stream again replaces its handler: one handler per stream, so no line is written twice."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    logger.propagate = False  # a root handler another library installs would print every line again
    key = "stderr" if stream is None else id(stream)
    for old in [h for h in logger.handlers if getattr(h, "lakeforge_stream", None) == key]:
        logger.removeHandler(old)
    handler = _Stderr() if stream is None else logging.StreamHandler(stream)
    handler.lakeforge_stream = key
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger.addHandler(handler)
    return handler


class Progress:
    """A job's progress: `log(message, **fields)` logs to `lakeforge.<job>` with the time since the job started;
    the fields go into the JSON line."""

    def __init__(self, job: str):
        self.job, self.started = job, time.monotonic()
        self.logger = logging.getLogger(f"{LOGGER}.{job}")

    def __call__(self, message: str, **fields) -> None:
        word = _LEVEL_WORD.match(message)
        level = logging.getLevelName(word.group(1)) if word else logging.INFO
        self.logger.log(level, message, extra={"job": self.job, "fields": fields,
                                               "elapsed_s": round(time.monotonic() - self.started, 1)})
