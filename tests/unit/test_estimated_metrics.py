"""An estimate before labels for every metric where one is sound (CBPE: binary f1, log_loss, precision_at_k and
multiclass accuracy, log_loss, macro_f1; DLE: rmse, mape), on hand-made cases; perfectly calibrated draws; the
pipeline's metric thresholded and a WATCH when breached; r2 and older baselines said so (no Spark)."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pandas as pd
import pytest

from lakeforge import estimation as est
from lakeforge import metrics
from lakeforge import monitoring as mon
from lakeforge.config import Retrain

IDENTITY = {"method": "isotonic", "x": [0.0, 1.0], "y": [0.0, 1.0]}   # a model already calibrated: p = score
TABLE = ["metric", "value", "threshold", "breached", "rows"]


def _plain(rows: pd.DataFrame, columns=TABLE) -> list[list]:
    """The rows as lists, an empty cell (None or NaN, as pandas keeps it) as None."""
    return [[None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in row]
            for row in rows[columns].values.tolist()]


# ---------------------------------------------------------------- binary CBPE: f1, log_loss, precision_at_k


def test_expected_f1_log_loss_and_precision_at_k_computed_by_hand():
    scores = np.array([0.4, 0.9, 0.2, 0.7])
    # Called 1 at 0.5: 0.9 and 0.7, so TP = 0.9 + 0.7, FP = 0.1 + 0.3; FN = 0.4 + 0.2: F1 = 3.2 / (3.2 + 0.4 + 0.6).
    assert est.expected_f1(scores, scores) == pytest.approx(16 / 21, abs=1e-12)
    # Row 1: -(1 ln 0.9); row 2: -(0.5 ln 0.2 + 0.5 ln 0.8) = -ln 0.4; mean -ln(0.9 x 0.4) / 2 = -ln 0.6.
    assert est.expected_log_loss(np.array([0.9, 0.2]), np.array([1.0, 0.5])) == pytest.approx(-math.log(0.6),
                                                                                                abs=1e-12)
    # The top ceil(0.3 x 5) = 2 scores are the two 0.9s (rows 1 and 4): mean p (0.8 + 0.4) / 2; the top 1 is the
    # first of them in row order (stable, as metrics' precision_at_k).
    tied, p = np.array([0.4, 0.9, 0.2, 0.7, 0.9]), np.array([0.1, 0.8, 0.3, 0.6, 0.4])
    assert est.expected_precision_at_k(tied, p, 0.3) == pytest.approx(0.6, abs=1e-12)
    assert est.expected_precision_at_k(tied, p, 0.2) == pytest.approx(0.8, abs=1e-12)
    # Nothing expected positive and nothing called 1: F1 0, as metrics' f1 (zero_division 0); no rows: None.
    assert est.expected_f1(np.array([0.1, 0.2]), np.zeros(2)) == 0.0
    empty = np.array([])
    assert [f(empty, empty) for f in (est.expected_f1, est.expected_log_loss)] == [None, None]
    assert est.expected_precision_at_k(empty, empty, 0.1) is None


def test_certain_probabilities_give_the_realized_metrics_clipping_as_metrics_does():
    # p = the labels themselves: every expected value is the realized one, including scores of exactly 0 and 1
    # (log loss clips them to [eps, 1 - eps], as scikit-learn's log_loss in lakeforge.metrics).
    scores = np.array([1.0, 0.8, 0.55, 0.5, 0.3, 0.0, 0.0, 0.9])
    labels = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    for name, expected in [("f1", est.expected_f1(scores, labels)),
                           ("log_loss", est.expected_log_loss(scores, labels)),
                           ("precision_at_k", est.expected_precision_at_k(scores, labels, 0.25)),
                           ("accuracy", est.expected_accuracy(scores, labels))]:
        assert expected == pytest.approx(metrics.value(name, metrics.CLASSIFICATION, labels, scores, top_k=0.25),
                                         rel=1e-12), name


def test_estimates_of_a_perfectly_calibrated_model_equal_the_mean_realized_metric_over_many_draws():
    # 400 rows whose score is the true chance of class 1; 1000 draws of their labels (seed 7). Accuracy, log loss
    # and precision at k are linear in the labels: equal in expectation. AUC and F1 are ratios: their expected
    # values (ratios of expected counts) differ from the mean ratio by O(1/rows). Tolerance 0.005 for all.
    rng = np.random.default_rng(7)
    scores = rng.uniform(0.0, 1.0, 400)
    draws = (rng.uniform(size=(1000, 400)) < scores).astype("float64")
    names = ("auc", "accuracy", "f1", "log_loss", "precision_at_k")
    expected = est.estimate_performance(IDENTITY, scores, names, top_k=0.1)
    for name in names:
        realized = np.mean([metrics.value(name, metrics.CLASSIFICATION, y, scores, top_k=0.1) for y in draws])
        assert expected[name] == pytest.approx(realized, abs=0.005), name


# ---------------------------------------------------------------- multiclass CBPE


def _holdout_calibration():
    # Classes a, b; labels a, b, b, b. One-vs-rest isotonic: a's scores 0.8, 0.3, 0.6, 0.1 against 1, 0, 0, 0
    # -> knots 0.1, 0.6, 0.8 at 0, 0, 1; b's 0.2, 0.7, 0.4, 0.9 against 0, 1, 1, 1 -> 0.2, 0.4, 0.9 at 0, 1, 1.
    probabilities = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    return probabilities, ["a", "b", "b", "b"]


def test_one_vs_rest_calibration_is_stored_as_data_and_normalised_per_row():
    probabilities, labels = _holdout_calibration()
    calibration = json.loads(json.dumps(est.calibrate_classes(probabilities, labels, ["a", "b"])))
    assert calibration == {"method": "isotonic-one-vs-rest", "classes": ["a", "b"], "by_class": {
        "a": {"method": "isotonic", "x": [0.1, 0.6, 0.8], "y": [0.0, 0.0, 1.0]},
        "b": {"method": "isotonic", "x": [0.2, 0.4, 0.9], "y": [0.0, 1.0, 1.0]}}}
    # (0.7, 0.3) -> a 0.5, b 0.5; (0.5, 0.5) -> 0, 1; (0.05, 0.15) -> 0, 0: every class alike; (0.7, 0.9) ->
    # 0.5, 1 normalised to 1/3, 2/3.
    q = est.calibrated_classes(calibration, np.array([[0.7, 0.3], [0.5, 0.5], [0.05, 0.15], [0.7, 0.9]]))
    assert q.ravel().tolist() == pytest.approx([0.5, 0.5, 0.0, 1.0, 0.5, 0.5, 1 / 3, 2 / 3], abs=1e-12)


def test_expected_multiclass_accuracy_log_loss_and_macro_f1_computed_by_hand():
    s = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]])   # predicted a, b, c
    q = np.array([[0.5, 0.25, 0.25], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    assert est.expected_class_accuracy(s, q) == pytest.approx(0.5, abs=1e-12)   # (0.5 + 0.5 + 0.5) / 3
    # a: TP 0.5, FP 0.5, FN 0.5 + 0 -> 1/2; b: TP 0.5, FP 0.5, FN 0.25 + 0.5 -> 4/9; c: TP 0.5, FP 0.5,
    # FN 0.25 + 0 -> 4/7; macro (1/2 + 4/9 + 4/7) / 3 = 191/378.
    assert est.expected_macro_f1(s, q) == pytest.approx(191 / 378, abs=1e-12)
    rows = [-(0.5 * math.log(0.6) + 0.25 * math.log(0.3) + 0.25 * math.log(0.1)),
            -(0.5 * math.log(0.2) + 0.5 * math.log(0.5)), -(0.5 * math.log(0.2) + 0.5 * math.log(0.7))]
    assert est.expected_class_log_loss(s, q) == pytest.approx(sum(rows) / 3, abs=1e-12)
    assert est.expected_class_accuracy(s[:0], q[:0]) is None and est.expected_macro_f1(s[:0], q[:0]) is None


def test_multiclass_estimates_of_a_calibrated_model_equal_the_mean_realized_metric_over_many_draws():
    # 300 rows of three classes whose probabilities are the true chances; 1000 draws of their labels (seed 11).
    rng = np.random.default_rng(11)
    classes = ["x", "y", "z"]
    s = rng.dirichlet([2.0, 1.0, 1.0], 300)
    identity = {"method": "isotonic-one-vs-rest", "classes": classes, "by_class": dict.fromkeys(classes, IDENTITY)}
    expected = est.estimate_class_performance(identity, s, ("accuracy", "log_loss", "macro_f1"))
    cumulative = s.cumsum(axis=1)
    draws = [np.array(classes)[np.minimum((rng.uniform(size=(300, 1)) > cumulative).sum(axis=1), 2)]
             for _ in range(1000)]
    for name in ("accuracy", "log_loss", "macro_f1"):
        realized = np.mean([metrics.value(name, metrics.MULTICLASS, y, s, classes) for y in draws])
        assert expected[name] == pytest.approx(realized, abs=0.005), name


def _multiclass_baseline():
    probabilities, labels = _holdout_calibration()
    return est.fit_references(metrics.MULTICLASS, pd.DataFrame(), probabilities, labels, [], "macro_f1",
                              classes=("a", "b"))


def test_multiclass_estimates_read_tonights_class_probabilities_and_threshold_the_pipelines_metric():
    baseline = _multiclass_baseline()
    # The holdout is calibrated perfectly: predicted a, b, a, b with q (1, 0), (0, 1), (0, 1), (0, 1): accuracy
    # 3/4; F1 of a 2/3 (TP 1, FP 1, FN 0), of b 4/5 (TP 2, FP 0, FN 1): macro 11/15.
    assert baseline["class_calibration"]["holdout_estimate"] == {"accuracy": pytest.approx(0.75),
                                                                 "macro_f1": pytest.approx(11 / 15)}
    # Tonight (0.7, 0.3) -> q (0.5, 0.5), predicted a; (0.5, 0.5) -> q (0, 1), predicted a (the first of equal):
    # accuracy (0.5 + 0) / 2; F1 of a 1 / (1 + 1.5) (TP 0.5, FP 1.5), of b 0 (FN 1.5): macro 0.2.
    tonight = pd.DataFrame({"prediction": ["a", "a"], "probabilities": [{"a": 0.7, "b": 0.3}, {"a": 0.5, "b": 0.5}]})
    rows = est.estimates(baseline, "macro_f1", 0.1, tonight, fallback_floor=0.9)
    assert _plain(rows) == [["accuracy", pytest.approx(0.25), None, None, 2],
                            ["macro_f1", pytest.approx(0.2), pytest.approx(11 / 15 - 0.1), True, 2]]
    assert rows.detail[1].startswith("CBPE: expected from the holdout-calibrated (one-vs-rest)")
    # The same maps as (class, probability) pairs, as a map column can come back from Delta.
    pairs = tonight.assign(probabilities=[list(m.items()) for m in tonight.probabilities])
    assert est.estimates(baseline, "macro_f1", 0.1, pairs, 0.9).value.tolist() == pytest.approx([0.25, 0.2])


def test_multiclass_without_tonights_probabilities_says_so_instead_of_estimating():
    rows = est.estimates(_multiclass_baseline(), "macro_f1", 0.1, pd.DataFrame({"prediction": ["a", "b"]}), 0.9)
    assert _plain(rows) == [["accuracy", None, None, None, 2], ["macro_f1", None, None, None, 2]]
    assert set(rows.detail) == {"not estimated: tonight's class probabilities (column `probabilities` of the "
                                "predictions) are not among the columns monitoring read"}


# ---------------------------------------------------------------- DLE: rmse, mape; r2 not estimated

# One tree, learning rate 1, no regularisation: each leaf is its rows' mean loss (as in test_estimation.py), to
# LightGBM's precision (about 1e-9 for losses that are not whole numbers).
EXACT = {"n_estimators": 1, "learning_rate": 1.0, "num_leaves": 2, "min_child_samples": 1, "min_data_in_bin": 1,
         "min_child_weight": 0.0, "random_state": 0, "n_jobs": 1, "deterministic": True, "verbose": -1}
# Holdout: predictions 10 everywhere, labels 9, 11 (x = 0) and 13, 7 (x = 1).
HOLDOUT, PREDICTED, LABELS = pd.DataFrame({"x": [0.0, 0.0, 1.0, 1.0]}), [10.0] * 4, [9.0, 11.0, 13.0, 7.0]


def test_only_the_error_models_the_pipeline_needs_are_fitted():
    assert sorted(est.fit_error_models(HOLDOUT, PREDICTED, LABELS, ["x"], "mae", EXACT)) == ["error_model"]
    rmse = est.fit_error_models(HOLDOUT, PREDICTED, LABELS, ["x"], "rmse", EXACT)
    assert sorted(rmse) == ["error_model", "loss_models"] and sorted(rmse["loss_models"]) == ["rmse"]
    assert (rmse["loss_models"]["rmse"]["target"], rmse["error_model"]["target"]) == ("squared_error",
                                                                                      "absolute_error")
    assert sorted(est.fit_error_models(HOLDOUT, PREDICTED, LABELS, ["x"], "r2", EXACT)) == ["error_model"]


def test_dle_estimates_rmse_and_mape_from_the_holdout_losses_computed_by_hand():
    models = est.fit_error_models(HOLDOUT, PREDICTED, LABELS, ["x"], "rmse", EXACT)["loss_models"]
    rmse = json.loads(json.dumps(models["rmse"]))
    # Squared errors 1, 1 (x = 0) and 9, 9 (x = 1): holdout sqrt(5); tonight x = 0, 1, 1: sqrt((1 + 9 + 9) / 3).
    assert rmse["holdout_estimate"] == {"rmse": pytest.approx(math.sqrt(5), abs=1e-12)}
    tonight = pd.DataFrame({"x": [0.0, 1.0, 1.0]})
    assert est.estimate_loss(rmse, tonight, [5.0] * 3) == pytest.approx(math.sqrt(19 / 3), abs=1e-12)
    # |error| / max(label, 1): 1/9, 1/11 (x = 0: mean 10/99) and 3/13, 3/7 (x = 1: mean 30/91).
    mape = est.fit_error_model(HOLDOUT, PREDICTED, LABELS, ["x"], EXACT, metric="mape")
    assert mape["holdout_estimate"] == {"mape": pytest.approx((10 / 99 + 30 / 91) / 2, abs=1e-8)}
    assert est.estimate_loss(mape, tonight, [5.0] * 3) == pytest.approx((10 / 99 + 60 / 91) / 3, abs=1e-8)
    assert est.estimate_loss(mape, tonight.head(0), []) is None


def _watch(rows: pd.DataFrame) -> tuple[str, list[str]]:
    """The verdict of a night whose only rows are these estimates and a quiet retrain decision."""
    night = [{**r, "kind": "estimated_performance", "name": "overall", "segment": ""} for r in rows.to_dict("records")]
    decision = {"kind": "decision", "name": "retrain", "segment": "", "metric": "fire", "value": 0.0,
                "threshold": None, "breached": None, "rows": None, "detail": "none"}
    return mon.verdict(pd.DataFrame(night + [decision]))


def test_a_regression_pipeline_on_rmse_gets_a_thresholded_estimate_and_a_watch_when_breached():
    baseline = est.fit_error_models(HOLDOUT, PREDICTED, LABELS, ["x"], "rmse", EXACT)
    tonight = pd.DataFrame({"x": [1.0, 1.0], "prediction": [5.0, 5.0]})
    rows = est.estimates(baseline, "rmse", 0.5, tonight, fallback_floor=99.0)
    # Tonight looks like the holdout's large errors: rmse 3 against sqrt(5) + 0.5; mae 3, reported unthresholded.
    assert _plain(rows) == [["mae", pytest.approx(3.0), None, None, 2],
                            ["rmse", pytest.approx(3.0), pytest.approx(math.sqrt(5) + 0.5), True, 2]]
    assert rows.detail[1] == ("DLE: root of the mean expected squared error of tonight's predictions (error model "
                              f"fitted on the holdout); threshold: the holdout's estimate {math.sqrt(5):.4f} worse "
                              "by the margin 0.5")
    assert _watch(rows) == ("WATCH", [f"performance: estimated rmse overall 3.000 beyond floor "
                                              f"{math.sqrt(5) + 0.5:.3f}"])
    quiet = est.estimates(baseline, "rmse", 0.5, tonight.assign(x=0.0), fallback_floor=99.0)
    assert _plain(quiet, ["breached"]) == [[None], [False]] and _watch(quiet)[0] == "OK"
    # The retrain policy reads the same row: a warning, no retrain (retrain.on_estimated_drop: false).
    day = dt.date(2026, 9, 10)
    estimated = pd.DataFrame({"monitor_date": [day], "value": [rows.value[1]], "threshold": [rows.threshold[1]]})
    decision = mon.decide_retrain(Retrain(cooldown_days=0), day, 1, pd.DataFrame(
        {"monitor_date": [], "name": [], "value": []}), pd.DataFrame({"window_end": [], "value": []}), 1.0, "rmse",
        None, estimated)
    assert decision.reason.startswith(f"estimated rmse 3.0000 above {math.sqrt(5) + 0.5:.4f} tonight")


def test_a_binary_pipeline_on_f1_gets_a_thresholded_estimate_and_a_watch_when_breached():
    # Holdout scores 0.2, 0.4, 0.6, 0.8, labels 0, 1, 0, 1: calibrated p 0, 0.5, 0.5, 1; called 1 at 0.6, 0.8:
    # TP 1.5, FP 0.5, FN 0.5: expected F1 3 / 4.
    baseline = est.fit_references(metrics.CLASSIFICATION, pd.DataFrame(), np.array([0.2, 0.4, 0.6, 0.8]),
                                  np.array([0, 1, 0, 1]), [], "f1", top_k=0.25)
    calibration = baseline["calibration"]
    assert (calibration["top_k"], sorted(calibration["holdout_estimate"])) == (0.25, ["accuracy", "auc", "f1"])
    assert calibration["holdout_estimate"]["f1"] == pytest.approx(0.75, abs=1e-12)
    # Tonight 0.6, 0.6, 0.3 -> p 0.5, 0.5, 0.25: TP 1, FP 1, FN 0.25: F1 2 / 3.25 = 8/13, below 0.75 - 0.1.
    rows = est.estimates(baseline, "f1", 0.1, pd.DataFrame({"prediction": [0.6, 0.6, 0.3]}), 0.9)
    assert _plain(rows, ["metric", "threshold", "breached"]) == [["auc", None, None], ["accuracy", None, None],
                                                                 ["f1", pytest.approx(0.65), True]]
    assert rows.value[2] == pytest.approx(8 / 13, abs=1e-12)
    assert _watch(rows) == ("WATCH", ["performance: estimated f1 overall 0.615 beyond floor 0.650"])


def test_binary_log_loss_and_precision_at_k_are_thresholded_in_their_direction():
    scores, labels = np.array([0.2, 0.4, 0.6, 0.8]), np.array([0, 1, 0, 1])
    baseline = est.fit_references(metrics.CLASSIFICATION, pd.DataFrame(), scores, labels, [], "log_loss")
    reference = baseline["calibration"]["holdout_estimate"]["log_loss"]
    # p 0, 0.5, 0.5, 1 against the scores: -(ln 0.8 + 0.5 ln 0.4 + 0.5 ln 0.6 + 0.5 ln 0.6 + 0.5 ln 0.4 + ln 0.8) / 4.
    assert reference == pytest.approx(-(2 * math.log(0.8) + math.log(0.4) + math.log(0.6)) / 4, abs=1e-12)
    rows = est.estimates(baseline, "log_loss", 0.05, pd.DataFrame({"prediction": [0.8, 0.2]}), None)
    assert rows.set_index("metric").loc["log_loss", "threshold"] == pytest.approx(reference + 0.05)   # a ceiling
    # precision_at_k at the top_k stored with the calibration (0.5 of 4 scores: 0.8, 0.6 -> p 1, 0.5).
    at_k = est.fit_references(metrics.CLASSIFICATION, pd.DataFrame(), scores, labels, [], "precision_at_k", 0.5)
    assert at_k["calibration"]["holdout_estimate"]["precision_at_k"] == pytest.approx(0.75, abs=1e-12)
    rows = est.estimates(at_k, "precision_at_k", 0.1, pd.DataFrame({"prediction": [0.6, 0.3, 0.2]}), None)
    # Tonight's top ceil(0.5 x 3) = 2: 0.6, 0.3 -> p 0.5, 0.25 (0.3 is between knots 0.2 and 0.4).
    assert rows.set_index("metric").loc["precision_at_k", ["value", "threshold", "breached"]].tolist() == [
        pytest.approx(0.375), pytest.approx(0.65), True]


def test_r2_is_not_estimated_and_its_row_says_why():
    baseline = est.fit_error_models(HOLDOUT, PREDICTED, LABELS, ["x"], "r2", EXACT)
    rows = est.estimates(baseline, "r2", 0.05, pd.DataFrame({"x": [1.0], "prediction": [5.0]}), 0.8)
    assert _plain(rows) == [["mae", pytest.approx(3.0), None, None, 1], ["r2", None, None, None, 1]]
    assert rows.detail[1] == ("not estimated: r2 divides by the variance of tonight's labels, which no model of the "
                              "error knows before they arrive; the matured r2 is measured once labels are known")


def test_baselines_stored_before_every_metric_was_estimated_keep_working():
    # An error model alone (no loss_models), a pipeline now on rmse: mae as before, rmse said not estimated.
    old = {"error_model": est.fit_error_model(HOLDOUT, PREDICTED, LABELS, ["x"], EXACT)}
    del old["error_model"]["metric"]
    rows = est.estimates(old, "rmse", 0.5, pd.DataFrame({"x": [1.0], "prediction": [5.0]}), 99.0)
    assert _plain(rows, ["metric", "value", "threshold"]) == [["mae", pytest.approx(3.0), None], ["rmse", None, None]]
    assert rows.detail[1] == ("not estimated: the champion's baseline has no error model for rmse (trained before "
                              "it was estimated); retrain to fit one")
    # A calibration without top_k or holdout estimates: f1 against the validation floor given.
    calibration = est.calibrate(np.array([0.2, 0.4, 0.6, 0.8]), np.array([0, 1, 0, 1]))
    rows = est.estimates({"calibration": calibration}, "f1", 0.1, pd.DataFrame({"prediction": [0.6, 0.6, 0.3]}),
                         fallback_floor=0.7).set_index("metric")
    assert rows.loc["f1", ["value", "threshold", "breached"]].tolist() == [pytest.approx(8 / 13), 0.7, True]
