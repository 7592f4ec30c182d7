"""Many models: one estimator per group (e.g. per store), fitted in parallel on the executors with applyInPandas.

Each call gets every training row of one group, fits the pipeline's estimator on them (sorted, so
the same rows give the same model whatever order Spark delivers them in) and returns one row: the
group, its training rows and the fitted model pickled to bytes. A group with fewer than
`min_rows` rows gets no model (its rows go to the global fallback). Executors make no MLflow
calls; the driver collects the small model rows and registers them as one routing model.

Groups are spread over the tasks by their row counts (`balanced_slots`), not by a hash of their key:
by a hash, 480 equal groups fell into 4 partitions of 106 to 137 groups, and on 2 cores one core
fitted 256 groups while the other, done after 224, sat idle.
"""

from __future__ import annotations

import heapq
import pickle
import time

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, DoubleType, LongType, StructField, StructType

from lakeforge import catalog, lake, metrics
from lakeforge.estimators import one_thread
from lakeforge.training import EstimatorSpec, fit_estimator

SLOT = "_lf_slot"  # the task (partition) a group is trained in


def models_schema(df: DataFrame, group_key: str) -> StructType:
    return StructType([df.schema[group_key], StructField("train_rows", LongType(), False),
                       StructField("model", BinaryType(), True), StructField("fit_seconds", DoubleType(), False)])


def fit_group(rows: pd.DataFrame, group_key: str, feature_cols: list[str], label: str, task: str, params: dict,
              min_rows: int, order_by: list[str], spec: EstimatorSpec | None = None) -> pd.DataFrame:
    """One group's model row (pure pandas: the same call runs in a sequential loop or inside applyInPandas)."""
    started = time.perf_counter()
    rows = rows.sort_values(order_by, kind="mergesort").reset_index(drop=True)
    model = None
    if len(rows) >= min_rows:
        model = pickle.dumps(fit_estimator(task, params, rows[feature_cols], rows[label], spec))
    return pd.DataFrame({group_key: [rows[group_key].iloc[0]], "train_rows": [len(rows)], "model": [model],
                         "fit_seconds": [time.perf_counter() - started]})


def balanced_slots(rows_per_group: dict, slots: int) -> dict:
    """{group: slot in 0..slots-1}: the largest group first, each to the slot with the fewest rows so far
    (greedy longest-processing-time), so the slots' training rows come out nearly equal."""
    loads = [(0, slot) for slot in range(slots)]
    assigned = {}
    for group, rows in sorted(rows_per_group.items(), key=lambda item: (-item[1], str(item[0]))):
        load, slot = heapq.heappop(loads)
        assigned[group] = slot
        heapq.heappush(loads, (load + rows, slot))
    return assigned


def fit_per_group(train: DataFrame, group_key: str, feature_cols: list[str], label: str, task: str, params: dict,
                  min_rows: int, order_by: list[str], spec: EstimatorSpec | None = None) -> DataFrame:
    """One row per group with its pickled model (null below `min_rows`), fitted on the executors (a transform,
    after two small Spark jobs that balance the tasks: the rows per group, and the partition keys)."""
    columns = list(dict.fromkeys([group_key, *order_by, *feature_cols, label]))
    spec = spec or EstimatorSpec("lightgbm", task)
    arguments = {**params, **one_thread(spec.estimator, task)}

    def fit(rows: pd.DataFrame) -> pd.DataFrame:
        return fit_group(rows, group_key, feature_cols, label, task, arguments, min_rows, order_by, spec)

    # An explicit partition count: adaptive execution coalesces shuffle partitions to at least 1 MB each
    # (spark.sql.adaptive.coalescePartitions.minPartitionSize), but training rows are few bytes for much
    # work: a training set under 1 MB per core got fewer tasks than cores (one under 1 MB, the demo's).
    # Twice the cores lets a core whose fits ran faster than their row counts said take another partition.
    spark = train.sparkSession
    partitions = 2 * spark.sparkContext.defaultParallelism
    keys = _partition_keys(spark, partitions)
    slots = balanced_slots(dict(train.groupBy(group_key).count().collect()), partitions)
    slot_of = spark.createDataFrame([(group, keys[slot]) for group, slot in slots.items()],
                                    StructType([train.schema[group_key], StructField(SLOT, LongType())]))
    # Hash partitioning on the slot key satisfies the grouping by (slot, group) without another shuffle.
    # A null group joins no slot and is still fitted, in the partition of the null key.
    return (train.select(*columns).join(F.broadcast(slot_of), group_key, "left")
            .repartition(partitions, SLOT).groupBy(SLOT, group_key)
            .applyInPandas(fit, models_schema(train, group_key)))


def _partition_keys(spark, partitions: int) -> list[int]:
    """For each partition p, a key that `repartition(partitions, key)` sends to p: Spark's hash
    partitioning is pmod(hash(key), partitions), with the same Murmur3 as the SQL `hash` function.
    (Range partitioning on slot numbers samples its bounds, and put two slots in one partition.)"""
    keys = (spark.range(256 * partitions).groupBy(F.pmod(F.hash("id"), F.lit(partitions)).alias("p"))
            .agg(F.min("id").alias("key")).collect())  # one row per partition comes back
    found = {row["p"]: row["key"] for row in keys}
    return [found[p] for p in range(partitions)]


def unpickle(rows: pd.DataFrame, group_key: str) -> dict:
    """{group: fitted estimator} for the groups that got a model."""
    return {row[group_key]: pickle.loads(row["model"]) for _, row in rows.iterrows() if row["model"] is not None}


# ---------------------------------------------------------------- the manifest: how each group fared


def group_metrics(groups: pd.DataFrame, holdout: pd.DataFrame, predictions, key: str, label: str, task: str,
                  metric: str, top_k: float = 0.1) -> pd.DataFrame:
    """Per group: training rows, whether it has its own model, holdout rows, MAE, MAPE and the pipeline's gate
    `metric` (`metric_value`; null where the group's rows leave it undefined, e.g. AUC of one class), new groups
    included."""
    actual = holdout[label].astype("float64").to_numpy()
    errors = pd.DataFrame({key: holdout[key].to_numpy(), "abs_error": abs(predictions - actual),
                           "pct_error": abs(predictions - actual) / pd.Series(actual).clip(lower=1.0).to_numpy()})
    by_group = errors.groupby(key)
    per = by_group.agg(holdout_rows=("abs_error", "size"), mae=("abs_error", "mean"),
                       mape=("pct_error", "mean")).reset_index()
    rows_of, labels = by_group.indices, holdout[label].to_numpy()  # group -> its positions in the holdout
    per["metric_value"] = [metrics.value(metric, task, labels[rows_of[g]], predictions[rows_of[g]], top_k=top_k)
                           for g in per[key]]
    out = groups.merge(per, on=key, how="outer")
    out["train_rows"] = out["train_rows"].fillna(0).astype("int64")
    out["own_model"] = out["own_model"].astype("boolean").fillna(False).astype(bool)  # a new group: no own model
    out["holdout_rows"] = out["holdout_rows"].fillna(0).astype("int64")
    out["metric"] = metric  # groups without holdout rows too: the column names what metric_value would be
    out["metric_value"] = out["metric_value"].astype("float64")
    out = out.sort_values(key, kind="mergesort").reset_index(drop=True)
    out.attrs["errors"] = errors
    return out


def group_metric_values(groups: pd.DataFrame, key: str) -> dict[str, float]:
    """The per-group metrics logged with the model: `<key>.<group>.mae`, `.mape` and `.<gate metric>` of groups
    with holdout rows (the gate metric where these rows define it)."""
    found = {}
    for g, r in groups.set_index(key).iterrows():
        if r["holdout_rows"] > 0:
            found |= {f"{key}.{g}.mae": float(r["mae"]), f"{key}.{g}.mape": float(r["mape"])}
            if not pd.isna(r["metric_value"]):  # a gate metric of MAE or MAPE is already there
                found.setdefault(f"{key}.{g}.{r['metric']}", float(r["metric_value"]))
    return found


def write_manifest(spark, lakehouse, pipeline, groups: pd.DataFrame, version: int, mlflow_run_id: str, run_id: str,
                   owner: str) -> None:
    """gold.<pipeline>_models: one row per group of this model version (rerunnable: replaces the version's rows)."""
    key = pipeline.model.group_key
    rows = groups.assign(model_name=pipeline.name, model_version=version,
                         fallback_used=~groups["own_model"], mlflow_run_id=mlflow_run_id, run_id=run_id)
    rows = rows.rename(columns={key: "group"})[["model_name", "model_version", "group", "fallback_used", "train_rows",
                                                "holdout_rows", "mae", "mape", "metric", "metric_value", "mlflow_run_id",
                                                "run_id"]]
    schema = ("model_name string, model_version int, group string, fallback_used boolean, train_rows bigint, "
              "holdout_rows bigint, mae double, mape double, metric string, metric_value double, mlflow_run_id string, "
              "run_id string")
    records = [tuple(None if (isinstance(v, float) and v != v) else (v.item() if hasattr(v, "item") else v)
                     for v in r) for r in rows.itertuples(index=False, name=None)]
    df = (spark.createDataFrame(records, schema).withColumnRenamed("group", key)
          .withColumn("trained_at", F.current_timestamp()))
    table = catalog.models_table(pipeline.name, key)
    # merge_schema: a manifest written before the metric columns existed gains them (older versions' rows: null)
    lake.replace_where(spark, df, lakehouse, table.name, f"model_version = {version}", merge_schema=True,
                       **table.options(owner))
