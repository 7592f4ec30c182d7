"""The stages a user runs (ingest, features, train, score, monitor, retrain, promote, status, nightly, demo).

Each stage opens one recorded run in ops.runs, calls its domain module (ingest, features, training, registry,
scoring, monitoring, ...) with the values they need, records what came back and returns a small summary dict:
the rules live in those modules, not here. The CLI, jobs/*.py and lakeforge.flow call these.
"""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakeforge import features as feats, ingest as ingestion
from lakeforge import (access, catalog, interrupts, lake, locks, logs, many_models, monitoring, ownership, quality,
                       registry, runs, scoring, training)
from lakeforge.config import Pipeline, Settings, available_pipelines
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
        return access.current_user(self.settings)

    @property
    def lakehouse(self) -> Path:
        return self.settings.paths.lakehouse

    @contextmanager
    def recorded(self, job: str, run_date: dt.date | None = None):
        """The job's run in ops.runs, under the job's lock (locks.JOBS) when it has one, taken before any write."""
        ownership.claim(self.settings, "paths.lakehouse")
        run_id = runs.new_run_id()
        lock = locks.JOBS.get(job)
        with (locks.held(self.lakehouse, lock.format(pipeline=self.pipeline.name), job, self.pipeline.name, run_id,
                         self.settings.lock_wait_s) if lock else nullcontext()):
            with runs.recorded(self.spark, self.lakehouse, job, self.pipeline.name, self.settings.env, run_date,
                               run_id=run_id, user=self.user) as run:
                yield run


def _default_score_date(ctx: Context) -> dt.date:
    """The day after the last event: the next night to score."""
    return feats.checked_dates(ctx.spark, ctx.lakehouse, ctx.pipeline, None)[0]


def ingest(ctx: Context) -> dict:
    """Load new landing files of every source into bronze/silver; bad rows to ops.quarantine."""
    with ctx.recorded("ingest") as run:
        sources = ctx.pipeline.sources
        run.input(ctx.spark, ctx.lakehouse, *[catalog.silver(name) for name in sources])
        results = ingestion.ingest_all(ctx.spark, sources, ctx.settings.paths.landing, ctx.lakehouse,
                                       ctx.settings.owner, log=run.log)
        run.rows.update(ingestion.row_counts(results, log=run.log))
        run.output(ctx.spark, ctx.lakehouse, *ingestion.ingest_tables(sources))
        return {"stage": "ingest", **run.rows}


def maintain(ctx: Context) -> dict:
    """Compact small files and VACUUM the tables ingest writes (maintenance settings), recorded in ops.runs."""
    with ctx.recorded("maintain") as run:
        every = ctx.settings.maintenance
        tables = ingestion.maintain(ctx.spark, ctx.lakehouse, ctx.pipeline.sources, every.target_file_mb,
                                    every.vacuum_retention_hours, log=run.log)
        counts, totals = ingestion.maintenance_summary(tables)
        run.rows.update(counts)
        run.output(ctx.spark, ctx.lakehouse, *tables)
        return {"stage": "maintain", **totals}


def maintenance_due(ctx: Context) -> bool:
    """True when maintenance.every_days have passed (by date) since the last successful maintain, or none ran."""
    every = ctx.settings.maintenance.every_days
    return bool(every) and ingestion.maintenance_due(ctx.spark, ctx.lakehouse, ctx.pipeline.name, every)


def build_features(ctx: Context, dates: list[dt.date] | None = None) -> dict:
    """Build gold.<pipeline>_features for the dates (default: the next score date)."""
    with ctx.recorded("features", run_date=max(dates) if dates else None) as run:
        dates = feats.checked_dates(ctx.spark, ctx.lakehouse, ctx.pipeline, dates)
        run.run_date = max(dates)
        run.input(ctx.spark, ctx.lakehouse, *feats.input_tables(ctx.pipeline))
        feats.build_and_write(ctx.spark, ctx.lakehouse, ctx.pipeline, dates, ctx.settings.owner)
        table = feats.features_table(ctx.pipeline)
        rows, population = feats.written_counts(ctx.spark, ctx.lakehouse, ctx.pipeline, dates, run.log)
        run.rows.update({table: rows, f"{table}.population": population})
        run.output(ctx.spark, ctx.lakehouse, table)
        return {"stage": "features", "dates": [d.isoformat() for d in dates], "rows": rows, "population": population}


def train(ctx: Context, as_of: dt.date | None = None, window_days: int | None = None, why: str = "train") -> dict:
    """Build the point-in-time training set, fit (search, per group or distributed as configured), evaluate on a
    later holdout, log everything to MLflow, register a new version and send it through the gate.

    `as_of` trains as the night of that date would: only events before it (a retrain, or a backfill);
    `window_days` keeps only as-of dates of the last N days whose labels have matured.
    """
    pipeline, metric = ctx.pipeline, ctx.pipeline.model.metric
    with ctx.recorded(why, run_date=as_of) as run:
        registry.end_orphan_runs(ctx.mlflow, pipeline.name, run.log)
        registry.reconcile_aliases(ctx.mlflow, ctx.spark, ctx.lakehouse, pipeline.name, run.run_id, run.log, ctx.user)
        train_dates, holdout_dates, trained_as_of = training.window(
            *feats.event_date_range(ctx.spark, ctx.lakehouse, pipeline), pipeline, as_of, window_days)
        spans = {"train_dates": f"{train_dates[0]}..{train_dates[-1]}",
                 "holdout_dates": f"{holdout_dates[0]}..{holdout_dates[-1]}"}
        run.log(f"{len(train_dates)} training dates {spans['train_dates']}, holdout {spans['holdout_dates']}")
        dates = train_dates + holdout_dates
        run.input(ctx.spark, ctx.lakehouse, *feats.input_tables(pipeline), feats.label_events_table(pipeline))
        feats.build_and_write(ctx.spark, ctx.lakehouse, pipeline, dates, ctx.settings.owner)
        run.input(ctx.spark, ctx.lakehouse, feats.features_table(pipeline))
        data = training.split(feats.read_training_set(ctx.spark, ctx.lakehouse, pipeline, dates, run.inputs,
                                                      holdout_dates, trained_as_of), pipeline, holdout_dates)
        with registry.training_run(ctx.mlflow, pipeline.name, ctx.settings.mlflow.artifact_root, run.run_id, ctx.user):
            trained = training.fit_model(ctx.spark, pipeline, data, train_dates, run.log)
            found = training.evaluate_holdout(pipeline, trained, data, run.log)
            baseline = monitoring.training_baseline(trained.model, data, pipeline, found.predictions)
            tags = registry.training_tags(pipeline, run.run_id, why, trained_as_of, feats.feature_version(pipeline),
                                          train_dates, holdout_dates, run.inputs)
            logged = registry.log_training(ctx.mlflow, pipeline, ctx.settings.mlflow.artifact_root, trained, data,
                                           found, tags, baseline, lake.snapshots(ctx.spark, ctx.lakehouse, run.inputs))
        if found.groups is not None:
            many_models.write_manifest(ctx.spark, ctx.lakehouse, pipeline, found.groups, logged.version,
                                       logged.run_id, run.run_id, ctx.settings.owner)
        runs.crash_point("train.model_logged")
        champion_value = training.champion_metric(registry.champion_model(ctx.mlflow, pipeline.name), data, pipeline)
        decision, previous = registry.gate(
            ctx.mlflow, ctx.spark, ctx.lakehouse, pipeline.name, logged.version, pipeline.gate, metric, found.metrics,
            champion_value, found.naive, lambda: access.gate_may_promote(ctx.settings, ctx.mlflow, ctx.user), why,
            run.run_id, ctx.user)
        run.details.update(model=pipeline.name, version=logged.version, alias=decision.alias, previous=previous,
                           gate=decision.reason, **{f"champion_{metric}": champion_value}, mlflow_run_id=logged.run_id,
                           **{f"holdout_{k}": v for k, v in found.metrics.items() if "." not in k})
        run.rows.update(train_rows=trained.train_rows, holdout_rows=len(data.holdout))
        run.log(f"registered {pipeline.name} version {logged.version} as @{decision.alias} "
                f"(was {previous}): {decision.reason}")
        return {"stage": why, "version": logged.version, "alias": decision.alias, "gate": decision.reason,
                "mlflow_run_id": logged.run_id, "params": trained.params, **spans, f"champion_{metric}": champion_value,
                "naive": found.naive, **{k: v for k, v in found.metrics.items() if not k.startswith("naive.")}}


def score(ctx: Context, score_date: dt.date | None = None) -> dict:
    """Score every entity's features for the date with @champion into gold.<pipeline>_predictions."""
    pipeline = ctx.pipeline
    with ctx.recorded("score", run_date=score_date) as run:
        registry.reconcile_aliases(ctx.mlflow, ctx.spark, ctx.lakehouse, pipeline.name, run.run_id, run.log, ctx.user)
        version = int(registry.champion(ctx.mlflow, pipeline.name).version)
        score_date = run.run_date = score_date or _default_score_date(ctx)
        table = feats.champions_table(ctx.spark, ctx.lakehouse, pipeline, version,
                                      registry.feature_version(ctx.mlflow, pipeline.name, version), score_date)
        run.input(ctx.spark, ctx.lakehouse, table)
        if table not in run.inputs:
            raise DataError(f"{table} does not exist: run `lakeforge features --pipeline {pipeline.name} "
                            f"--date {score_date}` first")
        ownership.claim(ctx.settings, "paths.model_cache")
        model = scoring.load(ctx.mlflow, pipeline.name, version, ctx.settings.paths.model_cache, run.log)
        written, unseen = scoring.score_date(ctx.spark, ctx.lakehouse, pipeline, table, run.inputs[table], model,
                                             version, score_date, run.run_id, ctx.settings.owner, run.log)
        out = catalog.predictions(pipeline.name)
        run.rows.update({**{f"unseen.{column}": count for column, count in unseen.items()}, out: written})
        run.details.update(model=pipeline.name, version=version, **model.details)
        run.output(ctx.spark, ctx.lakehouse, out)
        run.log(f"{out}: {written:,} predictions for {score_date} with {pipeline.name} v{version}")
        return {"stage": "score", "score_date": score_date.isoformat(), "rows": written, "version": version,
                **model.details, "unseen_categories": unseen}


def monitor(ctx: Context, monitor_date: dt.date | None = None) -> dict:
    """Drift, prediction drift, matured performance, quality trend and the retrain decision for a date, into
    ops.monitoring (a rerun replaces the date) and an HTML report (also logged to MLflow)."""
    pipeline, spark, lakehouse = ctx.pipeline, ctx.spark, ctx.lakehouse
    with ctx.recorded("monitor", run_date=monitor_date) as run:
        day = run.run_date = monitor_date or _default_score_date(ctx)
        version = int(registry.champion(ctx.mlflow, pipeline.name).version)
        champion_run = registry.version_run(ctx.mlflow, pipeline.name, version)
        baseline = registry.load_baseline(ctx.mlflow, pipeline.name, version, missing_ok=run.log)
        validation = champion_run.data.metrics.get(pipeline.model.metric)
        events = feats.label_events_table(pipeline)
        run.input(spark, lakehouse, feats.features_table(pipeline), catalog.predictions(pipeline.name), events,
                  catalog.QUALITY, catalog.MONITORING)
        current, scored, labelled = feats.monitored_night(spark, lakehouse, pipeline, day, run.inputs.get(events),
                                                          run.log)
        earlier = lake.read_pandas(spark, lakehouse, catalog.MONITORING,
                                   (F.col("pipeline") == pipeline.name) & (F.col("monitor_date") < F.lit(day)))
        night = monitoring.night(pipeline, day, version, run.run_id, baseline, validation,
                                 champion_run.data.tags.get(registry.TRAINED_AS_OF_TAG), current, scored, labelled,
                                 lake.read_pandas(spark, lakehouse, catalog.QUALITY),
                                 quality.quarantine_limits(pipeline.sources), earlier)
        lake.replace_where(spark, lake.from_pandas(spark, night.today, monitoring.SCHEMA), lakehouse,
                           catalog.MONITORING, f"pipeline = '{pipeline.name}' AND monitor_date = DATE'{day}'",
                           **catalog.MONITORING_TABLE.options(ctx.settings.owner))
        run.output(spark, lakehouse, catalog.MONITORING)
        run.rows[catalog.MONITORING] = len(night.today)
        summary = night.summary
        if pipeline.monitoring.report:
            from lakeforge import report

            ownership.claim(ctx.settings, "paths.reports")
            path = report.publish(ctx.settings.paths.reports, pipeline, day, night, version, validation, baseline,
                                  current, lake.read_pandas(spark, lakehouse, catalog.MONITORING,
                                                            F.col("kind") == "verdict", report.INDEX_COLUMNS))
            registry.log_monitoring(ctx.mlflow, pipeline.name, ctx.settings.mlflow.artifact_root, day, version,
                                    summary, night.today, path)
            summary["report"] = str(path)
        run.details.update({k: v for k, v in summary.items() if k != "stage"})
        run.log(night.headline(pipeline.model.metric))
        return summary


def promote(ctx: Context, version: int, reason: str, alias: str = registry.CHAMPION) -> dict:
    """Point an alias at a version by hand, recorded in ops.runs and ops.audit with the reason. In the team
    set-up @champion needs four eyes: the promoting user may not be the one who trained the version (a
    refusal is audited too, and exits 2)."""
    name = ctx.pipeline.name
    with ctx.recorded("promote") as run:
        registry.reconcile_aliases(ctx.mlflow, ctx.spark, ctx.lakehouse, name, run.run_id, run.log, ctx.user)
        registry.wait_until_ready(ctx.mlflow, name, version)
        four_eyes = alias == registry.CHAMPION and access.authenticated(ctx.settings)
        if four_eyes:
            registry.check_four_eyes(ctx.mlflow, ctx.spark, ctx.lakehouse, name, alias, version, reason, run.run_id,
                                     ctx.user)
        previous = registry.move_alias(ctx.mlflow, ctx.spark, ctx.lakehouse, name, alias, version, "promote", reason,
                                       run.run_id, ctx.user, runs.APPROVAL if four_eyes else runs.ALIAS)
        run.details.update(alias=alias, previous=previous, version=version, reason=reason)
        run.log(f"{name}@{alias}: {previous} -> {version} ({reason})")
        return {"stage": "promote", "alias": alias, "from": previous, "to": version}


def nightly(ctx: Context, score_date: dt.date | None = None, until: dt.date | None = None) -> dict:
    """The nightly flow (lakeforge.flow.NIGHTLY) for score_date..until (one date by default)."""
    from lakeforge import flow

    return flow.run_nightly(ctx, score_date, until)


def retrain(ctx: Context, day: dt.date, reason: str) -> dict:
    """Retrain on the policy's recent window as of `day`, through the promotion gate; the outcome goes to
    ops.monitoring."""
    version = registry.alias_version(ctx.mlflow, ctx.pipeline.name, registry.CHAMPION)
    try:
        result = train(ctx, as_of=day, window_days=ctx.pipeline.retrain.window_days, why="retrain")
    except DataError as exc:  # e.g. too little history in the window: the night goes on, the failure is recorded
        result = {"stage": "retrain", "error": str(exc)}
    frame = monitoring.retrain_rows(ctx.pipeline.name, day, result, version, reason,
                                    result.get("alias") == registry.CHAMPION)
    lake.append(ctx.spark, lake.from_pandas(ctx.spark, frame, monitoring.SCHEMA), ctx.lakehouse, catalog.MONITORING,
                **catalog.MONITORING_TABLE.options(ctx.settings.owner))
    return {"date": day.isoformat(), **result}


def status(ctx: Context) -> dict:
    """Tables (version, rows, last write, health), the last runs, and each pipeline's health and champion."""
    tables = [lake.describe(ctx.spark, ctx.lakehouse, name)
              for name in lake.table_names(ctx.spark, ctx.lakehouse, shared=bool(ctx.settings.spark.metastore_url))]
    all_runs = runs.ledger(ctx.spark, ctx.lakehouse, tables)  # a damaged ledger is flagged in `tables`
    health = runs.pipeline_health(all_runs)
    names = sorted({ctx.pipeline.name, *available_pipelines(), *health})
    pipelines = {name: {**runs.health_of(health, name),
                        "champion": registry.alias_version(ctx.mlflow, name, registry.CHAMPION)} for name in names}
    return {"tables": tables, "runs": sorted(all_runs, key=lambda r: r["started_at"], reverse=True)[:10],
            "pipelines": pipelines, "champion": pipelines[ctx.pipeline.name]["champion"]}


def doctor(ctx: Context) -> list:
    """Check every table's log and data files, with how to recover a damaged one (reads only; no run recorded,
    so it works on a lakehouse whose ops.runs is itself damaged or on read-only storage)."""
    return lake.doctor(ctx.spark, ctx.lakehouse)
