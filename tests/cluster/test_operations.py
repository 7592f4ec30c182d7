"""Operations on the cluster: JSON log lines with each stage's timing and rows (the same as its ops.runs
row), Spark event logs that a History Server shows as past runs, and `lakeforge status`: the last runs,
each pipeline's health and its champion."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

pytestmark = pytest.mark.cluster


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_stages_log_json_lines_with_the_timing_and_rows_of_their_run(night, trained):
    runs = trained.runs()
    ends = []
    for command, _, _, log in trained.submits:
        records = json_lines(log.read_text(errors="replace"))
        assert records, f"{command}: no JSON log lines (log_format: json)"
        assert all({"ts", "job", "elapsed_s", "message"} <= set(r) for r in records), records
        ends += [r for r in records if "run_id" in r]
    # One closing line per stage run, in run order, saying what ops.runs says about that run.
    assert [r["run_id"] for r in ends] == list(runs["run_id"])
    for end, (_, row) in zip(ends, runs.iterrows()):
        assert (end["job"], end["pipeline"], end["status"]) == (row["job"], row["pipeline"], row["status"])
        assert end["duration_s"] == row["duration_s"] and end["duration_s"] > 0
        assert end["rows"] == dict(row["rows"])
        assert end["error"] == row["error"]
    assert [(r["job"], r["status"]) for r in ends] == [
        ("ingest", "succeeded"), ("train", "succeeded"),
        ("ingest", "succeeded"), ("features", "succeeded"), ("score", "failed"),
        ("ingest", "succeeded"), ("features", "succeeded"), ("score", "succeeded"), ("monitor", "succeeded")]
    assert ends[-2]["rows"] == {"gold.churn_predictions": len(trained.predictions_for(night.score_date))}


def test_event_logs_show_every_submitted_run_in_the_history_server(history, trained):
    apps = history.applications
    assert [app["name"] for app in apps] == ["lakeforge-ingest", "lakeforge-train", "lakeforge-nightly",
                                             "lakeforge-nightly"]
    assert all(app["id"].startswith("app-") for app in apps)  # standalone application ids, not local-*
    assert all([a["completed"] for a in app["attempts"]] == [True] for app in apps)
    failed_night, rerun = apps[2], apps[3]
    assert "FAILED" in {job["status"] for job in failed_night["jobs"]}
    for app in (apps[0], apps[1], rerun):
        assert app["jobs"] and {job["status"] for job in app["jobs"]} == {"SUCCEEDED"}, app["name"]


def test_every_submitted_driver_mapped_the_class_archive(history, trained):
    from lakeforge import jars

    archive = jars.class_archive()
    for app in history.applications:  # the driver JVM's command line: spark-submit with entrypoint.sh's options
        command = dict(app["environment"]["systemProperties"])["sun.java.command"]
        assert f"--conf spark.driver.extraJavaOptions=-XX:SharedArchiveFile={archive} -Dlog4j2" in command, command
    for command, _, _, log in trained.submits:  # the JVM warns, and loads every class itself, when it cannot
        assert "Unable to use shared archive" not in log.read_text(errors="replace"), command


def test_status_shows_the_last_runs_health_and_champion(status_text, night):
    lines = status_text.splitlines()
    start = lines.index("last runs:") + 1
    listed = lines[start:lines.index("", start)]
    assert [tuple(line.split()[2:5]) for line in listed] == [
        ("monitor", "churn", "succeeded"), ("score", "churn", "succeeded"), ("features", "churn", "succeeded"),
        ("ingest", "churn", "succeeded"), ("score", "churn", "failed"), ("features", "churn", "succeeded"),
        ("ingest", "churn", "succeeded"), ("train", "churn", "succeeded"), ("ingest", "churn", "succeeded")]
    assert listed[4].endswith("RuntimeError: injected executor failure (lakeforge cluster test)"), listed[4]
    pipelines = {line.split()[0]: line for line in lines[lines.index("pipelines:") + 1:]}
    assert re.fullmatch(rf"  churn +ok +last run [0-9-]+ [0-9:]+ monitor succeeded +champion: version "
                        rf"{night.champion_version}", pipelines.pop("churn"))
    # Pipelines declared under conf/pipelines/ that never ran here.
    assert all(re.fullmatch(r"  \S+ +never run +no runs +champion: none yet", line) for line in pipelines.values())


def test_health_is_the_latest_run_of_each_job():
    from lakeforge.runs import pipeline_health

    def run(minute: int, job: str, status: str, pipeline: str = "churn") -> dict:
        return {"started_at": dt.datetime(2026, 11, 27, 2, minute), "job": job, "status": status, "pipeline": pipeline}

    night = [run(30, "ingest", "succeeded"), run(31, "features", "succeeded"), run(32, "score", "failed"),
             run(33, "ingest", "succeeded", "demand")]
    health = pipeline_health(night)
    assert {name: (h["health"], h["failed_jobs"], h["last_run"]["job"]) for name, h in health.items()} == {
        "churn": ("failing", ["score"], "score"), "demand": ("ok", [], "ingest")}
    rerun = night + [run(40, "ingest", "succeeded"), run(41, "features", "running")]
    assert (pipeline_health(rerun)["churn"]["health"], pipeline_health(rerun)["churn"]["running_jobs"]) == (
        "failing", ["features"])  # the failed score has not been rerun yet
    rerun.append(run(42, "score", "succeeded"))
    assert pipeline_health(list(reversed(rerun)))["churn"]["health"] == "running"
    rerun[-2] = run(41, "features", "succeeded")
    assert pipeline_health(rerun)["churn"] == {"health": "ok", "failed_jobs": [], "interrupted_jobs": [],
                                               "abandoned_jobs": [], "running_jobs": [],
                                               "last_run": run(42, "score", "succeeded")}
