"""Point-in-time training sets, a time-based split, fitting and evaluation (pure functions, no I/O)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier, LGBMRegressor
from sklearn.metrics import log_loss, mean_absolute_error, roc_auc_score

from lakeforge.config import Pipeline
from lakeforge.errors import DataError


def snapshot_dates(first_event: dt.date, last_event: dt.date, pipeline: Pipeline, since: dt.date | None = None,
                   every_days: int | None = None) -> tuple[list[dt.date], list[dt.date]]:
    """Training and holdout as-of dates, holdout last; never a random split across time.

    A date is usable only once its label window [d, d + horizon) is fully observed, and a
    training date's window must end before the first holdout date, so no training label
    peeks into the holdout period. `since` keeps only dates from then on (a retrain on a recent
    window); snapshots then step back from the latest usable date, so the newest labels are used.
    """
    horizon = dt.timedelta(days=pipeline.label.horizon_days)
    step = dt.timedelta(days=every_days or pipeline.training.snapshot_every_days)
    latest = last_event + dt.timedelta(days=1) - horizon
    earliest = first_event + dt.timedelta(days=pipeline.training.first_snapshot_after_days)
    dates, d = [], earliest
    if since is not None:
        earliest = max(earliest, since)
        d = latest
        while d >= earliest:
            dates.insert(0, d)
            d -= step
    while since is None and d <= latest:
        dates.append(d)
        d += step
    n_holdout = pipeline.training.holdout_snapshots
    holdout = dates[-n_holdout:]
    train = [d for d in dates[:-n_holdout] if holdout and d + horizon <= holdout[0]]
    if not train:
        raise DataError(f"not enough history to train {pipeline.name}: events from {first_event} to {last_event} "
                        f"give {len(dates)} snapshot dates, need at least {n_holdout} for the holdout plus training "
                        f"dates whose {pipeline.label.horizon_days}-day label window ends before it; "
                        f"generate more days or lower training.first_snapshot_after_days")
    return train, holdout


# A fit inside a Spark task (a search trial, one group's model) shares the executor's cores with the
# other tasks, one task per core: one LightGBM thread each (LightGBM's default, every core in every
# task, oversubscribes them), and the deterministic mode, stable only for a fixed thread count.
ONE_THREAD_PER_TASK = {"n_jobs": 1, "deterministic": True, "force_row_wise": True}


def estimator_params(pipeline: Pipeline, params: dict | None = None) -> dict:
    """The estimator's arguments: deterministic defaults, then model.params, then `params` (a search's pick)."""
    return {"random_state": pipeline.training.seed, **ONE_THREAD_PER_TASK, "verbose": -1, **pipeline.model.params,
            **(params or {})}


def fit(train: pd.DataFrame, feature_cols: list[str], label: str, pipeline: Pipeline, params: dict | None = None):
    """Fit the pipeline's estimator (a classifier or a regressor, by the label); deterministic for the seed."""
    return fit_estimator(pipeline.label.task, estimator_params(pipeline, params), train[feature_cols], train[label])


def fit_estimator(task: str, params: dict, x: pd.DataFrame, y: pd.Series):
    """A LightGBM classifier (0/1 label) or regressor fitted on x, y with exactly these arguments."""
    if task == "classification":
        return LGBMClassifier(**params).fit(x, y.astype("int64"))
    return LGBMRegressor(**params).fit(x, y.astype("float64"))


def validation_loss(task: str, params: dict, fit_rows: pd.DataFrame, valid_rows: pd.DataFrame,
                    feature_cols: list[str], label: str) -> float:
    """A search trial: fit with exactly these arguments on fit_rows, then the log loss (classification) or
    MAE (regression) on valid_rows."""
    model = fit_estimator(task, params, fit_rows[feature_cols], fit_rows[label])
    if task == "classification":
        return float(log_loss(valid_rows[label].astype("int64"), model.predict_proba(valid_rows[feature_cols])[:, 1],
                              labels=[0, 1]))
    return float(mean_absolute_error(valid_rows[label].astype("float64"), model.predict(valid_rows[feature_cols])))


def evaluate(model, data: pd.DataFrame, feature_cols: list[str], label: str, top_k: float = 0.1) -> dict[str, float]:
    """Holdout metrics of a fitted classifier (AUC, log loss, precision@k) or regressor (MAE, MAPE)."""
    if hasattr(model, "predict_proba"):
        return metrics_of(model.predict_proba(data[feature_cols])[:, 1], data[label], top_k)
    return regression_metrics(model.predict(data[feature_cols]), data[label])


def metrics_of(p: np.ndarray, labels: pd.Series, top_k: float = 0.1) -> dict[str, float]:
    """AUC, log loss, precision at the top k share, base rate and rows of probabilities against 0/1 labels."""
    y = labels.astype("int64").to_numpy()
    if len(np.unique(y)) < 2:
        raise DataError(f"the holdout has a single label value ({y[0] if len(y) else 'no rows'}); "
                        "cannot compute AUC: widen the holdout or check the label definition")
    return {"auc": float(roc_auc_score(y, p)), "log_loss": float(log_loss(y, p, labels=[0, 1])),
            "precision_at_k": precision_at_k(np.asarray(p), y, top_k),
            "positive_rate": float(y.mean()), "rows": float(len(y))}


def precision_at_k(p: np.ndarray, y: np.ndarray, share: float) -> float:
    """The positive rate among the ceil(share x rows) highest scores (ties broken by row order, stable)."""
    k = max(1, int(np.ceil(share * len(y))))
    top = np.argsort(-p, kind="mergesort")[:k]
    return float(y[top].mean())


def regression_metrics(pred: np.ndarray, actual: pd.Series) -> dict[str, float]:
    """MAE, MAPE and rows; MAPE divides by max(actual, 1) so a zero actual does not divide by zero."""
    y = actual.astype("float64").to_numpy()
    if len(y) == 0:
        raise DataError("the holdout has no rows: widen the holdout or check the population filter")
    err = np.abs(np.asarray(pred, dtype="float64") - y)
    return {"mae": float(err.mean()), "mape": float((err / np.maximum(y, 1.0)).mean()), "rows": float(len(y))}


def metrics_for(task: str, pred: np.ndarray, actual: pd.Series, top_k: float = 0.1) -> dict[str, float]:
    """The task's metrics of predictions (probabilities for classification) against the label."""
    return metrics_of(pred, actual, top_k) if task == "classification" else regression_metrics(pred, actual)


def validation_split(train_dates: list[dt.date], pipeline: Pipeline,
                     snapshots: int) -> tuple[list[dt.date], list[dt.date]]:
    """Inner split of the training dates for a search: the last `snapshots` validate, purged by the horizon."""
    horizon = dt.timedelta(days=pipeline.label.horizon_days)
    valid = train_dates[-snapshots:]
    fit_dates = [d for d in train_dates[:-snapshots] if d + horizon <= valid[0]]
    if not fit_dates:
        raise DataError(f"not enough training dates for a search with model.tuning.validation_snapshots="
                        f"{snapshots}: {len(train_dates)} training dates leave none whose label window ends "
                        f"before validation; lower it or generate more days")
    return fit_dates, valid


def naive_predictions(task: str, train: pd.DataFrame, holdout: pd.DataFrame, label: str, keys: list[str],
                      as_of: str) -> dict[str, np.ndarray]:
    """What a model must beat, on the holdout rows: the training base rate (classification) or mean
    (regression) for every row, and - where the same key has a label 7 days earlier (a time-indexed target,
    e.g. a next-day count) - last week's value, the training mean where it has none."""
    constant = float(train[label].astype("float64").mean()) if len(train) else 0.0
    out = {"base_rate" if task == "classification" else "mean": np.full(len(holdout), constant)}
    known = pd.concat([train, holdout], ignore_index=True)[[*keys, as_of, label]]
    week_before = holdout[[*keys, as_of]].assign(**{as_of: [d - dt.timedelta(days=7) for d in holdout[as_of]]})
    lagged = week_before.merge(known.drop_duplicates([*keys, as_of]), on=[*keys, as_of], how="left")[label]
    if len(holdout) and lagged.notna().mean() >= 0.5:  # most keys have a value a week before: a seasonal naive
        out["last_week"] = lagged.astype("float64").fillna(constant).to_numpy()
    return out


def naive_metrics(task: str, metric: str, train: pd.DataFrame, holdout: pd.DataFrame, label: str,
                  keys: list[str], as_of: str, top_k: float = 0.1) -> dict[str, float]:
    """The gate's metric of each naive prediction on the same holdout rows (see naive_predictions)."""
    if not len(holdout):
        return {}
    return {name: metrics_for(task, pred, holdout[label], top_k)[metric]
            for name, pred in naive_predictions(task, train, holdout, label, keys, as_of).items()}
