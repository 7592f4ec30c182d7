"""Features as of a date, from the pipeline's own pandas function, on Spark or on pandas; labels and training sets.

As-of semantics: the row for (entity, d) sees only what was known before d: entity attributes
whose event time is before d (the latest such version) and events in [d - lookback, d). Many
dates are built in one pass (the dates are a small broadcast table joined to the events, which
are read once and pruned to the backfill's overall window), so a backfill does not scan the
events once per date. The label for (entity, d) looks only at [d, d + horizon).

Every Spark function here has a pandas twin (`*_pandas`) with the same rules, for a notebook or a
test; the parity tests prove both give the same rows.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from lakeforge import catalog, lake, metrics, monitoring
from lakeforge import points as event_points
from lakeforge.config import PREDICTION_AT, Pipeline
from lakeforge.errors import ConfigError, DataError
from lakeforge.pandas_on_spark import (apply_grouped, apply_grouped_pandas, apply_rowwise, apply_rowwise_pandas,
                                       buckets_of, call_span, import_function, prepare, schema_of)
from lakeforge.runs import Outcome, Run

AS_OF = catalog.AS_OF
_NOT_FEATURES = (event_points.INGESTED_BY,)  # lakeforge's bookkeeping column of event points' tables


def features_table(pipeline: Pipeline, version: str | None = None) -> str:
    """gold.<pipeline>_features: the current feature version's rows; an earlier version's (`version`, see
    `feature_version`) are kept in gold.<pipeline>_features_<version>."""
    if version is None or version == feature_version(pipeline):
        return catalog.features(pipeline.name)
    return catalog.features(pipeline.name, version)


def feature_version(pipeline: Pipeline) -> str:
    """The feature set's version: a hash of the features table's column names and types. Adding, removing or
    retyping a column makes a new version (its own table); a model records the version it was trained on."""
    return _version_of(schema_of(pipeline.feature_table_columns().items()))


def _version_of(schema: StructType) -> str:
    columns = sorted((f.name, f.dataType.simpleString()) for f in schema.fields if f.name not in _NOT_FEATURES)
    return hashlib.sha256(json.dumps(columns).encode()).hexdigest()[:10]


def activate_version(spark: SparkSession, lakehouse: Path, pipeline: Pipeline) -> str:
    """Make gold.<pipeline>_features the current feature version's table before it is written: a table of an
    earlier version is renamed to gold.<pipeline>_features_<its version> (its rows stay readable for the models
    trained on them), and the current version's own table, if an earlier run kept it, gets the name back."""
    current, table = feature_version(pipeline), features_table(pipeline)
    if lake.exists(lakehouse, table):
        stored = _version_of(lake.read(spark, lakehouse, table).schema)
        if stored == current:
            return current
        lake.rename_table(spark, lakehouse, table, features_table(pipeline, stored))
        logging.getLogger("lakeforge.features").warning(
            f"{table}: the feature columns changed (version {stored} -> {current}); the rows of version {stored} "
            f"are kept in {features_table(pipeline, stored)}")
    kept = f"{table}_{current}"
    if lake.exists(lakehouse, kept):
        lake.rename_table(spark, lakehouse, kept, table)
    return current


def output_schema(pipeline: Pipeline) -> StructType:
    """The feature function's declared output columns."""
    return schema_of(pipeline.features.columns.items())


def feature_columns(pipeline: Pipeline) -> list[str]:
    """Model inputs: the features table's columns except the point's key, as-of date, instant and
    `features.not_model_inputs`."""
    return pipeline.model_inputs()


def id_columns(pipeline: Pipeline) -> list[str]:
    """What names a prediction: the point's key (and, for event points, its instant)."""
    return [*pipeline.keys, PREDICTION_AT] if pipeline.is_event else list(pipeline.keys)


def feature_mode(pipeline: Pipeline) -> str:
    """`grouped` (the default: whole entity groups, events joined) or `rowwise` (one row per entity and date)."""
    return getattr(pipeline.features, "mode", None) or "grouped"


def in_population(features: DataFrame, pipeline: Pipeline) -> DataFrame:
    """The feature rows the model is trained on and scores (the pipeline's population filter)."""
    population = pipeline.features.population
    return features.where(population) if population else features


def count_population(features: DataFrame, pipeline: Pipeline) -> tuple[int, int]:
    """How many feature rows there are, and how many of them the population filter keeps (one pass)."""
    population = pipeline.features.population
    kept = F.when(F.expr(population), 1).otherwise(0) if population else F.lit(1)
    row = features.agg(F.count(F.lit(1)).alias("rows"), F.sum(kept).alias("kept")).first()
    return int(row["rows"]), int(row["kept"] or 0)


def in_population_pandas(features: pd.DataFrame, pipeline: Pipeline) -> pd.DataFrame:
    """The same filter on pandas (`DataFrame.query`: comparisons, `and`, `or` read the same in SQL and pandas)."""
    population = pipeline.features.population
    if not population:
        return features
    try:
        return features.query(population).reset_index(drop=True)
    except Exception as exc:  # pandas raises many types for an expression it cannot read
        raise ConfigError(f"features.population '{population}' cannot be evaluated by pandas ({exc}); "
                          f"write it as a comparison pandas and SQL both read, e.g. `visits_90d > 0`") from None


# ---------------------------------------------------------------- the function's input


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _events(pipeline: Pipeline):
    """The events joined to each entity and date; None for a row-wise function (no events)."""
    events = getattr(pipeline.features, "events", None)
    if feature_mode(pipeline) == "rowwise":
        if events is not None:
            raise ConfigError(f"pipeline {pipeline.name}: features.mode rowwise gets one row per entity and as-of "
                              f"date, without events; remove features.events or use mode grouped")
        return None
    return events


def _keyed(keys: list[str]):
    """Rows whose key columns are all set."""
    return functools.reduce(lambda a, b: a & b, [F.col(k).isNotNull() for k in keys])


def _spine_columns(pipeline: Pipeline) -> list[str]:
    feat = pipeline.features
    return _unique([feat.spine.since, *feat.spine.columns])


def _typed(pipeline: Pipeline, source: str, names: list[str]) -> list[tuple[str, str]]:
    """(name, Spark type) of columns of a source, or an error naming the column and the source."""
    declared = pipeline.sources[source].columns
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise ConfigError(f"pipeline {pipeline.name}: features use column '{unknown[0]}', which source '{source}' "
                          f"does not declare (its columns: {', '.join(declared)})")
    return [(n, declared[n]) for n in names]


def input_schema(pipeline: Pipeline) -> StructType:
    """The feature function's input columns: entity, as-of date, spine attributes, events (typed by their sources)."""
    feat, keys = pipeline.features, pipeline.keys
    spine = _typed(pipeline, feat.spine.source, _unique([*keys, *_spine_columns(pipeline)]))
    columns = [*spine[:len(keys)], (AS_OF, "date"), *[c for c in spine[len(keys):] if c[0] != AS_OF]]
    events = _events(pipeline)
    if events is not None:  # a column on both sides is refused when the pipeline is loaded (config)
        columns += _typed(pipeline, events.source, [c for c in events.columns if c not in keys])
    return schema_of(columns)


def input_order(pipeline: Pipeline) -> list[str]:
    """The canonical row order of the function's input: entity, date, event time, then every other column."""
    names = input_schema(pipeline).fieldNames()
    events = _events(pipeline)
    event_time = pipeline.sources[events.source].event_time if events is not None else None
    first = [*pipeline.keys, AS_OF] + ([event_time] if event_time in names else [])
    return _unique(first + names)


def as_dates(dates) -> list[dt.date]:
    """Sorted distinct dates (accepts dates, datetimes, pandas Timestamps or ISO strings)."""
    return sorted({pd.Timestamp(d).date() for d in dates})


def dates_frame(spark: SparkSession, dates: list[dt.date]) -> DataFrame:
    """One row per date (built from literals: no Python worker, no RDD)."""
    return spark.range(1).select(F.explode(F.array(*[F.lit(d) for d in as_dates(dates)])).alias(AS_OF))


# ---------------------------------------------------------------- Spark


def as_of_rows(spine_history: DataFrame, events: DataFrame | None, dates: list[dt.date],
               pipeline: Pipeline) -> DataFrame:
    """Each known entity per as-of date, with its events in the lookback window (a pure transform).

    An entity with no event in the window gets one row whose event columns are null.
    """
    feat, keys = pipeline.features, pipeline.keys
    dates = as_dates(dates)
    if not dates:
        raise DataError("no as-of dates to build features for")
    on_dates = F.broadcast(dates_frame(spine_history.sparkSession, dates))
    cutoff = F.col(AS_OF).cast("timestamp")
    spine_time = pipeline.sources[feat.spine.source].event_time
    # Ties on the event time are broken on the other columns, the same way as on pandas.
    latest = Window.partitionBy(*keys, AS_OF).orderBy(
        *[F.col(c).desc_nulls_last() for c in _unique([spine_time, *_spine_columns(pipeline)])])
    rows = (spine_history.where(_keyed(keys))
            .join(on_dates, how="inner", on=(F.col(spine_time) < cutoff) & (F.col(feat.spine.since) < F.col(AS_OF)))
            .withColumn("_rank", F.row_number().over(latest))
            .where("_rank = 1")
            .select(*_unique([*keys, AS_OF, *_spine_columns(pipeline)])))
    spec = _events(pipeline)
    if spec is not None:
        event_time = pipeline.sources[spec.source].event_time
        lookback = spec.lookback_days
        # Read only the backfill's overall window (file skipping), then give each event every date it serves.
        in_window = (_backfill_events(events, dates, pipeline)
                     .select(*_unique([*keys, event_time, *spec.columns]))
                     .join(on_dates, how="inner",
                           on=(F.col(event_time) < cutoff)
                           & (F.col(event_time) >= F.date_sub(F.col(AS_OF), lookback).cast("timestamp")))
                     # The event time picks the window; unlisted, it leaves (the spine may have one of that name).
                     .select(*_unique([*keys, AS_OF, *spec.columns])))
        rows = rows.join(in_window, on=[*keys, AS_OF], how="left")
    return rows.select(*[F.col(f"`{f.name}`").cast(f.dataType).alias(f.name) for f in input_schema(pipeline).fields])


def _backfill_events(events: DataFrame, dates: list[dt.date], pipeline: Pipeline) -> DataFrame:
    """The keyed events some date of the backfill (sorted `dates`) sees in its lookback window."""
    spec = _events(pipeline)
    event_time = F.col(pipeline.sources[spec.source].event_time)
    first = F.lit(dates[0] - dt.timedelta(days=spec.lookback_days)).cast("timestamp")
    return events.where(_keyed(pipeline.keys) & (event_time >= first)
                        & (event_time < F.lit(dates[-1]).cast("timestamp")))


def snapshot_points(spine_history: DataFrame, dates: list[dt.date], pipeline: Pipeline) -> DataFrame:
    """Each entity known before each date, with its spine columns, predicted at the date's midnight (pure)."""
    rows = as_of_rows(spine_history, None, dates, pipeline)
    return rows.select(*pipeline.keys, AS_OF, F.col(AS_OF).cast("timestamp").alias(PREDICTION_AT),
                       *pipeline.point_columns)


def compute_features(spine_history: DataFrame, events: DataFrame | None, dates: list[dt.date], pipeline: Pipeline,
                     buckets: int, dates_per_call: int = 1) -> DataFrame:
    """Feature rows for every known entity and date: the as-of rows through the pipeline's function (pure)."""
    rows = as_of_rows(spine_history, events, dates, pipeline)
    fn = import_function(pipeline.features.function)
    if feature_mode(pipeline) == "rowwise":
        return apply_rowwise(rows, fn, output_schema(pipeline))
    # Spans of dates keep each call small in a backfill; the function sees whole (entity, date) groups.
    return apply_grouped(rows, fn, pipeline.keys, output_schema(pipeline), buckets,
                         by_date=AS_OF, dates_per_call=dates_per_call, order_by=input_order(pipeline))


def build_features(spark: SparkSession, lakehouse: Path, pipeline: Pipeline, dates: list[dt.date]) -> DataFrame:
    """Feature rows for every known entity and each date (event points: every point of the dates), computed on
    Spark by the pipeline's pandas function(s)."""
    if pipeline.is_event:
        return event_points.build_features(spark, lakehouse, pipeline, as_dates(dates), features_table(pipeline))
    feat = pipeline.features
    spine_history = lake.read(spark, lakehouse, catalog.bronze(feat.spine.source))
    if feat.sets:  # snapshot points (entities x dates) joined to feature sets, as event points are
        days = as_dates(dates)
        pts = event_points.with_cutoffs(snapshot_points(spine_history, days, pipeline),
                                        event_points.built_cutoffs(spark, lakehouse, features_table(pipeline), days))
        buckets = buckets_of(spark)
        return event_points.compute_features(pts, event_points.set_sources(spark, lakehouse, pipeline, days), pipeline,
                                             buckets)
    spec = _events(pipeline)
    events = lake.read(spark, lakehouse, catalog.silver(spec.source)) if spec is not None else None
    buckets = buckets_of(spark)
    return compute_features(spine_history, events, dates, pipeline, buckets,
                            estimate_dates_per_call(spine_history, events, dates, pipeline, buckets))


def estimate_dates_per_call(spine_history: DataFrame, events: DataFrame | None, dates: list[dt.date],
                            pipeline: Pipeline, buckets: int) -> int:
    """How many dates a call of the feature function takes (pandas_on_spark.call_span), from an estimate of a
    date's input rows: at most one per spine row, plus the events of its lookback window (the backfill's events,
    spread evenly over its days). A single date needs no estimate."""
    dates = as_dates(dates)
    if len(dates) < 2 or feature_mode(pipeline) == "rowwise":
        return 1
    rows = spine_history.count()  # the count of a whole Delta table is read from its log, not its files
    if events is not None:
        lookback = _events(pipeline).lookback_days
        days = (dates[-1] - dates[0]).days + lookback
        rows += -(-_backfill_events(events, dates, pipeline).count() * lookback // days)
    return call_span(rows, buckets)


def write_features(spark: SparkSession, df: DataFrame, lakehouse: Path, pipeline: Pipeline,
                   dates: list[dt.date], owner: str) -> None:
    """Replace exactly these dates in gold.<pipeline>_features (a rerun rewrites them, nothing else)."""
    listed = ", ".join(f"DATE'{d.isoformat()}'" for d in as_dates(dates))
    activate_version(spark, lakehouse, pipeline)
    table = catalog.features_table(pipeline.name, pipeline.keys, _functions(pipeline))
    lake.replace_where(spark, df, lakehouse, table.name, f"{AS_OF} IN ({listed})", **table.options(owner))


def _functions(pipeline: Pipeline) -> str:
    """The pandas function(s) the features come from."""
    if pipeline.features.sets:
        return ", ".join(fs.function for fs in pipeline.features.sets.values())
    return pipeline.features.function


def input_tables(pipeline: Pipeline) -> list[str]:
    """The tables features are built from (recorded as a run's inputs)."""
    sets = [catalog.bronze(fs.source) for fs in pipeline.features.sets.values()]
    if pipeline.is_event:
        return list(dict.fromkeys([catalog.bronze(pipeline.points.source), *sets]))
    if sets:
        return list(dict.fromkeys([catalog.bronze(pipeline.features.spine.source), *sets]))
    events = _events(pipeline)
    return [catalog.bronze(pipeline.features.spine.source), *([catalog.silver(events.source)] if events else [])]


def _dated_source(pipeline: Pipeline) -> str:
    """The source whose event times say what the data covers: the points, the feature events, else the label
    events."""
    if pipeline.is_event:
        return pipeline.points.source
    spec = _events(pipeline)
    return spec.source if spec is not None else pipeline.label.events


def event_date_range(spark: SparkSession, lakehouse: Path, pipeline: Pipeline) -> tuple[dt.date, dt.date]:
    """First and last event dates of the pipeline's event source (what the data covers)."""
    source = _dated_source(pipeline)
    column = pipeline.point_time if pipeline.is_event else pipeline.sources[source].event_time
    table = catalog.silver(source)
    row = lake.read(spark, lakehouse, table).agg(
        F.min(F.to_date(column)).alias("first"), F.max(F.to_date(column)).alias("last")).first()
    if row["first"] is None:
        raise DataError(f"{table} is empty: ingest landing files first (`lakeforge ingest`)")
    return row["first"], row["last"]


def next_date(last_event: dt.date, pipeline: Pipeline) -> dt.date:
    """The next night's date: the day after the last event (snapshot), the last event's day (event points, which
    are scored once their day's events have arrived)."""
    return last_event if pipeline.is_event else last_event + dt.timedelta(days=1)


def check_date(day: dt.date, last_event: dt.date, pipeline: Pipeline) -> None:
    """Refuse an as-of date beyond the last ingested event plus `features.max_days_ahead`."""
    if pipeline.is_event:
        return event_points.check_day(day, last_event, _dated_source(pipeline))
    limit = last_event + dt.timedelta(days=pipeline.features.max_days_ahead)
    if day > limit:
        raise DataError(f"date {day} is {(day - last_event).days} days after the last ingested event of "
                        f"{catalog.silver(_dated_source(pipeline))} ({last_event}): its features would see no events. Ingest newer "
                        f"landing files first, or choose a date up to {limit} "
                        f"(features.max_days_ahead: {pipeline.features.max_days_ahead} in the pipeline YAML)")


def checked_dates(spark: SparkSession, lakehouse: Path, pipeline: Pipeline,
                  dates: list[dt.date] | None) -> list[dt.date]:
    """The given as-of dates, refused beyond the ingested data; by default the next night to score."""
    last = event_date_range(spark, lakehouse, pipeline)[1]
    if not dates:
        return [next_date(last, pipeline)]
    check_date(max(dates), last, pipeline)
    return dates


def next_score_date(spark: SparkSession, lakehouse: Path, pipeline: Pipeline) -> dt.date:
    """The next night to score (`next_date` of the last ingested event)."""
    return checked_dates(spark, lakehouse, pipeline, None)[0]


def build_table(spark: SparkSession, lakehouse: Path, pipeline: Pipeline, dates: list[dt.date] | None, owner: str,
                run: Run) -> Outcome:
    """The features stage's work: gold.<pipeline>_features for the dates (default: the next score date), the
    input tables' versions noted as read; the rows written and in the population."""
    dates = checked_dates(spark, lakehouse, pipeline, dates)
    run.run_date = max(dates)
    run.input(spark, lakehouse, *input_tables(pipeline))
    build_and_write(spark, lakehouse, pipeline, dates, owner)
    table = features_table(pipeline)
    rows, population = written_counts(spark, lakehouse, pipeline, dates, run.log)
    return Outcome({"stage": "features", "dates": [d.isoformat() for d in dates], "rows": rows,
                    "population": population}, rows={table: rows, f"{table}.population": population},
                   outputs=[table])


def build_and_write(spark: SparkSession, lakehouse: Path, pipeline: Pipeline, dates: list[dt.date],
                    owner: str) -> None:
    """Build the dates' features and replace exactly these dates in gold.<pipeline>_features."""
    write_features(spark, build_features(spark, lakehouse, pipeline, dates), lakehouse, pipeline, dates, owner)


def written_counts(spark: SparkSession, lakehouse: Path, pipeline: Pipeline, dates: list[dt.date],
                   log=print) -> tuple[int, int]:
    """Rows of the dates in gold.<pipeline>_features and how many are in the population, logged (with a warning
    when the population filter keeps none)."""
    table, listed = features_table(pipeline), [d.isoformat() for d in dates]
    written = lake.read(spark, lakehouse, table).where(F.col(AS_OF).cast("string").isin(listed))
    rows, population = count_population(written, pipeline)
    log(f"{table}: {rows:,} rows for {len(dates)} date(s) {listed[0]}..{listed[-1]}, {population:,} in "
        f"the population")
    if rows and not population:
        log(f"WARNING: the population filter `{pipeline.features.population}` keeps none of these "
            f"rows: nothing will be trained on or scored for these dates")
    return rows, population


def champions_table(spark: SparkSession, lakehouse: Path, pipeline: Pipeline, version: int, trained_on: str | None,
                    score_date: dt.date) -> str:
    """The features table of the feature version (`trained_on`) the champion `version` was trained on: the current
    one, or an earlier version's kept table while it has the date's rows (else an error saying how to move on)."""
    current = feature_version(pipeline)
    if trained_on in (None, current):  # None: registered before feature versions were recorded
        return features_table(pipeline)
    table = features_table(pipeline, trained_on)
    if lake.exists(lakehouse, table) and lake.read(spark, lakehouse, table).where(
            F.col(AS_OF) == F.lit(score_date)).limit(1).count():
        return table
    raise DataError(f"{pipeline.name} version {version} (@champion) was trained on feature version {trained_on}, and "
                    f"{table} has no rows for {score_date}; the pipeline's features are now version {current} "
                    f"({features_table(pipeline)}). Train on them (`lakeforge train --pipeline "
                    f"{pipeline.name}`) and promote the new version if the gate kept it @challenger, or restore the "
                    f"feature columns of version {trained_on}")


def explain_nothing_to_score(spark: SparkSession, lakehouse: Path, pipeline: Pipeline, table: str, version: int,
                             score_date: dt.date) -> None:
    """Say why a date has no rows to score: beyond the data, not built, or all outside the population."""
    checked_dates(spark, lakehouse, pipeline, [score_date])
    built = lake.read(spark, lakehouse, table, version=version).where(F.col(AS_OF) == F.lit(score_date)).count()
    if built:
        raise DataError(f"{table} has {built:,} rows for {score_date}, but the population filter "
                        f"`{pipeline.features.population}` (features.population) keeps none of them: nothing to "
                        f"score. Check the data of the days before {score_date}, or the filter")
    raise DataError(f"{table} has no rows for {score_date}: run `lakeforge features --pipeline "
                    f"{pipeline.name} --date {score_date}` first")


def _scores(pipeline: Pipeline) -> list[str]:
    """The predictions columns monitoring reads: `prediction`, and a multiclass model's class probabilities (CBPE
    and the matured log loss need them)."""
    return ["prediction", catalog.PROBABILITIES] if pipeline.label.task == metrics.MULTICLASS else ["prediction"]


def monitored_night(spark: SparkSession, lakehouse: Path, pipeline: Pipeline, day: dt.date,
                    events_version: int | None, log=print) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame]:
    """What monitoring judges on `day`, on the driver: the date's feature rows in the population (empty when there
    are none, logged), the date's scores (None before any), and the predictions of the matured window with their
    labels and segments (`labelled_predictions`)."""
    table = features_table(pipeline)
    current = lake.read_pandas(spark, lakehouse, table, F.col(AS_OF) == F.lit(day))
    current = in_population_pandas(current, pipeline) if current is not None else pd.DataFrame()
    if current.empty:
        log(f"{table} has no rows for {day}: no feature drift today")
    predictions = catalog.predictions(pipeline.name)
    scored = lake.read_pandas(spark, lakehouse, predictions, F.col("score_date") == F.lit(day),
                              [*pipeline.keys, *_scores(pipeline)])
    start, end = monitoring.matured_window(day, pipeline.label.horizon_days, pipeline.monitoring.window_days)
    return current, scored, labelled_predictions(spark, lakehouse, pipeline, start, end, events_version, day)


def labelled_predictions(spark: SparkSession, lakehouse: Path, pipeline: Pipeline, start: dt.date, end: dt.date,
                         events_version: int | None, day: dt.date) -> pd.DataFrame:
    """The predictions of score dates start..end with their labels as known when `day` began (a rerun of the date
    gives the same figures) and the pipeline's segment columns, on the driver."""
    predictions = catalog.predictions(pipeline.name)
    if not lake.exists(lakehouse, predictions):
        return pd.DataFrame()
    keys = (lake.read(spark, lakehouse, predictions)
            .where(F.col("score_date").between(F.lit(start), F.lit(end)))
            .select(*id_columns(pipeline), F.col("score_date").alias(AS_OF), *_scores(pipeline), "model_version"))
    events = label_events_table(pipeline)
    keys = labelled(keys, lake.read(spark, lakehouse, events, version=events_version), pipeline,
                    known_before=F.lit(dt.datetime.combine(day, dt.time())))
    return with_segments(spark, lakehouse, pipeline, keys, AS_OF).toPandas()


def with_segments(spark: SparkSession, lakehouse: Path, pipeline: Pipeline, keys: DataFrame,
                  as_of_column: str) -> DataFrame:
    """The pipeline's segment columns for each point: from the features, else from the segment source (keyed like
    the points)."""
    point_key, wanted = pipeline.keys, pipeline.monitoring.segments
    in_features = [c for c in wanted if c in pipeline.feature_table_columns()]
    if in_features:
        table = lake.read(spark, lakehouse, features_table(pipeline)).select(
            *point_key, F.col(AS_OF).alias(as_of_column), *in_features)
        keys = keys.join(table, on=[*point_key, as_of_column], how="left")
    source = pipeline.monitoring.segment_source or (None if pipeline.is_event else pipeline.features.spine.source)
    declared = pipeline.sources[source].columns if source in pipeline.sources else {}
    from_source = [c for c in wanted if c not in in_features and c in declared]
    if from_source and lake.exists(lakehouse, catalog.silver(source)):
        keys = keys.join(lake.read(spark, lakehouse, catalog.silver(source)).select(*point_key, *from_source),
                         on=point_key, how="left")
    return keys


def labels(events: DataFrame, keys: DataFrame, pipeline: Pipeline) -> DataFrame:
    """(entity, as_of_date, label) from the events in [as_of, as_of + horizon) (a pure transform).

    no_event_within_horizon: 1 when the entity has no such event; event_count_within_horizon: how many.
    """
    label, by = pipeline.label, pipeline.keys
    event_time = pipeline.sources[label.events].event_time
    dates = keys.select(AS_OF).distinct()
    if label.rule == "event_count_within_horizon":
        counts = (events.select(*by, event_time)
                  .join(F.broadcast(dates), how="inner",
                        on=(F.col(event_time) >= F.col(AS_OF).cast("timestamp"))
                        & (F.col(event_time) < F.date_add(F.col(AS_OF), label.horizon_days).cast("timestamp")))
                  .groupBy(*by, AS_OF).agg(F.count(F.lit(1)).alias("_count")))
        return (keys.select(*by, AS_OF).join(counts, on=[*by, AS_OF], how="left")
                .select(*by, AS_OF, F.coalesce(F.col("_count"), F.lit(0)).cast("bigint").alias(label.name)))
    active = (events.select(*by, event_time)
              .join(F.broadcast(dates), how="inner",
                    on=(F.col(event_time) >= F.col(AS_OF).cast("timestamp"))
                    & (F.col(event_time) < F.date_add(F.col(AS_OF), label.horizon_days).cast("timestamp")))
              .select(*by, AS_OF).distinct().withColumn("_active", F.lit(1)))
    return (keys.select(*by, AS_OF).join(active, on=[*by, AS_OF], how="left")
            .select(*by, AS_OF, F.when(F.col("_active").isNull(), 1).otherwise(0).alias(label.name)))


def label_events_table(pipeline: Pipeline) -> str:
    """The table the label is computed from: the label's own source (not necessarily the features' events)."""
    if pipeline.is_event:
        return catalog.silver(event_points.label_source(pipeline))
    return catalog.silver(pipeline.label.events)


def labelled(keys: DataFrame, events: DataFrame, pipeline: Pipeline, known_before=None) -> DataFrame:
    """Each point of `keys` with its label (pure): the one join of rows and labels, shared by training and
    monitoring so that both give a row the same label. Event points: only labels known before `known_before`
    (a timestamp, or a column of `keys`; default: every label known so far)."""
    if pipeline.is_event:
        known_before = F.lit(dt.datetime(9999, 1, 1)) if known_before is None else known_before
        buckets = buckets_of(keys.sparkSession)
        labels_ = event_points.data_labels(keys, events, pipeline, known_before, buckets)
        return keys.join(labels_, on=[*pipeline.keys, AS_OF], how="inner")
    return keys.join(labels(events, keys, pipeline), on=[*pipeline.keys, AS_OF], how="inner")


def training_set(features: DataFrame, events: DataFrame, pipeline: Pipeline, known_before=None) -> DataFrame:
    """Point-in-time training rows: the population's feature rows as of each date with the label that follows it."""
    return labelled(in_population(features, pipeline), events, pipeline, known_before)


def read_training_set(spark: SparkSession, lakehouse: Path, pipeline: Pipeline, dates: list[dt.date],
                      versions: dict[str, int], holdout: list[dt.date] | None = None,
                      cutoff: dt.date | None = None) -> DataFrame:
    """The training set of these dates from the features table and the label's source, at the given versions.

    Event points keep only labels known in time: a training row's label before the first holdout date (no
    label from the holdout period), a holdout row's before `cutoff` (the training's as-of date)."""
    table, events = features_table(pipeline), label_events_table(pipeline)
    rows = lake.read(spark, lakehouse, table, version=versions[table]).where(F.col(AS_OF).isin(as_dates(dates)))
    known_before = None
    if pipeline.is_event and holdout and cutoff:
        midnight = lambda d: F.lit(dt.datetime.combine(d, dt.time()))  # noqa: E731
        known_before = F.when(F.col(AS_OF).isin(holdout), midnight(cutoff)).otherwise(midnight(min(holdout)))
    return training_set(rows, lake.read(spark, lakehouse, events, version=versions[events]), pipeline, known_before)


# ---------------------------------------------------------------- pandas twins


def _source_frame(pdf: pd.DataFrame, pipeline: Pipeline, source: str, names: list[str]) -> pd.DataFrame:
    """The columns of a source frame with Spark's dtypes (text from files is parsed), keyed rows only."""
    frame = prepare(pdf, schema_of(_typed(pipeline, source, _unique(names))))
    return frame[frame[pipeline.keys].notna().all(axis=1)]


def as_of_rows_pandas(spine_history: pd.DataFrame, events: pd.DataFrame | None, dates: list[dt.date],
                      pipeline: Pipeline) -> pd.DataFrame:
    """The same as-of rows on pandas (same rules, same tie-breaks, same dtypes)."""
    feat, keys = pipeline.features, pipeline.keys
    dates = as_dates(dates)
    spine_time = pipeline.sources[feat.spine.source].event_time
    ties = _unique([spine_time, *_spine_columns(pipeline)])
    spine = _source_frame(spine_history, pipeline, feat.spine.source, [*keys, *ties])
    spine = spine.assign(_time=pd.to_datetime(spine[spine_time]), _since=pd.to_datetime(spine[feat.spine.since]))
    per_date = spine.merge(pd.DataFrame({AS_OF: dates, "_cutoff": pd.to_datetime(dates)}), how="cross")
    known = per_date[(per_date["_time"] < per_date["_cutoff"]) & (per_date["_since"] < per_date["_cutoff"])]
    rows = (known.sort_values(ties, kind="mergesort", na_position="first")
            .drop_duplicates([*keys, AS_OF], keep="last")[_unique([*keys, AS_OF, *_spine_columns(pipeline)])])
    spec = _events(pipeline)
    if spec is not None:
        event_time = pipeline.sources[spec.source].event_time
        frame = _source_frame(events, pipeline, spec.source, [*keys, event_time, *spec.columns])
        times = pd.to_datetime(frame[event_time])
        columns = _unique([*keys, *spec.columns])
        windows = []
        for d in dates:
            cutoff = pd.Timestamp(d)
            in_window = (times < cutoff) & (times >= cutoff - pd.Timedelta(days=spec.lookback_days))
            windows.append(frame.loc[in_window, columns].assign(**{AS_OF: d}))
        window = pd.concat(windows, ignore_index=True) if windows else pd.DataFrame(columns=[*columns, AS_OF])
        rows = rows.merge(window, on=[*keys, AS_OF], how="left")
    return prepare(rows, input_schema(pipeline), input_order(pipeline))


def build_features_pandas(spine_history: pd.DataFrame, events: pd.DataFrame | None, dates: list[dt.date],
                          pipeline: Pipeline) -> pd.DataFrame:
    """The same feature rows on pandas (a notebook or a test): same as-of rules, same function, same dtypes."""
    rows = as_of_rows_pandas(spine_history, events, dates, pipeline)
    fn = import_function(pipeline.features.function)
    # The rows already have Spark's dtypes and the canonical order: one call with every row, as is.
    if feature_mode(pipeline) == "rowwise":
        return apply_rowwise_pandas(rows, fn, output_schema(pipeline))
    return apply_grouped_pandas(rows, fn, output_schema(pipeline))


def snapshot_points_pandas(spine_history: pd.DataFrame, dates: list[dt.date], pipeline: Pipeline) -> pd.DataFrame:
    """The same snapshot points on pandas (feed them to `points.build_features_pandas` with their cutoff)."""
    rows = as_of_rows_pandas(spine_history, None, dates, pipeline)
    rows[PREDICTION_AT] = pd.to_datetime(rows[AS_OF])
    return rows[[*pipeline.keys, AS_OF, PREDICTION_AT, *pipeline.point_columns]]


def labels_pandas(events: pd.DataFrame, keys: pd.DataFrame, pipeline: Pipeline) -> pd.DataFrame:
    """The same labels on pandas (no event, or the count of events, in [as_of, as_of + horizon))."""
    label, by = pipeline.label, pipeline.keys
    event_time = pipeline.sources[label.events].event_time
    frame = _source_frame(events, pipeline, label.events, [*by, event_time])
    times = pd.to_datetime(frame[event_time])
    if label.rule == "event_count_within_horizon":
        counts = []
        for d in as_dates(keys[AS_OF].unique()):
            start = pd.Timestamp(d)
            seen = frame.loc[(times >= start) & (times < start + pd.Timedelta(days=label.horizon_days)), by]
            counts.append(seen.value_counts().rename("_count").reset_index().assign(**{AS_OF: d}))
        counts = pd.concat(counts, ignore_index=True) if counts else pd.DataFrame(columns=[*by, AS_OF, "_count"])
        out = keys[[*by, AS_OF]].merge(counts, on=[*by, AS_OF], how="left")
        return out.assign(**{label.name: out["_count"].fillna(0).astype("int64")}).drop(columns="_count")
    active = []
    for d in as_dates(keys[AS_OF].unique()):
        start = pd.Timestamp(d)
        seen = frame.loc[(times >= start) & (times < start + pd.Timedelta(days=label.horizon_days)), by]
        active.append(seen.drop_duplicates().assign(**{AS_OF: d}))
    active = pd.concat(active, ignore_index=True) if active else pd.DataFrame(columns=[*by, AS_OF])
    out = keys[[*by, AS_OF]].merge(active.assign(_active=1), on=[*by, AS_OF], how="left")
    # int32: what Spark's `when(...).otherwise(...)` of integer literals gives.
    return out.assign(**{label.name: out["_active"].isna().astype("int32")}).drop(columns="_active")


def training_set_pandas(features: pd.DataFrame, events: pd.DataFrame, pipeline: Pipeline) -> pd.DataFrame:
    """The same point-in-time training rows on pandas."""
    keys = in_population_pandas(features, pipeline)
    return keys.merge(labels_pandas(events, keys, pipeline), on=[*pipeline.keys, AS_OF], how="inner")
