"""Shared fixtures: test settings in a temporary folder, one Spark session, tiny demo data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_CONF_DIR", str(REPO / "conf"))

# Small enough for seconds, large enough for a purged time split and a learnable signal.
TINY_DEMO = {"customers": 300, "stores": 4, "days": 150}


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
                                         f"mlflow.tracking_uri=sqlite:///{work_dir / 'mlflow.db'}",
                                         f"mlflow.artifact_root={work_dir / 'mlartifacts'}"])


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
