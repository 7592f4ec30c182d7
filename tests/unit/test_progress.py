"""Progress lines: one per message, also when several threads log at once (ingest's sources do)."""

from __future__ import annotations

import io
import json
import threading
import time

from lakeforge.runs import Progress


class SlowStream(io.StringIO):
    def write(self, text: str) -> int:
        time.sleep(0.001)  # gives the other threads a chance to write in between two writes of one line
        return super().write(text)


def test_lines_logged_from_several_threads_never_share_a_line():
    stream = SlowStream()
    log = Progress("ingest", json_lines=True, stream=stream)
    threads = [threading.Thread(target=lambda n=n: [log(f"source {n}: step {i}") for i in range(20)])
               for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = stream.getvalue().splitlines()
    assert sorted(json.loads(line)["message"] for line in lines) == sorted(
        f"source {n}: step {i}" for n in range(4) for i in range(20))
