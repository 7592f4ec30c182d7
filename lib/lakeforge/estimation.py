"""Performance estimated before labels arrive: CBPE for classifiers (below), and for regression in the spirit of
NannyML's DLE (direct loss estimation): a second model, fitted on the holdout at training time, predicts each row's
absolute error from the model's inputs and its prediction; the mean of those expected errors over tonight's rows is
tonight's estimated MAE.

Like CBPE for classifiers, it sees a change only where the inputs move (covariate shift): a change in how the label
follows the same inputs (concept shift) shows only once labels mature.

The error model is stored with the champion's training baseline (`monitoring/baseline.json`) as data: LightGBM's
own text format and its SHA-256, checked before use; never a pickle. Its inputs are the numeric model inputs and
the prediction (categorical inputs are left out: the prediction already carries what the model made of them).
"""

from __future__ import annotations

import hashlib

import lightgbm
import numpy as np
import pandas as pd

from lakeforge.errors import DataError

PREDICTION = "prediction"
# A small model: it learns where errors are large, not the label; fixed seed and one thread for repeatable values.
ERROR_MODEL_PARAMS = {"n_estimators": 100, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 20,
                      "random_state": 0, "n_jobs": 1, "deterministic": True, "verbose": -1}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def error_model_inputs(features: pd.DataFrame, predictions, columns: list[str]) -> pd.DataFrame:
    """The error model's inputs: the numeric model inputs (in `columns` order) and the prediction."""
    x = features[list(columns)].apply(pd.to_numeric, errors="coerce").astype("float64").reset_index(drop=True)
    return x.assign(**{PREDICTION: np.asarray(predictions, dtype="float64")})


def fit_error_model(features: pd.DataFrame, predictions, labels, columns: list[str],
                    params: dict | None = None) -> dict:
    """Fit the model of the absolute error on the holdout; JSON-ready, with the holdout's own estimated MAE (the
    reference a night's estimate is compared with)."""
    x = error_model_inputs(features, predictions, columns)
    errors = np.abs(np.asarray(labels, dtype="float64") - np.asarray(predictions, dtype="float64"))
    fitted = lightgbm.LGBMRegressor(**(params or ERROR_MODEL_PARAMS)).fit(x, errors)
    text = fitted.booster_.model_to_string()
    model = {"method": "dle", "target": "absolute_error", "columns": list(columns), "format": "lightgbm-text",
             "model": text, "sha256": _sha256(text)}
    model["holdout_estimate"] = {"mae": estimate_mae(model, features, predictions)}
    return model


def expected_errors(model: dict, features: pd.DataFrame, predictions) -> np.ndarray:
    """Each row's expected absolute error (never below 0), after checking the stored model's SHA-256."""
    if _sha256(model["model"]) != model["sha256"]:
        raise DataError(f"the error model in the champion's monitoring/baseline.json has SHA-256 "
                        f"{_sha256(model['model'])}, not the {model['sha256']} recorded with it: it was changed "
                        f"after training; retrain the model (`lakeforge train`) to fit a new one")
    booster = lightgbm.Booster(model_str=model["model"])
    return np.clip(booster.predict(error_model_inputs(features, predictions, model["columns"])), 0.0, None)


def estimate_mae(model: dict, features: pd.DataFrame, predictions) -> float | None:
    """The expected MAE of these predictions (None without rows)."""
    if len(features) == 0:
        return None
    return float(expected_errors(model, features, predictions).mean())


# ---------------------------------------------------------------- performance estimated before labels (CBPE)


def calibrate(scores: np.ndarray, labels: np.ndarray) -> dict:
    """An isotonic calibration of the model's scores fitted on the holdout, as JSON-ready data: the
    step function's knots (scores -> observed rate), applied with `calibrated`."""
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
        np.asarray(scores, dtype="float64"), np.asarray(labels, dtype="float64"))
    return {"method": "isotonic", "x": fitted.X_thresholds_.tolist(), "y": fitted.y_thresholds_.tolist()}


def calibrated(calibration: dict, scores: np.ndarray) -> np.ndarray:
    """The calibrated probability of each score (linear between knots, clipped outside: sklearn's predict)."""
    return np.interp(np.asarray(scores, dtype="float64"), calibration["x"], calibration["y"])


def expected_auc(scores: np.ndarray, probabilities: np.ndarray) -> float | None:
    """CBPE's expected ROC AUC: the ROC curve of expected true/false positives when ranking by score, each row
    counting p as a positive and 1 - p as a negative; None when every p is 0 or every p is 1."""
    s, p = np.asarray(scores, dtype="float64"), np.asarray(probabilities, dtype="float64")
    positives, negatives = p.sum(), (1.0 - p).sum()
    if positives <= 0 or negatives <= 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s, p = s[order], p[order]
    last_of_tie = np.append(s[1:] != s[:-1], True)  # one ROC point per distinct score
    tpr = np.concatenate([[0.0], np.cumsum(p)[last_of_tie] / positives])
    fpr = np.concatenate([[0.0], np.cumsum(1.0 - p)[last_of_tie] / negatives])
    return float(np.trapezoid(tpr, fpr))


def expected_accuracy(scores: np.ndarray, probabilities: np.ndarray, cut: float = 0.5) -> float | None:
    """CBPE's expected accuracy of `score >= cut`: the mean chance that each row's call is right."""
    s, p = np.asarray(scores, dtype="float64"), np.asarray(probabilities, dtype="float64")
    if s.size == 0:
        return None
    return float(np.where(s >= cut, p, 1.0 - p).mean())


def estimate_performance(calibration: dict, scores: np.ndarray) -> dict[str, float | None]:
    """Expected AUC and accuracy of tonight's scores from the holdout calibration (no labels needed)."""
    p = calibrated(calibration, scores)
    return {"auc": expected_auc(scores, p), "accuracy": expected_accuracy(scores, p)}


# ---------------------------------------------------------------- what training keeps, what monitoring reads


def fit_references(task: str, holdout: pd.DataFrame, predictions, labels, numeric_columns: list[str]) -> dict:
    """What the training baseline keeps to estimate performance before labels: a classifier's holdout calibration
    (CBPE), a regressor's error model (DLE), each with the holdout's own estimate; nothing for other tasks."""
    from lakeforge import metrics

    if task == metrics.CLASSIFICATION:
        calibration = calibrate(predictions, np.asarray(labels))
        calibration["holdout_estimate"] = estimate_performance(calibration, predictions)
        return {"calibration": calibration}
    if task == metrics.REGRESSION:
        return {"error_model": fit_error_model(holdout, predictions, labels, numeric_columns)}
    return {}


ESTIMATE_COLUMNS = ["metric", "value", "threshold", "breached", "rows", "detail"]


def estimates(baseline: dict, metric: str, margin: float, scored: pd.DataFrame, fallback_floor: float | None
              ) -> pd.DataFrame:
    """Tonight's estimated performance, one row per estimated metric. `scored`: tonight's predictions (column
    `prediction`), with the features for an error model. The pipeline's metric gets a threshold: the holdout's own
    estimate worse by the retrain margin (so the estimator's bias cancels), else `fallback_floor`."""
    from lakeforge import metrics

    if "calibration" in baseline:
        calibration, what = baseline["calibration"], "CBPE: expected from the holdout-calibrated probabilities of " \
                                                     "tonight's scores"
        values = estimate_performance(calibration, scored[PREDICTION].to_numpy())
        reference = calibration.get("holdout_estimate", {})
    elif "error_model" in baseline and set(baseline["error_model"]["columns"]) <= set(scored.columns):
        model, what = baseline["error_model"], "DLE: mean expected absolute error of tonight's predictions (error " \
                                               "model fitted on the holdout)"
        values = {"mae": estimate_mae(model, scored, scored[PREDICTION])}
        reference = model.get("holdout_estimate", {})
    else:
        return pd.DataFrame(columns=ESTIMATE_COLUMNS)
    out = []
    for name, value in values.items():
        threshold = None
        if name == metric:
            threshold = (metrics.worse_than(metric, reference[metric], margin) if reference.get(metric) is not None
                         else fallback_floor)
        breached = None if threshold is None or value is None else metrics.breaches(name, value, threshold)
        basis = (f"; threshold: the holdout's estimate {reference[name]:.4f} worse by the margin {margin:g}"
                 if threshold is not None and reference.get(name) is not None else "")
        out.append((name, value, threshold, breached, len(scored), what + basis))
    return pd.DataFrame(out, columns=ESTIMATE_COLUMNS)
