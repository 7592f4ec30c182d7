"""Features as of a date, from the pipeline's own pandas function, on Spark or on pandas.

As-of semantics: the row for (entity, d) sees only what was known before d: entity attributes
whose event time is before d (the latest such version) and events in [d - lookback, d). Many
dates are built in one pass (the dates are a small broadcast table joined to the events), so a
backfill does not scan the events once per date.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from lakeforge import lake
from lakeforge.config import Pipeline
from lakeforge.pandas_on_spark import apply_grouped, apply_grouped_pandas, import_function

AS_OF = "as_of_date"


def features_table(pipeline: Pipeline) -> str:
    return f"gold.{pipeline.name}_features"


def output_schema(pipeline: Pipeline) -> StructType:
    """The feature function's declared output columns."""
    return StructType.fromDDL(", ".join(f"`{n}` {t}" for n, t in pipeline.features.columns.items()))


def feature_columns(pipeline: Pipeline) -> list[str]:
    """Model inputs: the output columns except the entity key and the as-of date."""
    return [c for c in pipeline.features.columns if c not in (pipeline.features.entity, AS_OF)]


def in_population(features: DataFrame, pipeline: Pipeline) -> DataFrame:
    """The feature rows the model is trained on and scores (the pipeline's population filter)."""
    population = pipeline.features.population
    return features.where(population) if population else features


def dates_frame(spark: SparkSession, dates: list[dt.date]) -> DataFrame:
    return spark.createDataFrame([(d,) for d in sorted(set(dates))], f"{AS_OF} date")


def as_of_rows(spine_history: DataFrame, events: DataFrame, dates: DataFrame, pipeline: Pipeline) -> DataFrame:
    """Each known entity per as-of date, with its events in the lookback window (a pure transform).

    An entity with no event in the window gets one row whose event columns are null.
    """
    feat = pipeline.features
    spine_time = pipeline.sources[feat.spine.source].event_time
    event_time = pipeline.sources[feat.events.source].event_time
    known = (spine_history.join(F.broadcast(dates), how="inner",
                                on=(F.col(spine_time) < F.col(AS_OF).cast("timestamp"))
                                & (F.col(feat.spine.since) < F.col(AS_OF)))
             .withColumn("_rank", F.row_number().over(
                 Window.partitionBy(feat.entity, AS_OF).orderBy(F.col(spine_time).desc())))
             .where("_rank = 1")
             .select(feat.entity, AS_OF, feat.spine.since, *feat.spine.columns))
    window_start = F.date_sub(F.col(AS_OF), feat.events.lookback_days).cast("timestamp")
    in_window = (events.select(feat.entity, *feat.events.columns)
                 .join(F.broadcast(dates), how="inner",
                       on=(F.col(event_time) < F.col(AS_OF).cast("timestamp")) & (F.col(event_time) >= window_start)))
    return known.join(in_window, on=[feat.entity, AS_OF], how="left")


def build_features(spark: SparkSession, lakehouse: Path, pipeline: Pipeline, dates: list[dt.date]) -> DataFrame:
    """Feature rows for every known entity and each date, computed on Spark by the pipeline's pandas function."""
    feat = pipeline.features
    spine_history = lake.read(spark, lakehouse, f"bronze.{feat.spine.source}")
    events = lake.read(spark, lakehouse, f"silver.{feat.events.source}")
    rows = as_of_rows(spine_history, events, dates_frame(spark, dates), pipeline)
    buckets = max(2, int(spark.conf.get("spark.sql.shuffle.partitions")))
    return apply_grouped(rows, import_function(feat.function), feat.entity, output_schema(pipeline), buckets)


def build_features_pandas(spine_history: pd.DataFrame, events: pd.DataFrame, dates: list[dt.date],
                          pipeline: Pipeline) -> pd.DataFrame:
    """The same rows on pandas (a notebook or a test): same as-of rules, same function."""
    feat = pipeline.features
    spine_time = pipeline.sources[feat.spine.source].event_time
    event_time = pipeline.sources[feat.events.source].event_time
    frames = []
    for d in sorted(set(dates)):
        cutoff = pd.Timestamp(d)
        known = spine_history[(pd.to_datetime(spine_history[spine_time]) < cutoff)
                              & (pd.to_datetime(spine_history[feat.spine.since]) < cutoff)]
        known = (known.sort_values(spine_time).groupby(feat.entity, as_index=False).tail(1)
                 [[feat.entity, feat.spine.since, *feat.spine.columns]].assign(**{AS_OF: d}))
        times = pd.to_datetime(events[event_time])
        window = events[(times < cutoff) & (times >= cutoff - pd.Timedelta(days=feat.events.lookback_days))]
        frames.append(known.merge(window[[feat.entity, *feat.events.columns]], on=feat.entity, how="left"))
    rows = pd.concat(frames, ignore_index=True)
    fn = import_function(feat.function)
    return apply_grouped_pandas(rows, fn, output_schema(pipeline))


def write_features(spark: SparkSession, df: DataFrame, lakehouse: Path, pipeline: Pipeline,
                   dates: list[dt.date], owner: str) -> None:
    """Replace exactly these dates in gold.<pipeline>_features (a rerun rewrites them, nothing else)."""
    listed = ", ".join(f"DATE'{d.isoformat()}'" for d in sorted(set(dates)))
    lake.replace_where(spark, df, lakehouse, features_table(pipeline), f"{AS_OF} IN ({listed})",
                       partition_by=[AS_OF],
                       properties={"lakeforge.description": f"{pipeline.name} features, one row per "
                                                            f"{pipeline.features.entity} per {AS_OF}",
                                   "lakeforge.owner": owner, "lakeforge.source": pipeline.features.function})


def event_date_range(spark: SparkSession, lakehouse: Path, pipeline: Pipeline) -> tuple[dt.date, dt.date]:
    """First and last event dates of the pipeline's event source (what the data covers)."""
    source = pipeline.features.events.source
    column = pipeline.sources[source].event_time
    row = lake.read(spark, lakehouse, f"silver.{source}").agg(
        F.min(F.to_date(column)).alias("first"), F.max(F.to_date(column)).alias("last")).first()
    if row["first"] is None:
        from lakeforge.errors import DataError
        raise DataError(f"silver.{source} is empty: ingest landing files first (`lakeforge ingest`)")
    return row["first"], row["last"]


def labels(events: DataFrame, keys: DataFrame, pipeline: Pipeline) -> DataFrame:
    """(entity, as_of_date, label): 1 when the entity has no event in [as_of, as_of + horizon) (a pure transform)."""
    feat, label = pipeline.features, pipeline.label
    event_time = pipeline.sources[label.events].event_time
    dates = keys.select(AS_OF).distinct()
    active = (events.select(feat.entity, event_time)
              .join(F.broadcast(dates), how="inner",
                    on=(F.col(event_time) >= F.col(AS_OF).cast("timestamp"))
                    & (F.col(event_time) < F.date_add(F.col(AS_OF), label.horizon_days).cast("timestamp")))
              .select(feat.entity, AS_OF).distinct().withColumn("_active", F.lit(1)))
    return (keys.select(feat.entity, AS_OF).join(active, on=[feat.entity, AS_OF], how="left")
            .select(feat.entity, AS_OF, F.when(F.col("_active").isNull(), 1).otherwise(0).alias(label.name)))
