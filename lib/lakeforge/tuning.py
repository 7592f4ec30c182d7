"""Hyperparameter search: TPE over the search space the pipeline YAML declares (the only module that imports hyperopt).

Trials run in parallel on the Spark executors with `SparkTrials(parallelism)`, or one after another
with hyperopt's `Trials` when parallelism is 1 (then the search is reproducible: same data, space
and seed, same trials). Each trial fits on the earlier training dates and is scored on the later,
purged validation dates; the holdout is never seen. The trials are logged from the driver as
nested MLflow runs of the active parent run once the search ends (executors make no MLflow calls).
`no_progress_loss` early stopping is deliberately not used: it hangs with SparkTrials.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd
from hyperopt import STATUS_OK, SparkTrials, Trials, fmin, hp, space_eval, tpe

from lakeforge.config import SearchParam

# Integer hyperparameters of LightGBM: a quniform draw (a float) is cast for them.
_INTEGER_PARAMS = {"num_leaves", "n_estimators", "max_depth", "min_child_samples", "subsample_freq", "max_bin"}


@dataclass(frozen=True)
class SearchResult:
    best_params: dict
    best_loss: float
    trials: list[tuple[dict, float]] = field(default_factory=list)  # (params, validation loss) in trial order
    seconds: float = 0.0
    parallelism: int = 1


def build_space(search_space: dict[str, SearchParam]) -> dict:
    """hyperopt's space from the YAML declaration (loguniform bounds are given on the natural scale)."""
    space = {}
    for name, p in search_space.items():
        if p.type == "uniform":
            space[name] = hp.uniform(name, p.low, p.high)
        elif p.type == "loguniform":
            space[name] = hp.loguniform(name, math.log(p.low), math.log(p.high))
        elif p.type == "quniform":
            space[name] = hp.quniform(name, p.low, p.high, p.q)
        else:
            space[name] = hp.choice(name, list(p.values or []))
    return space


def typed(params: dict) -> dict:
    """A trial's values as the estimator takes them: integral parameters as int."""
    out = {}
    for key, value in params.items():
        if isinstance(value, (float, np.floating)) and key in _INTEGER_PARAMS:
            value = int(round(float(value)))
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def _objective(fit_rows: pd.DataFrame, valid_rows: pd.DataFrame, feature_cols: list[str], label: str,
               task: str, base_params: dict):
    """The function each trial runs (pickled to an executor under SparkTrials): fit, then the validation loss."""

    def run(params: dict) -> dict:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from sklearn.metrics import log_loss, mean_absolute_error

        arguments = {**base_params, **typed(params)}
        if task == "classification":
            model = LGBMClassifier(**arguments).fit(fit_rows[feature_cols], fit_rows[label].astype("int64"))
            loss = log_loss(valid_rows[label].astype("int64"), model.predict_proba(valid_rows[feature_cols])[:, 1],
                            labels=[0, 1])
        else:
            model = LGBMRegressor(**arguments).fit(fit_rows[feature_cols], fit_rows[label].astype("float64"))
            loss = mean_absolute_error(valid_rows[label].astype("float64"), model.predict(valid_rows[feature_cols]))
        return {"loss": float(loss), "status": STATUS_OK}

    return run


def search(fit_rows: pd.DataFrame, valid_rows: pd.DataFrame, feature_cols: list[str], label: str, task: str,
           base_params: dict, search_space: dict[str, SearchParam], max_evals: int, parallelism: int, seed: int,
           spark=None, timeout_s: int | None = None) -> SearchResult:
    """TPE search: the parameters with the lowest validation loss (log loss or MAE) among `max_evals` trials."""
    space = build_space(search_space)
    if parallelism > 1:
        trials = SparkTrials(parallelism=parallelism, timeout=timeout_s, spark_session=spark)
    else:
        trials = Trials()
    started = time.perf_counter()
    best = fmin(_objective(fit_rows, valid_rows, feature_cols, label, task, base_params), space,
                algo=tpe.suggest, max_evals=max_evals, trials=trials, rstate=np.random.default_rng(seed),
                show_progressbar=False, timeout=timeout_s if parallelism == 1 else None)
    seconds = time.perf_counter() - started
    done = []
    for t in trials.trials:
        if t["result"].get("status") != STATUS_OK:
            continue
        values = {k: v[0] for k, v in t["misc"]["vals"].items() if v}
        done.append((typed(space_eval(space, values)), float(t["result"]["loss"])))
    best_params = typed(space_eval(space, best))
    return SearchResult(best_params, min(loss for _, loss in done), done, seconds, parallelism)


def log_trials(result: SearchResult, prefix: str = "trial") -> None:
    """One nested MLflow run per trial (params and validation loss) under the active parent run."""
    for i, (params, loss) in enumerate(result.trials):
        with mlflow.start_run(run_name=f"{prefix}-{i:03d}", nested=True):
            mlflow.log_params({k: str(v) for k, v in params.items()})
            mlflow.log_metric("validation_loss", loss)
    mlflow.log_params({f"best.{k}": str(v) for k, v in result.best_params.items()})
    mlflow.log_metrics({"search.best_validation_loss": result.best_loss, "search.trials": float(len(result.trials)),
                        "search.seconds": result.seconds, "search.parallelism": float(result.parallelism)})
