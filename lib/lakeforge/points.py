"""Feature sets joined point-in-time to prediction points, and labels taken from data (Spark and pandas twins).

An event point is a row of the points source (keyed by its primary key, composite or not),
predicted at the instant in its `points.at` column, at timestamp precision; its `as_of_date` is the
instant's date, so a night's points are one partition of the features and predictions tables. A
point is the latest version of its row ingested by its date's first build (so a row arriving after
its date was scored never becomes a point of it). Snapshot points (entities x dates, predicted at
each date's midnight; `features.snapshot_points`) meet the feature sets the same way.

Each feature set joins rows of its source to every point: its `join` columns equal, its event time
in [instant - window, instant) and - the second time axis - ingested no later than the point's
`ingested_by`: the moment the point's date was first built. A rebuild (a rerun, a training
backfill) keeps that moment, so a row that arrived after a date was built and scored changes
neither its features nor its training rows: training sees exactly what scoring saw. Points built
for the first time see everything ingested so far. Source rows come from bronze (every version
of a key, each with its ingestion time), and each point sees, per key, the latest version it
could have seen. Many points and dates are built in one pass: rows meet only points of their own
time bucket (the window's length), so the join never pairs every point with a key's whole history.

The set's pandas function gets the rows of many points at once (every row of a point in the same
call) and returns one row per point: the point's key, its `as_of_date` and the set's `output`
columns. A point with no row in its window still gets one row, whose source columns are null.
"""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from lakeforge import catalog, lake
from lakeforge.config import AS_OF_DATE, PREDICTION_AT, FeatureSet, Pipeline
from lakeforge.errors import ConfigError, DataError
from lakeforge.pandas_on_spark import (apply_grouped, apply_grouped_pandas, buckets_of, import_function, prepare,
                                       schema_of)

INGESTED_BY = "ingested_by"  # features table: rows ingested after this moment are not seen by the row
INGESTED_AT = "_ingested_at"
_BUCKET = "_lf_bucket"


def _unique(names) -> list[str]:
    return list(dict.fromkeys(names))


def _typed(pipeline: Pipeline, source: str, names: list[str]) -> list[tuple[str, str]]:
    declared = pipeline.sources[source].columns
    return [(n, declared[n]) for n in names]


def _point_schema(pipeline: Pipeline) -> list[tuple[str, str]]:
    return [*_typed(pipeline, pipeline.point_source, pipeline.keys), (AS_OF_DATE, "date"),
            (PREDICTION_AT, "timestamp"), *_typed(pipeline, pipeline.point_source, pipeline.point_columns)]


def set_source_columns(pipeline: Pipeline, fs: FeatureSet) -> list[str]:
    """The source columns a set's function reads: its event time, then its declared columns (join columns that
    carry the point's own name are given once, as the point's)."""
    event_time = pipeline.sources[fs.source].event_time
    same = {s for p, s in fs.join.items() if p == s}
    return [c for c in _unique([event_time, *fs.columns]) if c not in same]


def set_input_schema(pipeline: Pipeline, fs: FeatureSet) -> StructType:
    """What a set's function gets: the point's key, as-of date, instant and join columns, then the source's columns."""
    point = dict(_point_schema(pipeline))
    names = _unique([*pipeline.keys, AS_OF_DATE, PREDICTION_AT, *fs.join])
    return schema_of([(n, point[n]) for n in names]
                     + _typed(pipeline, fs.source, set_source_columns(pipeline, fs)))


def set_output_schema(pipeline: Pipeline, fs: FeatureSet) -> StructType:
    """What a set's function returns: one row per point, its key and as-of date, then the set's outputs."""
    return schema_of([*_typed(pipeline, pipeline.point_source, pipeline.keys), (AS_OF_DATE, "date"),
                      *fs.output.items()])


def set_order(pipeline: Pipeline, fs: FeatureSet) -> list[str]:
    """The canonical row order of a set's input: point key, instant, the source row's event time, the rest."""
    names = set_input_schema(pipeline, fs).fieldNames()
    return _unique([*pipeline.keys, PREDICTION_AT, pipeline.sources[fs.source].event_time, *names])


def features_schema(pipeline: Pipeline) -> StructType:
    """gold.<pipeline>_features of a pipeline with feature sets: key, as-of date, instant, the point's columns,
    every set's output, ingested_by."""
    return schema_of([*pipeline.feature_table_columns().items(), (INGESTED_BY, "timestamp")])


def _days_window(days: list[dt.date]) -> tuple[Column, Column]:
    """The first and last instants of the days (as timestamps): [first day 00:00, day after the last 00:00)."""
    return F.lit(min(days)).cast("timestamp"), F.lit(max(days) + dt.timedelta(days=1)).cast("timestamp")


# ---------------------------------------------------------------- Spark


def points(rows: DataFrame, pipeline: Pipeline, days: list[dt.date], built: DataFrame) -> DataFrame:
    """The prediction points whose instant falls on one of `days`, with their ingestion cutoff (a pure transform).

    `rows` are the points source's rows with their `_ingested_at` (every version: bronze); `built` holds
    (as_of_date, ingested_by) of the days built before, and other days see everything so far. A point is the
    latest version of its key ingested by that cutoff: a row that arrived after its date was built (and
    scored) is not a point of that date, and a later correction does not change a built date's points.
    """
    at = F.col(f"`{pipeline.point_time}`")
    start, end = _days_window(days)
    chosen = rows.where((at >= start) & (at < end) & F.to_date(at).isin(days))
    for key in pipeline.keys:
        chosen = chosen.where(F.col(f"`{key}`").isNotNull())
    versions = with_cutoffs(chosen.withColumn(AS_OF_DATE, F.to_date(at)), built)
    newest = Window.partitionBy(*[F.col(f"`{k}`") for k in pipeline.keys]).orderBy(
        *[F.col(c).desc_nulls_last() for c in _version_order(pipeline, pipeline.points.source)])
    latest = (versions.where(F.col(INGESTED_AT) <= F.col(INGESTED_BY))
              .withColumn("_lf_rank", F.row_number().over(newest)).where("_lf_rank = 1"))
    if pipeline.points.where:
        latest = latest.where(pipeline.points.where)
    return latest.select(*[F.col(f"`{k}`") for k in pipeline.keys], AS_OF_DATE,
                         at.cast("timestamp").alias(PREDICTION_AT), *[F.col(f"`{c}`") for c in pipeline.point_columns],
                         INGESTED_BY)


def _version_order(pipeline: Pipeline, source: str) -> list[str]:
    """Which version of a key is the latest: silver's order (event time, then ingestion, then file)."""
    return [f"`{pipeline.sources[source].event_time}`", INGESTED_AT, "_source_file"]


def with_cutoffs(pts: DataFrame, built: DataFrame) -> DataFrame:
    """Each point with its ingestion cutoff: its date's first build (`built`: as_of_date, ingested_by), else now."""
    cutoff = F.coalesce(F.col(INGESTED_BY), F.current_timestamp()).alias(INGESTED_BY)
    return pts.join(F.broadcast(built), on=[AS_OF_DATE], how="left").select(*pts.columns, cutoff)


def _all(conditions: list[Column]) -> Column:
    return functools.reduce(lambda a, b: a & b, conditions)


def _micros(window: dt.timedelta) -> int:
    return int(window / dt.timedelta(microseconds=1))


def _before(ts: Column, window: dt.timedelta) -> Column:
    """`ts - window`, exact to the microsecond."""
    return F.timestamp_micros(F.unix_micros(ts) - F.lit(_micros(window)))


def _bucket(ts: Column, window: dt.timedelta) -> Column:
    return F.floor(F.unix_micros(ts) / F.lit(_micros(window)))


def set_rows(pts: DataFrame, source_rows: DataFrame, pipeline: Pipeline, fs: FeatureSet) -> DataFrame:
    """Each point with the source rows it could see (a pure transform): join columns equal, event time in
    [instant - window, instant), ingested by the point's cutoff; per source key its latest such version, and
    with `latest` only the latest row. A point with no such row gets one row of nulls."""
    source = pipeline.sources[fs.source]
    event_time = source.event_time
    keep = _unique([*fs.join.values(), *set_source_columns(pipeline, fs), *source.primary_key])
    # Times compared with the instant are timestamps (a source may declare timestamp_ntz).
    src = (source_rows.select(*[(F.col(f"`{c}`").cast("timestamp") if c == event_time else F.col(f"`{c}`"))
                                .alias(f"_s_{c}") for c in keep],
                              F.col(INGESTED_AT).cast("timestamp").alias("_s__ingested_at"),
                              F.col("_source_file").alias("_s__file"))
           .withColumn("_s_bucket", F.explode(F.array(_bucket(F.col(f"_s_{event_time}"), fs.window),
                                                      _bucket(F.col(f"_s_{event_time}"), fs.window) + 1))))
    p = pts.withColumns({_BUCKET: _bucket(F.col(PREDICTION_AT), fs.window),
                         "_lf_from": _before(F.col(PREDICTION_AT), fs.window)})
    seen = F.col(f"_s_{event_time}")
    on = [F.col(f"`{pc}`") == F.col(f"_s_{sc}") for pc, sc in fs.join.items()]
    # A row can be in a point's window only if it is in the point's time bucket or the one before.
    on += [F.col(_BUCKET) == F.col("_s_bucket"), seen < F.col(PREDICTION_AT), seen >= F.col("_lf_from"),
           F.col("_s__ingested_at") <= F.col(INGESTED_BY)]
    joined = p.join(src, on=_all(on), how="left")
    point_key = [F.col(f"`{k}`") for k in [*pipeline.keys, AS_OF_DATE]]
    newest = [F.col(f"_s_{event_time}").desc_nulls_last(), F.col("_s__ingested_at").desc_nulls_last(),
              F.col("_s__file").desc_nulls_last()]
    if fs.latest:
        rank = Window.partitionBy(*point_key).orderBy(*newest)
    else:  # one version per source key: the latest the point could see
        rank = Window.partitionBy(*point_key, *[F.col(f"_s_{k}") for k in source.primary_key]).orderBy(*newest)
    joined = joined.withColumn("_lf_rank", F.row_number().over(rank)).where("_lf_rank = 1")
    schema = set_input_schema(pipeline, fs)
    renamed = {n: (f"_s_{n}" if n in set_source_columns(pipeline, fs) else n) for n in schema.fieldNames()}
    return joined.select(*[F.col(f"`{renamed[f.name]}`").cast(f.dataType).alias(f.name) for f in schema.fields])


def compute_set(pts: DataFrame, source_rows: DataFrame, pipeline: Pipeline, fs: FeatureSet,
                buckets: int) -> DataFrame:
    """One set's feature columns per point: its rows through its pandas function (grouped by point)."""
    rows = set_rows(pts, source_rows, pipeline, fs)
    return apply_grouped(rows, import_function(fs.function), pipeline.keys, set_output_schema(pipeline, fs),
                         buckets, by_date=AS_OF_DATE, order_by=set_order(pipeline, fs))


def compute_features(pts: DataFrame, sources: dict[str, DataFrame], pipeline: Pipeline, buckets: int) -> DataFrame:
    """Every point with every set's features (one row per point; a pure transform)."""
    out = pts
    for fs in pipeline.features.sets.values():
        values = compute_set(pts, sources[fs.source], pipeline, fs, buckets)
        out = out.join(values, on=[*pipeline.keys, AS_OF_DATE], how="left")
    return out.select(*[F.col(f"`{f.name}`").cast(f.dataType).alias(f.name) for f in features_schema(pipeline).fields])


def built_cutoffs(spark: SparkSession, lakehouse: Path, table: str, days: list[dt.date]) -> DataFrame:
    """(as_of_date, ingested_by) of the days already in the features table: a rebuild keeps what they saw."""
    if not lake.exists(lakehouse, table):
        return spark.createDataFrame([], f"{AS_OF_DATE} date, {INGESTED_BY} timestamp")
    return (lake.read(spark, lakehouse, table).where(F.col(AS_OF_DATE).isin(days))
            .groupBy(AS_OF_DATE).agg(F.min(INGESTED_BY).alias(INGESTED_BY)))


def set_sources(spark: SparkSession, lakehouse: Path, pipeline: Pipeline, days: list[dt.date]) -> dict[str, DataFrame]:
    """Each set source's bronze rows that the days' points can see: only the days' overall window is read (file
    skipping on the event time's statistics), so a night costs what its window holds, whatever the history."""
    start, end = _days_window(days)
    sources = {}
    for name in dict.fromkeys(fs.source for fs in pipeline.features.sets.values()):
        event_time = F.col(f"`{pipeline.sources[name].event_time}`")
        longest = max(fs.window for fs in pipeline.features.sets.values() if fs.source == name)
        sources[name] = lake.read(spark, lakehouse, catalog.bronze(name)).where(
            (event_time >= _before(start, longest)) & (event_time < end))
    return sources


def build_features(spark: SparkSession, lakehouse: Path, pipeline: Pipeline, days: list[dt.date],
                   table: str) -> DataFrame:
    """Feature rows of every point of the days: points from silver, set rows from bronze (every version)."""
    pts = points(lake.read(spark, lakehouse, catalog.bronze(pipeline.points.source)), pipeline, days,
                 built_cutoffs(spark, lakehouse, table, days))
    buckets = buckets_of(spark)
    return compute_features(pts, set_sources(spark, lakehouse, pipeline, days), pipeline, buckets)


# ---------------------------------------------------------------- labels from data


def label_join(pipeline: Pipeline) -> dict[str, str]:
    """Point column -> label-source column (default: the point's own row, by its key)."""
    return pipeline.label.join or {k: k for k in pipeline.keys}


def label_source(pipeline: Pipeline) -> str:
    return pipeline.label.source or pipeline.points.source


def _label_inputs(pipeline: Pipeline) -> list[str]:
    label = pipeline.label
    return _unique([label.known_at, *([label.column] if label.column else []), *label.columns])


def label_input_schema(pipeline: Pipeline) -> StructType:
    """A label function's input: the point's key, as-of date and instant, then the label source's columns."""
    point = dict(_point_schema(pipeline))
    names = [n for n in _label_inputs(pipeline) if n not in pipeline.keys]
    return schema_of([(n, point[n]) for n in [*pipeline.keys, AS_OF_DATE, PREDICTION_AT]]
                     + _typed(pipeline, label_source(pipeline), names))


def label_schema(pipeline: Pipeline) -> StructType:
    label = pipeline.label
    # A multiclass label is its class's name (a string), whatever the source column's type.
    kind = {"classification": "bigint", "multiclass": "string"}.get(label.task, "double")
    return schema_of([*_typed(pipeline, pipeline.point_source, pipeline.keys), (AS_OF_DATE, "date"),
                      (label.name, kind)])


def data_labels(keys: DataFrame, label_rows: DataFrame, pipeline: Pipeline, known_before: Column,
                buckets: int) -> DataFrame:
    """(key, as_of_date, label) for each point of `keys` whose label was known before `known_before` (a column
    or literal timestamp); points whose label was not yet known are left out (a pure transform)."""
    label = pipeline.label
    inputs = _label_inputs(pipeline)
    src = label_rows.select(*[F.col(f"`{c}`").alias(f"_l_{c}") for c in _unique([*label_join(pipeline).values(),
                                                                                   *inputs])])
    on = [F.col(f"`{p}`") == F.col(f"_l_{s}") for p, s in label_join(pipeline).items()]
    joined = (keys.select(*pipeline.keys, AS_OF_DATE, PREDICTION_AT).join(src, on=on, how="inner")
              .where(F.col(f"_l_{label.known_at}") < known_before))
    schema = label_input_schema(pipeline)
    rows = joined.select(*[F.col(f"`{f.name}`" if f.name in (*pipeline.keys, AS_OF_DATE, PREDICTION_AT)
                                 else f"_l_{f.name}").cast(f.dataType).alias(f.name) for f in schema.fields])
    out = label_schema(pipeline)
    if label.function:
        values = apply_grouped(rows, import_function(label.function), pipeline.keys, out, buckets,
                               by_date=AS_OF_DATE, order_by=[*pipeline.keys, AS_OF_DATE])
        return values.where(F.col(label.name).isNotNull())
    return rows.select(*pipeline.keys, AS_OF_DATE, F.col(f"`{label.column}`").cast(out[label.name].dataType)
                       .alias(label.name)).where(F.col(label.name).isNotNull())


# ---------------------------------------------------------------- pandas twins


def _frame(pdf: pd.DataFrame, pipeline: Pipeline, source: str, names: list[str]) -> pd.DataFrame:
    """Columns of a source frame with Spark's dtypes (text from files is parsed), audit columns kept."""
    audit = [c for c in (INGESTED_AT, "_source_file") if c in pdf.columns]
    frame = prepare(pdf[_unique(names)].copy(), schema_of(_typed(pipeline, source, _unique(names))))
    for column in audit:
        frame[column] = pd.to_datetime(pdf[column].to_numpy()) if column == INGESTED_AT else pdf[column].to_numpy()
    return frame


def points_pandas(rows: pd.DataFrame, pipeline: Pipeline, days: list[dt.date],
                  built: dict[dt.date, pd.Timestamp] | None = None, now: pd.Timestamp | None = None) -> pd.DataFrame:
    """The same prediction points on pandas (`built`: the cutoffs of days built before; others get `now`)."""
    p = pipeline.points
    event_time = pipeline.sources[p.source].event_time
    frame = _frame(rows, pipeline, p.source,
                   [*pipeline.keys, pipeline.point_time, event_time, *pipeline.point_columns, *_where_columns(rows)])
    at = pd.to_datetime(frame[pipeline.point_time])
    frame = frame[at.dt.date.isin(set(days)) & frame[pipeline.keys].notna().all(axis=1)].copy()
    now = now if now is not None else pd.Timestamp.now(tz="UTC").tz_localize(None)
    frame[AS_OF_DATE] = pd.to_datetime(frame[pipeline.point_time]).dt.date
    frame[INGESTED_BY] = pd.to_datetime([(built or {}).get(d, now) for d in frame[AS_OF_DATE]])
    frame = frame[frame[INGESTED_AT] <= frame[INGESTED_BY]]
    frame = frame.sort_values([event_time, INGESTED_AT, "_source_file"], kind="mergesort", na_position="first")
    frame = frame.drop_duplicates(pipeline.keys, keep="last")
    if p.where:
        try:
            frame = frame.query(p.where)
        except Exception as exc:  # pandas raises many types for an expression it cannot read
            raise ConfigError(f"points.where '{p.where}' cannot be evaluated by pandas ({exc}); write it as a "
                              f"comparison SQL and pandas both read, e.g. status == 'open'") from None
    out = frame[[*pipeline.keys, AS_OF_DATE]].assign(**{PREDICTION_AT: pd.to_datetime(frame[pipeline.point_time])})
    for c in pipeline.point_columns:
        out[c] = frame[c]
    out[INGESTED_BY] = frame[INGESTED_BY]
    return out.reset_index(drop=True)


def _where_columns(rows: pd.DataFrame) -> list[str]:
    """Every declared column the frame has (a `points.where` may read any of them)."""
    return [c for c in rows.columns if not c.startswith("_")]


def set_rows_pandas(pts: pd.DataFrame, source_rows: pd.DataFrame, pipeline: Pipeline, fs: FeatureSet) -> pd.DataFrame:
    """The same rows of one set on pandas (same join, windows, versions and tie-breaks)."""
    source = pipeline.sources[fs.source]
    event_time = source.event_time
    keep = _unique([*fs.join.values(), *set_source_columns(pipeline, fs), *source.primary_key])
    src = _frame(source_rows, pipeline, fs.source, keep)
    src = src.rename(columns={c: f"_s_{c}" for c in src.columns})
    pts = pts.reset_index(drop=True).assign(_lf_point=lambda f: range(len(f)))
    joined = pts.merge(src, left_on=list(fs.join), right_on=[f"_s_{s}" for s in fs.join.values()], how="inner")
    seen = pd.to_datetime(joined[f"_s_{event_time}"])
    joined = joined[(seen < joined[PREDICTION_AT]) & (seen >= joined[PREDICTION_AT] - fs.window)
                    & (joined[f"_s_{INGESTED_AT}"] <= joined[INGESTED_BY])]
    newest = [f"_s_{event_time}", f"_s_{INGESTED_AT}", "_s__source_file"]
    joined = joined.sort_values(newest, kind="mergesort", na_position="first")
    by = ["_lf_point"] if fs.latest else ["_lf_point", *[f"_s_{k}" for k in source.primary_key]]
    joined = joined.drop_duplicates(by, keep="last")
    missing = pts[~pts["_lf_point"].isin(joined["_lf_point"])]
    joined = pd.concat([joined, missing], ignore_index=True)
    schema = set_input_schema(pipeline, fs)
    renamed = {n: (f"_s_{n}" if n in set_source_columns(pipeline, fs) else n) for n in schema.fieldNames()}
    rows = joined[[renamed[n] for n in schema.fieldNames()]].set_axis(schema.fieldNames(), axis=1)
    return prepare(rows, schema, set_order(pipeline, fs))


def build_features_pandas(pts: pd.DataFrame, sources: dict[str, pd.DataFrame], pipeline: Pipeline) -> pd.DataFrame:
    """The same feature rows on pandas: every set's function once over every point's rows."""
    out = pts
    for fs in pipeline.features.sets.values():
        rows = set_rows_pandas(pts, sources[fs.source], pipeline, fs)
        values = apply_grouped_pandas(rows, import_function(fs.function), set_output_schema(pipeline, fs))
        out = out.merge(values, on=[*pipeline.keys, AS_OF_DATE], how="left")
    schema = features_schema(pipeline)
    return prepare(out[schema.fieldNames()], schema, [*pipeline.keys, AS_OF_DATE])


def data_labels_pandas(keys: pd.DataFrame, label_rows: pd.DataFrame, pipeline: Pipeline,
                       known_before: pd.Timestamp) -> pd.DataFrame:
    """The same labels on pandas."""
    label = pipeline.label
    join = label_join(pipeline)
    src = _frame(label_rows, pipeline, label_source(pipeline), [*join.values(), *_label_inputs(pipeline)])
    src = src.rename(columns={c: f"_l_{c}" for c in src.columns})
    joined = keys[[*pipeline.keys, AS_OF_DATE, PREDICTION_AT]].merge(
        src, left_on=list(join), right_on=[f"_l_{s}" for s in join.values()], how="inner")
    joined = joined[pd.to_datetime(joined[f"_l_{label.known_at}"]) < known_before]
    schema = label_input_schema(pipeline)
    point = (*pipeline.keys, AS_OF_DATE, PREDICTION_AT)
    rows = joined[[n if n in point else f"_l_{n}" for n in schema.fieldNames()]].set_axis(schema.fieldNames(), axis=1)
    rows = prepare(rows, schema, [*pipeline.keys, AS_OF_DATE])
    out = label_schema(pipeline)
    if label.function:
        result = apply_grouped_pandas(rows, import_function(label.function), out)
    else:
        result = prepare(rows[[*pipeline.keys, AS_OF_DATE]].assign(**{label.name: rows[label.column]}), out)
    return result[result[label.name].notna()].reset_index(drop=True)


def check_day(day: dt.date, last_event: dt.date, source: str) -> None:
    """An event pipeline's date is a day of ingested points: never after the last ingested event's day."""
    if day > last_event:
        raise DataError(f"date {day} is after the last ingested event of {catalog.silver(source)} ({last_event}): its "
                        f"prediction points have not arrived. Ingest newer landing files first, or choose a date up "
                        f"to {last_event}")
