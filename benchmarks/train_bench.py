"""Training at scale, two measurements in one run:

    .venv/bin/python benchmarks/train_bench.py [--groups 32] [--rows-per-group 3000] [--evals 8] [--parallelism 2]

1. Many models: one LightGBM regressor per group (lakeforge.many_models.fit_group, the code
   `lakeforge train` runs for a per_group pipeline) over the same synthetic groups, (a) in a
   sequential loop in this process and (b) with Spark `applyInPandas` on a `local[*]` session
   (the input cached in Spark first; the models come back pickled, as in training). Speed-up =
   (a) / (b); the goal is >= 0.8 x cores. Per-group overhead = the wall time of the same
   applyInPandas when no model is fitted (min rows above every group), divided by the groups.
2. Hyperparameter search: the same TPE search (lakeforge.tuning.search, same space, same budget of
   --evals trials, same seed) with sequential hyperopt `Trials` and with `SparkTrials(parallelism)`.
   Speed-up = Trials time / SparkTrials time (goal >= 0.8 x parallelism) and both best losses.

The last line is one JSON object with every figure. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_CONF_DIR", str(REPO / "conf"))

FEATURES = [f"x{i}" for i in range(8)]
PARAMS = {"random_state": 7, "n_jobs": 1, "deterministic": True, "force_row_wise": True, "verbose": -1,
          "n_estimators": 100, "learning_rate": 0.05, "num_leaves": 15}


def groups_frame(groups: int, rows_per_group: int, seed: int = 1) -> pd.DataFrame:
    """Synthetic demand-like rows: a per-group level and slope on 8 features, plus noise."""
    rng = np.random.default_rng(seed)
    n = groups * rows_per_group
    x = rng.normal(size=(n, len(FEATURES)))
    group = np.repeat(np.arange(groups), rows_per_group)
    level, slope = rng.uniform(5, 50, size=groups), rng.normal(size=(groups, len(FEATURES)))
    y = level[group] + (x * slope[group]).sum(axis=1) + rng.normal(scale=2.0, size=n)
    frame = pd.DataFrame(x, columns=FEATURES)
    return frame.assign(group=[f"G{g:04d}" for g in group], day=np.tile(np.arange(rows_per_group), groups), y=y)


def bench_many_models(spark, data: pd.DataFrame, cores: int) -> dict:
    from lakeforge import many_models

    started = time.perf_counter()
    sequential = [many_models.fit_group(rows, "group", FEATURES, "y", "regression", PARAMS, 1, ["day"])
                  for _, rows in data.groupby("group", sort=True)]
    sequential_s = time.perf_counter() - started

    sdf = spark.createDataFrame(data).repartition(cores).cache()
    sdf.count()

    def run(min_rows: int) -> tuple[float, pd.DataFrame]:
        t0 = time.perf_counter()
        out = many_models.fit_per_group(sdf, "group", FEATURES, "y", "regression", PARAMS, min_rows, ["day"]).toPandas()
        return time.perf_counter() - t0, out

    run(len(data) + 1)  # warm the Python workers
    parallel_s, fitted = run(1)
    overhead_s, _ = run(len(data) + 1)
    groups = data["group"].nunique()
    same = all(a == b for a, b in zip(pd.concat(sequential).sort_values("group")["model"],
                                        fitted.sort_values("group")["model"]))
    return {"groups": groups, "rows": len(data), "sequential_s": round(sequential_s, 2),
            "apply_in_pandas_s": round(parallel_s, 2), "speedup": round(sequential_s / parallel_s, 2),
            "goal_speedup": round(0.8 * cores, 2),
            "per_group_overhead_ms": round(1000 * overhead_s / groups, 1), "goal_overhead_ms": 50,
            "identical_models": bool(same)}


def bench_search(spark, evals: int, parallelism: int) -> dict:
    from lakeforge import tuning
    from lakeforge.config import SearchParam

    rng = np.random.default_rng(5)
    n = 20000
    x = rng.normal(size=(n, len(FEATURES)))
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.8, size=n) > 0).astype("int64")
    rows = pd.DataFrame(x, columns=FEATURES).assign(y=y)
    fit, valid = rows.iloc[: int(0.8 * n)], rows.iloc[int(0.8 * n):]
    space = {"num_leaves": SearchParam(type="quniform", low=4, high=64, q=1),
             "learning_rate": SearchParam(type="loguniform", low=0.01, high=0.3),
             "min_child_samples": SearchParam(type="quniform", low=5, high=100, q=5)}
    base = {**PARAMS, "n_estimators": 150}
    result = {}
    for name, p in (("trials", 1), ("spark_trials", parallelism)):
        found = tuning.search(fit, valid, FEATURES, "y", "classification", base, space, evals, p, seed=3, spark=spark)
        result[name] = {"seconds": round(found.seconds, 2), "best_loss": round(found.best_loss, 5),
                        "trials": len(found.trials)}
    result.update(evals=evals, parallelism=parallelism,
                  speedup=round(result["trials"]["seconds"] / result["spark_trials"]["seconds"], 2),
                  goal_speedup=round(0.8 * parallelism, 2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=32)
    parser.add_argument("--rows-per-group", type=int, default=3000)
    parser.add_argument("--evals", type=int, default=8)
    parser.add_argument("--parallelism", type=int, default=2)
    args = parser.parse_args()

    from lakeforge import config
    from lakeforge.spark import build_session

    cores = os.cpu_count() or 2
    settings = config.load_settings("local", ["spark.ui_enabled=false", f"spark.shuffle_partitions={cores}",
                                              "spark.log_level=ERROR"])
    spark = build_session(settings, app_name="train-bench")
    load = os.getloadavg()[0]
    many = bench_many_models(spark, groups_frame(args.groups, args.rows_per_group), cores)
    print(f"many models: {many}", flush=True)
    search = bench_search(spark, args.evals, args.parallelism)
    print(f"search: {search}", flush=True)
    spark.stop()
    print(json.dumps({"benchmark": "train", "cores": cores, "load_avg_1m_at_start": round(load, 2),
                      "many_models": many, "search": search}))


if __name__ == "__main__":
    main()
