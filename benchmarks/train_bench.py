"""Training at scale, three measurements in one run:

    .venv/bin/python benchmarks/train_bench.py [--groups 480] [--rows-per-group 730] [--search-rows 60000]
                                               [--evals 16] [--parallelism 2] [--repeats 3]
                                               [--only ceiling|many_models|search]

0. The machine's ceiling, without Spark: the many-models fits in one warm process against the same
   fits split over `cores` warm processes. On a machine that other jobs keep busy it is well below
   `cores`, and the two speed-ups below cannot beat it; read them against it.
1. Many models: one LightGBM regressor per group (lakeforge.many_models.fit_group, the code
   `lakeforge train` runs for a per_group pipeline) over the same synthetic groups, (a) in a
   sequential loop in this process and (b) with lakeforge.many_models.fit_per_group (Spark
   `applyInPandas`) on a `local[*]` session, the input cached in Spark first, the models
   collected pickled, as in training. The default work is realistic for a chain's demand pattern:
   480 stores with two years of daily rows (730) and 8 features each, 200 trees of 15 leaves (0.09 s
   per fit on the quiet development machine); the Spark job's fixed cost (about 0.5 s) weighs more
   with fewer groups (docs/training.md has figures for 120). Speed-up = median (a) / median (b) over
   --repeats runs; the goal is >= 0.8 x cores. Per-group overhead = the median wall time of the
   same applyInPandas job when no group is fitted (min rows above every group, so the rows are
   still shuffled, sent to Python, sorted and answered with one row per group; the job's fixed
   cost is included) divided by the number of groups; the goal is < 50 ms. `identical_models`
   compares each group's booster (every tree, split and leaf, as LightGBM's model text) between
   (a) and (b); the pickled bytes differ even for the same booster, so they are not compared.
2. Hyperparameter search: the same TPE search (lakeforge.tuning.search, same space, same budget of
   --evals trials, same seed) in one process (parallelism 1) and on Spark, --parallelism trials at
   a time (each trial its own Spark job; a slot starts its next trial when its own finishes). The
   default trial is realistic for a churn-like table: --search-rows rows of 8 features (80% fit,
   20% validation), 300 trees (about 1.2 s per trial on the quiet development machine). Speed-up =
   median sequential / median parallel seconds (goal >= 0.8 x parallelism), with both best losses;
   `same_trials` says whether the parallel search repeated exactly (parameters and losses) in each
   repeat.

Each measurement's runs take turns (a, b, a, b, ...) so that a change in load weighs on both. The
last line is one JSON object with every figure (with --only, that measurement's). Not part of the
test suite.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

import record  # benchmarks/record.py, beside this script

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_CONF_DIR", str(REPO / "conf"))

FEATURES = [f"x{i}" for i in range(8)]
PARAMS = {"random_state": 7, "n_jobs": 1, "deterministic": True, "force_row_wise": True, "verbose": -1,
          "n_estimators": 200, "learning_rate": 0.05, "num_leaves": 15}


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


def interleaved(repeats: int, **runs) -> dict[str, tuple[float, list]]:
    """Per named run: the median wall time of `repeats` calls and every call's result. The runs take turns
    (a, b, a, b, ...), so a change in the machine's load weighs on each of them alike."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, list] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            started = time.perf_counter()
            results[name].append(fn())
            seconds[name].append(time.perf_counter() - started)
    return {name: (statistics.median(seconds[name]), results[name]) for name in runs}


def boosters(models: pd.DataFrame) -> dict:
    return {row["group"]: pickle.loads(row["model"]).booster_.model_to_string() for _, row in models.iterrows()}


def bench_many_models(spark, data: pd.DataFrame, cores: int, repeats: int) -> dict:
    from lakeforge import many_models

    def sequential() -> pd.DataFrame:
        return pd.concat([many_models.fit_group(rows, "group", FEATURES, "y", "regression", PARAMS, 1, ["day"])
                          for _, rows in data.groupby("group", sort=True)], ignore_index=True)

    sdf = spark.createDataFrame(data).repartition(cores).cache()
    sdf.count()

    def parallel(min_rows: int):
        return lambda: many_models.fit_per_group(sdf, "group", FEATURES, "y", "regression", PARAMS, min_rows,
                                                 ["day"]).toPandas()

    parallel(len(data) + 1)()  # start the Python workers (and import LightGBM in them) before timing
    timings = interleaved(repeats, sequential=sequential, parallel=parallel(1), overhead=parallel(len(data) + 1))
    (sequential_s, loop_runs), (parallel_s, spark_runs) = timings["sequential"], timings["parallel"]
    loop_models, spark_models, overhead_s = loop_runs[-1], spark_runs[-1], timings["overhead"][0]
    groups = data["group"].nunique()
    return {"groups": groups, "rows": len(data), "sequential_s": round(sequential_s, 2),
            "apply_in_pandas_s": round(parallel_s, 2), "speedup": round(sequential_s / parallel_s, 2),
            "goal_speedup": round(0.8 * cores, 2),
            "fit_s_in_loop": round(float(loop_models["fit_seconds"].sum()), 2),
            "fit_s_in_tasks": round(float(spark_models["fit_seconds"].sum()), 2),
            "per_group_overhead_ms": round(1000 * overhead_s / groups, 1), "goal_overhead_ms": 50,
            "identical_models": boosters(loop_models) == boosters(spark_models)}


def fit_groups(data: pd.DataFrame) -> float:
    """The sequential loop's work on these rows, timed inside the process that does it."""
    from lakeforge import many_models

    started = time.perf_counter()
    for _, rows in data.groupby("group", sort=True):
        many_models.fit_group(rows, "group", FEATURES, "y", "regression", PARAMS, 1, ["day"])
    return time.perf_counter() - started


def bench_ceiling(data: pd.DataFrame, cores: int, repeats: int) -> dict:
    """What parallel speed-up the machine gives right now, without Spark: the many-models fits in one
    process against the same fits split over `cores` processes (warm worker processes; the wall time of
    the split run). On a machine other jobs keep busy this is below `cores`, and so is every speed-up above."""
    names = sorted(data["group"].unique())
    chunks = [data[data["group"].isin(names[i::cores])] for i in range(cores)]
    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(fit_groups, [data.head(0)] * cores))  # start the workers and import LightGBM in them
        timings = interleaved(repeats, one=lambda: pool.submit(fit_groups, data).result(),
                              split=lambda: list(pool.map(fit_groups, chunks)))
    return {"one_process_s": round(timings["one"][0], 2), f"{cores}_processes_s": round(timings["split"][0], 2),
            "speedup": round(timings["one"][0] / timings["split"][0], 2)}


def bench_search(spark, rows_n: int, evals: int, parallelism: int, repeats: int) -> dict:
    from lakeforge import tuning
    from lakeforge.config import SearchParam

    rng = np.random.default_rng(5)
    x = rng.normal(size=(rows_n, len(FEATURES)))
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.8, size=rows_n) > 0).astype("int64")
    rows = pd.DataFrame(x, columns=FEATURES).assign(y=y)
    fit, valid = rows.iloc[: int(0.8 * rows_n)], rows.iloc[int(0.8 * rows_n):]
    space = {"num_leaves": SearchParam(type="quniform", low=4, high=64, q=1),
             "learning_rate": SearchParam(type="loguniform", low=0.01, high=0.3),
             "min_child_samples": SearchParam(type="quniform", low=5, high=100, q=5)}
    base = {**PARAMS, "n_estimators": 300}

    def run(p: int):
        return lambda: tuning.search(fit, valid, FEATURES, "y", "classification", base, space, evals, p, seed=3,
                                     spark=spark)

    timings = interleaved(repeats, sequential=run(1), parallel=run(parallelism))
    result = {name: {"seconds": round(seconds, 2), "best_loss": round(found[0].best_loss, 5),
                     "trials": len(found[0].trials), "same_trials": all(f.trials == found[0].trials for f in found)}
              for name, (seconds, found) in timings.items()}
    result.update(evals=evals, parallelism=parallelism, rows=rows_n,
                  speedup=round(result["sequential"]["seconds"] / result["parallel"]["seconds"], 2),
                  goal_speedup=round(0.8 * parallelism, 2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=480)
    parser.add_argument("--rows-per-group", type=int, default=730)
    parser.add_argument("--search-rows", type=int, default=60000)
    parser.add_argument("--evals", type=int, default=16)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["ceiling", "many_models", "search"], help="run this measurement only")
    record.add_argument(parser, "train_bench")
    args = parser.parse_args()
    recorder = record.Recorder("train_bench", args.results)
    wanted = {"ceiling", "many_models", "search"} if args.only is None else {args.only}

    from lakeforge import config
    from lakeforge.spark import build_session

    cores = os.cpu_count() or 2
    settings = config.load_settings("local", ["spark.ui_enabled=false", f"spark.shuffle_partitions={cores}",
                                              "spark.log_level=ERROR"])
    spark = build_session(settings, app_name="train-bench")
    data = groups_frame(args.groups, args.rows_per_group)
    figures = {}
    if "ceiling" in wanted:
        figures["machine_ceiling"] = bench_ceiling(data, cores, args.repeats)
        print(f"machine ceiling: {figures['machine_ceiling']}", flush=True)
    if "many_models" in wanted:
        figures["many_models"] = bench_many_models(spark, data, cores, args.repeats)
        print(f"many models: {figures['many_models']}", flush=True)
    if "search" in wanted:
        figures["search"] = bench_search(spark, args.search_rows, args.evals, args.parallelism, args.repeats)
        print(f"search: {figures['search']}", flush=True)
    spark.stop()
    recorder.write({"repeats": args.repeats, **figures})


if __name__ == "__main__":
    main()
