"""Evaluation plots logged with each training run (matplotlib, no display): ROC, precision-recall,
calibration, feature importance, and the error distribution per group for a per-group model."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402


def _figure(title: str):
    fig, ax = plt.subplots(figsize=(5, 4), dpi=80)
    ax.set_title(title)
    return fig, ax


def classification_plots(p: np.ndarray, y: np.ndarray) -> dict[str, object]:
    """ROC, precision-recall and calibration of probabilities p against 0/1 labels y."""
    figures = {}
    fig, ax = _figure("ROC (holdout)")
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    figures["roc.png"] = fig
    fig, ax = _figure("Precision-recall (holdout)")
    precision, recall, _ = precision_recall_curve(y, p)
    ax.plot(recall, precision)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    figures["precision_recall.png"] = fig
    fig, ax = _figure("Calibration (holdout)")
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile")
    ax.plot(predicted, observed, marker="o")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed rate")
    figures["calibration.png"] = fig
    return figures


def importance_plot(estimator, feature_names: list[str]) -> dict[str, object]:
    """Feature importance (split counts for LightGBM, |coefficient| for a linear model); {} if it has none."""
    values = getattr(estimator, "feature_importances_", None)
    if values is None:
        return {}
    order = np.argsort(values)
    fig, ax = _figure("Feature importance")
    ax.barh(np.array(feature_names)[order], np.asarray(values)[order])
    fig.tight_layout()
    return {"feature_importance.png": fig}


def group_error_plot(errors: pd.DataFrame, group_key: str) -> dict[str, object]:
    """Absolute error per row, one box per group (the per-store error distribution)."""
    groups = sorted(errors[group_key].unique())
    fig, ax = _figure(f"Absolute error per {group_key} (holdout)")
    ax.boxplot([errors.loc[errors[group_key] == g, "abs_error"].to_numpy() for g in groups])
    ax.set_xticks(range(1, len(groups) + 1), [str(g) for g in groups], rotation=90)
    ax.set_ylabel("|prediction - actual|")
    fig.tight_layout()
    return {f"error_by_{group_key}.png": fig}


def close(figures: dict[str, object]) -> None:
    for fig in figures.values():
        plt.close(fig)
