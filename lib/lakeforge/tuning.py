"""Hyperparameter search: TPE over the search space the pipeline YAML declares (the only module that imports hyperopt).

The search runs in synchronous rounds of `parallelism` trials. Before a round, TPE proposes all of
its trials, one after another, from the same finished history (the round's earlier proposals count
as pending, as hyperopt's own asynchronous fmin counts them) with one seeded random generator; then
the round runs, as one Spark job of one task per trial when parallelism > 1, in-process when it is
1. So the same data, space, seed and parallelism give the same trials, whatever order the trials
finish in. (hyperopt's SparkTrials asks TPE for a trial whenever a slot frees, so its proposals
depend on which trial finished first; it also polls once a second per trial: see docs/training.md.)

Each trial fits on the earlier training dates and is scored on the later, purged validation dates;
the holdout is never seen. The training frames go to the executors once, as a broadcast, not in
every trial's closure. Executors make no MLflow calls: the trials are logged from the driver as
nested runs of the active parent run once the search ends.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd
from hyperopt import STATUS_OK, Trials, hp, space_eval, tpe
from hyperopt.base import JOB_STATE_DONE, Domain

from lakeforge import training
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


def _propose(domain: Domain, trials: Trials, rng: np.random.Generator) -> dict:
    """TPE's next trial from every trial so far (unfinished ones count as pending), added to `trials` as new."""
    docs = tpe.suggest(trials.new_trial_ids(1), domain, trials, rng.integers(2**31 - 1))
    trials.insert_trial_docs(docs)
    trials.refresh()
    return trials.trials[-1]


def search(fit_rows: pd.DataFrame, valid_rows: pd.DataFrame, feature_cols: list[str], label: str, task: str,
           base_params: dict, search_space: dict[str, SearchParam], max_evals: int, parallelism: int, seed: int,
           spark=None, timeout_s: int | None = None) -> SearchResult:
    """TPE search: the parameters with the lowest validation loss (log loss or MAE) among `max_evals` trials,
    run in rounds of `parallelism` (Spark tasks when > 1). With `timeout_s`, no round starts after it."""
    space = build_space(search_space)
    domain = Domain(lambda params: None, space)  # proposals only: the rounds below evaluate the trials
    columns = list(dict.fromkeys([*feature_cols, label]))
    frames = (fit_rows[columns], valid_rows[columns])
    run_round = _in_process(frames, feature_cols, label, task)
    payload = None
    if parallelism > 1:
        if spark is None:
            raise ValueError("a search with parallelism > 1 runs its trials on Spark: pass the SparkSession")
        payload = spark.sparkContext.broadcast(frames)
        run_round = _on_spark(spark, payload, feature_cols, label, task)
    trials, rng, done = Trials(), np.random.default_rng(seed), []
    started = time.perf_counter()
    try:
        while len(done) < max_evals and (timeout_s is None or time.perf_counter() - started < timeout_s):
            docs = [_propose(domain, trials, rng) for _ in range(min(parallelism, max_evals - len(done)))]
            params = [typed(space_eval(space, {k: v[0] for k, v in d["misc"]["vals"].items() if v})) for d in docs]
            losses = run_round([{**base_params, **p, **training.ONE_THREAD_PER_TASK} for p in params])
            for doc, loss in zip(docs, losses):
                doc["state"], doc["result"] = JOB_STATE_DONE, {"loss": loss, "status": STATUS_OK}
            trials.refresh()
            done.extend(zip(params, losses))
    finally:
        if payload is not None:
            payload.destroy()
    seconds = time.perf_counter() - started
    best_params, best_loss = min(done, key=lambda trial: trial[1])  # the first of equal losses, as hyperopt's argmin
    return SearchResult(best_params, best_loss, done, seconds, parallelism)


def _in_process(frames, feature_cols: list[str], label: str, task: str):
    def run_round(arguments: list[dict]) -> list[float]:
        return [training.validation_loss(task, a, *frames, feature_cols, label) for a in arguments]

    return run_round


def _on_spark(spark, payload, feature_cols: list[str], label: str, task: str):
    """A round as one Spark job of one task per trial. The closure carries the broadcast handle, not the rows,
    and refers to lakeforge.training only, so executors import neither hyperopt nor MLflow."""
    def run_round(arguments: list[dict]) -> list[float]:
        tasks = spark.sparkContext.parallelize(arguments, len(arguments))
        return tasks.map(lambda a: training.validation_loss(task, a, *payload.value, feature_cols, label)).collect()

    return run_round


def log_trials(result: SearchResult, prefix: str = "trial") -> None:
    """One nested MLflow run per trial (params and validation loss) under the active parent run."""
    for i, (params, loss) in enumerate(result.trials):
        with mlflow.start_run(run_name=f"{prefix}-{i:03d}", nested=True):
            mlflow.log_params({k: str(v) for k, v in params.items()})
            mlflow.log_metric("validation_loss", loss)
    mlflow.log_params({f"best.{k}": str(v) for k, v in result.best_params.items()})
    mlflow.log_metrics({"search.best_validation_loss": result.best_loss, "search.trials": float(len(result.trials)),
                        "search.seconds": result.seconds, "search.parallelism": float(result.parallelism)})
