"""CBPE and DLE (performance estimated before labels) on hand-made cases, what an estimated drop does, the
sample-size-aware drift tests and the verdict (no Spark)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from lakeforge import estimation as est
from lakeforge import monitoring as mon
from lakeforge.config import Retrain
from lakeforge.errors import DataError


def test_expected_auc_of_four_rows_computed_by_hand():
    # Ranked 0.9, 0.7, 0.4, 0.2 with p = score: expected positives P = 2.2, negatives N = 1.8.
    # Pairs ranked above: 0.9*0.3 + 0.9*0.6 + 0.9*0.8 + 0.7*0.6 + 0.7*0.8 + 0.4*0.8 = 2.83, ties with itself
    # (the ROC step's half) 0.5 * (0.09 + 0.21 + 0.24 + 0.16) = 0.35: AUC = 3.18 / (2.2 * 1.8) = 53/66.
    scores = np.array([0.4, 0.9, 0.2, 0.7])
    assert est.expected_auc(scores, scores) == pytest.approx(53 / 66, abs=1e-12)
    # Calls at 0.5: 1, 1, 0, 0 for 0.9, 0.7, 0.4, 0.2; right with chance 0.9, 0.7, 0.6, 0.8.
    assert est.expected_accuracy(scores, scores) == pytest.approx(0.75, abs=1e-12)


def test_expected_auc_is_the_realized_auc_when_probabilities_are_certain():
    scores = np.array([0.8, 0.6, 0.3, 0.1])
    assert est.expected_auc(scores, np.array([1.0, 0.0, 1.0, 0.0])) == pytest.approx(0.75, abs=1e-12)
    assert est.expected_auc(scores, np.ones(4)) is None   # no expected negative: AUC undefined


def test_tied_scores_make_one_roc_point():
    # Two rows tied at 0.5 (p 1 and 0) are one diagonal step: AUC 0.5, whatever their order.
    assert est.expected_auc(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == pytest.approx(0.5, abs=1e-12)
    assert est.expected_auc(np.array([0.5, 0.5]), np.array([0.0, 1.0])) == pytest.approx(0.5, abs=1e-12)


def test_isotonic_calibration_is_stored_as_json_and_applied_between_knots():
    calibration = est.calibrate(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    assert json.loads(json.dumps(calibration)) == {"method": "isotonic", "x": [0.1, 0.2, 0.3, 0.4],
                                                   "y": [0.0, 0.5, 0.5, 1.0]}
    assert est.calibrated(calibration, np.array([0.0, 0.15, 0.35, 0.9])).tolist() == pytest.approx(
        [0.0, 0.25, 0.75, 1.0])
    # Tonight's scores 0.4, 0.3, 0.1 -> p 1.0, 0.5, 0.0: P = 1.5, N = 1.5; above-pairs 1*0.5 + 1*1 + 0.5*1 = 2,
    # half the self-terms 0.5 * 0.25 = 0.125: AUC = 2.125 / 2.25; calls 0, 0, 0 right with 0, 0.5, 1.
    estimate = est.estimate_performance(calibration, np.array([0.4, 0.3, 0.1]))
    assert estimate["auc"] == pytest.approx(2.125 / 2.25, abs=1e-12)
    assert estimate["accuracy"] == pytest.approx(0.5, abs=1e-12)


def test_drift_test_fits_type_and_sample_size():
    assert mon.drift_test(False, 16) == mon.DriftTest("ks_pvalue", 0.05, True)
    assert mon.drift_test(True, 1000) == mon.DriftTest("chi2_pvalue", 0.05, True)
    assert mon.drift_test(False, 1001) == mon.DriftTest("wasserstein", 0.1, False)
    assert mon.drift_test(True, 5000) == mon.DriftTest("jensenshannon", 0.1, False)


def _baseline():
    train = pd.DataFrame({"amount": np.arange(100, dtype=float), "channel": ["a", "b"] * 50,
                          "day_of_week": np.arange(100) % 7})
    return mon.build_baseline(train, ["amount", "channel", "day_of_week"], np.linspace(0, 1, 100), {"channel"})


def test_too_few_rows_and_calendar_features_are_not_flagged():
    tonight = pd.DataFrame({"amount": [500.0] * 16, "channel": ["a"] * 16, "day_of_week": [3] * 16})
    rows = mon.drift_tests(_baseline(), tonight, None, leave_out={"day_of_week"}, min_rows=30)
    assert rows[["name", "metric", "breached", "rows"]].values.tolist() == [
        ["amount", "too_few_rows", None, 16], ["channel", "too_few_rows", None, 16],
        ["day_of_week", "left_out", None, 16]]
    assert rows.detail[0] == "too few rows: 16 < 30 (monitoring.drift_min_rows), not tested"


def test_categorical_feature_gets_a_chi_square_test_and_numeric_a_ks_test():
    tonight = pd.DataFrame({"amount": np.arange(200, 240, dtype=float), "channel": ["a"] * 30 + ["b"] * 10,
                            "day_of_week": [3] * 40})
    rows = mon.drift_tests(_baseline(), tonight, np.full(40, 0.5), min_rows=30).set_index("name")
    assert rows.metric.to_dict() == {"amount": "ks_pvalue", "channel": "chi2_pvalue", "day_of_week": "ks_pvalue",
                                     "prediction": "ks_pvalue"}
    assert rows.breached.to_dict() == {"amount": True, "channel": True, "day_of_week": True, "prediction": True}
    # 30 vs 10 against 20 vs 20: chi-square 10 on 1 degree of freedom.
    assert rows.loc["channel", "value"] == pytest.approx(0.0015654022580025, rel=1e-9)
    assert rows.loc["channel", "detail"] == "drift if chi2_pvalue < 0.05"
    assert rows.loc["prediction", "kind"] == "prediction_drift"


def test_a_categorical_feature_with_one_value_in_the_baseline_and_tonight_has_not_drifted():
    train = pd.DataFrame({"region": ["north"] * 50, "amount": np.arange(50, dtype=float)})
    baseline = mon.build_baseline(train, ["region", "amount"], np.linspace(0, 1, 50), {"region"})
    tonight = pd.DataFrame({"region": ["north"] * 40, "amount": np.arange(40, dtype=float)})
    rows = mon.drift_tests(baseline, tonight, None, min_rows=30).set_index("name")
    # Chi-square has no degree of freedom with one value: p = 1 (nothing moved), not NaN.
    assert (rows.loc["region", "metric"], rows.loc["region", "value"], rows.loc["region", "breached"]) == (
        "chi2_pvalue", 1.0, False)


def _night(*rows):
    columns = ["kind", "name", "segment", "metric", "value", "threshold", "breached", "rows", "detail"]
    return pd.DataFrame([dict(zip(columns, r)) for r in rows], columns=columns)


def test_verdict_is_act_watch_or_ok_with_reasons():
    decision = ("decision", "retrain", "", "fire", 0.0, None, None, None, "none: no breach")
    assert mon.verdict(_night(decision))[0] == "OK"
    drifted = ("drift", "amount", "", "ks_pvalue", 0.001, 0.05, True, 200, "")
    estimate = ("estimated_performance", "overall", "", "auc", 0.61, 0.68, True, 200, "")
    level, reasons = mon.verdict(_night(decision, drifted, estimate))
    assert level == "WATCH" and reasons == [
        "drift: feature amount moved (ks_pvalue 0.001 < 0.05, 200 rows)",
        "performance: estimated auc overall 0.610 beyond floor 0.680"]
    quarantine = ("quality", "orders: quarantined share", "", "fail_share", 0.81, 0.2, True, 1096, "")
    level, reasons = mon.verdict(_night(decision, drifted, quarantine))
    assert level == "ACT" and reasons[0] == "quality: orders: quarantined share 81.0% of rows, limit 20.0%"


def test_an_ok_night_says_which_columns_had_too_few_rows_to_test():
    decision = ("decision", "retrain", "", "fire", 0.0, None, None, None, "none: no breach")
    few = ("drift", "orders_7d", "", "too_few_rows", None, None, None, 16, "too few rows: 16 < 30")
    assert mon.verdict(_night(decision, few)) == ("OK", [
        "no drift test flagged, performance within the margin, data quality within its limits",
        "not tested for drift, too few rows tonight: orders_7d"])


# ---------------------------------------------------------------- DLE: regression performance before labels

# One tree, learning rate 1, no regularisation: LightGBM starts from the mean error and each leaf adds its rows'
# mean residual, so the error model is exactly the mean absolute error per value of x.
EXACT = {"n_estimators": 1, "learning_rate": 1.0, "num_leaves": 2, "min_child_samples": 1, "min_data_in_bin": 1,
         "min_child_weight": 0.0, "random_state": 0, "n_jobs": 1, "deterministic": True, "verbose": -1}


def _error_model():
    # Holdout: predictions 10 everywhere, labels 9, 11 (x = 0: errors 1, 1) and 13, 7 (x = 1: errors 3, 3).
    holdout = pd.DataFrame({"x": [0.0, 0.0, 1.0, 1.0], "store": ["a", "b", "a", "b"]})
    return est.fit_error_model(holdout, [10.0] * 4, [9.0, 11.0, 13.0, 7.0], ["x"], EXACT)


def test_dle_estimates_mae_from_the_holdout_errors_computed_by_hand():
    model = json.loads(json.dumps(_error_model()))     # stored as JSON with the baseline, read back as is
    assert (model["method"], model["columns"], model["format"]) == ("dle", ["x"], "lightgbm-text")
    assert model["holdout_estimate"] == {"mae": pytest.approx(2.0, abs=1e-12)}   # (1 + 1 + 3 + 3) / 4
    tonight = pd.DataFrame({"x": [0.0, 1.0, 1.0]})
    assert est.expected_errors(model, tonight, [5.0, 5.0, 5.0]).tolist() == pytest.approx([1.0, 3.0, 3.0], abs=1e-12)
    # Two of tonight's three rows look like the holdout's large errors: (1 + 3 + 3) / 3.
    assert est.estimate_loss(model, tonight, [5.0, 5.0, 5.0]) == pytest.approx(7 / 3, abs=1e-12)
    assert est.estimate_loss(model, tonight.head(0), []) is None


def test_a_changed_error_model_is_refused_naming_the_file():
    model = _error_model()
    model["model"] = model["model"].replace("learning_rate", "learning_rat")
    with pytest.raises(DataError, match=r"error model in the champion's monitoring/baseline.json has SHA-256 .* "
                                        r"not the .* recorded with it"):
        est.estimate_loss(model, pd.DataFrame({"x": [0.0]}), [1.0])


def test_estimated_mae_is_judged_against_the_holdouts_estimate_plus_the_margin():
    baseline = {"error_model": _error_model()}
    tonight = pd.DataFrame({"x": [1.0, 1.0], "prediction": [5.0, 5.0]})
    rows = est.estimates(baseline, "mae", 0.5, tonight, fallback_floor=99.0)
    assert rows[["metric", "value", "threshold", "breached", "rows"]].values.tolist() == [
        ["mae", pytest.approx(3.0), pytest.approx(2.5), True, 2]]
    assert rows.detail[0].startswith("DLE: mean expected absolute error")
    assert rows.detail[0].endswith("threshold: the holdout's estimate 2.0000 worse by the margin 0.5")


def test_estimated_auc_is_judged_against_the_holdouts_estimate_else_the_validation_floor():
    calibration = est.calibrate(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    tonight = pd.DataFrame({"prediction": [0.4, 0.3, 0.1]})
    old = est.estimates({"calibration": calibration}, "auc", 0.05, tonight, fallback_floor=0.7).set_index("metric")
    assert old.threshold["auc"] == 0.7 and np.isnan(old.threshold["accuracy"])   # stored before holdout estimates
    calibration["holdout_estimate"] = est.estimate_performance(calibration, np.array([0.1, 0.2, 0.3, 0.4]))
    rows = est.estimates({"calibration": calibration}, "auc", 0.05, tonight, fallback_floor=0.7).set_index("metric")
    # Holdout scores .4, .3, .2, .1 -> p 1, .5, .5, 0: P = N = 2; pairs ranked above 1*.5 + 1*.5 + 1*1 + .5*.5 +
    # .5*1 + .5*1 = 3.25, self-terms 0.5 * (.25 + .25) = 0.25: expected AUC 3.5 / 4, floor 0.875 - 0.05.
    # Tonight (above): 2.125 / 2.25.
    assert rows.loc["auc", "threshold"] == pytest.approx(3.5 / 4 - 0.05, abs=1e-12)
    assert rows.loc["auc", "value"] == pytest.approx(2.125 / 2.25, abs=1e-12) and not rows.loc["auc", "breached"]


# ---------------------------------------------------------------- an estimated drop: WATCH, or a retrain if asked


def _estimated(day, value, threshold=0.80):
    return pd.DataFrame({"monitor_date": [day], "value": [value], "threshold": [threshold]})


def test_an_estimated_drop_warns_unless_the_policy_retrains_on_it():
    day = dt.date(2026, 9, 10)
    no_perf, no_drift = pd.DataFrame({"window_end": [], "value": []}), pd.DataFrame(
        {"monitor_date": [], "name": [], "value": []})
    policy = Retrain(psi_features=["dine_in_share_4d"], cooldown_days=7)
    warned = mon.decide_retrain(policy, day, 30, no_drift, no_perf, 0.85, "auc", dt.date(2026, 8, 1),
                                _estimated(day, 0.78))
    assert (warned.fire, warned.trigger) == (False, "")
    assert warned.reason.startswith("estimated auc 0.7800 below 0.8000 tonight (before labels): a warning, no "
                                    "retrain (retrain.on_estimated_drop: false)")
    retrains = policy.model_copy(update={"on_estimated_drop": True})
    fired = mon.decide_retrain(retrains, day, 30, no_drift, no_perf, 0.85, "auc", dt.date(2026, 8, 1),
                               _estimated(day, 0.78))
    assert (fired.fire, fired.trigger) == (True, "estimated")
    assert fired.reason == "estimated auc 0.7800 below 0.8000 tonight (before labels) (retrain.on_estimated_drop: true)"
    # Yesterday's drop or an estimate above the threshold fires nothing; the cooldown still holds.
    assert not mon.decide_retrain(retrains, day, 30, no_drift, no_perf, 0.85, "auc", dt.date(2026, 8, 1),
                                  _estimated(day - dt.timedelta(days=1), 0.78)).fire
    assert not mon.decide_retrain(retrains, day, 30, no_drift, no_perf, 0.85, "auc", dt.date(2026, 8, 1),
                                  _estimated(day, 0.81)).fire
    assert not mon.decide_retrain(retrains, day, 30, no_drift, no_perf, 0.85, "auc", dt.date(2026, 9, 5),
                                  _estimated(day, 0.78)).fire
    # The verdict: WATCH while the policy only warns, ACT once the decision fires.
    estimate = ("estimated_performance", "overall", "", "auc", 0.78, 0.80, True, 200, "")
    assert mon.verdict(_night(estimate, ("decision", "retrain", "", "fire", 0.0, None, None, None,
                                         f"none: {warned.reason}")))[0] == "WATCH"
    assert mon.verdict(_night(estimate, ("decision", "retrain", "", "fire", 1.0, None, None, None,
                                         f"estimated: {fired.reason}")))[0] == "ACT"


def test_a_quiet_decision_names_what_each_trigger_saw():
    day = dt.date(2026, 9, 10)
    policy = Retrain(psi_features=["dine_in_share_4d", "delivery_share_4d"], psi_threshold=0.2, cooldown_days=7)
    drift = pd.DataFrame({"monitor_date": [day], "name": ["dine_in_share_4d"], "value": [0.05]})
    perf = pd.DataFrame({"window_end": [day], "value": [0.84]})
    quiet = mon.decide_retrain(policy, day, 30, drift, perf, 0.85, "auc", dt.date(2026, 8, 1))
    assert quiet.reason == ("auc breaches 0 of last 1 windows (need 2); PSI of the watched features "
                            "(dine_in_share_4d, delivery_share_4d) below 0.2")
    off = policy.model_copy(update={"psi_days": 0})
    assert mon.decide_retrain(off, day, 30, drift, perf.head(0), 0.85, "auc", dt.date(2026, 8, 1)).reason == (
        "drift trigger off (retrain.psi_days: 0); no matured auc window yet")


# ---------------------------------------------------------------- seasonal features: the same period of the baseline


def _weekly_train():
    # Weekends (day_of_week 5, 6) sell ten times more: 100..139 against 10..13.9 on weekdays.
    day = np.arange(700) % 7
    amount = np.where(day >= 5, 100.0 + (np.arange(700) % 40), 10.0 + (np.arange(700) % 40) / 10)
    channel = np.where(day >= 5, np.where(np.arange(700) % 2 == 0, "delivery", "takeaway"), "dine_in")
    return pd.DataFrame({"amount": amount, "day_of_week": day, "channel": channel})


def test_a_seasonal_feature_is_compared_with_the_same_weekday_of_the_baseline():
    train = _weekly_train()
    saturday = train[train.day_of_week == 5].reset_index(drop=True)   # every Saturday of the training set
    whole = mon.build_baseline(train, ["amount", "channel"], np.zeros(700), {"channel"})
    seasonal = mon.build_baseline(train, ["amount", "channel"], np.zeros(700), {"channel"},
                                  seasonal={"amount": "day_of_week", "channel": "day_of_week"})
    assert sorted(seasonal["seasonal"]["amount"]["by"]) == ["0", "1", "2", "3", "4", "5", "6"]
    against_all = mon.drift_tests(whole, saturday, None).set_index("name")
    assert against_all.breached.to_dict() == {"amount": True, "channel": True}
    same_day = mon.drift_tests(seasonal, saturday, None).set_index("name")
    # Saturday's rows are Saturday's training rows: nothing moved (KS and chi-square p-value 1).
    assert same_day.breached.to_dict() == {"amount": False, "channel": False}
    assert same_day.value.to_dict() == {"amount": pytest.approx(1.0), "channel": pytest.approx(1.0)}
    assert same_day.loc["amount", "detail"] == ("drift if ks_pvalue < 0.05; against the baseline's rows with "
                                                "day_of_week = 5 (monitoring.seasonal_features)")
    # PSI (what the retrain policy reads) compares the same period too.
    psi = mon.drift_rows(seasonal, saturday, None).set_index(["name", "metric"]).value
    assert psi[("amount", "psi")] == pytest.approx(0.0, abs=1e-12) and psi[("channel", "psi")] == pytest.approx(0.0)
    assert mon.drift_rows(whole, saturday, None).set_index(["name", "metric"]).value[("amount", "psi")] > 5


def test_a_seasonal_feature_without_training_rows_of_tonights_period_is_left_out_saying_so():
    train = _weekly_train()
    seasonal = mon.build_baseline(train[train.day_of_week < 5], ["amount"], np.zeros(500),
                                  seasonal={"amount": "day_of_week"})
    sunday = train[train.day_of_week == 6].head(40)
    rows = mon.drift_tests(seasonal, sunday, None)
    assert rows[["name", "metric", "breached", "rows", "detail"]].values.tolist() == [
        ["amount", "left_out", None, 40,
         "no training rows with day_of_week = 6 (monitoring.seasonal_features): not tested"]]
    assert mon.drift_rows(seasonal, sunday, None).empty
