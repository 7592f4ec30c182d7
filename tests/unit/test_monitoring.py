"""Drift statistics against known values, the matured-label rule and the retraining policy (no Spark)."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from lakeforge import monitoring as mon
from lakeforge.config import Retrain


def test_psi_of_hand_computed_shares():
    # (0.5-0.25) ln 2 + 0 + (0.25-0.5) ln 0.5 = 0.5 ln 2
    assert mon.psi([0.25, 0.25, 0.5], [0.5, 0.25, 0.25]) == pytest.approx(0.5 * math.log(2), abs=1e-12)
    assert mon.psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0


def test_numeric_psi_bins_at_the_baseline_deciles():
    baseline = np.arange(1, 11, dtype=float)
    edges = mon.quantile_edges(baseline)
    assert edges == pytest.approx([1.9, 2.8, 3.7, 4.6, 5.5, 6.4, 7.3, 8.2, 9.1])
    shares = mon.bin_shares(baseline, edges)
    assert shares.tolist() == pytest.approx([0.1] * 10 + [0.0])           # ten bins and the missing-value bin
    current = np.array([1.0] * 5 + [10.0] * 5)
    eps = mon.PSI_EPSILON
    expected = 2 * (0.5 - 0.1) * math.log(0.5 / 0.1) + 8 * (eps - 0.1) * math.log(eps / 0.1)
    assert mon.psi_numeric(shares, edges, current) == pytest.approx(expected, abs=1e-12)


def test_count_feature_has_fewer_bins_and_missing_values_their_own():
    edges = mon.quantile_edges(np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3], dtype=float))
    assert edges == pytest.approx([0.0, 0.6, 1.0, 1.3, 2.0, 2.1])  # deciles 0.1, 0.2, 0.3 are all 0
    assert mon.bin_shares(np.array([0, 1, np.nan, 5.0]), edges).tolist() == [0.25, 0, 0.25, 0, 0, 0, 0.25, 0.25]


def test_categorical_psi_covers_new_and_vanished_values():
    baseline = {"dine_in": 0.5, "delivery": 0.5}
    current = pd.Series(["delivery"] * 3 + ["drive_thru"])
    eps = mon.PSI_EPSILON
    expected = (0.75 - 0.5) * math.log(0.75 / 0.5) + (eps - 0.5) * math.log(eps / 0.5) + (0.25 - eps) * math.log(0.25 / eps)
    assert mon.psi_categorical(baseline, current) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("baseline, current, gap", [
    ([1, 2, 3], [2, 3, 4, 5], 0.5),                   # at 3: all of the baseline, half of the current
    ([1, 1, 2, 2], [1, 2, 2, 2], 0.25),               # ties (count features): at 1, 2/4 against 1/4
    ([1, float("nan"), 2], [1, 2, float("nan")], 0.0),  # missing values left out
    ([0.5], [0.5, 0.5], 0.0),
])
def test_ks_statistic_is_the_largest_gap_between_the_empirical_cdfs(baseline, current, gap):
    assert mon.ks_statistic(np.array(baseline), np.array(current)) == pytest.approx(gap, abs=1e-12)


def test_ks_statistic_of_an_empty_side_is_nan():
    assert math.isnan(mon.ks_statistic(np.array([float("nan")]), np.array([1.0, 2.0])))
    assert math.isnan(mon.ks_statistic(np.array([1.0]), np.array([])))


def test_drift_rows_against_a_baseline_of_itself_are_zero():
    frame = pd.DataFrame({"x": np.arange(100.0), "c": ["a", "b"] * 50})
    baseline = mon.build_baseline(frame, ["x", "c"], np.linspace(0, 1, 100), categorical={"c"})
    rows = mon.drift_rows(baseline, frame, np.linspace(0, 1, 100))
    assert rows[["kind", "name", "metric"]].values.tolist() == [
        ["drift", "x", "psi"], ["drift", "x", "ks"], ["drift", "c", "psi"],
        ["prediction_drift", "prediction", "psi"], ["prediction_drift", "prediction", "ks"]]
    assert rows.value.tolist() == [0.0] * 5


def test_unmatured_score_dates_never_enter_performance():
    monitor = dt.date(2026, 9, 1)
    dates = [monitor - dt.timedelta(days=k) for k in range(40)]
    scored = pd.DataFrame({"score_date": np.repeat(dates, 4), "model_version": 1,
                           "prediction": np.tile([0.9, 0.8, 0.2, 0.1], 40),
                           "churned": np.tile([1, 1, 0, 0], 40)})
    # Rows whose horizon has not passed carry labels that would ruin the metric if they got in.
    unmatured = scored.score_date > monitor - dt.timedelta(days=30)
    scored.loc[unmatured, "churned"] = 1 - scored.loc[unmatured, "churned"]
    window = mon.matured(scored, monitor, horizon_days=30, window_days=7)
    assert sorted(set(window.score_date)) == [dt.date(2026, 7, 27) + dt.timedelta(days=k) for k in range(7)]
    assert all(mon.is_matured(d, monitor, 30) for d in window.score_date)
    assert not mon.is_matured(dt.date(2026, 8, 3), monitor, 30) and mon.is_matured(dt.date(2026, 8, 2), monitor, 30)
    perf = mon.performance_rows(window, "churned", "auc", [])
    assert perf[["kind", "name", "value", "rows"]].values.tolist() == [["performance", "overall", 1.0, 28]]
    # Even a window set wider than the horizon allows stops at the newest matured date.
    assert max(mon.matured(scored, monitor, 30, 100).score_date) == dt.date(2026, 8, 2)


def test_performance_per_segment():
    scored = pd.DataFrame({"model_version": 3, "prediction": [0.9, 0.1, 0.8, 0.7, 0.6, 0.2],
                           "churned": [1, 0, 0, 1, 0, 1], "region": ["n", "n", "s", "s", "s", "s"]})
    perf = mon.performance_rows(scored, "churned", "auc", ["region", "not_there"])
    assert perf[["kind", "name", "segment", "value", "rows"]].values.tolist() == [
        ["performance", "overall", "", pytest.approx(6 / 9), 6],   # 6 of 9 (positive, negative) pairs ordered
        ["segment", "region", "n", 1.0, 2], ["segment", "region", "s", 0.25, 4]]


POLICY = Retrain(psi_threshold=0.2, psi_features=["dine_in_share_4d"], psi_days=3, performance_margin=0.05,
                 windows=5, breaches=2, cooldown_days=7)


def _days(first: dt.date, values: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"monitor_date": [first + dt.timedelta(days=k) for k in range(len(values))],
                         "name": "dine_in_share_4d", "value": values})


def test_performance_breaches_in_two_of_five_windows_fire():
    d = dt.date(2026, 9, 10)
    perf = pd.DataFrame({"window_end": [d - dt.timedelta(days=k) for k in range(5)],
                         "value": [0.80, 0.86, 0.79, 0.90, 0.88]})
    decision = mon.decide_retrain(POLICY, d, 30, _days(d, []), perf, 0.88, "auc", dt.date(2026, 8, 1))
    assert (decision.fire, decision.trigger) == (True, "performance")
    assert "in 2 of the last 5 windows" in decision.reason
    one = perf.assign(value=[0.80, 0.86, 0.85, 0.90, 0.88])
    assert not mon.decide_retrain(POLICY, d, 30, _days(d, []), one, 0.88, "auc", dt.date(2026, 8, 1)).fire


def test_drift_fires_only_after_k_days_and_matured_labels():
    first = dt.date(2026, 9, 1)
    drift = _days(first, [0.1, 0.25, 0.3, 0.31] + [0.4] * 30)
    empty = pd.DataFrame({"window_end": [], "value": []})
    d = first + dt.timedelta(days=3)  # PSI above 0.2 on Sep 2, 3, 4
    waiting = mon.decide_retrain(POLICY, d, 14, drift, empty, None, "auc", dt.date(2026, 8, 1))
    assert not waiting.fire and "waits for labels after it to mature (2026-09-16)" in waiting.reason
    ripe = mon.decide_retrain(POLICY, dt.date(2026, 9, 16), 14, drift, empty, None, "auc", dt.date(2026, 8, 1))
    assert (ripe.fire, ripe.trigger) == (True, "drift") and "since 2026-09-02" in ripe.reason
    cooling = mon.decide_retrain(POLICY, dt.date(2026, 9, 16), 14, drift, empty, None, "auc", dt.date(2026, 9, 12))
    assert not cooling.fire and "cooldown" in cooling.reason
