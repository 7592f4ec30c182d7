"""The stages a user runs (ingest, features, train, score, monitor, retrain, promote, status, nightly, demo).

Each stage opens one recorded run in ops.runs, calls the stage modules with the values they
need, reports progress and returns a small summary dict. The CLI and jobs/*.py call these.
"""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import mlflow
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakeforge import features as feats
from lakeforge import quality as quality_checks
from lakeforge import ingest as ingestion
from lakeforge import metrics as lf_metrics
from lakeforge import (access, distributed, interrupts, lake, locks, logs, many_models, models, monitoring,
                       ownership, plots, registry, runs, scoring, training, tuning)
from lakeforge.config import Pipeline, Settings
from lakeforge.errors import DataError


@dataclass
class Context:
    """What a stage needs: settings, the pipeline, and (built on first use) Spark and MLflow."""

    settings: Settings
    pipeline: Pipeline
    spark_factory: object = None  # callable(settings) -> SparkSession; tests pass their fixture's session
    summaries: list[dict] = field(default_factory=list)

    def __post_init__(self):
        logs.configure(self.settings.log_format, self.settings.log_level)

    @cached_property
    def spark(self) -> SparkSession:
        from lakeforge.spark import build_session

        factory = self.spark_factory or build_session
        with interrupts.children_ignore_sigterm():  # the JVM outlives a SIGTERM to record the run's end
            spark = factory(self.settings)
        lake.register_tables(spark, self.lakehouse)
        return spark

    @cached_property
    def mlflow(self):
        ownership.claim(self.settings, "mlflow.artifact_root", "mlflow.tracking_uri")
        return registry.connect(self.settings.mlflow)

    @cached_property
    def user(self) -> str:
        """Who runs this: the authenticated MLflow user in the team set-up, else the OS account."""
        from lakeforge import access

        return access.current_user(self.settings)

    @property
    def lakehouse(self) -> Path:
        return self.settings.paths.lakehouse

    @contextmanager
    def recorded(self, job: str, run_date: dt.date | None = None):
        """The job's run in ops.runs, under the job's lock (LOCKS) when it has one, taken before any write."""
        ownership.claim(self.settings, "paths.lakehouse")
        run_id = runs.new_run_id()
        lock = LOCKS.get(job)
        with (locks.held(self.lakehouse, lock.format(pipeline=self.pipeline.name), job, self.pipeline.name, run_id,
                         self.settings.lock_wait_s) if lock else nullcontext()):
            with runs.recorded(self.spark, self.lakehouse, job, self.pipeline.name, self.settings.env, run_date,
                               run_id=run_id, user=self.user) as run:
                yield run


# One writer per lakehouse and job: ingest per lakehouse (pipelines share their sources), score per pipeline,
# and train, retrain and promote share one lock per pipeline (each moves the pipeline's aliases). `run nightly`
# and `demo` take each stage's lock while that stage runs, so one process never waits for itself.
LOCKS = {"ingest": "ingest", "maintain": "ingest", "score": "score-{pipeline}", "train": "train-{pipeline}",
         "retrain": "train-{pipeline}", "promote": "train-{pipeline}"}


def _default_score_date(ctx: Context) -> dt.date:
    """The day after the last event: the next night to score."""
    return _checked_dates(ctx, None)[0]


def _checked_dates(ctx: Context, dates: list[dt.date] | None) -> list[dt.date]:
    """The given as-of dates, refused beyond the ingested data; by default the next night to score."""
    last = feats.event_date_range(ctx.spark, ctx.lakehouse, ctx.pipeline)[1]
    if not dates:
        return [feats.next_date(last, ctx.pipeline)]
    feats.check_date(max(dates), last, ctx.pipeline)
    return dates


def ingest(ctx: Context) -> dict:
    """Load new landing files of every source into bronze/silver; bad rows to ops.quarantine."""
    with ctx.recorded("ingest") as run:
        sources = ctx.pipeline.sources
        run.input(ctx.spark, ctx.lakehouse, *[f"silver.{name}" for name in sources])
        results = ingestion.ingest_all(ctx.spark, sources, ctx.settings.paths.landing, ctx.lakehouse,
                                       ctx.settings.owner, log=run.log)
        for r in results:
            run.rows.update({f"{r.source}.files": r.files, f"{r.source}.read": r.rows_read,
                             f"{r.source}.kept": r.rows_kept, f"{r.source}.quarantined": r.rows_quarantined,
                             f"{r.source}.dropped": r.rows_dropped, f"{r.source}.refused": len(r.refused)})
            if r.files == 0:
                run.log(f"{r.source}: no new files")
        run.output(ctx.spark, ctx.lakehouse, *ingestion.ingest_tables(sources))
        return {"stage": "ingest", **run.rows}


def maintain(ctx: Context) -> dict:
    """Compact small files and VACUUM the tables ingest writes (maintenance settings), recorded in ops.runs."""
    with ctx.recorded("maintain") as run:
        every = ctx.settings.maintenance
        tables = ingestion.maintain(ctx.spark, ctx.lakehouse, ctx.pipeline.sources, every.target_file_mb,
                                    every.vacuum_retention_hours, log=run.log)
        for table, counts in tables.items():
            run.rows.update({f"{table}.{key}": value for key, value in counts.items()})
        run.output(ctx.spark, ctx.lakehouse, *tables)
        return {"stage": "maintain", "tables": len(tables),
                "files_before": sum(c["files_before"] for c in tables.values()),
                "files_after": sum(c["files_after"] for c in tables.values()),
                "vacuumed": sum(c["vacuumed"] for c in tables.values())}


def maintenance_due(ctx: Context) -> bool:
    """True when maintenance.every_days have passed (by date) since the last successful maintain, or none ran."""
    every = ctx.settings.maintenance.every_days
    if not every:
        return False
    last = runs.last_succeeded(ctx.spark, ctx.lakehouse, "maintain", ctx.pipeline.name)
    return last is None or (dt.datetime.now(dt.timezone.utc).date() - last.date()).days >= every


def build_features(ctx: Context, dates: list[dt.date] | None = None) -> dict:
    """Build gold.<pipeline>_features for the dates (default: the next score date)."""
    with ctx.recorded("features", run_date=max(dates) if dates else None) as run:
        dates = _checked_dates(ctx, dates)
        run.run_date = max(dates)
        run.input(ctx.spark, ctx.lakehouse, *feats.input_tables(ctx.pipeline))
        df = feats.build_features(ctx.spark, ctx.lakehouse, ctx.pipeline, dates)
        feats.write_features(ctx.spark, df, ctx.lakehouse, ctx.pipeline, dates, ctx.settings.owner)
        table = feats.features_table(ctx.pipeline)
        listed = [d.isoformat() for d in dates]
        written = lake.read(ctx.spark, ctx.lakehouse, table).where(F.col(feats.AS_OF).cast("string").isin(listed))
        rows, population = feats.count_population(written, ctx.pipeline)
        run.rows[table] = rows
        run.rows[f"{table}.population"] = population
        run.output(ctx.spark, ctx.lakehouse, table)
        run.log(f"{table}: {rows:,} rows for {len(dates)} date(s) {listed[0]}..{listed[-1]}, {population:,} in "
                f"the population")
        if rows and not population:
            run.log(f"WARNING: the population filter `{ctx.pipeline.features.population}` keeps none of these "
                    f"rows: nothing will be trained on or scored for these dates")
        return {"stage": "features", "dates": listed, "rows": rows, "population": population}


@dataclass
class Trained:
    """What fitting produced: the model to register, its parameters, and what to log and record with it."""

    model: object
    params: dict
    train_rows: int
    figures_from: object = None   # the estimator whose feature importance is plotted
    groups: object = None         # per_group: one row per group (train rows, model or fallback)


def train(ctx: Context, as_of: dt.date | None = None, window_days: int | None = None, why: str = "train") -> dict:
    """Build the point-in-time training set, fit (search, per group or distributed as configured), evaluate on a
    later holdout, log everything to MLflow, register a new version and send it through the gate.

    `as_of` trains as the night of that date would: only events before it (a retrain, or a backfill);
    `window_days` keeps only as-of dates of the last N days whose labels have matured.
    """
    pipeline = ctx.pipeline
    with ctx.recorded(why, run_date=as_of) as run:
        registry.end_orphan_runs(ctx.mlflow, pipeline.name, run.log)
        registry.reconcile_aliases(ctx.mlflow, ctx.spark, ctx.lakehouse, pipeline.name, run.run_id, run.log, ctx.user)
        first, last = feats.event_date_range(ctx.spark, ctx.lakehouse, pipeline)
        if as_of is not None:
            last = min(last, as_of - dt.timedelta(days=1))
        since = every = None
        if window_days is not None:
            since = last + dt.timedelta(days=1 - pipeline.label.horizon_days - window_days)
            every = pipeline.retrain.snapshot_every_days if pipeline.retrain else None
        train_dates, holdout_dates = training.snapshot_dates(first, last, pipeline, since=since, every_days=every)
        run.log(f"{len(train_dates)} training dates {train_dates[0]}..{train_dates[-1]}, "
                f"holdout {holdout_dates[0]}..{holdout_dates[-1]}")
        dates = train_dates + holdout_dates
        run.input(ctx.spark, ctx.lakehouse, *feats.input_tables(pipeline), feats.label_events_table(pipeline))
        feats.write_features(ctx.spark, feats.build_features(ctx.spark, ctx.lakehouse, pipeline, dates),
                             ctx.lakehouse, pipeline, dates, ctx.settings.owner)
        run.input(ctx.spark, ctx.lakehouse, feats.features_table(pipeline))
        labelled_df = feats.read_training_set(ctx.spark, ctx.lakehouse, pipeline, dates, run.inputs, holdout_dates,
                                              last + dt.timedelta(days=1))
        columns, label, task = feats.feature_columns(pipeline), pipeline.label.name, pipeline.label.task
        is_train = ~F.col(feats.AS_OF).isin(holdout_dates)
        # Spark returns joined rows in no fixed order, and LightGBM's bagging depends on row order:
        # sorting makes the same data, config and seed give the same model and metrics.
        order = [feats.AS_OF, *pipeline.keys]
        holdout = _sorted(labelled_df.where(~is_train).toPandas(), order)
        train_rows = None if pipeline.model.distributed else _sorted(labelled_df.where(is_train).toPandas(), order)
        spec = None if train_rows is None else training.estimator_spec(pipeline, train_rows, columns, label)
        classes = spec.classes if spec is not None and spec.classes else ()
        with registry.training_run(ctx.mlflow, pipeline.name, ctx.settings.mlflow.artifact_root,
                                   run.run_id, ctx.user) as mlflow_run_id:
            trained = _fit(ctx, run, labelled_df.where(is_train), train_rows, train_dates, columns, label, order, spec)
            run.log(f"training set: {trained.train_rows:,} rows, holdout: {len(holdout):,} rows")
            predictions = trained.model.predict(None, holdout)
            metrics = training.metrics_for(task, predictions, holdout[label], pipeline.model.top_k, classes)
            run.log("holdout " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "rows"))
            naive = {} if train_rows is None else training.naive_metrics(
                task, pipeline.model.metric, train_rows, holdout, label, pipeline.keys, feats.AS_OF,
                pipeline.model.top_k, classes)
            if naive:
                run.log(f"naive {pipeline.model.metric} on the same holdout: "
                        + ", ".join(f"{k} {v:.3f}" for k, v in naive.items()))
            metrics.update({f"naive.{k}": v for k, v in naive.items()})
            groups = None
            if trained.groups is not None:
                groups = _group_metrics(trained.groups, holdout, predictions, pipeline.model.group_key, label)
                metrics.update({f"{pipeline.model.group_key}.{g}.{m}": float(r[m]) for g, r in
                                groups.set_index(pipeline.model.group_key).iterrows() for m in ("mae", "mape")
                                if r["holdout_rows"] > 0})
            _log_details(ctx, run, trained, holdout, predictions, groups, label, task)
            tags = {"lakeforge.git_commit": runs.git_commit(), "lakeforge.config_hash": pipeline.config_hash(),
                    "lakeforge.version": runs.__version__, "lakeforge.run_id": run.run_id,
                    "lakeforge.trained_as_of": (last + dt.timedelta(days=1)).isoformat(), "lakeforge.trigger": why,
                    FEATURE_VERSION_TAG: feats.feature_version(pipeline),
                    "lakeforge.train_dates": f"{train_dates[0]}..{train_dates[-1]}",
                    "lakeforge.holdout_dates": f"{holdout_dates[0]}..{holdout_dates[-1]}",
                    **{f"lakeforge.input.{name}": str(v) for name, v in run.inputs.items()}}
            params = {"estimator": pipeline.model.estimator, "pattern": pipeline.model.pattern,
                      "distributed": pipeline.model.distributed, "seed": pipeline.training.seed, **trained.params}
            example = holdout if len(holdout) else train_rows
            baseline = None  # what monitoring compares each night with (not kept for a distributed fit)
            if train_rows is not None:
                categorical = {c for c in columns if pipeline.feature_table_columns()[c] in ("string", "boolean")}
                fitted = trained.model.predict(None, train_rows)
                if classes:  # a multiclass model's predictions drift as its predicted classes
                    fitted = [classes[i] for i in fitted.argmax(axis=1)]
                baseline = monitoring.build_baseline(train_rows, columns, fitted, categorical, bool(classes))
                if task == lf_metrics.CLASSIFICATION:  # CBPE estimates performance from this before labels arrive
                    baseline["calibration"] = monitoring.calibrate(predictions, holdout[label].to_numpy())
                mlflow.log_dict({"categories": spec.categories, "classes": list(classes)}, "estimator_inputs.json")
            logged = registry.log_and_register(ctx.mlflow, pipeline.name, ctx.settings.mlflow.artifact_root,
                                               trained.model, example, params, metrics, tags, baseline=baseline)
        if groups is not None:
            _write_manifest(ctx, groups, logged, run.run_id)
        runs.crash_point("train.model_logged")
        champion_value = _champion_metric(ctx, holdout, label)
        metric = pipeline.model.metric
        decision = registry.decide(metrics[metric], champion_value, pipeline.gate, metric, naive)
        if decision.alias == registry.CHAMPION and not access.gate_may_promote(ctx.settings, ctx.mlflow, ctx.user):
            decision = registry.Decision(registry.CHALLENGER, f"{decision.reason}; @champion awaits an approver "
                                                              f"(`lakeforge promote --alias champion`)")
        seen = {metric: metrics[metric], f"champion_{metric}": champion_value}
        previous = registry.move_alias(ctx.mlflow, ctx.spark, ctx.lakehouse, pipeline.name, decision.alias,
                                       logged.version, why, decision.reason, run.run_id, ctx.user, runs.GATE,
                                       metrics=seen)
        run.details.update(model=pipeline.name, version=logged.version, alias=decision.alias, previous=previous,
                           gate=decision.reason, **{f"champion_{metric}": champion_value},
                           mlflow_run_id=logged.run_id,
                           **{f"holdout_{k}": v for k, v in metrics.items() if "." not in k})
        run.rows.update(train_rows=trained.train_rows, holdout_rows=len(holdout))
        run.log(f"registered {pipeline.name} version {logged.version} as @{decision.alias} "
                f"(was {previous}): {decision.reason}")
        return {"stage": why, "version": logged.version, "alias": decision.alias, "gate": decision.reason,
                "mlflow_run_id": logged.run_id, "params": trained.params,
                "train_dates": f"{train_dates[0]}..{train_dates[-1]}",
                "holdout_dates": f"{holdout_dates[0]}..{holdout_dates[-1]}", f"champion_{metric}": champion_value,
                "naive": naive, **{k: v for k, v in metrics.items() if not k.startswith("naive.")}}


def _sorted(frame, order: list[str]):
    return frame.sort_values(order, kind="mergesort").reset_index(drop=True)


def _fit(ctx: Context, run, train_df, train_rows, train_dates: list[dt.date], columns: list[str], label: str,
         order: list[str], spec: training.EstimatorSpec | None) -> Trained:
    """Fit as the pipeline's model section says: distributed, or a search then global / per-group models."""
    pipeline, model = ctx.pipeline, ctx.pipeline.model
    task = pipeline.label.task
    if model.distributed:
        estimator = distributed.fit_logistic(train_df, columns, label, model.mllib_params)
        run.log("fitted Spark MLlib LogisticRegression on the executors (no training rows on the driver)")
        return Trained(registry.ProbabilityModel(estimator, columns), {"learner": "spark.ml.LogisticRegression",
                                                                        **distributed.DEFAULTS, **model.mllib_params},
                       train_df.count(), estimator)
    best: dict = {}
    if model.search_space:
        fit_dates, valid_dates = training.validation_split(train_dates, pipeline, model.tuning.validation_snapshots)
        in_fit = train_rows[feats.AS_OF].isin(fit_dates)
        in_valid = train_rows[feats.AS_OF].isin(valid_dates)
        result = tuning.search(train_rows[in_fit], train_rows[in_valid], columns, label, spec,
                               training.estimator_params(pipeline), model.search_space, model.tuning.max_evals,
                               model.tuning.parallelism, pipeline.training.seed, spark=ctx.spark,
                               timeout_s=model.tuning.timeout_s, metric=model.tuning.metric)
        tuning.log_trials(result)
        best = result.best_params
        run.log(f"search: {len(result.trials)} trials (parallelism {result.parallelism}) in {result.seconds:.1f}s, "
                f"best validation loss {result.best_loss:.4f} with {best}")
    fallback = training.fit(train_rows, columns, label, pipeline, best, spec)
    if model.pattern == "global":
        if task == lf_metrics.MULTICLASS:
            wrapped = models.MulticlassModel(fallback, columns, list(spec.classes))
        else:
            wrapped = (registry.ProbabilityModel if task == lf_metrics.CLASSIFICATION else models.RegressionModel)(
                fallback, columns)
        return Trained(wrapped, {**model.params, **best}, len(train_rows), fallback)
    key = model.group_key
    fitted = many_models.fit_per_group(train_df, key, columns, label, task, training.estimator_params(pipeline, best),
                                       model.min_group_rows, order, spec).toPandas()
    per_group = many_models.unpickle(fitted, key)
    run.log(f"{len(per_group)} of {len(fitted)} {key} groups got their own model; the others use the fallback")
    groups = fitted[[key, "train_rows"]].assign(own_model=fitted[key].isin(list(per_group)))
    return Trained(models.RoutingModel(per_group, fallback, key, columns, task), {**model.params, **best},
                   len(train_rows), fallback, groups)


def _group_metrics(groups: pd.DataFrame, holdout: pd.DataFrame, predictions, key: str, label: str) -> pd.DataFrame:
    """Per group: training rows, whether it has its own model, holdout rows, MAE and MAPE (new groups included)."""
    actual = holdout[label].astype("float64").to_numpy()
    errors = pd.DataFrame({key: holdout[key].to_numpy(), "abs_error": abs(predictions - actual),
                           "pct_error": abs(predictions - actual) / pd.Series(actual).clip(lower=1.0).to_numpy()})
    per = errors.groupby(key).agg(holdout_rows=("abs_error", "size"), mae=("abs_error", "mean"),
                                  mape=("pct_error", "mean")).reset_index()
    out = groups.merge(per, on=key, how="outer")
    out["train_rows"] = out["train_rows"].fillna(0).astype("int64")
    out["own_model"] = out["own_model"].fillna(False).astype(bool)
    out["holdout_rows"] = out["holdout_rows"].fillna(0).astype("int64")
    out = out.sort_values(key, kind="mergesort").reset_index(drop=True)
    out.attrs["errors"] = errors
    return out


def _log_details(ctx: Context, run, trained: Trained, holdout, predictions, groups, label: str, task: str) -> None:
    """Plots, the input Delta tables (mlflow.data) and the per-group metrics table of this training run."""
    figures = {}
    if task == lf_metrics.CLASSIFICATION and len(holdout):
        figures.update(plots.classification_plots(predictions, holdout[label].astype("int64").to_numpy()))
    if trained.figures_from is not None:
        figures.update(plots.importance_plot(trained.figures_from, feats.feature_columns(ctx.pipeline)))
    if groups is not None:
        figures.update(plots.group_error_plot(groups.attrs["errors"], ctx.pipeline.model.group_key))
        mlflow.log_dict({"groups": groups.to_dict(orient="records")}, "per_group_metrics.json")
    registry.log_figures(figures)
    plots.close(figures)
    registry.log_inputs([(name, str(lake.table_path(ctx.lakehouse, name)), version,
                          lake.read(ctx.spark, ctx.lakehouse, name, version=version))
                         for name, version in sorted(run.inputs.items())])


def models_table(pipeline) -> str:
    return f"gold.{pipeline.name}_models"


def _write_manifest(ctx: Context, groups, logged, run_id: str) -> None:
    """gold.<pipeline>_models: one row per group of this model version (rerunnable: replaces the version's rows)."""
    key = ctx.pipeline.model.group_key
    rows = groups.assign(model_name=ctx.pipeline.name, model_version=logged.version,
                         fallback_used=~groups["own_model"], mlflow_run_id=logged.run_id, run_id=run_id)
    rows = rows.rename(columns={key: "group"})[["model_name", "model_version", "group", "fallback_used", "train_rows",
                                                "holdout_rows", "mae", "mape", "mlflow_run_id", "run_id"]]
    schema = ("model_name string, model_version int, group string, fallback_used boolean, train_rows bigint, "
              "holdout_rows bigint, mae double, mape double, mlflow_run_id string, run_id string")
    records = [tuple(None if (isinstance(v, float) and v != v) else (v.item() if hasattr(v, "item") else v)
                     for v in r) for r in rows.itertuples(index=False, name=None)]
    df = (ctx.spark.createDataFrame(records, schema).withColumnRenamed("group", key)
          .withColumn("trained_at", F.current_timestamp()))
    lake.replace_where(ctx.spark, df, ctx.lakehouse, models_table(ctx.pipeline), f"model_version = {logged.version}",
                       properties={"lakeforge.description": f"{ctx.pipeline.name}: one row per {key} per model "
                                                            f"version (rows, holdout metrics, fallback used)",
                                   "lakeforge.owner": ctx.settings.owner,
                                   "lakeforge.source": f"models:/{ctx.pipeline.name}"})


def _champion_metric(ctx: Context, holdout, label: str) -> float | None:
    """The current champion's gate metric on this holdout, None if there is none or it cannot read these features."""
    version = registry.alias_version(ctx.mlflow, ctx.pipeline.name, registry.CHAMPION)
    if version is None:
        return None
    model = registry.load_python_model(ctx.pipeline.name, version)
    if any(c not in holdout.columns for c in model.feature_names):
        return None
    classes = getattr(model, "classes", None) or ()
    if classes and set(map(str, holdout[label])) - set(classes):
        return None  # a class the champion never saw: it cannot be compared on these rows
    return training.metrics_for(ctx.pipeline.label.task, model.predict(None, holdout), holdout[label],
                                ctx.pipeline.model.top_k, classes).get(ctx.pipeline.model.metric)


FEATURE_VERSION_TAG = "lakeforge.feature_version"  # on each model's training run: see features.feature_version


def score(ctx: Context, score_date: dt.date | None = None) -> dict:
    """Score every entity's features for the date with @champion into gold.<pipeline>_predictions."""
    pipeline = ctx.pipeline
    with ctx.recorded("score", run_date=score_date) as run:
        registry.reconcile_aliases(ctx.mlflow, ctx.spark, ctx.lakehouse, pipeline.name, run.run_id, run.log, ctx.user)
        mv = registry.champion(ctx.mlflow, pipeline.name)
        version = int(mv.version)
        score_date = run.run_date = score_date or _default_score_date(ctx)
        table = _champions_features(ctx, version, score_date)
        run.input(ctx.spark, ctx.lakehouse, table)
        if table not in run.inputs:
            raise DataError(f"{table} does not exist: run `lakeforge features --pipeline {pipeline.name} "
                            f"--date {score_date}` first")
        rows = feats.in_population(lake.read(ctx.spark, ctx.lakehouse, table, version=run.inputs[table]).where(
            F.col(feats.AS_OF) == F.lit(score_date)), pipeline)
        ownership.claim(ctx.settings, "paths.model_cache")
        model = scoring.load(ctx.mlflow, pipeline.name, version, ctx.settings.paths.model_cache, run.log)
        missing = [c for c in model.feature_names if c not in rows.columns]
        if missing:
            raise DataError(f"{pipeline.name} version {version} expects column(s) {', '.join(missing)} that "
                            f"{table} does not have; rebuild the features or retrain the model")
        if rows.limit(1).count() == 0:
            _explain_nothing_to_score(ctx, table, run.inputs[table], score_date)
        unseen = scoring.unseen_categories(rows, model.categories)
        for column, count in unseen.items():
            run.rows[f"unseen.{column}"] = count
            if count:
                run.log(f"{column}: {count:,} row(s) hold a value not seen in training; the model takes it as "
                        f"missing")
        payload = scoring.broadcast_model(ctx.spark, model)
        predictions = scoring.stamp(
            scoring.predict(rows, payload, model.fingerprint, feats.id_columns(pipeline),
                            model.feature_names, model.classes),
            score_date, pipeline.name, version, run.run_id)
        out = scoring.predictions_table(pipeline.name)
        lake.replace_where(ctx.spark, predictions, ctx.lakehouse, out, f"score_date = DATE'{score_date}'",
                           partition_by=["score_date"],
                           properties={"lakeforge.description": f"{pipeline.name} predictions by score_date",
                                       "lakeforge.owner": ctx.settings.owner,
                                       "lakeforge.source": f"models:/{pipeline.name}@champion"})
        written = lake.read(ctx.spark, ctx.lakehouse, out).where(F.col("score_date") == F.lit(score_date)).count()
        run.rows[out] = written
        run.details.update(model=pipeline.name, version=version, **model.details)
        run.output(ctx.spark, ctx.lakehouse, out)
        run.log(f"{out}: {written:,} predictions for {score_date} with {pipeline.name} v{version}")
        return {"stage": "score", "score_date": score_date.isoformat(), "rows": written, "version": version,
                **model.details, "unseen_categories": unseen}


def _champions_features(ctx: Context, version: int, score_date: dt.date) -> str:
    """The features table of the feature version the champion was trained on: the current one, or an earlier
    version's kept table while it has the date's rows (else an error saying how to move on)."""
    pipeline = ctx.pipeline
    current = feats.feature_version(pipeline)
    trained_on = registry.version_run(ctx.mlflow, pipeline.name, version).data.tags.get(FEATURE_VERSION_TAG)
    if trained_on in (None, current):  # None: registered before feature versions were recorded
        return feats.features_table(pipeline)
    table = feats.features_table(pipeline, trained_on)
    if lake.exists(ctx.lakehouse, table) and lake.read(ctx.spark, ctx.lakehouse, table).where(
            F.col(feats.AS_OF) == F.lit(score_date)).limit(1).count():
        return table
    raise DataError(f"{pipeline.name} version {version} (@champion) was trained on feature version {trained_on}, and "
                    f"{table} has no rows for {score_date}; the pipeline's features are now version {current} "
                    f"({feats.features_table(pipeline)}). Train on them (`lakeforge train --pipeline "
                    f"{pipeline.name}`) and promote the new version if the gate kept it @challenger, or restore the "
                    f"feature columns of version {trained_on}")


def _explain_nothing_to_score(ctx: Context, table: str, version: int, score_date: dt.date) -> None:
    """Say why a date has no rows to score: beyond the data, not built, or all outside the population."""
    pipeline = ctx.pipeline
    _checked_dates(ctx, [score_date])
    built = lake.read(ctx.spark, ctx.lakehouse, table, version=version).where(
        F.col(feats.AS_OF) == F.lit(score_date)).count()
    if built:
        raise DataError(f"{table} has {built:,} rows for {score_date}, but the population filter "
                        f"`{pipeline.features.population}` (features.population) keeps none of them: nothing to "
                        f"score. Check the data of the days before {score_date}, or the filter")
    raise DataError(f"{table} has no rows for {score_date}: run `lakeforge features --pipeline "
                    f"{pipeline.name} --date {score_date}` first")


def _read_pandas(ctx: Context, name: str, where=None, columns: list[str] | None = None):
    """A (small) slice of a table on the driver; None when the table does not exist yet."""
    if not lake.exists(ctx.lakehouse, name):
        return None
    df = lake.read(ctx.spark, ctx.lakehouse, name)
    df = df.where(where) if where is not None else df
    return (df.select(*columns) if columns else df).toPandas()


def _segments(ctx: Context, keys, as_of_column: str):
    """The pipeline's segment columns for each point: from the features, else from the segment source (keyed like
    the points)."""
    pipeline, point_key = ctx.pipeline, ctx.pipeline.keys
    wanted = pipeline.monitoring.segments
    in_features = [c for c in wanted if c in pipeline.feature_table_columns()]
    if in_features:
        table = lake.read(ctx.spark, ctx.lakehouse, feats.features_table(pipeline)).select(
            *point_key, F.col(feats.AS_OF).alias(as_of_column), *in_features)
        keys = keys.join(table, on=[*point_key, as_of_column], how="left")
    source = pipeline.monitoring.segment_source or (None if pipeline.is_event else pipeline.features.spine.source)
    declared = pipeline.sources[source].columns if source in pipeline.sources else {}
    from_source = [c for c in wanted if c not in in_features and c in declared]
    if from_source and lake.exists(ctx.lakehouse, f"silver.{source}"):
        keys = keys.join(lake.read(ctx.spark, ctx.lakehouse, f"silver.{source}").select(*point_key, *from_source),
                         on=point_key, how="left")
    return keys


def monitor(ctx: Context, monitor_date: dt.date | None = None) -> dict:
    """Drift, prediction drift, matured performance, quality trend and the retrain decision for a date, into
    ops.monitoring (a rerun replaces the date) and an HTML report (also logged to MLflow)."""
    pipeline = ctx.pipeline
    with ctx.recorded("monitor", run_date=monitor_date) as run:
        day = run.run_date = monitor_date or _default_score_date(ctx)
        version = int(registry.champion(ctx.mlflow, pipeline.name).version)
        champion_run = registry.version_run(ctx.mlflow, pipeline.name, version)
        try:
            baseline = registry.load_baseline(ctx.mlflow, pipeline.name, version)
        except DataError as exc:  # a model trained before monitoring existed: performance still counts
            baseline = None
            run.log(f"no drift today: {exc}")
        metric, horizon = pipeline.model.metric, pipeline.label.horizon_days
        validation = champion_run.data.metrics.get(metric)
        trained_as_of = champion_run.data.tags.get("lakeforge.trained_as_of")
        features_table, predictions = feats.features_table(pipeline), scoring.predictions_table(pipeline.name)
        events = feats.label_events_table(pipeline)
        run.input(ctx.spark, ctx.lakehouse, features_table, predictions, events, "ops.quality", monitoring.MONITORING)
        policy = pipeline.retrain
        watched = set(policy.psi_features) if policy else set()
        rows: list[dict] = []

        def add(**row):
            rows.append({"monitor_date": day, "pipeline": pipeline.name, "model_version": version, "segment": "",
                         "window_start": None, "window_end": None, "threshold": None, "breached": None,
                         "rows": None, "detail": "", "run_id": run.run_id, **row})

        # Drift of today's population and of today's predictions against the champion's training baseline.
        current = _read_pandas(ctx, features_table, F.col(feats.AS_OF) == F.lit(day))
        current = feats.in_population_pandas(current, pipeline) if current is not None else pd.DataFrame()
        scored = _read_pandas(ctx, predictions, F.col("score_date") == F.lit(day), [*pipeline.keys, "prediction"])
        if current.empty:
            run.log(f"{features_table} has no rows for {day}: no feature drift today")
        elif baseline is not None:
            tonight = scored.prediction.to_numpy() if scored is not None and len(scored) else None
            leave_out = set(pipeline.monitoring.calendar_features)
            tests = monitoring.drift_tests(baseline, current, tonight, leave_out, pipeline.monitoring.drift_min_rows)
            for r in tests.itertuples(index=False):
                add(kind=r.kind, name=r.name, metric=r.metric, value=None if r.value is None else float(r.value),
                    rows=int(r.rows), threshold=r.threshold, breached=r.breached, detail=r.detail)
            tested = set(tests[~tests.metric.isin(["too_few_rows", "left_out"])].name)
            # PSI and KS of what was tested too: the retrain policy's drift trigger reads PSI.
            drift = monitoring.drift_rows(baseline, current, tonight)
            for r in drift[drift.name.isin(tested)].itertuples(index=False):
                threshold = policy.psi_threshold if policy and r.metric == "psi" and r.name in watched else None
                add(kind=r.kind, name=r.name, metric=r.metric, value=float(r.value), rows=int(r.rows),
                    threshold=threshold, breached=None if threshold is None else bool(r.value >= threshold))

        # Performance estimated from tonight's scores (CBPE), before any label: a drop below the floor is a WATCH.
        floor = None
        if validation is not None:
            margin = policy.performance_margin if policy else 0.0
            floor = lf_metrics.worse_than(metric, validation, margin)
        if baseline is not None and baseline.get("calibration") and scored is not None and len(scored):
            estimate = monitoring.estimate_performance(baseline["calibration"], scored.prediction.to_numpy())
            for name, value in estimate.items():
                threshold = floor if name == metric else None
                add(kind="estimated_performance", name="overall", metric=name, value=value, rows=len(scored),
                    window_start=day, window_end=day, threshold=threshold,
                    breached=None if threshold is None or value is None else lf_metrics.breaches(name, value, threshold),
                    detail="CBPE: expected from the holdout-calibrated probabilities of tonight's scores")

        # Performance on the newest matured window only (score date + horizon <= today), per model version.
        start, end = monitoring.matured_window(day, horizon, pipeline.monitoring.window_days)
        labelled = pd.DataFrame()
        if lake.exists(ctx.lakehouse, predictions):
            keys = (lake.read(ctx.spark, ctx.lakehouse, predictions)
                    .where(F.col("score_date").between(F.lit(start), F.lit(end)))
                    .select(*feats.id_columns(pipeline), F.col("score_date").alias(feats.AS_OF), "prediction",
                            *([monitoring.PROBABILITIES] if pipeline.label.task == lf_metrics.MULTICLASS else []),
                            "model_version"))
            # Labels as known when the monitored day began: a rerun of the date gives the same figures.
            keys = feats.labelled(keys, lake.read(ctx.spark, ctx.lakehouse, events, version=run.inputs.get(events)),
                                  pipeline, known_before=F.lit(dt.datetime.combine(day, dt.time())))
            labelled = _segments(ctx, keys, feats.AS_OF).toPandas()
        if not labelled.empty:
            labelled = monitoring.matured(labelled, day, horizon, pipeline.monitoring.window_days, feats.AS_OF)
            perf = monitoring.performance_rows(labelled, pipeline.label.name, metric, pipeline.monitoring.segments,
                                               pipeline.label.task)
            for r in perf.itertuples(index=False):
                value = None if r.value is None or pd.isna(r.value) else float(r.value)
                # A segment is judged against the floor only with enough rows to tell (drift_min_rows).
                judged = r.kind == "performance" or r.rows >= pipeline.monitoring.drift_min_rows
                threshold = floor if r.model_version == version and judged else None
                breached = None if threshold is None or value is None else lf_metrics.breaches(metric, value, threshold)
                add(model_version=r.model_version, kind=r.kind, name=r.name, segment=r.segment, metric=r.metric,
                    value=value, rows=int(r.rows), window_start=start, window_end=end, threshold=threshold,
                    breached=breached)

        quality = _read_pandas(ctx, "ops.quality")
        if quality is not None:
            limits = {f"{name}: {quality_checks.QUARANTINE_SHARE}": source.max_quarantine_share
                      for name, source in pipeline.sources.items() if source.max_quarantine_share is not None}
            for r in monitoring.quality_trend(quality).itertuples(index=False):
                limit = limits.get(r.name)
                add(kind="quality", name=r.name, metric=r.metric, value=float(r.value), rows=int(r.rows),
                    detail=r.detail, threshold=limit, breached=None if limit is None else bool(r.value > limit))

        # The policy looks at this champion's history: earlier dates from ops.monitoring, plus today.
        earlier = _read_pandas(ctx, monitoring.MONITORING, (F.col("pipeline") == pipeline.name)
                               & (F.col("monitor_date") < F.lit(day)))
        today = pd.DataFrame(rows, columns=monitoring.COLUMNS)
        history = pd.concat([earlier, today], ignore_index=True) if earlier is not None and len(earlier) else today
        decision = _retrain_decision(pipeline, day, history, version, validation, trained_as_of)
        add(kind="decision", name="retrain", metric="fire", value=float(decision.fire),
            detail=f"{decision.trigger or 'none'}: {decision.reason}")
        level, reasons = monitoring.verdict(pd.DataFrame(rows, columns=monitoring.COLUMNS))
        add(kind="verdict", name=level, metric="level", value=float(monitoring.VERDICTS.index(level)),
            detail="; ".join(reasons))
        frame = pd.DataFrame(rows, columns=monitoring.COLUMNS)
        lake.replace_where(ctx.spark, _monitoring_rows(ctx, frame), ctx.lakehouse, monitoring.MONITORING,
                           f"pipeline = '{pipeline.name}' AND monitor_date = DATE'{day}'",
                           properties={"lakeforge.description": "Drift, matured performance, quality trend and "
                                                                "retrain decisions per pipeline and monitor date",
                                       "lakeforge.owner": ctx.settings.owner, "lakeforge.source": "lakeforge monitor"})
        run.output(ctx.spark, ctx.lakehouse, monitoring.MONITORING)
        run.rows[monitoring.MONITORING] = len(frame)
        overall = frame[(frame.kind == "performance") & (frame.model_version == version)].value.dropna()
        watched_psi = frame[(frame.kind == "drift") & (frame.breached == True)]  # noqa: E712 (None is not a breach)
        summary = {"stage": "monitor", "date": day.isoformat(), "champion": version,
                   "drifted": sorted(watched_psi.name), f"matured_{metric}": float(overall.iloc[0]) if len(overall) else None,
                   "retrain": decision.fire, "trigger": decision.trigger, "reason": decision.reason,
                   "verdict": level, "reasons": reasons}
        if pipeline.monitoring.report:
            full = pd.concat([earlier, frame], ignore_index=True) if earlier is not None and len(earlier) else frame
            tonight = scored.prediction.to_numpy() if scored is not None and len(scored) else None
            summary["report"] = str(_write_report(ctx, day, full, version, frame, summary, validation, floor,
                                                  baseline, current, tonight))
        run.details.update({k: v for k, v in summary.items() if k != "stage"})
        run.log(f"{day}: champion v{version}, drifted {summary['drifted'] or 'none'}, matured {metric} "
                f"{summary[f'matured_{metric}']}, retrain {'FIRES' if decision.fire else 'no'} ({decision.reason})")
        return summary


def _retrain_decision(pipeline: Pipeline, day: dt.date, history, version: int, validation: float | None,
                      trained_as_of: str | None) -> monitoring.RetrainDecision:
    """The pipeline's policy over the champion's own monitoring history."""
    if pipeline.retrain is None:
        return monitoring.RetrainDecision(False, "", "no retrain policy in the pipeline YAML")
    mine = history[history.model_version == version]
    drift = mine[(mine.kind == "drift") & (mine.metric == "psi")][["monitor_date", "name", "value"]]
    perf = mine[(mine.kind == "performance") & (mine.name == "overall")][["window_end", "value"]]
    since = dt.date.fromisoformat(trained_as_of) if trained_as_of else None
    # A retrain that did not replace the champion (gate or error) also starts the cooldown: no retrain every night.
    attempts = [d for d in history[history.kind == "retrain"].monitor_date if d < day]
    if attempts:
        since = max([d for d in (since, max(attempts)) if d is not None])
    return monitoring.decide_retrain(pipeline.retrain, day, pipeline.label.horizon_days, drift, perf, validation,
                                     pipeline.model.metric, since)


def _write_report(ctx: Context, day: dt.date, history, version: int, today, summary: dict,
                  validation: float | None, floor: float | None, baseline: dict | None, current, predictions) -> Path:
    """The HTML report at <paths.reports>/<pipeline>/<date>.html (and the index over every pipeline's nights),
    logged to a monitoring run in MLflow."""
    from lakeforge import report

    pipeline, policy = ctx.pipeline, ctx.pipeline.retrain
    text = report.render(pipeline.name, day, history, version, pipeline.model.metric, validation, floor,
                         policy.psi_threshold if policy else None, list(policy.psi_features) if policy else [],
                         baseline, current, predictions, pipeline.monitoring.history_nights)
    path = ctx.settings.paths.reports / ctx.pipeline.name / f"{day}.html"
    ownership.claim(ctx.settings, "paths.reports")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    _write_index(ctx)
    mlflow.set_experiment(experiment_id=registry.experiment_id(ctx.mlflow, ctx.pipeline.name,
                                                               ctx.settings.mlflow.artifact_root))
    with mlflow.start_run(run_name=f"monitor-{ctx.pipeline.name}-{day}"):
        mlflow.set_tags({"lakeforge.kind": "monitoring", "lakeforge.monitor_date": day.isoformat(),
                         "lakeforge.champion_version": str(version), "lakeforge.retrain": str(summary["retrain"]),
                         "lakeforge.reason": summary["reason"][:5000]})
        metrics = {f"psi.{r.name}": r.value for r in today.itertuples()
                   if r.kind in ("drift", "prediction_drift") and r.metric == "psi"}
        metrics.update({f"matured.{r.metric}": r.value for r in today.itertuples()
                        if r.kind == "performance" and r.model_version == version and r.value == r.value})
        metrics.update({f"estimated.{r.metric}": r.value for r in today.itertuples()
                        if r.kind == "estimated_performance" and r.value == r.value})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        mlflow.log_artifact(str(path), "reports")
    return path


def _write_index(ctx: Context) -> Path:
    """<paths.reports>/index.html: every pipeline's latest verdict and a link to each night with a report."""
    from lakeforge import report

    root = ctx.settings.paths.reports
    verdicts = _read_pandas(ctx, monitoring.MONITORING, F.col("kind") == "verdict",
                            ["pipeline", "monitor_date", "name", "detail"])
    nights = pd.DataFrame(columns=["pipeline", "monitor_date", "verdict", "reasons"])
    if verdicts is not None and len(verdicts):
        nights = verdicts.rename(columns={"name": "verdict", "detail": "reasons"})
        nights = nights[[(root / p / f"{d}.html").exists() for p, d in zip(nights.pipeline, nights.monitor_date)]]
    path = root / "index.html"
    path.write_text(report.render_index(nights), encoding="utf-8")
    return path


def promote(ctx: Context, version: int, reason: str, alias: str = registry.CHAMPION) -> dict:
    """Point an alias at a version by hand, recorded in ops.runs and ops.audit with the reason. In the team
    set-up @champion needs four eyes: the promoting user may not be the one who trained the version (a
    refusal is audited too, and exits 2)."""
    with ctx.recorded("promote") as run:
        registry.reconcile_aliases(ctx.mlflow, ctx.spark, ctx.lakehouse, ctx.pipeline.name, run.run_id, run.log,
                                   ctx.user)
        registry.wait_until_ready(ctx.mlflow, ctx.pipeline.name, version)
        action = runs.ALIAS
        if alias == registry.CHAMPION and access.authenticated(ctx.settings):
            action = runs.APPROVAL
            trained_by = registry.trainer(ctx.mlflow, ctx.pipeline.name, version)
            if trained_by is None or trained_by == ctx.user:
                _refuse(ctx, run, version, alias, reason, trained_by)
        previous = registry.move_alias(ctx.mlflow, ctx.spark, ctx.lakehouse, ctx.pipeline.name, alias, version,
                                       "promote", reason, run.run_id, ctx.user, action)
        run.details.update(alias=alias, previous=previous, version=version, reason=reason)
        run.log(f"{ctx.pipeline.name}@{alias}: {previous} -> {version} ({reason})")
        return {"stage": "promote", "alias": alias, "from": previous, "to": version}


def _refuse(ctx: Context, run, version: int, alias: str, reason: str, trained_by: str | None) -> None:
    """Four eyes: record the refused promotion (ops.audit row, tags on the version), then stop with exit 2."""
    name = ctx.pipeline.name
    why = (f"user '{ctx.user}' trained version {version}" if trained_by else
           f"version {version} has no training run that says who trained it ({registry.TRAINER_TAG})")
    message = (f"refused: @{alias} of {name} -> v{version} needs an approver other than the version's trainer; "
               f"{why}. Another user with the role approver runs `lakeforge promote --alias {alias} --version "
               f"{version} --reason ...`")
    current = registry.alias_version(ctx.mlflow, name, alias)
    runs.record_alias_change(ctx.spark, ctx.lakehouse, name, alias, current, version, f"promote: {reason}; {message}",
                             run.run_id, runs.REFUSED, user=ctx.user, action=runs.REFUSAL)
    registry.tag_decision(ctx.mlflow, name, version, f"{alias}.refused", runs.REFUSAL, ctx.user, current,
                          f"{reason}; {message}", None)
    raise access.AccessDenied(message)


def nightly(ctx: Context, score_date: dt.date | None = None, until: dt.date | None = None) -> dict:
    """The nightly flow (lakeforge.flow.NIGHTLY) for score_date..until (one date by default)."""
    from lakeforge import flow

    return flow.run_nightly(ctx, score_date, until)


def retrain(ctx: Context, day: dt.date, reason: str) -> dict:
    """Retrain on the policy's recent window as of `day`, through the promotion gate; the outcome goes to ops.monitoring."""
    policy = ctx.pipeline.retrain
    version = registry.alias_version(ctx.mlflow, ctx.pipeline.name, registry.CHAMPION)
    try:
        result = train(ctx, as_of=day, window_days=policy.window_days, why="retrain")
        outcome = {"name": "gate", "value": float(result["alias"] == registry.CHAMPION),
                   "model_version": result["version"],
                   "detail": f"v{result['version']} -> @{result['alias']}: {result['gate']}; trained on "
                             f"{result['train_dates']}, holdout {result['holdout_dates']}; fired by: {reason}"}
    except DataError as exc:  # e.g. too little history in the window: the night goes on, the failure is recorded
        result = {"stage": "retrain", "error": str(exc)}
        outcome = {"name": "error", "value": 0.0, "model_version": version, "detail": f"{exc}; fired by: {reason}"}
    row = {c: None for c in monitoring.COLUMNS} | {"monitor_date": day, "pipeline": ctx.pipeline.name,
                                                   "kind": "retrain", "segment": "", "metric": "promoted",
                                                   "run_id": None, **outcome}
    frame = pd.DataFrame([row], columns=monitoring.COLUMNS)
    lake.append(ctx.spark, _monitoring_rows(ctx, frame), ctx.lakehouse, monitoring.MONITORING)
    return {"date": day.isoformat(), **result}


def _monitoring_rows(ctx: Context, frame: pd.DataFrame):
    """ops.monitoring rows as a Spark DataFrame (pandas NaN/NaT become SQL nulls)."""
    return ctx.spark.createDataFrame(frame.astype(object).where(frame.notna(), None), monitoring.SCHEMA)


def status(ctx: Context) -> dict:
    """Tables (version, rows, last write, health), the last runs, and each pipeline's health and champion."""
    from lakeforge.config import available_pipelines

    # A shared catalog is read (it names what every session of the team sees); else the lakehouse folder.
    names = (lake.catalog_tables(ctx.spark) if ctx.settings.spark.metastore_url
             else lake.list_tables(ctx.lakehouse))
    tables = [lake.describe(ctx.spark, ctx.lakehouse, name) for name in names]
    all_runs = []
    if any(t["table"] == runs.RUNS and t["health"] == "ok" for t in tables):  # a damaged ledger is flagged above
        all_runs = runs.mark_abandoned([r.asDict() for r in runs.read_runs(ctx.spark, ctx.lakehouse).select(
            "run_id", "started_at", "job", "pipeline", "status", "run_date", "duration_s", "error", "host", "pid",
            "process_start").collect()], ctx.lakehouse)
    last_runs = sorted(all_runs, key=lambda r: r["started_at"], reverse=True)[:10]
    health = runs.pipeline_health(all_runs)
    names = sorted({ctx.pipeline.name, *available_pipelines(), *health})
    pipelines = {name: {**health.get(name, {"health": "never run", "failed_jobs": [], "interrupted_jobs": [],
                                             "abandoned_jobs": [], "running_jobs": [], "last_run": None}),
                        "champion": registry.alias_version(ctx.mlflow, name, registry.CHAMPION)}
                 for name in names}
    return {"tables": tables, "runs": last_runs, "pipelines": pipelines,
            "champion": pipelines[ctx.pipeline.name]["champion"]}


def doctor(ctx: Context) -> list:
    """Check every table's log and data files, with how to recover a damaged one (reads only; no run recorded,
    so it works on a lakehouse whose ops.runs is itself damaged or on read-only storage)."""
    return lake.doctor(ctx.spark, ctx.lakehouse)
