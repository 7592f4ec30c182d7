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
    """(step, date) of each stage function called, in order; `by_pipeline`: (pipeline, step) of the same calls,
    with the sources of an ingest; `fires`: what each night's monitor decides; `maintenance_due`: whether
    maintenance.every_days have passed."""

    fires = True
    maintenance_due = True

    def __init__(self):
        super().__init__()
        self.by_pipeline: list[tuple] = []

    def clear(self):
        super().clear()
        self.by_pipeline.clear()


@pytest.fixture
def executed(monkeypatch) -> Calls:
    """Lakeforge's stage functions replaced by recorders of their calls."""
    calls = Calls()
    monkeypatch.setattr(stages, "_default_score_date", lambda ctx: NIGHT)

    def record(step: str, result):
        def stage(ctx, when=None, *rest, skip=None):
            day = when[0] if isinstance(when, list) else when
            calls.append((step, day.isoformat() if day else None))
            pipeline = getattr(ctx, "pipeline", None)
            if pipeline is not None:  # what ingest loads; what maintain leaves to an earlier pipeline of the night
                calls.by_pipeline.append((pipeline.name, step, *([list(pipeline.sources)] if step == "ingest" else []),
                                          *([sorted(skip)] if skip is not None else [])))
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


def ingest_tables(*sources: str) -> list[str]:
    """What ingest writes for these sources (bronze, silver), and its ops tables, sorted."""
    return sorted([f"{layer}.{s}" for s in sources for layer in ("bronze", "silver")]
                  + ["ops.ingested_files", "ops.quality", "ops.quarantine"])


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

    # The cron example: its command, run as cron would: every pipeline of conf/pipelines.
    executed.clear()
    at, argv = cron_command()
    assert argv[:3] == ["lakeforge", "run", "nightly"] and "--pipeline" not in argv
    assert cli.main(argv[1:]) == 0
    cron = executed.by_pipeline[:]

    # The compose scheduler: the job its command submits (jobs/nightly.py), run with the arguments it gets.
    executed.clear()
    compose_at, args, application = compose_command(monkeypatch)
    monkeypatch.setenv("LAKEFORGE_ENV", "compose")
    assert "--pipeline" not in args
    monkeypatch.setattr(sys, "argv", [str(application), *args])
    with pytest.raises(SystemExit) as exit_code:
        runpy.run_path(str(REPO / "jobs" / application.name), run_name="__main__")
    assert exit_code.value.code == 0
    compose = executed.by_pipeline[:]

    assert run_nightly == declared
    for dag in airflow_dags.values():
        assert [task["task_id"] for task in dag["tasks"]] == declared
        assert dag["schedule"] == flow.SCHEDULE
    # Every pipeline in turn, sorted by name; a source is ingested and maintained by the first pipeline that names
    # it only (maintain is told the tables the pipelines before it maintained).
    assert cron == compose == [
        ("churn", "ingest", ["stores", "customers", "orders"]), ("churn", "maintain", []),
        *[("churn", step) for step in declared[2:]],
        ("delivery_time", "ingest", ["deliveries", "staffing"]),
        ("delivery_time", "maintain", ingest_tables("stores", "customers", "orders")),
        *[("delivery_time", step) for step in declared[2:]],
        ("demand", "maintain", ingest_tables("stores", "customers", "orders", "deliveries", "staffing")),
        *[("demand", step) for step in declared[2:]]]
    minute, hour = flow.SCHEDULE.split()[:2]
    assert at == compose_at == f"{int(hour):02d}:{int(minute):02d}"


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


def test_a_pipeline_that_fails_does_not_stop_the_others_and_the_summary_names_it(executed, monkeypatch, capsys):
    """churn fails in features (a Spark failure: exit 1), demand in score (a data problem: exit 2): delivery_time
    still runs every step, the summary gives each pipeline's steps and error, and the first failure's code ends."""
    from lakeforge.errors import DataError

    def features(ctx, dates=None):
        if ctx.pipeline.name == "churn":
            raise RuntimeError("Python worker exited unexpectedly")
        executed.by_pipeline.append((ctx.pipeline.name, "features"))
        return {"stage": "features"}

    def score(ctx, day=None):
        if ctx.pipeline.name == "demand":
            raise DataError("model 'demand' has no @champion: run `lakeforge train --pipeline demand` first")
        executed.by_pipeline.append((ctx.pipeline.name, "score"))
        return {"rows": 1, "score_date": day.isoformat()}

    monkeypatch.setattr(stages, "build_features", features)
    monkeypatch.setattr(stages, "score", score)
    assert cli.main(["run", "nightly", "--env", "test", "--date", NIGHT.isoformat()]) == 1
    assert executed.by_pipeline == [
        ("churn", "ingest", ["stores", "customers", "orders"]), ("churn", "maintain", []),
        ("delivery_time", "ingest", ["deliveries", "staffing"]),
        ("delivery_time", "maintain", ingest_tables("stores", "customers", "orders")),
        ("delivery_time", "features"), ("delivery_time", "score"), ("delivery_time", "monitor"),
        ("delivery_time", "retrain"),
        ("demand", "maintain", ingest_tables("stores", "customers", "orders", "deliveries", "staffing")),
        ("demand", "features")]
    out, err = capsys.readouterr()
    spark_failure = (f"failed: RuntimeError: Python worker exited unexpectedly (raised in features, {__file__}, line "
                     f"{features.__code__.co_firstlineno + 2}) (rerun with --debug for the traceback; the run is "
                     f"recorded in ops.runs)")
    no_champion = "error: model 'demand' has no @champion: run `lakeforge train --pipeline demand` first"
    assert out.split("nightly: ")[-1].splitlines() == [
        "1 of 3 pipelines done, 2 failed (rerun one: lakeforge run nightly --pipeline NAME)",
        f"  churn          failed  steps done: ingest, maintain; churn: {spark_failure}",
        "  delivery_time  done    steps done: ingest, maintain, features, score, monitor, retrain",
        f"  demand         failed  steps done: ingest, maintain, features; demand: {no_champion}"]
    assert [line for line in err.splitlines() if line.startswith("lakeforge run:")] == [
        f"lakeforge run: pipeline churn: {spark_failure}", f"lakeforge run: pipeline demand: {no_champion}"]
    # Each pipeline's own summary as it ends, the failed ones' included.
    headers = [line for line in out.splitlines() if line.startswith("== ")]
    assert headers == ["== churn", "== delivery_time", "== demand"]


def test_the_first_failure_gives_the_exit_code(executed, monkeypatch):
    """churn's data problem (2) comes before demand's Spark failure (1): the night exits 2, after all three ran."""
    from lakeforge.errors import DataError

    def score(ctx, day=None):
        executed.by_pipeline.append((ctx.pipeline.name, "score"))
        if ctx.pipeline.name == "churn":
            raise DataError("model 'churn' has no @champion")
        if ctx.pipeline.name == "demand":
            raise RuntimeError("Connection refused")
        return {"rows": 1, "score_date": day.isoformat()}

    monkeypatch.setattr(stages, "score", score)
    assert cli.main(["run", "nightly", "--env", "test", "--date", NIGHT.isoformat()]) == 2
    assert [p for p, step, *_ in executed.by_pipeline if step == "score"] == ["churn", "delivery_time", "demand"]


def test_a_pipeline_whose_yaml_is_broken_fails_alone(executed, monkeypatch, tmp_path, capsys):
    """Each pipeline's configuration is loaded in its turn: a broken one is that pipeline's failure."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    (conf / "pipelines" / "broken.yaml").write_text("sources: [nowhere]\n")
    monkeypatch.setenv("LAKEFORGE_CONF_DIR", str(conf))
    assert cli.main(["run", "nightly", "--env", "test", "--date", NIGHT.isoformat()]) == 2
    ran = [pipeline for pipeline, *_ in executed.by_pipeline]
    assert ran == ["churn"] * 6 + ["delivery_time"] * 6 + ["demand"] * 5
    summary = capsys.readouterr().out.split("nightly: ")[-1].splitlines()
    assert summary[0] == "3 of 4 pipelines done, 1 failed (rerun one: lakeforge run nightly --pipeline NAME)"
    assert summary[1] == (f"  broken         failed  steps done: none; broken: error: unknown source 'nowhere': "
                          f"no file {conf}/sources/nowhere.yaml (sources here: customers, deliveries, orders, "
                          f"staffing, stores)")


def test_the_pipeline_option_runs_that_pipeline_only(executed):
    assert cli.main(["run", "nightly", "--pipeline", "demand", "--env", "test", "--date", NIGHT.isoformat()]) == 0
    assert executed.by_pipeline == [("demand", "ingest", ["stores", "orders"]),
                                    *[("demand", step) for step in flow.step_names()[1:]]]
