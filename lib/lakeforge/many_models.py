"""Many models: one estimator per group (e.g. per store), fitted in parallel on the executors with applyInPandas.

Each call gets every training row of one group, fits the pipeline's estimator on them (sorted, so
the same rows give the same model whatever order Spark delivers them in) and returns one row: the
group, its training rows and the fitted model pickled to bytes. A group with fewer than
`min_rows` rows gets no model (its rows go to the global fallback). Executors make no MLflow
calls; the driver collects the small model rows and registers them as one routing model.
"""

from __future__ import annotations

import pickle
import time

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql.types import BinaryType, DoubleType, LongType, StructField, StructType

from lakeforge.training import ONE_THREAD_PER_TASK, fit_estimator


def models_schema(df: DataFrame, group_key: str) -> StructType:
    return StructType([df.schema[group_key], StructField("train_rows", LongType(), False),
                       StructField("model", BinaryType(), True), StructField("fit_seconds", DoubleType(), False)])


def fit_group(rows: pd.DataFrame, group_key: str, feature_cols: list[str], label: str, task: str, params: dict,
              min_rows: int, order_by: list[str]) -> pd.DataFrame:
    """One group's model row (pure pandas: the same call runs in a sequential loop or inside applyInPandas)."""
    started = time.perf_counter()
    rows = rows.sort_values(order_by, kind="mergesort").reset_index(drop=True)
    model = None
    if len(rows) >= min_rows:
        model = pickle.dumps(fit_estimator(task, params, rows[feature_cols], rows[label]))
    return pd.DataFrame({group_key: [rows[group_key].iloc[0]], "train_rows": [len(rows)], "model": [model],
                         "fit_seconds": [time.perf_counter() - started]})


def fit_per_group(train: DataFrame, group_key: str, feature_cols: list[str], label: str, task: str, params: dict,
                  min_rows: int, order_by: list[str]) -> DataFrame:
    """One row per group with its pickled model (null below `min_rows`), fitted on the executors (a transform)."""
    columns = list(dict.fromkeys([group_key, *order_by, *feature_cols, label]))
    arguments = {**params, **ONE_THREAD_PER_TASK}

    def fit(rows: pd.DataFrame) -> pd.DataFrame:
        return fit_group(rows, group_key, feature_cols, label, task, arguments, min_rows, order_by)

    # An explicit partition count: adaptive execution coalesces shuffle partitions to at least 1 MB each
    # (spark.sql.adaptive.coalescePartitions.minPartitionSize), but training rows are few bytes for much
    # work: a training set under 1 MB per core got fewer tasks than cores (one under 1 MB, the demo's).
    # Twice the cores lets a core that drew small groups take another partition.
    partitions = 2 * train.sparkSession.sparkContext.defaultParallelism
    return (train.select(*columns).repartition(partitions, group_key).groupBy(group_key)
            .applyInPandas(fit, models_schema(train, group_key)))


def unpickle(rows: pd.DataFrame, group_key: str) -> dict:
    """{group: fitted estimator} for the groups that got a model."""
    return {row[group_key]: pickle.loads(row["model"]) for _, row in rows.iterrows() if row["model"] is not None}
