"""The `retrain` step on its own (a scheduler's task): it applies the decision monitor recorded in ops.monitoring
for the date, and retrains only when that decision fired."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pandas as pd
import pytest

from lakeforge import flow, lake, monitoring, stages
from lakeforge.errors import DataError

pytestmark = pytest.mark.spark

NIGHT = dt.date(2026, 11, 27)


def decision(day: dt.date, pipeline: str, fired: bool, detail: str) -> dict:
    """An ops.monitoring decision row as `stages.monitor` writes it."""
    return {c: None for c in monitoring.COLUMNS} | {
        "monitor_date": day, "pipeline": pipeline, "model_version": 3, "kind": "decision", "name": "retrain",
        "segment": "", "metric": "fire", "value": float(fired), "detail": detail}


@pytest.fixture
def ctx(spark, lakehouse):
    """What the retrain step reads: ops.monitoring with churn's decisions of two nights and another pipeline's."""
    rows = [decision(NIGHT, "churn", True, "performance: auc 0.61 under the floor 0.66 for 2 matured dates"),
            decision(NIGHT - dt.timedelta(days=1), "churn", False, "none: no drift, performance holds"),
            decision(NIGHT - dt.timedelta(days=1), "demand", True, "drift: psi over 0.2 for 3 days")]
    frame = pd.DataFrame(rows, columns=monitoring.COLUMNS)
    lake.append(spark, spark.createDataFrame(frame.astype(object).where(frame.notna(), None), monitoring.SCHEMA),
                lakehouse, monitoring.MONITORING)
    return SimpleNamespace(spark=spark, lakehouse=lakehouse, pipeline=SimpleNamespace(name="churn"))


def test_a_fired_decision_retrains_as_of_its_date_with_its_reason(ctx, monkeypatch):
    calls = []
    monkeypatch.setattr(stages, "retrain", lambda c, day, reason: calls.append((day, reason)) or {"version": 4})
    assert flow.retrain_if_fired(ctx, NIGHT) == {"fired": True, "version": 4}
    assert calls == [(NIGHT, "performance: auc 0.61 under the floor 0.66 for 2 matured dates")]


def test_a_decision_that_did_not_fire_retrains_nothing(ctx, monkeypatch):
    monkeypatch.setattr(stages, "retrain", lambda *a: pytest.fail("retrained without a fired decision"))
    day = NIGHT - dt.timedelta(days=1)
    assert flow.retrain_if_fired(ctx, day) == {"stage": "retrain", "date": day.isoformat(), "fired": False,
                                               "reason": "none: no drift, performance holds"}


def test_a_date_never_monitored_names_the_command_to_run_first(ctx):
    with pytest.raises(DataError, match=r"no retrain decision in ops.monitoring for churn on 2026-11-25: run "
                                        r"`lakeforge monitor --pipeline churn --date 2026-11-25` first"):
        flow.retrain_if_fired(ctx, NIGHT - dt.timedelta(days=2))
