"""One nightly flow: the declared steps (lakeforge.flow.NIGHTLY) are the steps that `lakeforge run nightly`, the
cron example, the compose scheduler and the Airflow DAG run, in the same order and at the same time of day.

The CLI, cron and compose commands are run for real, with lakeforge's stage functions replaced by recorders
(no Spark): what is listed is what the command executes."""

from __future__ import annotations

import datetime as dt
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from lakeforge import access, cli, flow, stages

REPO = Path(__file__).resolve().parents[2]
CRON = REPO / "deploy" / "cron" / "lakeforge.cron"
COMPOSE = REPO / "docker" / "docker-compose.yml"
NIGHT = dt.date(2026, 11, 27)


class Calls(list):
    """(step, date) of each stage function called, in order; `fires`: what each night's monitor decides;
    `maintenance_due`: whether maintenance.every_days have passed."""

    fires = True
    maintenance_due = True


@pytest.fixture
def executed(monkeypatch) -> Calls:
    """Lakeforge's stage functions replaced by recorders of their calls."""
    calls = Calls()
    monkeypatch.setattr(stages, "_default_score_date", lambda ctx: NIGHT)

    def record(step: str, result):
        def stage(ctx, when=None, *rest):
            day = when[0] if isinstance(when, list) else when
            calls.append((step, day.isoformat() if day else None))
            return result(day) if callable(result) else result
        return stage

    # The team set-up asks its MLflow server before every verb (tests/cluster/test_access.py); no server here.
    monkeypatch.setattr(access, "check", lambda settings, verb, alias=None, client=None: "scheduler")
    monkeypatch.setattr(stages, "ingest", record("ingest", {"stage": "ingest"}))
    monkeypatch.setattr(stages, "maintenance_due", lambda ctx: calls.maintenance_due)
    monkeypatch.setattr(stages, "maintain", record("maintain", {"stage": "maintain"}))
    monkeypatch.setattr(stages, "build_features", record("features", {"stage": "features"}))
    monkeypatch.setattr(stages, "score", record("score", lambda d: {"rows": 1, "score_date": d.isoformat()}))
    monkeypatch.setattr(stages, "monitor", record("monitor", lambda d: {
        "date": d.isoformat(), "drifted": [], "retrain": calls.fires, "reason": "psi over 0.2 for 3 days"}))
    monkeypatch.setattr(stages, "retrain", record("retrain", lambda d: {"date": d.isoformat()}))
    return calls


def steps_of(calls) -> list[str]:
    return [step for step, _ in calls]


def cron_command() -> tuple[str, list[str]]:
    """The cron line's time of day (HH:MM) and the lakeforge command it runs."""
    line = next(line for line in CRON.read_text().splitlines() if line[:1].isdigit())
    minute, hour, *_ = line.split()
    argv = shlex.split(line.split("&&")[-1].split(">>")[0])
    return f"{int(hour):02d}:{int(minute):02d}", argv[argv.index("lakeforge"):]


def compose_command(monkeypatch) -> tuple[str, list[str], Path]:
    """The compose scheduler's time of day, and the spark-submit application and arguments it submits."""
    import subprocess

    command = yaml.safe_load(COMPOSE.read_text())["services"]["scheduler"]["command"]
    assert command[0] == "scheduler"
    done = subprocess.run(["bash", str(REPO / "docker" / "entrypoint.sh"), *command],
                          env={"PATH": "/usr/bin:/bin", "LAKEFORGE_DRY_RUN": "1", "SPARK_MASTER_URL": "spark://m:7077",
                               "SPARK_DRIVER_HOST": "driver"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    argv = shlex.split(done.stdout.split("UTC: ", 1)[1])
    application = next(i for i, arg in enumerate(argv) if arg.endswith(".py"))
    return command[1], argv[application + 1:], Path(argv[application])


def test_the_flow_run_nightly_cron_compose_and_the_dag_list_the_same_steps_in_the_same_order(
        executed, monkeypatch, airflow_dags):
    declared = flow.step_names()
    assert declared == ["ingest", "maintain", "features", "score", "monitor", "retrain"]
    assert [s.name for s in flow.NIGHTLY if s.when] == ["maintain", "retrain"]

    # `lakeforge run nightly` (what jobs/nightly.py runs).
    assert cli.main(["run", "nightly", "--pipeline", "churn", "--env", "test", "--date", NIGHT.isoformat()]) == 0
    run_nightly = steps_of(executed)

    # The cron example: its command, run as cron would.
    executed.clear()
    at, argv = cron_command()
    assert argv[:3] == ["lakeforge", "run", "nightly"]
    assert cli.main(argv[1:]) == 0
    cron = steps_of(executed)

    # The compose scheduler: the job its command submits (jobs/nightly.py), run with the arguments it gets.
    executed.clear()
    compose_at, args, application = compose_command(monkeypatch)
    monkeypatch.setenv("LAKEFORGE_ENV", "compose")
    monkeypatch.setattr(sys, "argv", [str(application), *args])
    with pytest.raises(SystemExit) as exit_code:
        runpy.run_path(str(REPO / "jobs" / application.name), run_name="__main__")
    assert exit_code.value.code == 0
    compose = steps_of(executed)

    dag = [task["task_id"] for task in airflow_dags["lakeforge_nightly"]["tasks"]]
    assert run_nightly == cron == compose == dag == declared
    minute, hour = flow.SCHEDULE.split()[:2]
    assert at == compose_at == f"{int(hour):02d}:{int(minute):02d}"
    assert airflow_dags["lakeforge_nightly"]["schedule"] == flow.SCHEDULE


def test_retrain_runs_only_on_the_nights_the_policy_fires(executed):
    executed.fires = False
    stages.nightly(object(), NIGHT)
    assert steps_of(executed) == ["ingest", "maintain", "features", "score", "monitor"]


def test_maintain_runs_only_when_it_is_due(executed):
    executed.maintenance_due = False
    summary = stages.nightly(object(), NIGHT)
    assert steps_of(executed) == ["ingest", "features", "score", "monitor", "retrain"]
    assert "maintain" not in summary


def test_a_backfill_ingests_and_builds_features_once_then_runs_each_date_in_order(executed):
    summary = stages.nightly(object(), NIGHT, NIGHT + dt.timedelta(days=1))
    day1, day2 = NIGHT.isoformat(), (NIGHT + dt.timedelta(days=1)).isoformat()
    assert executed == [("ingest", None), ("maintain", None), ("features", day1), ("score", day1), ("monitor", day1), ("retrain", day1),
                        ("score", day2), ("monitor", day2), ("retrain", day2)]
    assert summary["score"] == {"dates": 2, "rows": 2, "first": day1, "last": day2}
    assert summary["monitor"]["retrains"] == [day1, day2]


def test_a_backfill_that_ends_before_it_starts_is_refused(executed):
    from lakeforge.errors import DataError

    with pytest.raises(DataError, match=r"--to 2026-11-26 is before --from 2026-11-27"):
        stages.nightly(object(), NIGHT, NIGHT - dt.timedelta(days=1))
    assert steps_of(executed) == ["ingest", "maintain"]


@pytest.mark.parametrize("fired, skipped_exit, code", [(True, 99, 0), (False, 99, 99), (False, 0, 0)])
def test_the_retrain_verb_exits_the_skipped_code_when_the_decision_did_not_fire(monkeypatch, fired, skipped_exit,
                                                                                code):
    monkeypatch.setattr(flow, "retrain_if_fired", lambda ctx, day: {"stage": "retrain", "fired": fired})
    argv = ["retrain", "--pipeline", "churn", "--env", "test", "--date", NIGHT.isoformat()]
    assert cli.main(argv + ["--skipped-exit", str(skipped_exit)]) == code


@pytest.mark.parametrize("due, skipped_exit, code, maintained", [(True, 99, 0, True), (False, 99, 99, False),
                                                                 (False, 0, 0, True)])
def test_the_maintain_verb_skips_only_for_a_scheduler_when_not_due(monkeypatch, due, skipped_exit, code, maintained):
    """As a scheduler calls it (--skipped-exit), maintain runs only when due; by hand it always runs."""
    calls = []
    monkeypatch.setattr(stages, "maintenance_due", lambda ctx: due)
    monkeypatch.setattr(stages, "maintain", lambda ctx: calls.append("maintain") or {"stage": "maintain"})
    argv = ["maintain", "--pipeline", "churn", "--env", "test", "--skipped-exit", str(skipped_exit)]
    assert cli.main(argv) == code
    assert calls == (["maintain"] if maintained else [])
