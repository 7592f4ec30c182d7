"""Progress lines through Python's logging: one line per message also when several threads log at once (ingest's
sources do), text or JSON, levels, and one handler per stream."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest

from lakeforge import logs


class CharByCharStream(io.StringIO):
    """A stream that writes one character at a time, yielding between them: two unserialized writers interleave."""

    def write(self, text: str) -> int:
        for char in text:
            super().write(char)
            time.sleep(0)  # lets another thread write in between two characters of one line
        return len(text)


@pytest.fixture
def stream():
    """A fresh stream with the lakeforge logger's handler on it; the logger's handlers as before afterwards."""
    logger = logging.getLogger(logs.LOGGER)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    out = CharByCharStream()
    logger.handlers = []
    yield out
    logger.handlers, logger.level, logger.propagate = saved


def test_lines_logged_from_several_threads_never_share_a_line(stream):
    logs.configure("json", stream=stream)
    log = logs.Progress("ingest")
    threads = [threading.Thread(target=lambda n=n: [log(f"source {n}: step {i}", source=n) for i in range(20)])
               for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = stream.getvalue().splitlines()
    assert sorted(json.loads(line)["message"] for line in lines) == sorted(
        f"source {n}: step {i}" for n in range(4) for i in range(20))


def test_json_lines_carry_the_job_level_elapsed_time_and_fields(stream):
    logs.configure("json", stream=stream)
    log = logs.Progress("score")
    log("scored 12 rows", rows=12)
    log("orders: WARNING 2 rows refused")
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert set(first) == {"ts", "level", "job", "elapsed_s", "message", "rows"}
    assert (first["job"], first["level"], first["message"], first["rows"]) == ("score", "INFO", "scored 12 rows", 12)
    assert 0 <= first["elapsed_s"] < 60
    assert (second["level"], second["message"]) == ("WARNING", "orders: WARNING 2 rows refused")


def test_text_lines_and_the_level_threshold(stream):
    logs.configure("text", level="WARNING", stream=stream)
    log = logs.Progress("monitor")
    log("drift computed")
    log("WARNING the population filter keeps no row")
    log("orders: ERROR the file is unreadable")
    lines = stream.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["WARNING the population filter keeps no row",
                                                          "orders: ERROR the file is unreadable"]
    assert all(line.startswith("[monitor ") and line.split("] ")[0].endswith("s") for line in lines), lines


def test_configuring_a_stream_again_replaces_its_handler(stream):
    logs.configure("text", stream=stream)
    logs.configure("json", stream=stream)
    other = io.StringIO()
    logs.configure("text", stream=other)
    logs.Progress("train")("fitted")
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["fitted"]
    assert other.getvalue().endswith("] fitted\n")
    ours = [h for h in logging.getLogger(logs.LOGGER).handlers if hasattr(h, "lakeforge_stream")]  # not pytest's
    assert [h.stream for h in ours] == [stream, other]
