"""Hyperparameter search: TPE over the search space the pipeline YAML declares (the only module that imports hyperopt).

The search is pipelined over `parallelism` slots, and each proposal's history is fixed in advance:
TPE proposes trial k (0-based) from trials 0..k-parallelism finished, with their losses, and trials
k-parallelism+1..k-1 pending (proposed, no result), as hyperopt's own asynchronous fmin counts
unfinished trials, even when some of those have finished by then; its seed comes from the search's
seed and k only. Slot s runs trials s, s+parallelism, s+2*parallelism, ...: trial k waits for its
slot's previous trial (k-parallelism) and for proposal k-1 (proposals are made in trial order),
never for a whole round, so a slow trial holds up only its own slot. Each trial is its own one-task
Spark job when parallelism > 1 and runs in-process when it is 1. So the same data, space, seed and
parallelism give the same trials, whatever order the trials finish in. (hyperopt's SparkTrials asks
TPE for a trial whenever a slot frees, so its proposals depend on which trial finished first; it
also polls once a second per trial: see docs/training.md.)

Each trial fits on the earlier training dates and is scored on the later, purged validation dates;
the holdout is never seen. The training frames go to the executors once, as a broadcast, not in
every trial's closure. Executors make no MLflow calls: the trials are logged from the driver as
nested runs of the active parent run once the search ends.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd
from hyperopt import STATUS_OK, Trials, hp, space_eval, tpe
from hyperopt.base import JOB_STATE_DONE, Domain

from lakeforge import estimators, training
from lakeforge.config import SearchParam


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


def integer_params(estimator: str, search_space: dict[str, SearchParam]) -> set[str]:
    """The parameters whose draw is cast to int: the estimator's known integers (lakeforge.estimators) and, for any
    estimator, a quniform prior with a whole step."""
    whole = {k for k, p in search_space.items() if p.type == "quniform" and p.q is not None and float(p.q).is_integer()}
    return estimators.integer_params(estimator) | whole


def typed(params: dict, integers: set[str] | frozenset[str] = frozenset()) -> dict:
    """A trial's values as the estimator takes them: integral parameters as int."""
    out = {}
    for key, value in params.items():
        if isinstance(value, (float, np.floating)) and key in integers:
            value = int(round(float(value)))
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


class _Proposals:
    """The trials' proposals and losses, shared by the slots. Proposal k is made once proposal k-1 exists, from
    the history `_history(k)` fixes, so no proposal depends on which trial finished first."""

    def __init__(self, space: dict, parallelism: int, seed: int, deadline: float | None, integers: set[str]):
        self.space, self.parallelism, self.seed, self.deadline = space, parallelism, seed, deadline
        self.integers = integers
        self.domain = Domain(lambda params: None, space)  # proposals only: the slots evaluate the trials
        self.docs: list[dict] = []  # hyperopt's document of each proposal, in trial order
        self.params: list[dict] = []
        self.losses: dict[int, float] = {}
        self.stopped = False
        self.changed = threading.Condition()

    def propose(self, k: int) -> dict | None:
        """Trial k's parameters once proposal k-1 exists; None if the search stopped (failure or timeout) first."""
        with self.changed:
            self.changed.wait_for(lambda: self.stopped or len(self.docs) == k)
            if self.deadline is not None and time.perf_counter() >= self.deadline:
                self.stopped = True
            if self.stopped:
                self.changed.notify_all()
                return None
            history = self._history(k)
            seed = np.random.default_rng([self.seed, k]).integers(2**31 - 1)
            doc = tpe.suggest(history.new_trial_ids(1), self.domain, history, seed)[0]
            self.docs.append(doc)
            self.params.append(typed(space_eval(self.space, {n: v[0] for n, v in doc["misc"]["vals"].items() if v}),
                                     self.integers))
            self.changed.notify_all()
            return self.params[k]

    def _history(self, k: int) -> Trials:
        """The trials as proposal k sees them: 0..k-parallelism done with their losses (each finished before its
        slot proposed its next trial, at or before k-1), k-parallelism+1..k-1 pending even if done by now."""
        def as_of_k(j: int, doc: dict) -> dict:
            if j > k - self.parallelism:
                return {**doc}  # as proposed: JOB_STATE_NEW, no loss
            return {**doc, "state": JOB_STATE_DONE, "result": {"loss": self.losses[j], "status": STATUS_OK}}

        history = Trials()
        history.insert_trial_docs([as_of_k(j, doc) for j, doc in enumerate(self.docs)])
        history.refresh()
        return history

    def record(self, k: int, loss: float) -> None:
        with self.changed:
            self.losses[k] = loss

    def stop(self) -> None:
        with self.changed:
            self.stopped = True
            self.changed.notify_all()


def search(fit_rows: pd.DataFrame, valid_rows: pd.DataFrame, feature_cols: list[str], label: str,
           spec: training.EstimatorSpec | str, base_params: dict, search_space: dict[str, SearchParam], max_evals: int,
           parallelism: int, seed: int, spark=None, timeout_s: int | None = None,
           metric: str | None = None) -> SearchResult:
    """TPE search: the parameters with the lowest validation loss (`metric` as a loss, lakeforge.metrics; default
    log loss, or MAE for regression) among `max_evals` trials, `parallelism` at a time (Spark jobs when > 1). With
    `timeout_s`, no trial starts after it. `spec` is the estimator's (a task name alone means LightGBM)."""
    spec = spec if isinstance(spec, training.EstimatorSpec) else training.EstimatorSpec(estimators.LIGHTGBM, spec)
    columns = list(dict.fromkeys([*feature_cols, label]))
    frames = (fit_rows[columns], valid_rows[columns])
    scoring = (spec, metric)  # what every trial fits and how its loss is measured
    run_trial = _in_process(frames, feature_cols, label, scoring)
    payload = None
    if parallelism > 1:
        if spark is None:
            raise ValueError("a search with parallelism > 1 runs its trials on Spark: pass the SparkSession")
        payload = spark.sparkContext.broadcast(frames)
        run_trial = _on_spark(spark, payload, feature_cols, label, scoring)
    started = time.perf_counter()
    proposals = _Proposals(build_space(search_space), parallelism, seed,
                           None if timeout_s is None else started + timeout_s,
                           integer_params(spec.estimator, search_space))
    one_thread = estimators.one_thread(spec.estimator, spec.task)

    def run_slot(slot: int) -> None:
        try:
            for k in range(slot, max_evals, parallelism):
                params = proposals.propose(k)
                if params is None:
                    return
                proposals.record(k, run_trial({**base_params, **params, **one_thread}))
        except BaseException:
            proposals.stop()  # the other slots finish the trial they run and start no other
            raise

    try:
        with ThreadPoolExecutor(parallelism, thread_name_prefix="lakeforge-search") as pool:
            slots = [pool.submit(run_slot, s) for s in range(parallelism)]
        for slot in slots:
            slot.result()  # a failed trial's error
    finally:
        if payload is not None:
            payload.destroy()
    seconds = time.perf_counter() - started
    done = [(params, proposals.losses[k]) for k, params in enumerate(proposals.params)]
    best_params, best_loss = min(done, key=lambda trial: trial[1])  # the first of equal losses, as hyperopt's argmin
    return SearchResult(best_params, best_loss, done, seconds, parallelism)


def _in_process(frames, feature_cols: list[str], label: str, scoring: tuple):
    spec, metric = scoring

    def run_trial(arguments: dict) -> float:
        return training.validation_loss(spec, arguments, *frames, feature_cols, label, metric)

    return run_trial


def _on_spark(spark, payload, feature_cols: list[str], label: str, scoring: tuple):
    """A trial as its own Spark job of one task. The closure carries the broadcast handle, not the rows, and
    refers to lakeforge.training only, so executors import neither hyperopt nor MLflow."""
    spec, metric = scoring

    def run_trial(arguments: dict) -> float:
        job = spark.sparkContext.parallelize([arguments], 1)
        return job.map(lambda a: training.validation_loss(spec, a, *payload.value, feature_cols, label, metric)
                       ).collect()[0]

    return run_trial


def log_trials(result: SearchResult, prefix: str = "trial") -> None:
    """One nested MLflow run per trial (params and validation loss) under the active parent run."""
    for i, (params, loss) in enumerate(result.trials):
        with mlflow.start_run(run_name=f"{prefix}-{i:03d}", nested=True):
            mlflow.log_params({k: str(v) for k, v in params.items()})
            mlflow.log_metric("validation_loss", loss)
    mlflow.log_params({f"best.{k}": str(v) for k, v in result.best_params.items()})
    mlflow.log_metrics({"search.best_validation_loss": result.best_loss, "search.trials": float(len(result.trials)),
                        "search.seconds": result.seconds, "search.parallelism": float(result.parallelism)})
