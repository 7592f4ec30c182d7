"""The stages a user runs (ingest, features, train, score, promote, status, nightly, demo).

Each stage opens one recorded run in ops.runs, calls the stage modules with the values they
need, reports progress and returns a small summary dict. The CLI and jobs/*.py call these.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import mlflow
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakeforge import features as feats
from lakeforge import ingest as ingestion
from lakeforge import distributed, lake, many_models, models, plots, registry, runs, scoring, training, tuning
from lakeforge.config import Pipeline, Settings
from lakeforge.errors import DataError


@dataclass
class Context:
    """What a stage needs: settings, the pipeline, and (built on first use) Spark and MLflow."""

    settings: Settings
    pipeline: Pipeline
    spark_factory: object = None  # callable(settings) -> SparkSession; tests pass their fixture's session
    summaries: list[dict] = field(default_factory=list)

    @cached_property
    def spark(self) -> SparkSession:
        from lakeforge.spark import build_session

        factory = self.spark_factory or build_session
        spark = factory(self.settings)
        lake.register_tables(spark, self.lakehouse)
        return spark

    @cached_property
    def mlflow(self):
        return registry.connect(self.settings.mlflow)

    @property
    def lakehouse(self) -> Path:
        return self.settings.paths.lakehouse

    def recorded(self, job: str, run_date: dt.date | None = None):
        return runs.recorded(self.spark, self.lakehouse, job, self.pipeline.name, self.settings.env, run_date,
                             json_logs=self.settings.log_format == "json")


def _default_score_date(ctx: Context) -> dt.date:
    """The day after the last event: the next night to score."""
    return feats.event_date_range(ctx.spark, ctx.lakehouse, ctx.pipeline)[1] + dt.timedelta(days=1)


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
                             f"{r.source}.dropped": r.rows_dropped})
            if r.files == 0:
                run.log(f"{r.source}: no new files")
        run.output(ctx.spark, ctx.lakehouse, *[f"{layer}.{name}" for name in sources for layer in ("bronze", "silver")],
                   ingestion.QUARANTINE, ingestion.FILE_LEDGER)
        return {"stage": "ingest", **run.rows}


def build_features(ctx: Context, dates: list[dt.date] | None = None) -> dict:
    """Build gold.<pipeline>_features for the dates (default: the next score date)."""
    dates = dates or [_default_score_date(ctx)]
    with ctx.recorded("features", run_date=max(dates)) as run:
        run.input(ctx.spark, ctx.lakehouse, f"bronze.{ctx.pipeline.features.spine.source}",
                  f"silver.{ctx.pipeline.features.events.source}")
        df = feats.build_features(ctx.spark, ctx.lakehouse, ctx.pipeline, dates)
        feats.write_features(ctx.spark, df, ctx.lakehouse, ctx.pipeline, dates, ctx.settings.owner)
        table = feats.features_table(ctx.pipeline)
        listed = [d.isoformat() for d in dates]
        rows = lake.read(ctx.spark, ctx.lakehouse, table).where(F.col(feats.AS_OF).cast("string").isin(listed)).count()
        run.rows[table] = rows
        run.output(ctx.spark, ctx.lakehouse, table)
        run.log(f"{table}: {rows:,} rows for {len(dates)} date(s) {listed[0]}..{listed[-1]}")
        return {"stage": "features", "dates": listed, "rows": rows}


class SimulatedCrash(BaseException):
    """Raised at a named point when LAKEFORGE_TEST_CRASH_AFTER names it (tests kill a stage mid-way with it)."""


def _crash_point(name: str) -> None:
    if os.environ.get("LAKEFORGE_TEST_CRASH_AFTER") == name:
        raise SimulatedCrash(f"simulated crash after {name} (LAKEFORGE_TEST_CRASH_AFTER)")


@dataclass
class Trained:
    """What fitting produced: the model to register, its parameters, and what to log and record with it."""

    model: object
    params: dict
    train_rows: int
    figures_from: object = None   # the estimator whose feature importance is plotted
    groups: object = None         # per_group: one row per group (train rows, model or fallback)


def train(ctx: Context) -> dict:
    """Build the point-in-time training set, fit (search, per group or distributed as configured), evaluate on a
    later holdout, log everything to MLflow, register a new version and send it through the gate."""
    pipeline = ctx.pipeline
    with ctx.recorded("train") as run:
        first, last = feats.event_date_range(ctx.spark, ctx.lakehouse, pipeline)
        train_dates, holdout_dates = training.snapshot_dates(first, last, pipeline)
        run.log(f"{len(train_dates)} training dates {train_dates[0]}..{train_dates[-1]}, "
                f"holdout {holdout_dates[0]}..{holdout_dates[-1]}")
        dates = train_dates + holdout_dates
        spine, events = f"bronze.{pipeline.features.spine.source}", f"silver.{pipeline.features.events.source}"
        run.input(ctx.spark, ctx.lakehouse, spine, events)
        feats.write_features(ctx.spark, feats.build_features(ctx.spark, ctx.lakehouse, pipeline, dates),
                             ctx.lakehouse, pipeline, dates, ctx.settings.owner)
        table = feats.features_table(pipeline)
        run.input(ctx.spark, ctx.lakehouse, table)
        keys = feats.in_population(lake.read(ctx.spark, ctx.lakehouse, table, version=run.inputs[table]).where(
            F.col(feats.AS_OF).isin(dates)), pipeline)
        labelled_df = keys.join(feats.labels(lake.read(ctx.spark, ctx.lakehouse, events, version=run.inputs[events]),
                                             keys, pipeline), on=[pipeline.features.entity, feats.AS_OF], how="inner")
        columns, label, task = feats.feature_columns(pipeline), pipeline.label.name, pipeline.label.task
        is_train = ~F.col(feats.AS_OF).isin(holdout_dates)
        # Spark returns joined rows in no fixed order, and LightGBM's bagging depends on row order:
        # sorting makes the same data, config and seed give the same model and metrics.
        order = [feats.AS_OF, pipeline.features.entity]
        holdout = _sorted(labelled_df.where(~is_train).toPandas(), order)
        train_rows = None if pipeline.model.distributed else _sorted(labelled_df.where(is_train).toPandas(), order)
        with registry.training_run(ctx.mlflow, pipeline.name, ctx.settings.mlflow.artifact_root) as mlflow_run_id:
            trained = _fit(ctx, run, labelled_df.where(is_train), train_rows, train_dates, columns, label, order)
            run.log(f"training set: {trained.train_rows:,} rows, holdout: {len(holdout):,} rows")
            predictions = trained.model.predict(None, holdout)
            metrics = training.metrics_for(task, predictions, holdout[label], pipeline.model.top_k)
            run.log("holdout " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "rows"))
            groups = None
            if trained.groups is not None:
                groups = _group_metrics(trained.groups, holdout, predictions, pipeline.model.group_key, label)
                metrics.update({f"{pipeline.model.group_key}.{g}.{m}": float(r[m]) for g, r in
                                groups.set_index(pipeline.model.group_key).iterrows() for m in ("mae", "mape")
                                if r["holdout_rows"] > 0})
            _log_details(ctx, run, trained, holdout, predictions, groups, label, task)
            tags = {"lakeforge.git_commit": runs.git_commit(), "lakeforge.config_hash": pipeline.config_hash(),
                    "lakeforge.version": runs.__version__, "lakeforge.run_id": run.run_id,
                    "lakeforge.train_dates": f"{train_dates[0]}..{train_dates[-1]}",
                    "lakeforge.holdout_dates": f"{holdout_dates[0]}..{holdout_dates[-1]}",
                    **{f"lakeforge.input.{name}": str(v) for name, v in run.inputs.items()}}
            params = {"estimator": pipeline.model.estimator, "pattern": pipeline.model.pattern,
                      "distributed": pipeline.model.distributed, "seed": pipeline.training.seed, **trained.params}
            example = holdout if len(holdout) else train_rows
            logged = registry.log_and_register(ctx.mlflow, pipeline.name, ctx.settings.mlflow.artifact_root,
                                               trained.model, example, params, metrics, tags)
        if groups is not None:
            _write_manifest(ctx, groups, logged, run.run_id)
        _crash_point("train.model_logged")
        champion_value = _champion_metric(ctx, holdout, label)
        metric = pipeline.model.metric
        decision = registry.decide(metrics[metric], champion_value, pipeline.gate, metric)
        previous = registry.set_alias(ctx.mlflow, pipeline.name, decision.alias, logged.version)
        runs.record_alias_change(ctx.spark, ctx.lakehouse, pipeline.name, decision.alias, previous, logged.version,
                                 f"train: {decision.reason}", run.run_id)
        run.details.update(model=pipeline.name, version=logged.version, alias=decision.alias, previous=previous,
                           gate=decision.reason, **{f"champion_{metric}": champion_value},
                           mlflow_run_id=logged.run_id,
                           **{f"holdout_{k}": v for k, v in metrics.items() if "." not in k})
        run.rows.update(train_rows=trained.train_rows, holdout_rows=len(holdout))
        run.log(f"registered {pipeline.name} version {logged.version} as @{decision.alias} "
                f"(was {previous}): {decision.reason}")
        return {"stage": "train", "version": logged.version, "alias": decision.alias,
                "mlflow_run_id": logged.run_id, "params": trained.params, **metrics}


def _sorted(frame, order: list[str]):
    return frame.sort_values(order, kind="mergesort").reset_index(drop=True)


def _fit(ctx: Context, run, train_df, train_rows, train_dates: list[dt.date], columns: list[str], label: str,
         order: list[str]) -> Trained:
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
        result = tuning.search(train_rows[in_fit], train_rows[in_valid], columns, label, task,
                               training.estimator_params(pipeline), model.search_space, model.tuning.max_evals,
                               model.tuning.parallelism, pipeline.training.seed, spark=ctx.spark,
                               timeout_s=model.tuning.timeout_s)
        tuning.log_trials(result)
        best = result.best_params
        run.log(f"search: {len(result.trials)} trials (parallelism {result.parallelism}) in {result.seconds:.1f}s, "
                f"best validation loss {result.best_loss:.4f} with {best}")
    fallback = training.fit(train_rows, columns, label, pipeline, best)
    if model.pattern == "global":
        wrap = registry.ProbabilityModel if task == "classification" else models.RegressionModel
        return Trained(wrap(fallback, columns), {**model.params, **best}, len(train_rows), fallback)
    key = model.group_key
    fitted = many_models.fit_per_group(train_df, key, columns, label, task, training.estimator_params(pipeline, best),
                                       model.min_group_rows, order).toPandas()
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
    if task == "classification" and len(holdout):
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
    return training.metrics_for(ctx.pipeline.label.task, model.predict(None, holdout), holdout[label],
                                ctx.pipeline.model.top_k)[ctx.pipeline.model.metric]


def score(ctx: Context, score_date: dt.date | None = None) -> dict:
    """Score every entity's features for the date with @champion into gold.<pipeline>_predictions."""
    pipeline = ctx.pipeline
    with ctx.recorded("score", run_date=score_date) as run:
        mv = registry.champion(ctx.mlflow, pipeline.name)
        version = int(mv.version)
        score_date = run.run_date = score_date or _default_score_date(ctx)
        table = feats.features_table(pipeline)
        run.input(ctx.spark, ctx.lakehouse, table)
        if table not in run.inputs:
            raise DataError(f"{table} does not exist: run `lakeforge features --pipeline {pipeline.name} "
                            f"--date {score_date}` first")
        rows = feats.in_population(lake.read(ctx.spark, ctx.lakehouse, table, version=run.inputs[table]).where(
            F.col(feats.AS_OF) == F.lit(score_date)), pipeline)
        model = registry.load_python_model(pipeline.name, version)
        missing = [c for c in model.feature_names if c not in rows.columns]
        if missing:
            raise DataError(f"{pipeline.name} version {version} expects column(s) {', '.join(missing)} that "
                            f"{table} does not have; rebuild the features or retrain the model")
        if rows.limit(1).count() == 0:
            raise DataError(f"{table} has no rows for {score_date}: run `lakeforge features --pipeline "
                            f"{pipeline.name} --date {score_date}` first")
        payload = scoring.broadcast_model(ctx.spark, model)
        predictions = scoring.stamp(
            scoring.predict(rows, payload, (pipeline.name, version), pipeline.features.entity, model.feature_names),
            score_date, pipeline.name, version, run.run_id)
        out = scoring.predictions_table(pipeline.name)
        lake.replace_where(ctx.spark, predictions, ctx.lakehouse, out, f"score_date = DATE'{score_date}'",
                           partition_by=["score_date"],
                           properties={"lakeforge.description": f"{pipeline.name} predictions by score_date",
                                       "lakeforge.owner": ctx.settings.owner,
                                       "lakeforge.source": f"models:/{pipeline.name}@champion"})
        written = lake.read(ctx.spark, ctx.lakehouse, out).where(F.col("score_date") == F.lit(score_date)).count()
        run.rows[out] = written
        run.details.update(model=pipeline.name, version=version)
        run.output(ctx.spark, ctx.lakehouse, out)
        run.log(f"{out}: {written:,} predictions for {score_date} with {pipeline.name} v{version}")
        return {"stage": "score", "score_date": score_date.isoformat(), "rows": written, "version": version}


def promote(ctx: Context, version: int, reason: str, alias: str = registry.CHAMPION) -> dict:
    """Point an alias at a version by hand, recorded in ops.runs with the reason."""
    with ctx.recorded("promote") as run:
        registry.wait_until_ready(ctx.mlflow, ctx.pipeline.name, version)
        previous = registry.set_alias(ctx.mlflow, ctx.pipeline.name, alias, version)
        runs.record_alias_change(ctx.spark, ctx.lakehouse, ctx.pipeline.name, alias, previous, version,
                                 f"promote: {reason}", run.run_id)
        run.details.update(alias=alias, previous=previous, version=version, reason=reason)
        run.log(f"{ctx.pipeline.name}@{alias}: {previous} -> {version} ({reason})")
        return {"stage": "promote", "alias": alias, "from": previous, "to": version}


def nightly(ctx: Context, score_date: dt.date | None = None, until: dt.date | None = None) -> dict:
    """Ingest new files, then build features and score each date from score_date to until (one date by default).

    A backfill builds the features of every date in one pass and scores the dates one by one, so
    each date is its own rerunnable run in ops.runs.
    """
    summary = {"ingest": ingest(ctx)}
    first = score_date or _default_score_date(ctx)
    dates = [first + dt.timedelta(days=i) for i in range(((until or first) - first).days + 1)]
    if not dates:
        raise DataError(f"--to {until} is before --from {first}")
    summary["features"] = build_features(ctx, dates)
    scored = [score(ctx, d) for d in dates]
    summary["score"] = scored[0] if len(scored) == 1 else {"dates": len(scored), "rows": sum(s["rows"] for s in scored),
                                                           "first": scored[0]["score_date"],
                                                           "last": scored[-1]["score_date"]}
    return summary


def status(ctx: Context) -> dict:
    """Tables (version, rows, last write), the last runs, and each pipeline's health and champion."""
    from lakeforge.config import available_pipelines

    tables = [lake.describe(ctx.spark, ctx.lakehouse, name) for name in lake.list_tables(ctx.lakehouse)]
    all_runs = []
    if lake.exists(ctx.lakehouse, runs.RUNS):
        all_runs = [r.asDict() for r in lake.read(ctx.spark, ctx.lakehouse, runs.RUNS)
                    .select("started_at", "job", "pipeline", "status", "run_date", "duration_s", "error").collect()]
    last_runs = sorted(all_runs, key=lambda r: r["started_at"], reverse=True)[:10]
    health = runs.pipeline_health(all_runs)
    names = sorted({ctx.pipeline.name, *available_pipelines(), *health})
    pipelines = {name: {**health.get(name, {"health": "never run", "failed_jobs": [], "running_jobs": [],
                                             "last_run": None}),
                        "champion": registry.alias_version(ctx.mlflow, name, registry.CHAMPION)}
                 for name in names}
    return {"tables": tables, "runs": last_runs, "pipelines": pipelines,
            "champion": pipelines[ctx.pipeline.name]["champion"]}


def reset_local_state(settings: Settings) -> None:
    """Delete the embedded default's data (landing, lakehouse, MLflow store) for a fresh demo."""
    for path in (settings.paths.landing, settings.paths.lakehouse, settings.paths.reports):
        shutil.rmtree(path, ignore_errors=True)
    uri = settings.mlflow.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).unlink(missing_ok=True)
    if settings.mlflow.artifact_root.startswith("file://"):
        shutil.rmtree(settings.mlflow.artifact_root.removeprefix("file://"), ignore_errors=True)


def generate(settings: Settings, **overrides) -> dict:
    """Write the demo landing files (deterministic for the seed) and return their manifest."""
    from lakeforge.demo.generator import DemoSpec, generate_demo

    demo = settings.demo.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    spec = DemoSpec(seed=demo.seed, customers=demo.customers, stores=demo.stores, days=demo.days,
                    start_date=demo.start_date, shift_date=demo.shift_date,
                    column_added_date=demo.column_added_date, dirty=demo.dirty)
    landing = settings.paths.landing
    manifest_path = landing / "_manifest.json"
    if manifest_path.is_file() and lake.exists(settings.paths.lakehouse, ingestion.FILE_LEDGER):
        old = json.loads(manifest_path.read_text()).get("spec")
        current = {k: str(v) for k, v in spec.__dict__.items()}
        if old is not None and {k: str(v) for k, v in old.items()} != current:
            raise DataError(f"the landing files in {landing} were generated with another spec ({old}) and are "
                            f"already ingested; regenerating would change files the lakehouse has loaded. "
                            f"Start fresh with `lakeforge demo --fresh` (deletes ./var) or `make clean`.")
    return generate_demo(landing, spec)
