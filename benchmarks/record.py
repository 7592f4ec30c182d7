"""Where every benchmark writes its figures: benchmarks/results/<benchmark>.json, with the date, the machine
(cores, platform, Python), the load average before and after and the command line. The README and the docs
state the goals and link these files; no figure is copied into code or prose."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "results"


def add_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """--results PATH (default benchmarks/results/<name>.json): a smoke run writes elsewhere, not over the record."""
    parser.add_argument("--results", type=Path, default=FOLDER / f"{name}.json",
                        help=f"write the results here (default: benchmarks/results/{name}.json)")


class Recorder:
    """Started before the benchmark's work (load average before), `write` after it (load average after)."""

    def __init__(self, name: str, path: Path):
        self.name, self.path = name, path
        self.started = dt.datetime.now(dt.timezone.utc)
        self.load_before = [round(x, 2) for x in os.getloadavg()]

    def write(self, figures: dict) -> dict:
        """Print the figures as one JSON line and write them, with the run's context, to the results file."""
        record = {"benchmark": self.name, "date": self.started.isoformat(timespec="seconds"),
                  "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                              "python": platform.python_version()},
                  "load_average_before": self.load_before,
                  "load_average_after": [round(x, 2) for x in os.getloadavg()],
                  "command": shlex.join(["python", *sys.argv]), "figures": figures}
        print(json.dumps(figures, sort_keys=True))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        print(f"results: {self.path}", file=sys.stderr)
        return record
