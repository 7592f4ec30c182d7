"""Point-in-time training sets, a time-based split, fitting and evaluation.

The functions above `# --- a pipeline's training` are pure (no I/O); those below fit a pipeline's model as its
model section says (a search, one global model, one per group, or distributed on Spark) and evaluate it on the
holdout; `train` is the train stage's whole work, from the training set to the gate.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from lakeforge import access, catalog, distributed, estimators, lake, metrics, models, monitoring, registry, runs
from lakeforge import features as feats
from lakeforge.config import Pipeline, Settings
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


@dataclass(frozen=True)
class EstimatorSpec:
    """What every fit of one training needs besides its rows and arguments (small, picklable: it travels to
    the executors with a search trial or a group's fit): the estimator, the task, the categories of the
    string inputs (fixed on the training rows) and, for multiclass, the classes in order."""

    estimator: str
    task: str
    categories: dict = field(default_factory=dict)
    classes: tuple | None = None


def estimator_spec(pipeline: Pipeline, train: pd.DataFrame, feature_cols: list[str], label: str) -> EstimatorSpec:
    """The spec of a pipeline's training: string feature columns are categorical; multiclass classes are the
    training labels' distinct values (as strings, sorted)."""
    types = pipeline.feature_table_columns()
    strings = [c for c in feature_cols if str(types.get(c, "")).strip().lower() == "string"]
    classes = None
    if pipeline.label.task == metrics.MULTICLASS:
        classes = tuple(sorted({str(v) for v in train[label].dropna()}))
    return EstimatorSpec(pipeline.model.estimator, pipeline.label.task,
                         estimators.categories_of(train, strings), classes)


def estimator_params(pipeline: Pipeline, params: dict | None = None) -> dict:
    """The estimator's arguments: deterministic one-thread defaults, then model.params, then `params` (a search's
    pick)."""
    return {**estimators.defaults(pipeline.model.estimator, pipeline.label.task, pipeline.training.seed),
            **pipeline.model.params, **(params or {})}


def fit(train: pd.DataFrame, feature_cols: list[str], label: str, pipeline: Pipeline, params: dict | None = None,
        spec: EstimatorSpec | None = None):
    """Fit the pipeline's estimator (a classifier or a regressor, by the label); deterministic for the seed."""
    spec = spec or estimator_spec(pipeline, train, feature_cols, label)
    return fit_estimator(spec.task, estimator_params(pipeline, params), train[feature_cols], train[label], spec)


def fit_estimator(task: str, params: dict, x: pd.DataFrame, y: pd.Series, spec: EstimatorSpec | None = None):
    """The spec's estimator (LightGBM when none is given) fitted on x, y with exactly these arguments."""
    spec = spec or EstimatorSpec(estimators.LIGHTGBM, task)
    return estimators.fit(spec.estimator, task, params, x, y, spec.categories,
                          list(spec.classes) if spec.classes else None)


def scores(task: str, model, x: pd.DataFrame) -> np.ndarray:
    """What the metrics take: P(class 1), the class probability matrix (multiclass), or the predicted number."""
    if task == metrics.CLASSIFICATION:
        return model.predict_proba(x)[:, 1]
    return model.predict_proba(x) if task == metrics.MULTICLASS else model.predict(x)


def validation_loss(spec: EstimatorSpec, params: dict, fit_rows: pd.DataFrame, valid_rows: pd.DataFrame,
                    feature_cols: list[str], label: str, metric: str | None = None) -> float:
    """A search trial: fit with exactly these arguments on fit_rows, then `metric` (default: log loss, MAE for
    regression) as a loss on valid_rows."""
    model = fit_estimator(spec.task, params, fit_rows[feature_cols], fit_rows[label], spec)
    return metrics.loss(metric or metrics.SEARCH_LOSS[spec.task], spec.task, valid_rows[label].to_numpy(),
                        scores(spec.task, model, valid_rows[feature_cols]), spec.classes or ())


def evaluate(model, data: pd.DataFrame, feature_cols: list[str], label: str, top_k: float = 0.1) -> dict[str, float]:
    """Holdout metrics of a fitted classifier (AUC, log loss, ...) or regressor (MAE, MAPE, ...)."""
    task = metrics.CLASSIFICATION if hasattr(model, "predict_proba") else metrics.REGRESSION
    return metrics_for(task, scores(task, model, data[feature_cols]), data[label], top_k)


def metrics_of(p: np.ndarray, labels: pd.Series, top_k: float = 0.1) -> dict[str, float]:
    """Every classification metric of probabilities against 0/1 labels, with the base rate and rows."""
    return metrics_for(metrics.CLASSIFICATION, p, labels, top_k)


def precision_at_k(p: np.ndarray, y: np.ndarray, share: float) -> float:
    """The positive rate among the ceil(share x rows) highest scores (lakeforge.metrics)."""
    return metrics.value("precision_at_k", metrics.CLASSIFICATION, y, p, top_k=share)


def regression_metrics(pred: np.ndarray, actual: pd.Series) -> dict[str, float]:
    """Every regression metric (MAPE divides by max(actual, 1)) and rows."""
    return metrics_for(metrics.REGRESSION, pred, actual)


def metrics_for(task: str, pred: np.ndarray, actual: pd.Series, top_k: float = 0.1,
                classes: tuple | list = (), own: tuple | list = ()) -> dict[str, float]:
    """Every metric of the task (lakeforge.metrics) and the pipeline's `own` metrics of predictions against the
    label, and rows (and the base rate of a binary label); a metric undefined for these rows is left out."""
    y = pd.Series(actual).to_numpy()
    if len(y) == 0:
        raise DataError("the holdout has no rows: widen the holdout or check the population filter")
    if task == metrics.CLASSIFICATION and len(np.unique(y.astype("int64"))) < 2:
        raise DataError(f"the holdout has a single label value ({y[0]}); cannot compute AUC: widen the holdout or "
                        "check the label definition")
    out = {}
    for name in [*metrics.for_task(task), *own]:
        value = metrics.value(name, task, y, pred, classes, top_k)
        if value is not None:
            out[name] = value
    if task == metrics.CLASSIFICATION:
        out["positive_rate"] = float(y.astype("int64").mean())
    return {**out, "rows": float(len(y))}


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
                      as_of: str, classes: tuple | list = ()) -> dict[str, np.ndarray]:
    """What a model must beat, on the holdout rows: the training base rate (classification), class shares
    (multiclass: the majority class is the most probable) or mean (regression) for every row, and - where the
    same key has a label 7 days earlier (a time-indexed target, e.g. a next-day count) - last week's value,
    the training mean where it has none."""
    if task == metrics.MULTICLASS:
        shares = train[label].astype(str).value_counts(normalize=True)
        return {"class_shares": np.tile([float(shares.get(c, 0.0)) for c in classes], (len(holdout), 1))}
    constant = float(train[label].astype("float64").mean()) if len(train) else 0.0
    out = {"base_rate" if task == metrics.CLASSIFICATION else "mean": np.full(len(holdout), constant)}
    known = pd.concat([train, holdout], ignore_index=True)[[*keys, as_of, label]]
    week_before = holdout[[*keys, as_of]].assign(**{as_of: [d - dt.timedelta(days=7) for d in holdout[as_of]]})
    lagged = week_before.merge(known.drop_duplicates([*keys, as_of]), on=[*keys, as_of], how="left")[label]
    if len(holdout) and lagged.notna().mean() >= 0.5:  # most keys have a value a week before: a seasonal naive
        out["last_week"] = lagged.astype("float64").fillna(constant).to_numpy()
    return out


def naive_metrics(task: str, metric: str, train: pd.DataFrame, holdout: pd.DataFrame, label: str,
                  keys: list[str], as_of: str, top_k: float = 0.1, classes: tuple | list = ()) -> dict[str, float]:
    """The gate's metric of each naive prediction on the same holdout rows (see naive_predictions); a metric
    undefined for a naive answer (e.g. R2 of a constant on constant labels) is left out."""
    if not len(holdout):
        return {}
    out = {}
    for name, pred in naive_predictions(task, train, holdout, label, keys, as_of, classes).items():
        value = metrics.value(metric, task, holdout[label].to_numpy(), pred, classes, top_k)
        if value is not None:
            out[name] = value
    return out


# ---------------------------------------------------------------- a pipeline's training


def window(first_event: dt.date, last_event: dt.date, pipeline: Pipeline, as_of: dt.date | None = None,
           window_days: int | None = None) -> tuple[list[dt.date], list[dt.date], dt.date]:
    """Training dates, holdout dates and the as-of date of a training: `as_of` trains as the night of that date
    would (only events before it); `window_days` keeps only as-of dates of the last N days whose labels have
    matured, snapshotted every retrain.snapshot_every_days."""
    last = last_event if as_of is None else min(last_event, as_of - dt.timedelta(days=1))
    since = every = None
    if window_days is not None:
        since = last + dt.timedelta(days=1 - pipeline.label.horizon_days - window_days)
        every = pipeline.retrain.snapshot_every_days if pipeline.retrain else None
    train_dates, holdout_dates = snapshot_dates(first_event, last, pipeline, since=since, every_days=every)
    return train_dates, holdout_dates, last + dt.timedelta(days=1)


@dataclass
class TrainingSet:
    """A training's rows split by date: the training rows on Spark and (unless the fit is distributed) on the
    driver, the holdout on the driver, sorted, with what every fit of them needs."""

    train_df: object               # Spark DataFrame of the training dates
    train_rows: pd.DataFrame | None
    holdout: pd.DataFrame
    columns: list[str]
    label: str
    order: list[str]
    spec: EstimatorSpec | None

    categorical: set[str] = field(default_factory=set)  # the string and boolean model inputs

    @property
    def classes(self) -> tuple:
        return self.spec.classes if self.spec is not None and self.spec.classes else ()


def _sorted(frame: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    return frame.sort_values(order, kind="mergesort").reset_index(drop=True)


def split(labelled_df, pipeline: Pipeline, holdout_dates: list[dt.date]) -> TrainingSet:
    """The labelled rows as training rows (every date but the holdout's) and holdout rows."""
    columns, label = feats.feature_columns(pipeline), pipeline.label.name
    is_train = ~F.col(catalog.AS_OF).isin(holdout_dates)
    # Spark returns joined rows in no fixed order, and LightGBM's bagging depends on row order:
    # sorting makes the same data, config and seed give the same model and metrics.
    order = [catalog.AS_OF, *pipeline.keys]
    if pipeline.model.distributed:  # the training rows stay on the executors
        holdout, train_rows = _sorted(labelled_df.where(~is_train).toPandas(), order), None
    else:  # one collect: the labelled rows are computed once, not once per side
        rows = labelled_df.toPandas()
        in_holdout = rows[catalog.AS_OF].isin(holdout_dates)
        holdout, train_rows = _sorted(rows[in_holdout], order), _sorted(rows[~in_holdout], order)
    spec = None if train_rows is None else estimator_spec(pipeline, train_rows, columns, label)
    types = pipeline.feature_table_columns()
    categorical = {c for c in columns if types[c] in ("string", "boolean")}
    return TrainingSet(labelled_df.where(is_train), train_rows, holdout, columns, label, order, spec, categorical)


@dataclass
class Trained:
    """What fitting produced: the model to register, its parameters, and what to log and record with it."""

    model: object
    params: dict
    train_rows: int
    figures_from: object = None   # the estimator whose feature importance is plotted
    groups: object = None         # per_group: one row per group (train rows, model or fallback)


def fit_model(spark, pipeline: Pipeline, data: TrainingSet, train_dates: list[dt.date], log=print) -> Trained:
    """Fit as the pipeline's model section says: distributed, or a search then global / per-group models."""
    from lakeforge import many_models, tuning  # both build on this module's fits

    model, task = pipeline.model, pipeline.label.task
    columns, label, spec, train_rows = data.columns, data.label, data.spec, data.train_rows
    if model.distributed:
        estimator = distributed.fit_logistic(data.train_df, columns, label, model.mllib_params)
        log("fitted Spark MLlib LogisticRegression on the executors (no training rows on the driver)")
        return Trained(registry.ProbabilityModel(estimator, columns), {"learner": "spark.ml.LogisticRegression",
                                                                        **distributed.DEFAULTS, **model.mllib_params},
                       data.train_df.count(), estimator)
    best: dict = {}
    if model.search_space:
        fit_dates, valid_dates = validation_split(train_dates, pipeline, model.tuning.validation_snapshots)
        in_fit = train_rows[catalog.AS_OF].isin(fit_dates)
        in_valid = train_rows[catalog.AS_OF].isin(valid_dates)
        result = tuning.search(train_rows[in_fit], train_rows[in_valid], columns, label, spec,
                               estimator_params(pipeline), model.search_space, model.tuning.max_evals,
                               model.tuning.parallelism, pipeline.training.seed, spark=spark,
                               timeout_s=model.tuning.timeout_s, metric=model.tuning.metric)
        tuning.log_trials(result)
        best = result.best_params
        log(f"search: {len(result.trials)} trials (parallelism {result.parallelism}) in {result.seconds:.1f}s, "
            f"best validation loss {result.best_loss:.4f} with {best}")
    fallback = fit(train_rows, columns, label, pipeline, best, spec)
    if model.pattern == "global":
        if task == metrics.MULTICLASS:
            wrapped = models.MulticlassModel(fallback, columns, list(spec.classes))
        else:
            wrapped = (registry.ProbabilityModel if task == metrics.CLASSIFICATION else models.RegressionModel)(
                fallback, columns)
        return Trained(wrapped, {**model.params, **best}, len(train_rows), fallback)
    key = model.group_key
    fitted = many_models.fit_per_group(data.train_df, key, columns, label, task, estimator_params(pipeline, best),
                                       model.min_group_rows, data.order, spec).toPandas()
    per_group = many_models.unpickle(fitted, key)
    log(f"{len(per_group)} of {len(fitted)} {key} groups got their own model; the others use the fallback")
    groups = fitted[[key, "train_rows"]].assign(own_model=fitted[key].isin(list(per_group)))
    return Trained(models.RoutingModel(per_group, fallback, key, columns, task), {**model.params, **best},
                   len(train_rows), fallback, groups)


@dataclass
class Evaluation:
    """The model on the holdout: its predictions, metrics (naive and per-group ones included), the naive
    baselines' metrics, and per group (per_group models) the holdout errors."""

    predictions: np.ndarray
    metrics: dict[str, float]
    naive: dict[str, float]
    groups: pd.DataFrame | None = None


def evaluate_holdout(pipeline: Pipeline, trained: Trained, data: TrainingSet, log=print) -> Evaluation:
    """The trained model's metrics on the later holdout, beside the naive predictions' and per group's."""
    from lakeforge import many_models

    task, model, holdout, label = pipeline.label.task, pipeline.model, data.holdout, data.label
    log(f"training set: {trained.train_rows:,} rows, holdout: {len(holdout):,} rows")
    predictions = trained.model.predict(None, holdout)
    found = metrics_for(task, predictions, holdout[label], model.top_k, data.classes, list(model.own_metrics))
    if model.metric not in found:  # e.g. a team's own metric that returned NaN: the gate would have nothing to compare
        raise DataError(f"model.metric {model.metric} ({metrics.lookup(model.metric).about}) is undefined on the "
                        f"holdout's {len(holdout):,} rows; nothing was registered. Widen the holdout "
                        f"(training.holdout_snapshots) or choose a metric these rows define")
    log("holdout " + ", ".join(f"{k} {v:.3f}" for k, v in found.items() if k != "rows"))
    naive = {} if data.train_rows is None else naive_metrics(
        task, model.metric, data.train_rows, holdout, label, pipeline.keys, catalog.AS_OF, model.top_k, data.classes)
    if naive:
        log(f"naive {model.metric} on the same holdout: " + ", ".join(f"{k} {v:.3f}" for k, v in naive.items()))
    found.update({f"naive.{k}": v for k, v in naive.items()})
    groups = None
    if trained.groups is not None:
        groups = many_models.group_metrics(trained.groups, holdout, predictions, model.group_key, label, task,
                                           model.metric, model.top_k)
        found.update(many_models.group_metric_values(groups, model.group_key))
    return Evaluation(predictions, found, naive, groups)


def champion_metric(champion, data: TrainingSet, pipeline: Pipeline) -> float | None:
    """The current champion's (a loaded model, or None) gate metric on this holdout; None if it cannot read these
    features."""
    holdout, label = data.holdout, data.label
    if champion is None or any(c not in holdout.columns for c in champion.feature_names):
        return None
    classes = getattr(champion, "classes", None) or ()
    if classes and set(map(str, holdout[label])) - set(classes):
        return None  # a class the champion never saw: it cannot be compared on these rows
    return metrics_for(pipeline.label.task, champion.predict(None, holdout), holdout[label],
                       pipeline.model.top_k, classes, list(pipeline.model.own_metrics)).get(pipeline.model.metric)


def train(spark, client, settings: Settings, pipeline: Pipeline, user: str, run: runs.Run, as_of: dt.date | None = None,
          window_days: int | None = None, why: str = "train") -> runs.Outcome:
    """The train stage's work: the point-in-time training set of the window (`window`), built and read at the
    versions noted as the run's inputs; the fit (`fit_model`), its holdout evaluation, the training logged to
    MLflow (with the monitoring baseline) and registered; per group the manifest; then the gate."""
    from lakeforge import many_models  # it builds on this module's fits

    lakehouse, metric, artifact_root = settings.paths.lakehouse, pipeline.model.metric, settings.mlflow.artifact_root
    registry.end_orphan_runs(client, pipeline.name, run.log)
    registry.reconcile_aliases(client, spark, lakehouse, pipeline.name, run.run_id, run.log, user)
    train_dates, holdout_dates, trained_as_of = window(*feats.event_date_range(spark, lakehouse, pipeline), pipeline,
                                                       as_of, window_days)
    spans = {"train_dates": f"{train_dates[0]}..{train_dates[-1]}",
             "holdout_dates": f"{holdout_dates[0]}..{holdout_dates[-1]}"}
    run.log(f"{len(train_dates)} training dates {spans['train_dates']}, holdout {spans['holdout_dates']}")
    dates = train_dates + holdout_dates
    run.input(spark, lakehouse, *feats.input_tables(pipeline), feats.label_events_table(pipeline))
    feats.build_and_write(spark, lakehouse, pipeline, dates, settings.owner)
    run.input(spark, lakehouse, feats.features_table(pipeline))
    data = split(feats.read_training_set(spark, lakehouse, pipeline, dates, run.inputs, holdout_dates, trained_as_of),
                 pipeline, holdout_dates)
    with registry.training_run(client, pipeline.name, artifact_root, run.run_id, user):
        trained = fit_model(spark, pipeline, data, train_dates, run.log)
        found = evaluate_holdout(pipeline, trained, data, run.log)
        baseline = monitoring.training_baseline(trained.model, data, pipeline, found.predictions)
        tags = registry.training_tags(pipeline, run.run_id, why, trained_as_of, feats.feature_version(pipeline),
                                      train_dates, holdout_dates, run.inputs)
        logged = registry.log_training(client, pipeline, artifact_root, trained, data, found, tags, baseline,
                                       lake.snapshots(spark, lakehouse, run.inputs))
    if found.groups is not None:
        many_models.write_manifest(spark, lakehouse, pipeline, found.groups, logged.version, logged.run_id,
                                   run.run_id, settings.owner)
    runs.crash_point("train.model_logged")
    champion_value = champion_metric(registry.champion_model(client, pipeline.name), data, pipeline)
    decision, previous = registry.gate(
        client, spark, lakehouse, pipeline.name, logged.version, pipeline.gate, metric, found.metrics, champion_value,
        found.naive, lambda: access.gate_may_promote(settings, client, user), why, run.run_id, user)
    run.log(f"registered {pipeline.name} version {logged.version} as @{decision.alias} "
            f"(was {previous}): {decision.reason}")
    return runs.Outcome(
        {"stage": why, "version": logged.version, "alias": decision.alias, "gate": decision.reason,
         "mlflow_run_id": logged.run_id, "params": trained.params, **spans, f"champion_{metric}": champion_value,
         "naive": found.naive, **{k: v for k, v in found.metrics.items() if not k.startswith("naive.")}},
        rows={"train_rows": trained.train_rows, "holdout_rows": len(data.holdout)},
        details={"model": pipeline.name, "version": logged.version, "alias": decision.alias, "previous": previous,
                 "gate": decision.reason, f"champion_{metric}": champion_value, "mlflow_run_id": logged.run_id,
                 **{f"holdout_{k}": v for k, v in found.metrics.items() if "." not in k}})
