"""Shared fixtures: test settings in a temporary folder, one Spark session, tiny demo data."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_CONF_DIR", str(REPO / "conf"))

# Small enough for seconds, large enough for a purged time split and a learnable signal.
TINY_DEMO = {"customers": 300, "stores": 4, "days": 150}
# A test that takes longer alone (its setup included) is left out of `make test-fast`, the edit-test loop, by the
# `slow` marker; the end of each run names any such test not marked (nor `story` or `cluster`).
SLOW_SECONDS = 30.0
_seconds: dict[str, float] = {}
# The markers `make test-fast` leaves out: those its FAST expression negates (the Makefile is their one home).
_left_out = set(re.findall(r"\bnot (\w+)", re.search(r"^FAST := (.+)$", (REPO / "Makefile").read_text(), re.M)[1]))


def pytest_runtest_logreport(report):
    if not _left_out & set(report.keywords):
        _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    unmarked = sorted((seconds, test) for test, seconds in _seconds.items() if seconds > SLOW_SECONDS)
    if unmarked:
        terminalreporter.write_sep("-", f"over {SLOW_SECONDS:.0f} s and not marked slow (add pytest.mark.slow: "
                                        f"`make test-fast` must stay quick)")
        for seconds, test in reversed(unmarked):
            terminalreporter.write_line(f"{seconds:7.1f} s  {test}")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_demo() -> dict:
    return dict(TINY_DEMO)


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lakeforge")


@pytest.fixture(scope="session")
def settings(work_dir):
    from lakeforge import config

    return config.load_settings("test", [f"paths.landing={work_dir / 'landing'}",
                                         f"paths.lakehouse={work_dir / 'lakehouse'}",
                                         f"paths.reports={work_dir / 'reports'}",
                                         f"paths.model_cache={work_dir / 'model_cache'}",
                                         f"mlflow.tracking_uri=sqlite:///{work_dir / 'mlflow.db'}",
                                         f"mlflow.artifact_root={work_dir / 'mlartifacts'}"])


@pytest.fixture(scope="session")
def settings_at(settings):
    """Test settings on other folders: landing, lakehouse (and reports), and a sqlite MLflow store in `work`."""

    def make(landing: Path, lakehouse: Path, work: Path, reports: Path | None = None):
        paths = {"landing": landing, "lakehouse": lakehouse} | ({"reports": reports} if reports else {})
        return settings.model_copy(update={
            "paths": settings.paths.model_copy(update=paths),
            "mlflow": settings.mlflow.model_copy(update={"tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
                                                         "artifact_root": (work / "artifacts").as_uri()})})

    return make


@pytest.fixture(scope="session")
def spark(settings):
    from lakeforge.spark import build_session

    session = build_session(settings, app_name="lakeforge-tests")
    yield session
    session.stop()


@pytest.fixture
def lakehouse(spark, tmp_path) -> Path:
    """An empty lakehouse folder for one test; by-name tables of earlier tests are forgotten."""
    from lakeforge import lake

    lake.forget_tables(spark)
    return tmp_path / "lakehouse"


@pytest.fixture(scope="session")
def churn():
    from lakeforge import config

    return config.load_pipeline("churn")


@pytest.fixture(scope="session")
def tiny_landing(tmp_path_factory):
    """Tiny demo landing files and their manifest, generated once per test session (read-only for tests)."""
    from lakeforge.demo.generator import DemoSpec, generate_demo

    landing = tmp_path_factory.mktemp("landing")
    manifest = generate_demo(landing, DemoSpec(**TINY_DEMO))
    return landing, manifest


@pytest.fixture(scope="session")
def ingested_tiny(spark, settings_at, tiny_landing, tmp_path_factory) -> Path:
    """The tiny demo ingested once per session (bronze, silver, ops); tests take copies (`ingested_lakehouse`)."""
    from lakeforge import config, lake, stages

    landing, _ = tiny_landing
    work = tmp_path_factory.mktemp("ingested")
    lake.forget_tables(spark)
    local = settings_at(landing, work / "lakehouse", work)
    stages.ingest(stages.Context(local, config.load_pipeline("churn"), spark_factory=lambda _: spark))
    return work / "lakehouse"


@pytest.fixture
def ingested_lakehouse(lakehouse, ingested_tiny) -> Path:
    """This test's lakehouse: a copy of the ingested tiny demo (Delta logs hold relative paths, so copies work)."""
    import shutil

    shutil.copytree(ingested_tiny, lakehouse)
    return lakehouse


EVENTS_SOURCE = """\
path: events
format: json
columns: {event_id: string, user_id: string, event_ts: timestamp, value: int}
primary_key: [event_id]
event_time: event_ts
expectations:
  - {column: value, rule: range, min: 0, max: 100, action: quarantine}
"""
EVENTS_PIPELINE = """\
description: a one-source pipeline for command tests
sources: [events]
features:
  entity: user_id
  spine: {source: events, since: event_ts}
  events: {source: events, columns: [value]}
  function: lakeforge.demo.churn.customer_activity
  columns: {user_id: string, as_of_date: date}
label: {name: churned, rule: no_event_within_horizon, events: events, horizon_days: 30}
"""


@pytest.fixture
def events_conf(tmp_path) -> Path:
    """A conf folder (the repo's settings) with one JSON source `events` and a pipeline `events` that reads it."""
    import shutil

    conf = tmp_path / "conf"
    (conf / "pipelines").mkdir(parents=True)
    (conf / "sources").mkdir()
    for name in ("base.yaml", "test.yaml", "log4j2.properties"):
        shutil.copy(REPO / "conf" / name, conf / name)
    (conf / "sources" / "events.yaml").write_text(EVENTS_SOURCE)
    (conf / "pipelines" / "events.yaml").write_text(EVENTS_PIPELINE)
    return conf


@pytest.fixture(scope="module")
def user_conf(spark, tmp_path_factory):
    """A conf folder with the repo's settings and a user's own sources and pipelines ({name: YAML text}); the user's
    module (in tests/fixtures) is shipped to the Python workers."""
    import shutil

    def make(sources: dict[str, str], pipelines: dict[str, str], module: str) -> Path:
        conf = tmp_path_factory.mktemp("conf")
        (conf / "pipelines").mkdir()
        (conf / "sources").mkdir()
        for name in ("base.yaml", "test.yaml", "log4j2.properties"):
            shutil.copy(REPO / "conf" / name, conf / name)
        for folder, texts in (("sources", sources), ("pipelines", pipelines)):
            for name, text in texts.items():
                (conf / folder / f"{name}.yaml").write_text(text)
        spark.sparkContext.addPyFile(str(REPO / "tests" / "fixtures" / module))  # the Python workers import it too
        return conf

    return make
