"""benchmarks/record.py: what every benchmark's results file holds besides its figures."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_record():
    spec = importlib.util.spec_from_file_location("record", REPO / "benchmarks" / "record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_results_file_has_the_date_machine_load_and_command(tmp_path, monkeypatch, capsys):
    record = load_record()
    parser = argparse.ArgumentParser()
    record.add_argument(parser, "score_bench")
    assert parser.parse_args([]).results == REPO / "benchmarks" / "results" / "score_bench.json"
    monkeypatch.setattr(sys, "argv", ["benchmarks/score_bench.py", "--rows", "20000"])
    recorder = record.Recorder("score_bench", tmp_path / "out" / "score_bench.json")
    recorder.write({"rows": 20000, "c_lakeforge_noop_s": 1.5})
    written = json.loads((tmp_path / "out" / "score_bench.json").read_text())
    assert set(written) == {"benchmark", "date", "machine", "load_average_before", "load_average_after", "command",
                            "figures"}
    assert (written["benchmark"], written["figures"]) == ("score_bench", {"rows": 20000, "c_lakeforge_noop_s": 1.5})
    assert written["machine"]["cores"] == os.cpu_count()
    assert written["command"] == "python benchmarks/score_bench.py --rows 20000"
    assert len(written["load_average_before"]) == len(written["load_average_after"]) == 3
    assert written["date"].endswith("+00:00")
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == written["figures"]


def test_every_benchmark_writes_its_results_file():
    for script in sorted((REPO / "benchmarks").glob("*_bench.py")):
        text = script.read_text()
        assert f'record.add_argument(parser, "{script.stem}")' in text, script.name
        assert f'record.Recorder("{script.stem}", args.results)' in text and "recorder.write(" in text, script.name


def test_suite_bench_refuses_fewer_than_one_run_before_running_anything(capsys):
    spec = importlib.util.spec_from_file_location("suite_bench", REPO / "benchmarks" / "suite_bench.py")
    suite_bench = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "benchmarks"))  # it imports record.py from beside itself
    try:
        spec.loader.exec_module(suite_bench)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    with pytest.raises(SystemExit) as refused:
        suite_bench.main(["--runs", "0"])
    assert refused.value.code == 2
    assert "--runs 0: run the target at least once" in capsys.readouterr().err
