"""The stages a user runs (ingest, features, train, score, monitor, retrain, promote, status, nightly, demo).

Each stage opens one recorded run in ops.runs, calls its domain module (ingest, features, training, registry,
scoring, monitoring, ...) with the values they need, records what came back and returns a small summary dict:
the rules live in those modules, not here. The CLI, jobs/*.py and lakeforge.flow call these.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

from pyspark.sql import SparkSession

from lakeforge import features as feats, ingest as ingestion
from lakeforge import access, interrupts, lake, locks, logs, monitoring, ownership, registry, runs, scoring, training
from lakeforge.config import Pipeline, Settings, available_pipelines


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
    """The next night to score (features.next_date)."""
    return feats.next_score_date(ctx.spark, ctx.lakehouse, ctx.pipeline)


def ingest(ctx: Context) -> dict:
    """Load new landing files of every source into bronze/silver; bad rows to ops.quarantine."""
    with ctx.recorded("ingest") as run:
        return run.record(ctx.spark, ctx.lakehouse, ingestion.ingest_sources(
            ctx.spark, ctx.pipeline.sources, ctx.settings.paths.landing, ctx.lakehouse, ctx.settings.owner, run))


def maintain(ctx: Context, skip: Collection[str] = ()) -> dict:
    """Compact small files and VACUUM the tables ingest writes (maintenance settings) but those in `skip`, recorded
    in ops.runs."""
    with ctx.recorded("maintain") as run:
        every = ctx.settings.maintenance
        return run.record(ctx.spark, ctx.lakehouse, ingestion.maintain_sources(
            ctx.spark, ctx.lakehouse, ctx.pipeline.sources, every.target_file_mb, every.vacuum_retention_hours,
            log=run.log, skip=skip))


def maintenance_due(ctx: Context) -> bool:
    """True when maintenance.every_days have passed (by date) since the last successful maintain, or none ran."""
    every = ctx.settings.maintenance.every_days
    return bool(every) and ingestion.maintenance_due(ctx.spark, ctx.lakehouse, ctx.pipeline.name, every)


def build_features(ctx: Context, dates: list[dt.date] | None = None) -> dict:
    """Build gold.<pipeline>_features for the dates (default: the next score date)."""
    with ctx.recorded("features", run_date=max(dates) if dates else None) as run:
        return run.record(ctx.spark, ctx.lakehouse, feats.build_table(
            ctx.spark, ctx.lakehouse, ctx.pipeline, dates, ctx.settings.owner, run))


def train(ctx: Context, as_of: dt.date | None = None, window_days: int | None = None, why: str = "train") -> dict:
    """Build the point-in-time training set, fit (search, per group or distributed as configured), evaluate on a
    later holdout, log everything to MLflow, register a new version and send it through the gate.

    `as_of` trains as the night of that date would: only events before it (a retrain, or a backfill);
    `window_days` keeps only as-of dates of the last N days whose labels have matured.
    """
    with ctx.recorded(why, run_date=as_of) as run:
        return run.record(ctx.spark, ctx.lakehouse, training.train(
            ctx.spark, ctx.mlflow, ctx.settings, ctx.pipeline, ctx.user, run, as_of, window_days, why))


def score(ctx: Context, score_date: dt.date | None = None) -> dict:
    """Score every entity's features for the date with @champion into gold.<pipeline>_predictions."""
    with ctx.recorded("score", run_date=score_date) as run:
        return run.record(ctx.spark, ctx.lakehouse, scoring.score(
            ctx.spark, ctx.mlflow, ctx.settings, ctx.pipeline, ctx.user, run, score_date))


def monitor(ctx: Context, monitor_date: dt.date | None = None) -> dict:
    """Drift, prediction drift, matured performance, quality trend and the retrain decision for a date, into
    ops.monitoring (a rerun replaces the date) and an HTML report (also logged to MLflow)."""
    with ctx.recorded("monitor", run_date=monitor_date) as run:
        return run.record(ctx.spark, ctx.lakehouse, monitoring.monitor(
            ctx.spark, ctx.mlflow, ctx.settings, ctx.pipeline, run, monitor_date))


def promote(ctx: Context, version: int, reason: str, alias: str = registry.CHAMPION) -> dict:
    """Point an alias at a version by hand, recorded in ops.runs and ops.audit with the reason. In the team
    set-up @champion needs four eyes: the promoting user may not be the one who trained the version (a
    refusal is audited too, and exits 2)."""
    with ctx.recorded("promote") as run:
        return run.record(ctx.spark, ctx.lakehouse, registry.promote(
            ctx.mlflow, ctx.spark, ctx.settings, ctx.pipeline.name, alias, version, reason, run, ctx.user))


def nightly(ctx: Context, score_date: dt.date | None = None, until: dt.date | None = None, tonight=None) -> dict:
    """The nightly flow (lakeforge.flow.NIGHTLY) for score_date..until (one date by default); `tonight`
    (flow.Tonight), when pipelines run one after another in this process, keeps a shared source or table from
    being ingested or maintained twice."""
    from lakeforge import flow

    return flow.run_nightly(ctx, score_date, until, tonight=tonight)


def retrain(ctx: Context, day: dt.date, reason: str) -> dict:
    """Retrain on the policy's recent window as of `day`, through the promotion gate; the outcome goes to
    ops.monitoring."""
    return monitoring.retrain(ctx.mlflow, ctx.spark, ctx.settings, ctx.pipeline, day, reason, partial(train, ctx))


def status(ctx: Context) -> dict:
    """Tables (version, rows, last write, health), the last runs, and each pipeline's health and champion."""
    return runs.status(ctx.spark, ctx.lakehouse, bool(ctx.settings.spark.metastore_url), ctx.pipeline.name,
                       available_pipelines(), lambda name: registry.alias_version(ctx.mlflow, name, registry.CHAMPION))


def doctor(ctx: Context) -> list:
    """Check every table's log and data files, with how to recover a damaged one (reads only; no run recorded,
    so it works on a lakehouse whose ops.runs is itself damaged or on read-only storage)."""
    return lake.doctor(ctx.spark, ctx.lakehouse)
