"""Point-in-time training sets, a time-based split, fitting and evaluation (pure functions, no I/O)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.metrics import log_loss, roc_auc_score

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


def fit(train: pd.DataFrame, feature_cols: list[str], label: str, pipeline: Pipeline) -> LGBMClassifier:
    """Fit the pipeline's estimator; deterministic for the configured seed."""
    params = {"random_state": pipeline.training.seed, "n_jobs": 1, "deterministic": True,
              "force_row_wise": True, "verbose": -1, **pipeline.model.params}
    model = LGBMClassifier(**params)
    model.fit(train[feature_cols], train[label].astype("int64"))
    return model


def evaluate(model: LGBMClassifier, data: pd.DataFrame, feature_cols: list[str], label: str) -> dict[str, float]:
    """Holdout metrics: AUC, log loss, base rate and rows."""
    return metrics_of(model.predict_proba(data[feature_cols])[:, 1], data[label])


def metrics_of(p: np.ndarray, labels: pd.Series) -> dict[str, float]:
    """AUC, log loss, base rate and rows of predicted probabilities against 0/1 labels."""
    y = labels.astype("int64").to_numpy()
    if len(np.unique(y)) < 2:
        raise DataError(f"the holdout has a single label value ({y[0] if len(y) else 'no rows'}); "
                        "cannot compute AUC: widen the holdout or check the label definition")
    return {"auc": float(roc_auc_score(y, p)), "log_loss": float(log_loss(y, p, labels=[0, 1])),
            "positive_rate": float(y.mean()), "rows": float(len(y))}
