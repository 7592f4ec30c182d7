"""Batch scoring: the @champion model over one date's features, into gold.<pipeline>_predictions.

The driver loads the model once and broadcasts it; each Python worker unpickles it once and
keeps it for every batch it scores (no MLflow calls from executors, nothing collected to the
driver). One model thread per Spark task: lakeforge trains its estimators with `n_jobs=1`, and
Spark sets OMP_NUM_THREADS to the task's cores in its Python workers, so two tasks never fight
over one core. A rerun replaces exactly the score_date partition, in one commit.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Iterator

import cloudpickle
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType

# Test hook: with this set to a file path, a scoring task creates the file after its first batch and
# then hangs, so a test can kill the job while its write is in progress.
STALL_AFTER_FIRST_BATCH = "LAKEFORGE_TEST_STALL_SCORING"

# A worker process keeps the models it has unpickled, keyed by (name, version): one load per worker.
_WORKER_MODELS: dict[tuple[str, int], object] = {}


def predictions_table(pipeline_name: str) -> str:
    return f"gold.{pipeline_name}_predictions"


def _model_on_worker(key: tuple[str, int], payload) -> object:
    model = _WORKER_MODELS.get(key)
    if model is None:
        model = _WORKER_MODELS[key] = cloudpickle.loads(payload.value)
    return model


def predict(features: DataFrame, model_payload, key: tuple[str, int], ids: list[str],
            feature_cols: list[str]) -> DataFrame:
    """The row's id columns (its key) plus `prediction` for each feature row (a transform; runs on the executors).

    A scalar-iterator pandas UDF over the feature columns only: the entity key stays in the JVM
    instead of crossing to Python and back as strings (with mapInPandas that round trip made
    scoring slower than mlflow's spark_udf; see benchmarks/score_bench.py).
    """
    @F.pandas_udf(DoubleType())
    def score_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        model = _model_on_worker(key, model_payload)
        stall = os.environ.get(STALL_AFTER_FIRST_BATCH)
        for batch in batches:
            yield pd.Series(model.predict(None, batch), index=batch.index, dtype="float64")
            if stall:
                Path(stall).touch()
                time.sleep(3600)

    # A routing model (one model per group) reads its group key, which may be the entity key itself.
    inputs = F.struct(*dict.fromkeys(feature_cols))
    return features.select(*ids, score_batches(inputs).alias("prediction"))


def stamp(predictions: DataFrame, score_date: dt.date, model_name: str, model_version: int, run_id: str) -> DataFrame:
    """Add the columns that say when, with which model and by which run each prediction was made."""
    return predictions.select(
        "*",
        F.lit(score_date).alias("score_date"),
        F.lit(model_name).alias("model_name"),
        F.lit(model_version).alias("model_version"),
        F.current_timestamp().alias("scored_at"),
        F.lit(run_id).alias("run_id"),
    )


def broadcast_model(spark: SparkSession, python_model) -> object:
    """Serialize the model once on the driver and broadcast it to the executors."""
    return spark.sparkContext.broadcast(cloudpickle.dumps(python_model))
