"""Batch scoring: the @champion model over one date's features, into gold.<pipeline>_predictions.

The driver loads the model's files once (model_files: checked against the SHA-256s recorded at
registration), compiles its LightGBM estimators or takes them from the cache (compiled), and
broadcasts the files and object code as bytes; each Python worker rebuilds the model from them once
and keeps it for every batch it scores (no MLflow calls from executors, nothing collected to the
driver, no pickle of code). A version without model files (registered before them, or a custom
estimator with no data form) is broadcast as its cloudpickled pyfunc, and the log says so. One model
thread per Spark task: lakeforge trains its estimators with `n_jobs=1`, and
Spark sets OMP_NUM_THREADS to the task's cores in its Python workers, so two tasks never fight
over one core. A rerun replaces exactly the score_date partition, in one commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Iterator

import cloudpickle
import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType

from lakeforge import catalog, compiled, lake, model_files, ownership, registry, runs
from lakeforge.config import Settings
from lakeforge.errors import DataError

# Test hook: with this set to a file path, a scoring task creates the file after its first batch and
# then hangs, so a test can kill the job while its write is in progress.
STALL_AFTER_FIRST_BATCH = "LAKEFORGE_TEST_STALL_SCORING"

# A worker process keeps the models it has rebuilt, keyed by what they are (Loaded.fingerprint): one load per
# worker, and a long-lived worker (Python workers are reused across jobs) never serves one model for another
# that has the same name and version, such as version 1 of a pipeline in two registries.
_WORKER_MODELS: dict[str, Callable[[pa.StructArray], object]] = {}
PICKLE = "pickle"  # the payload key of a model broadcast as its cloudpickled pyfunc


def predictions_table(pipeline_name: str) -> str:
    return catalog.predictions(pipeline_name)


def _model_on_worker(key: str, payload) -> Callable[[pa.StructArray], object]:
    predict_batch = _WORKER_MODELS.get(key)
    if predict_batch is None:
        value = payload.value
        if PICKLE in value:
            model = cloudpickle.loads(value[PICKLE])
            predict_batch = lambda batch: model.predict(None, pa.RecordBatch.from_struct_array(batch).to_pandas())
        else:
            predict_batch = compiled.build(value).predict
        _WORKER_MODELS[key] = predict_batch
    return predict_batch


@dataclass(frozen=True)
class Loaded:
    """A registered version ready to broadcast: its payload (bytes), the columns it reads, how it scores."""

    payload: dict
    feature_names: list[str]
    how: str  # compiled | native | pickle (and mixes, e.g. `compiled (2 native)`)
    details: dict
    fingerprint: str  # how it scores and a SHA-256 of every file it is rebuilt from
    categories: dict = field(default_factory=dict)  # each string input's training categories
    classes: list[str] | None = None                # a multiclass model's classes, in its probabilities' order


def fingerprint(how: str, payload: dict) -> str:
    """What a worker rebuilds from `payload`, as `how` plus a SHA-256 of its contents (the model files, or the
    pickle); the compiled object code follows from the files, the compiler and the CPU, all in `how`'s files."""
    digest = hashlib.sha256()
    parts = {PICKLE: payload[PICKLE]} if PICKLE in payload else payload["files"]
    for name in sorted(parts):
        digest.update(f"{name}\0{model_files.sha256(parts[name])}\0".encode())
    return f"{how}:{digest.hexdigest()}"


def load(client: MlflowClient, name: str, version: int, cache_dir: Path, log: Callable[[str], None] = print,
         compile_trees: bool = True) -> Loaded:
    """Load version `version` of model `name` for scoring: from its verified model files, LightGBM compiled
    (or from the cache at `cache_dir`); a version without model files from its pickle, saying so."""
    files = registry.load_model_files(client, name, version)
    if files is None:
        model = registry.load_python_model(name, version)
        inner = getattr(model, "estimator", None)
        log(f"{name} v{version} has no model files (registered before them, or an estimator with no data form: "
            f"{type(getattr(inner, 'estimator', inner)).__name__}): scoring its pickled pyfunc "
            f"({type(model).__name__}, unpickled with cloudpickle)")
        payload = {PICKLE: cloudpickle.dumps(model)}
        return Loaded(payload, list(model.feature_names), PICKLE, {"scored_from": PICKLE}, fingerprint(PICKLE, payload),
                      dict(getattr(inner, "categories", None) or {}), getattr(model, "classes", None))
    prepared = compiled.prepare(files, cache_dir, log, compile_trees)
    trees = sum(e["format"] == compiled.LIGHTGBM for e in files.estimators.values())
    how = compiled.COMPILED if prepared.payload["objects"] else compiled.NATIVE
    if prepared.payload["objects"] and len(prepared.payload["objects"]) < trees:
        how = f"{how} ({trees - len(prepared.payload['objects'])} native)"
    details = {"scored_from": "model files", "scoring": how, "compiled_now": prepared.compiled_now,
               "compiled_from_cache": prepared.from_cache, "compile_seconds": round(prepared.compile_seconds, 3)}
    if compile_trees and trees:
        log(f"{name} v{version}: {trees} LightGBM estimator(s), {prepared.compiled_now} compiled now and "
            f"{prepared.from_cache} from the cache {cache_dir} in {prepared.compile_seconds:.1f}s; scoring {how}")
    return Loaded(prepared.payload, list(files.spec["feature_names"]), how, details, fingerprint(how, prepared.payload),
                  dict(files.spec.get("categories", {})), files.spec.get("classes"))


def predict(features: DataFrame, model_payload, model_key: str, ids: list[str],
            feature_cols: list[str], classes: list[str] | None = None) -> DataFrame:
    """The row's id columns (its key) plus `prediction` for each feature row (a transform; runs on the executors).

    A multiclass model (`classes`) gives `prediction`, the most probable class (the first of equal ones), and
    `probabilities`, a map {class: probability}.

    A scalar-iterator Arrow UDF over the feature columns only: the entity key stays in the JVM
    instead of crossing to Python and back as strings (with mapInPandas that round trip made
    scoring slower than mlflow's spark_udf), and a model rebuilt from its files reads the Arrow
    columns straight into its input matrix, with no pandas frame in between (see
    benchmarks/score_bench.py). A pickled pyfunc gets its pandas frame, as from a pandas UDF.
    `model_key` is the broadcast model's `Loaded.fingerprint`.
    """

    @F.arrow_udf(ArrayType(DoubleType()) if classes else DoubleType())
    def score_batches(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
        model = _model_on_worker(model_key, model_payload)
        stall = os.environ.get(STALL_AFTER_FIRST_BATCH)
        for batch in batches:
            scores = model(batch)
            yield _class_rows(scores) if classes else pa.array(scores, type=pa.float64())
            if stall:
                Path(stall).touch()
                time.sleep(3600)

    # A routing model (one model per group) reads its group key, which may be the entity key itself.
    inputs = F.struct(*dict.fromkeys(feature_cols))
    if not classes:
        return features.select(*ids, score_batches(inputs).alias("prediction"))
    p = F.col("_probabilities")
    names = F.array(*[F.lit(c) for c in classes])
    return (features.select(*ids, score_batches(inputs).alias("_probabilities"))
            .select(*ids, F.element_at(names, F.array_position(p, F.array_max(p)).cast("int")).alias("prediction"),
                    F.map_from_arrays(names, p).alias(catalog.PROBABILITIES)))


def _class_rows(probabilities) -> pa.ListArray:
    """A (rows x classes) matrix as one Arrow list per row, without a Python object per row."""
    matrix = np.ascontiguousarray(probabilities, dtype="float64")
    rows, width = matrix.shape
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype="int32"))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.ravel()))


def unseen_categories(features: DataFrame, categories: dict[str, list[str]]) -> dict[str, int]:
    """Per string input, how many rows hold a value not among the training categories (one Spark job); such a
    value is missing for the model, not an error."""
    if not categories:
        return {}
    counts = features.select(*[F.sum(F.when(F.col(c).isNotNull() & ~F.col(c).cast("string").isin(values), 1)
                                      .otherwise(0)).alias(c) for c, values in categories.items()]).first()
    return {c: int(counts[c] or 0) for c in categories}


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


def broadcast_model(spark: SparkSession, loaded: Loaded) -> object:
    """Broadcast a loaded model's payload (a dict of bytes) to the executors, once."""
    return spark.sparkContext.broadcast(loaded.payload)


def score_date(spark: SparkSession, lakehouse: Path, pipeline, table: str, table_version: int, model: Loaded,
               version: int, day: dt.date, run_id: str, owner: str, log: Callable[[str], None] = print) -> tuple[int, dict]:
    """Score the date's feature rows in the population (`table` at `table_version`) with the loaded model into
    gold.<pipeline>_predictions, replacing the date's partition; returns the rows written and, per string input,
    the rows holding a category unseen in training."""
    from lakeforge import features as feats  # features' own tests need no scoring

    rows = feats.in_population(lake.read(spark, lakehouse, table, version=table_version).where(
        F.col(feats.AS_OF) == F.lit(day)), pipeline)
    missing = [c for c in model.feature_names if c not in rows.columns]
    if missing:
        raise DataError(f"{pipeline.name} version {version} expects column(s) {', '.join(missing)} that "
                        f"{table} does not have; rebuild the features or retrain the model")
    if rows.limit(1).count() == 0:
        feats.explain_nothing_to_score(spark, lakehouse, pipeline, table, table_version, day)
    unseen = unseen_categories(rows, model.categories)
    for column, count in unseen.items():
        if count:
            log(f"{column}: {count:,} row(s) hold a value not seen in training; the model takes it as missing")
    payload = broadcast_model(spark, model)
    predictions = stamp(predict(rows, payload, model.fingerprint, feats.id_columns(pipeline), model.feature_names,
                                model.classes), day, pipeline.name, version, run_id)
    out = catalog.predictions_table(pipeline.name)
    lake.replace_where(spark, predictions, lakehouse, out.name, f"score_date = DATE'{day}'", **out.options(owner))
    return lake.read(spark, lakehouse, out.name).where(F.col("score_date") == F.lit(day)).count(), unseen


def score(spark: SparkSession, client: MlflowClient, settings: Settings, pipeline, user: str, run: runs.Run,
          day: dt.date | None = None) -> runs.Outcome:
    """The score stage's work: @champion over the date's features (default: the next night to score) in the
    feature table it was trained on, read at the version noted as the run's input, into
    gold.<pipeline>_predictions (`score_date`)."""
    from lakeforge import features as feats  # features' own tests need no scoring

    lakehouse = settings.paths.lakehouse
    registry.reconcile_aliases(client, spark, lakehouse, pipeline.name, run.run_id, run.log, user)
    version = int(registry.champion(client, pipeline.name).version)
    day = run.run_date = day or feats.next_score_date(spark, lakehouse, pipeline)
    table = feats.champions_table(spark, lakehouse, pipeline, version,
                                  registry.feature_version(client, pipeline.name, version), day)
    run.input(spark, lakehouse, table)
    if table not in run.inputs:
        raise DataError(f"{table} does not exist: run `lakeforge features --pipeline {pipeline.name} "
                        f"--date {day}` first")
    ownership.claim(settings, "paths.model_cache")
    model = load(client, pipeline.name, version, settings.paths.model_cache, run.log)
    written, unseen = score_date(spark, lakehouse, pipeline, table, run.inputs[table], model, version, day,
                                 run.run_id, settings.owner, run.log)
    out = catalog.predictions(pipeline.name)
    run.log(f"{out}: {written:,} predictions for {day} with {pipeline.name} v{version}")
    return runs.Outcome({"stage": "score", "score_date": day.isoformat(), "rows": written, "version": version,
                         **model.details, "unseen_categories": unseen},
                        rows={**{f"unseen.{column}": count for column, count in unseen.items()}, out: written},
                        details={"model": pipeline.name, "version": version, **model.details}, outputs=[out])
