"""Performance estimated before labels arrive, for every metric of lakeforge.metrics where an estimate is sound.

CBPE (confidence-based performance estimation, as NannyML does) for classifiers: the model's scores are calibrated
on the holdout at training time (isotonic; a multiclass model one-vs-rest per class, each row's calibrated
probabilities then normalised to sum to 1); tonight, each row's calibrated probability p counts as p of a positive
(of that class) and 1 - p of a negative, so every confusion-matrix metric has an expected value without labels:
  binary      auc, accuracy, f1 (expected TP, FP, FN at score >= metrics.THRESHOLD), log_loss (the expected
              cross-entropy of the scores), precision_at_k (the mean p of the top model.top_k share of scores)
  multiclass  accuracy (mean p of the predicted class), log_loss, macro_f1 (each class's expected TP, FP, FN)
DLE (direct loss estimation, in the spirit of NannyML's) for regression: a second model, fitted on the holdout, learns
each row's loss from the model's inputs and its prediction; the mean expected loss over tonight's rows gives
  mae (absolute error), rmse (the root of the mean expected squared error), mape (|error| / max(actual, 1)).
r2 is not estimated: it divides by the variance of tonight's labels, which no model of the error knows before they
arrive (a night's estimate would be a guess of that variance, not of the model's quality); its row says so.

A night gets the estimates each task always reports (auc and accuracy, accuracy, mae) and the pipeline's metric; only
the error models those need are fitted. Like every estimate from the inputs, they see a change only where the inputs
move (covariate shift): a change in how the label follows the same inputs (concept shift) shows only once labels
mature.

What the estimates need is stored with the champion's training baseline (`monitoring/baseline.json`) as data: the
calibration's knots, and each error model in LightGBM's own text format with its SHA-256, checked before use; never a
pickle. An error model's inputs are the numeric model inputs and the prediction (categorical inputs are left out:
the prediction already carries what the model made of them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import lightgbm
import numpy as np
import pandas as pd

from lakeforge import catalog, metrics
from lakeforge.errors import DataError

PREDICTION = "prediction"
# A small model: it learns where errors are large, not the label; fixed seed and one thread for repeatable values.
ERROR_MODEL_PARAMS = {"n_estimators": 100, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 20,
                      "random_state": 0, "n_jobs": 1, "deterministic": True, "verbose": -1}
LOG_EPS = float(np.finfo("float64").eps)  # scores clipped to [eps, 1 - eps], as scikit-learn's log_loss clips

# What a night always estimates per task (beside the pipeline's metric), and what can be estimated at all.
REPORTED = {metrics.CLASSIFICATION: ("auc", "accuracy"), metrics.MULTICLASS: ("accuracy",),
            metrics.REGRESSION: ("mae",)}
ESTIMATED = {metrics.CLASSIFICATION: ("auc", "accuracy", "f1", "log_loss", "precision_at_k"),
             metrics.MULTICLASS: ("accuracy", "log_loss", "macro_f1"), metrics.REGRESSION: ("mae", "rmse", "mape")}
NOT_ESTIMATED = {"r2": "not estimated: r2 divides by the variance of tonight's labels, which no model of the error "
                       "knows before they arrive; the matured r2 is measured once labels are known"}
OWN_NOT_ESTIMATED = ("not estimated: a team's own metric (model.own_metrics); CBPE and DLE estimate lakeforge's "
                     "metrics, and its matured value is measured once labels are known")


def estimated_metrics(task: str, metric: str | None) -> list[str]:
    """The metrics a night estimates for a task: those always reported, then the pipeline's own if it can be."""
    names = list(REPORTED.get(task, ()))
    return names + [metric] if metric in ESTIMATED.get(task, ()) and metric not in names else names


# ---------------------------------------------------------------- DLE: regression


@dataclass(frozen=True)
class Loss:
    """A regression metric as the mean of a per-row loss the error model learns, and how that mean gives it."""

    target: str                                           # the per-row loss, as stored with the model
    per_row: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (labels, predictions) -> each row's loss
    summary: Callable[[float], float]                      # the mean expected loss -> the metric
    about: str


LOSSES = {
    "mae": Loss("absolute_error", lambda y, p: np.abs(y - p), float, "mean expected absolute error"),
    "rmse": Loss("squared_error", lambda y, p: (y - p) ** 2, lambda mean: float(np.sqrt(mean)),
                 "root of the mean expected squared error"),
    "mape": Loss("percentage_error", lambda y, p: np.abs(y - p) / np.maximum(y, 1.0), float,
                 "mean expected absolute error / max(actual, 1)"),
}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def error_model_inputs(features: pd.DataFrame, predictions, columns: list[str]) -> pd.DataFrame:
    """The error model's inputs: the numeric model inputs (in `columns` order) and the prediction."""
    x = features[list(columns)].apply(pd.to_numeric, errors="coerce").astype("float64").reset_index(drop=True)
    return x.assign(**{PREDICTION: np.asarray(predictions, dtype="float64")})


def fit_error_model(features: pd.DataFrame, predictions, labels, columns: list[str],
                    params: dict | None = None, metric: str = "mae") -> dict:
    """Fit the model of `metric`'s per-row loss (LOSSES) on the holdout; JSON-ready, with the holdout's own
    estimate of the metric (the reference a night's estimate is compared with)."""
    loss = LOSSES[metric]
    x = error_model_inputs(features, predictions, columns)
    target = loss.per_row(np.asarray(labels, dtype="float64"), np.asarray(predictions, dtype="float64"))
    fitted = lightgbm.LGBMRegressor(**(params or ERROR_MODEL_PARAMS)).fit(x, target)
    text = fitted.booster_.model_to_string()
    model = {"method": "dle", "metric": metric, "target": loss.target, "columns": list(columns),
             "format": "lightgbm-text", "model": text, "sha256": _sha256(text)}
    model["holdout_estimate"] = {metric: estimate_loss(model, features, predictions)}
    return model


def expected_errors(model: dict, features: pd.DataFrame, predictions) -> np.ndarray:
    """Each row's expected loss (never below 0), after checking the stored model's SHA-256."""
    if _sha256(model["model"]) != model["sha256"]:
        raise DataError(f"the error model in the champion's monitoring/baseline.json has SHA-256 "
                        f"{_sha256(model['model'])}, not the {model['sha256']} recorded with it: it was changed "
                        f"after training; retrain the model (`lakeforge train`) to fit a new one")
    booster = lightgbm.Booster(model_str=model["model"])
    return np.clip(booster.predict(error_model_inputs(features, predictions, model["columns"])), 0.0, None)


def estimate_loss(model: dict, features: pd.DataFrame, predictions) -> float | None:
    """The expected value of the model's metric (mae for a model stored before the metric was) for these
    predictions; None without rows."""
    if len(features) == 0:
        return None
    return LOSSES[model.get("metric", "mae")].summary(float(expected_errors(model, features, predictions).mean()))


def fit_error_models(holdout: pd.DataFrame, predictions, labels, columns: list[str], metric: str | None,
                     params: dict | None = None) -> dict:
    """The error models a regression pipeline needs: `error_model` (absolute error, for mae) and, when the pipeline's
    metric is rmse or mape, `loss_models` {metric: its model}."""
    found = {"error_model": fit_error_model(holdout, predictions, labels, columns, params)}
    others = [m for m in estimated_metrics(metrics.REGRESSION, metric) if m != "mae"]
    if others:
        found["loss_models"] = {m: fit_error_model(holdout, predictions, labels, columns, params, m) for m in others}
    return found


# ---------------------------------------------------------------- CBPE: binary


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


def expected_accuracy(scores: np.ndarray, probabilities: np.ndarray, cut: float = metrics.THRESHOLD) -> float | None:
    """CBPE's expected accuracy of `score >= cut`: the mean chance that each row's call is right."""
    s, p = np.asarray(scores, dtype="float64"), np.asarray(probabilities, dtype="float64")
    if s.size == 0:
        return None
    return float(np.where(s >= cut, p, 1.0 - p).mean())


def _f1(tp: float, fp: float, fn: float) -> float:
    """F1 from (expected) counts; 0 when there is nothing to count (metrics' f1: zero_division 0)."""
    denominator = 2.0 * tp + fp + fn
    return float(2.0 * tp / denominator) if denominator > 0 else 0.0


def expected_f1(scores: np.ndarray, probabilities: np.ndarray, cut: float = metrics.THRESHOLD) -> float | None:
    """CBPE's expected F1 of `score >= cut`: TP = sum of p over the rows called 1, FP = sum of 1 - p there,
    FN = sum of p over the rows called 0 (None without rows)."""
    s, p = np.asarray(scores, dtype="float64"), np.asarray(probabilities, dtype="float64")
    if s.size == 0:
        return None
    called = s >= cut
    return _f1(p[called].sum(), (1.0 - p[called]).sum(), p[~called].sum())


def expected_log_loss(scores: np.ndarray, probabilities: np.ndarray) -> float | None:
    """CBPE's expected log loss: the mean of -(p log s + (1 - p) log(1 - s)), s and 1 - s clipped to
    [eps, 1 - eps] as metrics' log_loss clips (None without rows)."""
    s, p = np.asarray(scores, dtype="float64"), np.asarray(probabilities, dtype="float64")
    if s.size == 0:
        return None
    positive, negative = np.clip(s, LOG_EPS, 1.0 - LOG_EPS), np.clip(1.0 - s, LOG_EPS, 1.0 - LOG_EPS)
    return float(-(p * np.log(positive) + (1.0 - p) * np.log(negative)).mean())


def expected_precision_at_k(scores: np.ndarray, probabilities: np.ndarray, top_k: float) -> float | None:
    """CBPE's expected precision at k: the mean p of the ceil(top_k x rows) highest scores, ranked as metrics'
    precision_at_k ranks (ties by row order, stable); None without rows."""
    s, p = np.asarray(scores, dtype="float64"), np.asarray(probabilities, dtype="float64")
    if s.size == 0:
        return None
    k = max(1, int(np.ceil(top_k * s.size)))
    return float(p[np.argsort(-s, kind="mergesort")[:k]].mean())


def estimate_performance(calibration: dict, scores: np.ndarray, names=("auc", "accuracy"),
                         top_k: float | None = None) -> dict[str, float | None]:
    """The expected value of each metric in `names` for tonight's scores from the holdout calibration (no labels
    needed); precision_at_k at `top_k`, else at the top_k stored with the calibration."""
    s = np.asarray(scores, dtype="float64")
    p = calibrated(calibration, s)
    top_k = top_k if top_k is not None else calibration.get("top_k", 0.1)
    by_name = {"auc": lambda: expected_auc(s, p), "accuracy": lambda: expected_accuracy(s, p),
               "f1": lambda: expected_f1(s, p), "log_loss": lambda: expected_log_loss(s, p),
               "precision_at_k": lambda: expected_precision_at_k(s, p, top_k)}
    return {name: by_name[name]() for name in names}


# ---------------------------------------------------------------- CBPE: multiclass


def calibrate_classes(probabilities: np.ndarray, labels, classes) -> dict:
    """Each class's probability calibrated one-vs-rest on the holdout (isotonic, as `calibrate`), as JSON-ready
    data; labels compared as strings, as metrics compares them."""
    matrix = np.asarray(probabilities, dtype="float64")
    truth = np.array([str(v) for v in np.asarray(labels, dtype="object")])
    return {"method": "isotonic-one-vs-rest", "classes": [str(c) for c in classes],
            "by_class": {str(c): calibrate(matrix[:, i], (truth == str(c)).astype("float64"))
                         for i, c in enumerate(classes)}}


def calibrated_classes(calibration: dict, probabilities: np.ndarray) -> np.ndarray:
    """Each row's calibrated class probabilities (columns in the calibration's class order), normalised to sum to 1;
    a row whose calibrated probabilities are all 0 gets every class alike."""
    matrix = np.asarray(probabilities, dtype="float64").reshape(-1, len(calibration["classes"]))
    q = np.column_stack([calibrated(calibration["by_class"][c], matrix[:, i])
                         for i, c in enumerate(calibration["classes"])])
    total = q.sum(axis=1, keepdims=True)
    return np.divide(q, total, out=np.full_like(q, 1.0 / q.shape[1]), where=total > 0)


def expected_class_accuracy(probabilities: np.ndarray, calibrated_: np.ndarray) -> float | None:
    """CBPE's expected multiclass accuracy: the mean calibrated probability of each row's predicted class (the most
    probable, the first of equal ones, as metrics' accuracy); None without rows."""
    if len(calibrated_) == 0:
        return None
    predicted = np.argmax(np.asarray(probabilities, dtype="float64"), axis=1)
    return float(calibrated_[np.arange(len(predicted)), predicted].mean())


def expected_class_log_loss(probabilities: np.ndarray, calibrated_: np.ndarray) -> float | None:
    """CBPE's expected multiclass log loss: the mean over rows of -sum over classes of q log s, each score clipped to
    [eps, 1 - eps] as metrics' log_loss clips; None without rows."""
    if len(calibrated_) == 0:
        return None
    s = np.clip(np.asarray(probabilities, dtype="float64"), LOG_EPS, 1.0 - LOG_EPS)
    return float(-(calibrated_ * np.log(s)).sum(axis=1).mean())


def expected_macro_f1(probabilities: np.ndarray, calibrated_: np.ndarray) -> float | None:
    """CBPE's expected macro F1: per class, TP = sum of q over the rows predicted as it, FP = sum of 1 - q there,
    FN = sum of q over the other rows; the unweighted mean of the classes' F1 (None without rows)."""
    if len(calibrated_) == 0:
        return None
    predicted = np.argmax(np.asarray(probabilities, dtype="float64"), axis=1)
    scores = []
    for i in range(calibrated_.shape[1]):
        called, q = predicted == i, calibrated_[:, i]
        scores.append(_f1(q[called].sum(), (1.0 - q[called]).sum(), q[~called].sum()))
    return float(np.mean(scores))


def estimate_class_performance(calibration: dict, probabilities: np.ndarray, names=("accuracy",)
                               ) -> dict[str, float | None]:
    """The expected value of each multiclass metric in `names` from the one-vs-rest calibration (no labels)."""
    s = np.asarray(probabilities, dtype="float64").reshape(-1, len(calibration["classes"]))
    q = calibrated_classes(calibration, s)
    by_name = {"accuracy": expected_class_accuracy, "log_loss": expected_class_log_loss,
               "macro_f1": expected_macro_f1}
    return {name: by_name[name](s, q) for name in names}


# ---------------------------------------------------------------- what training keeps, what monitoring reads


def fit_references(task: str, holdout: pd.DataFrame, predictions, labels, numeric_columns: list[str],
                   metric: str | None = None, top_k: float = 0.1, classes=()) -> dict:
    """What the training baseline keeps to estimate performance before labels, each part with the holdout's own
    estimates of the metrics a night estimates (`estimated_metrics`): a binary classifier's calibration (with
    `top_k`), a multiclass classifier's one-vs-rest calibration of `classes`, a regressor's error models."""
    names = estimated_metrics(task, metric)
    if task == metrics.CLASSIFICATION:
        calibration = calibrate(predictions, np.asarray(labels))
        calibration["top_k"] = float(top_k)
        calibration["holdout_estimate"] = estimate_performance(calibration, predictions, names)
        return {"calibration": calibration}
    if task == metrics.MULTICLASS:
        calibration = calibrate_classes(predictions, labels, classes)
        calibration["holdout_estimate"] = estimate_class_performance(calibration, predictions, names)
        return {"class_calibration": calibration}
    if task == metrics.REGRESSION:
        return fit_error_models(holdout, predictions, labels, numeric_columns, metric)
    return {}


ESTIMATE_COLUMNS = ["metric", "value", "threshold", "breached", "rows", "detail"]
CBPE = "CBPE: expected from the holdout-calibrated probabilities of tonight's scores"
CBPE_CLASSES = "CBPE: expected from the holdout-calibrated (one-vs-rest) class probabilities of tonight's scores"
NO_CLASS_PROBABILITIES = ("not estimated: tonight's class probabilities (column `probabilities` of the predictions) "
                          "are not among the columns monitoring read")


def _tonight(baseline: dict, metric: str, scored: pd.DataFrame) -> tuple[dict, dict, dict] | None:
    """Tonight's estimate per metric, the holdout's own estimates and the sentence per metric that says how (or
    why not); None when the baseline keeps nothing to estimate with (or an error model's inputs are missing)."""
    if "calibration" in baseline:
        calibration = baseline["calibration"]
        names = estimated_metrics(metrics.CLASSIFICATION, metric)
        values = estimate_performance(calibration, scored[PREDICTION].to_numpy(), names)
        return values, calibration.get("holdout_estimate", {}), {name: CBPE for name in names}
    if "class_calibration" in baseline:
        calibration = baseline["class_calibration"]
        names = estimated_metrics(metrics.MULTICLASS, metric)
        if catalog.PROBABILITIES not in scored.columns:
            return dict.fromkeys(names), {}, dict.fromkeys(names, NO_CLASS_PROBABILITIES)
        # A map column read back from Delta can arrive as (class, probability) pairs.
        maps = [dict(row) if row is not None else {} for row in scored[catalog.PROBABILITIES]]
        matrix = metrics.class_matrix(maps, calibration["classes"])
        return (estimate_class_performance(calibration, matrix, names), calibration.get("holdout_estimate", {}),
                dict.fromkeys(names, CBPE_CLASSES))
    if "error_model" in baseline and set(baseline["error_model"]["columns"]) <= set(scored.columns):
        models = {"mae": baseline["error_model"], **baseline.get("loss_models", {})}
        values, reference, how = {}, {}, {}
        for name in estimated_metrics(metrics.REGRESSION, metric):
            if name not in models:  # a baseline stored before lakeforge estimated this metric
                values[name], how[name] = None, (f"not estimated: the champion's baseline has no error model for "
                                                 f"{name} (trained before it was estimated); retrain to fit one")
                continue
            values[name] = estimate_loss(models[name], scored, scored[PREDICTION])
            reference.update(models[name].get("holdout_estimate", {}))
            how[name] = f"DLE: {LOSSES[name].about} of tonight's predictions (error model fitted on the holdout)"
        return values, reference, how
    return None


def estimates(baseline: dict, metric: str, margin: float, scored: pd.DataFrame, fallback_floor: float | None
              ) -> pd.DataFrame:
    """Tonight's estimated performance, one row per estimated metric (`estimated_metrics`); a pipeline metric that
    is not estimated (NOT_ESTIMATED) gets a row without a value that says why. `scored`: tonight's predictions
    (column `prediction`; a multiclass model's `probabilities` too), with the features for an error model. The
    pipeline's metric gets a threshold: the holdout's own estimate worse by the retrain margin (so the estimator's
    bias cancels), else `fallback_floor`."""
    found = _tonight(baseline, metric, scored)
    if found is None:
        return pd.DataFrame(columns=ESTIMATE_COLUMNS)
    values, reference, how = found
    out = []
    for name, value in values.items():
        threshold = None
        if name == metric and value is not None:
            threshold = (metrics.worse_than(metric, reference[metric], margin) if reference.get(metric) is not None
                         else fallback_floor)
        breached = None if threshold is None or value is None else metrics.breaches(name, value, threshold)
        basis = (f"; threshold: the holdout's estimate {reference[name]:.4f} worse by the margin {margin:g}"
                 if threshold is not None and reference.get(name) is not None else "")
        out.append((name, value, threshold, breached, len(scored), how[name] + basis))
    why_not = NOT_ESTIMATED.get(metric) or (OWN_NOT_ESTIMATED if metrics.is_own(metric) else None)
    if why_not:
        out.append((metric, None, None, None, len(scored), why_not))
    return pd.DataFrame(out, columns=ESTIMATE_COLUMNS)
