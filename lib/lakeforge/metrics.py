"""Every metric lakeforge computes, once: which task(s) it measures and whether higher is better.

The search's loss, the promotion gate (registry.decide), monitoring's performance rows and the retrain
policy (monitoring.decide_retrain) all read a metric's direction from here.

What a metric receives, by task:
  classification  labels 0/1 and the probability of class 1 (threshold 0.5 for f1 and accuracy)
  multiclass      class labels (as strings) and a probability matrix, one column per class of `classes`
  regression      numbers and predicted numbers
A metric that is undefined for the rows (AUC of a single class, no rows) is None.

A team's own metric (a pipeline's `model.own_metrics`) is registered under its name when the pipeline loads
(`register_own`) and is then named like lakeforge's own: it receives the same labels and predictions as a
metric of its task, and returns a number (NaN or infinite: undefined).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

CLASSIFICATION, MULTICLASS, REGRESSION = "classification", "multiclass", "regression"
TASKS = (CLASSIFICATION, MULTICLASS, REGRESSION)
THRESHOLD = 0.5  # f1 and accuracy of a binary classifier: class 1 at a probability of 0.5 or more


@dataclass(frozen=True)
class Metric:
    name: str
    tasks: tuple[str, ...]
    higher_is_better: bool
    compute: Callable[..., float | None]  # (task, y, p, classes, top_k) -> value
    about: str
    function: str | None = None  # a team's own metric: the module.function it calls


def _sk():
    from sklearn import metrics  # imported on first use: a config check needs the registry, not scikit-learn

    return metrics


def _binary(y) -> np.ndarray:
    return np.asarray(y, dtype="float64").astype("int64")


def _auc(task, y, p, classes, top_k):
    y = _binary(y)
    return float(_sk().roc_auc_score(y, np.asarray(p, dtype="float64"))) if len(np.unique(y)) == 2 else None


def _log_loss(task, y, p, classes, top_k):
    if task == MULTICLASS:
        return float(_sk().log_loss(_class_index(y, classes), np.asarray(p, dtype="float64"),
                                 labels=list(range(len(classes)))))
    return float(_sk().log_loss(_binary(y), np.asarray(p, dtype="float64"), labels=[0, 1]))


def _hard(task, y, p, classes):
    """Labels and hard predictions: class 1 at p >= THRESHOLD (binary), the most probable class (multiclass)."""
    if task == MULTICLASS:
        return _class_index(y, classes), np.argmax(np.asarray(p, dtype="float64"), axis=1)
    return _binary(y), (np.asarray(p, dtype="float64") >= THRESHOLD).astype("int64")


def _f1(task, y, p, classes, top_k):
    truth, pred = _hard(task, y, p, classes)
    return float(_sk().f1_score(truth, pred, labels=[0, 1] if task == CLASSIFICATION else None, zero_division=0.0))


def _macro_f1(task, y, p, classes, top_k):
    truth, pred = _hard(task, y, p, classes)
    labels = list(range(len(classes))) if task == MULTICLASS else [0, 1]
    return float(_sk().f1_score(truth, pred, labels=labels, average="macro", zero_division=0.0))


def _accuracy(task, y, p, classes, top_k):
    truth, pred = _hard(task, y, p, classes)
    return float((truth == pred).mean())


def _precision_at_k(task, y, p, classes, top_k):
    """The positive rate among the ceil(top_k x rows) highest scores (ties broken by row order, stable)."""
    y, p = _binary(y), np.asarray(p, dtype="float64")
    k = max(1, int(np.ceil(top_k * len(y))))
    return float(y[np.argsort(-p, kind="mergesort")[:k]].mean())


def _errors(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype="float64")
    return y, np.asarray(p, dtype="float64") - y


def _mae(task, y, p, classes, top_k):
    return float(np.abs(_errors(y, p)[1]).mean())


def _rmse(task, y, p, classes, top_k):
    return float(np.sqrt((_errors(y, p)[1] ** 2).mean()))


def _mape(task, y, p, classes, top_k):
    """Divided by max(actual, 1), so an actual of zero does not divide by zero."""
    y, err = _errors(y, p)
    return float((np.abs(err) / np.maximum(y, 1.0)).mean())


def _r2(task, y, p, classes, top_k):
    y, err = _errors(y, p)
    total = ((y - y.mean()) ** 2).sum()
    return float(1.0 - (err ** 2).sum() / total) if total > 0 else None


REGISTRY: dict[str, Metric] = {m.name: m for m in [
    Metric("auc", (CLASSIFICATION,), True, _auc, "area under the ROC curve"),
    Metric("log_loss", (CLASSIFICATION, MULTICLASS), False, _log_loss, "cross-entropy of the probabilities"),
    Metric("f1", (CLASSIFICATION,), True, _f1, f"F1 of class 1 at probability >= {THRESHOLD}"),
    Metric("accuracy", (CLASSIFICATION, MULTICLASS), True, _accuracy, "share of rows whose class is right"),
    Metric("precision_at_k", (CLASSIFICATION,), True, _precision_at_k,
           "positive rate among the top model.top_k share of scores"),
    Metric("macro_f1", (MULTICLASS,), True, _macro_f1, "unweighted mean of each class's F1"),
    Metric("mae", (REGRESSION,), False, _mae, "mean absolute error"),
    Metric("rmse", (REGRESSION,), False, _rmse, "root mean squared error"),
    Metric("mape", (REGRESSION,), False, _mape, "mean absolute error / max(actual, 1)"),
    Metric("r2", (REGRESSION,), True, _r2, "coefficient of determination"),
]}
DEFAULT = {CLASSIFICATION: "auc", MULTICLASS: "log_loss", REGRESSION: "mae"}  # the gate's metric unless set
SEARCH_LOSS = {CLASSIFICATION: "log_loss", MULTICLASS: "log_loss", REGRESSION: "mae"}  # a trial's loss unless set


OWN: dict[str, Metric] = {}  # teams' own metrics, by name, as their pipelines registered them in this process


def _calling(function: str) -> Callable[..., float | None]:
    """compute() of a team's own metric: imports module.function when first used and calls it with (y, p)."""

    def compute(task, y, p, classes, top_k):
        from lakeforge.pandas_on_spark import import_function  # as feature functions are imported, errors alike

        value = float(import_function(function)(y, p))
        return value if np.isfinite(value) else None

    return compute


def register_own(name: str, function: str, higher_is_better: bool, task: str, about: str = "") -> None:
    """Make a team's own metric known by `name` (model.own_metrics); the same name registered again must mean
    the same (two pipelines that share a metric declare it alike)."""
    if name in REGISTRY:
        raise ValueError(f"'{name}' is lakeforge's own metric ({REGISTRY[name].about}); give yours another name")
    known = OWN.get(name)
    if known is not None and (known.function, known.higher_is_better, known.tasks) != (function, higher_is_better,
                                                                                        (task,)):
        raise ValueError(f"metric '{name}' is already declared by another pipeline as {known.function} "
                         f"({known.tasks[0]}, higher_is_better: {str(known.higher_is_better).lower()}); "
                         f"declare it alike or name it differently")
    OWN[name] = Metric(name, (task,), higher_is_better, _calling(function), about or f"the team's own {function}",
                       function)


def lookup(name: str) -> Metric:
    """lakeforge's metric of that name, else a team's own (registered when its pipeline loaded)."""
    found = REGISTRY.get(name) or OWN.get(name)
    if found is None:
        raise KeyError(f"unknown metric '{name}': not one of lakeforge's ({', '.join(REGISTRY)}) and no loaded "
                       f"pipeline declares it under model.own_metrics")
    return found


def is_own(name: str) -> bool:
    return name in OWN  # register_own refuses lakeforge's names


def for_task(task: str) -> list[str]:
    """lakeforge's metric names defined for a task, in registry order (a team's own metrics are not included)."""
    return [name for name, m in REGISTRY.items() if task in m.tasks]


def higher_is_better(name: str) -> bool:
    return lookup(name).higher_is_better


def value(name: str, task: str, y, p, classes: Sequence[str] = (), top_k: float = 0.1) -> float | None:
    """Metric `name` of predictions `p` against labels `y` (see the module docstring); None when undefined."""
    if len(y) == 0:
        return None
    return lookup(name).compute(task, y, p, list(classes), top_k)


def loss(name: str, task: str, y, p, classes: Sequence[str] = (), top_k: float = 0.1) -> float:
    """The metric as a loss to minimise (negated when higher is better); +inf when undefined."""
    v = value(name, task, y, p, classes, top_k)
    if v is None:
        return float("inf")
    return -v if higher_is_better(name) else v


def better(name: str, a: float, b: float, by: float = 0.0) -> bool:
    """a beats b by more than `by` in the metric's direction."""
    return a - b > by if higher_is_better(name) else b - a > by


def best(name: str, values: Sequence[float]) -> float:
    """The best of values in the metric's direction."""
    return max(values) if higher_is_better(name) else min(values)


def worse_than(name: str, reference: float, margin: float) -> float:
    """The bound past which a value counts as worse than `reference` by `margin` (a floor or a ceiling)."""
    return reference - margin if higher_is_better(name) else reference + margin


def breaches(name: str, value_: float, bound: float) -> bool:
    """value_ is on the wrong side of `bound` (below a floor, above a ceiling)."""
    return value_ < bound if higher_is_better(name) else value_ > bound


def _class_index(y, classes: Sequence[str]) -> np.ndarray:
    """Each label's position in `classes` (labels compared as strings); a label not in classes is an error."""
    at = {c: i for i, c in enumerate(classes)}
    labels = [str(v) for v in np.asarray(y, dtype="object")]
    unknown = sorted({v for v in labels if v not in at})
    if unknown:
        raise ValueError(f"label value(s) {', '.join(unknown[:5])} are not among the model's classes "
                         f"({', '.join(classes)})")
    return np.array([at[v] for v in labels], dtype="int64")


def class_matrix(probabilities: Sequence[dict], classes: Sequence[str]) -> np.ndarray:
    """A probability matrix (rows x classes) from one {class: probability} map per row (the predictions table)."""
    return np.array([[float((row or {}).get(c, 0.0)) for c in classes] for row in probabilities], dtype="float64")
