"""Could scoring inside the executor JVM reach issue 24's goal (d) >= 0.6x (e)? Upper bounds, measured in one run.

score_bench.py shows that no path through Spark's Python workers can: the Arrow transfer alone is about 0.25x
the compiled model in one process (e). This benchmark measures the two ways of predicting in the JVM instead,
on the churn model as score_bench trains it (the pipeline's parameters, 200 trees, 200k synthetic rows):

- (e1) / (e): lleaves' compiled model in this process, one thread / every core (the goal's reference);
- (h1) / (h): the same trees as plain Java (one method per tree, nested `if`s, compiled by the JDK's javac),
  over rows already in a Java array, one thread / one thread per core: what any JVM-side scorer (a Spark UDF
  written in Java or Scala) could at most do, before Spark reads a row;
- (g): the same trees as Spark SQL expressions (one `IF` tree per tree, summed, then the sigmoid), scored by
  Spark on every core from Parquet into the no-op sink (Spark generates and compiles the Java itself; the
  stage is too large for whole-stage code generation, so it runs with it off);
- the scan alone: the same Parquet rows into the no-op sink, no model (Spark's part of (g)).

It is an upper bound: the Java and SQL forms handle numeric splits with no missing values (the synthetic rows
have none), not LightGBM's missing-value and categorical rules. Each form's largest difference from LightGBM's
own predict is reported. Needs a JDK (javac); medians of --repeat runs after one warm-up run each.

    .venv/bin/python benchmarks/jvm_trees.py --rows 2000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import record  # benchmarks/record.py, beside this script
from score_bench import synthetic_features, timed

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_CONF_DIR", str(REPO / "conf"))

JAVA_MAIN = """
  public static void main(String[] args) throws Exception {
    java.nio.ByteBuffer in = java.nio.ByteBuffer.wrap(java.nio.file.Files.readAllBytes(java.nio.file.Path.of(args[0])))
        .order(java.nio.ByteOrder.LITTLE_ENDIAN);
    int width = Integer.parseInt(args[1]), threads = Integer.parseInt(args[2]), repeat = Integer.parseInt(args[3]);
    int n = in.capacity() / 8 / width;
    double[][] rows = new double[n][width];
    for (int i = 0; i < n; i++) for (int j = 0; j < width; j++) rows[i][j] = in.getDouble();
    double[] out = new double[n];
    for (int r = -1; r < repeat; r++) {  // run -1 warms the JIT and is not printed
      long start = System.nanoTime();
      Thread[] workers = new Thread[threads];
      for (int t = 0; t < threads; t++) {
        final int from = (int) ((long) n * t / threads), to = (int) ((long) n * (t + 1) / threads);
        workers[t] = new Thread(() -> {
          for (int i = from; i < to; i++) out[i] = 1.0 / (1.0 + Math.exp(-raw(rows[i])));
        });
        workers[t].start();
      }
      for (Thread w : workers) w.join();
      if (r >= 0) System.out.println((System.nanoTime() - start) / 1e9);
    }
    java.nio.ByteBuffer o = java.nio.ByteBuffer.allocate(n * 8).order(java.nio.ByteOrder.LITTLE_ENDIAN);
    for (double v : out) o.putDouble(v);
    java.nio.file.Files.write(java.nio.file.Path.of(args[4]), o.array());
  }
"""


def _java_node(node: dict, indent: str) -> str:
    if "leaf_value" in node:
        return f"{indent}return {float(node['leaf_value'])!r};\n"
    return (f"{indent}if (x[{int(node['split_feature'])}] <= {float(node['threshold'])!r}) {{\n"
            + _java_node(node["left_child"], indent + "  ") + f"{indent}}} else {{\n"
            + _java_node(node["right_child"], indent + "  ") + f"{indent}}}\n")


def java_source(dump: dict) -> str:
    """The trees of a LightGBM model dump as a Java class: tree_i(x) per tree, raw(x) their sum, and a main that
    times them over a file of rows."""
    trees = dump["tree_info"]
    parts = ["public final class Trees {"]
    parts += [f"  static double tree{i}(double[] x) {{\n{_java_node(t['tree_structure'], '    ')}  }}"
              for i, t in enumerate(trees)]
    parts.append("  static double raw(double[] x) {\n    double s = 0;\n"
                 + "".join(f"    s += tree{i}(x);\n" for i in range(len(trees))) + "    return s;\n  }")
    parts += [JAVA_MAIN, "}"]
    return "\n".join(parts)


def _sql_node(node: dict, names: list[str]) -> str:
    if "leaf_value" in node:
        return f"{float(node['leaf_value'])!r}D"  # a DOUBLE literal (a plain 0.5 is a DECIMAL in Spark SQL)
    return (f"IF(`{names[int(node['split_feature'])]}` <= {float(node['threshold'])!r}D, "
            f"{_sql_node(node['left_child'], names)}, {_sql_node(node['right_child'], names)})")


def sql_trees(dump: dict) -> list[str]:
    return [_sql_node(t["tree_structure"], dump["feature_names"]) for t in dump["tree_info"]]


def balanced_sum(columns: list):
    """a + b + ... as a balanced tree: a chain of 200 additions exhausts Spark's analyzer."""
    if len(columns) == 1:
        return columns[0]
    half = len(columns) // 2
    return balanced_sum(columns[:half]) + balanced_sum(columns[half:])


def warm_timed(fn, repeat: int) -> list[float]:
    """Seconds of `repeat` runs, after one run that warms the JIT (not counted)."""
    fn()
    return timed(fn, repeat)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each form, after one that warms the JIT")
    record.add_argument(parser, "jvm_trees")
    args = parser.parse_args()
    recorder = record.Recorder("jvm_trees", args.results)
    log = lambda msg: print(f"[jvm_trees {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    import lleaves
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from lakeforge import config, features, training

    pipeline = config.load_pipeline("churn")
    columns = features.feature_columns(pipeline)
    train = synthetic_features(200_000, seed=1)
    booster = training.fit(train, columns, "churned", pipeline).estimator.booster_
    dump = booster.dump_model()
    rows = synthetic_features(args.rows, seed=100)[columns].astype("float64")
    x = np.ascontiguousarray(rows.to_numpy())
    expected = booster.predict(x)
    cores = os.cpu_count()
    figures: dict[str, object] = {"rows": args.rows, "trees": len(dump["tree_info"]), "features": len(columns),
                                  "cores": cores, "repeat": args.repeat}
    rate = lambda seconds: round(args.rows / seconds)

    with tempfile.TemporaryDirectory(prefix="jvm-trees-") as work:
        work = Path(work)
        booster.save_model(str(work / "model.txt"))
        compiled = lleaves.Model(model_file=str(work / "model.txt"))
        compiled.compile()
        for key, threads in (("e1_lleaves_one_thread", 1), ("e_lleaves_every_core", cores)):
            figures[f"{key}_rows_s"] = rate(statistics.median(warm_timed(lambda: compiled.predict(x, n_jobs=threads),
                                                                    args.repeat)))
            log(f"({key}) {figures[f'{key}_rows_s']:,} rows/s")
        figures["max_abs_diff_lleaves"] = float(np.abs(compiled.predict(x) - expected).max())

        (work / "Trees.java").write_text(java_source(dump))
        start = time.monotonic()
        subprocess.run(["javac", "-d", str(work), str(work / "Trees.java")], check=True)
        figures["javac_s"] = round(time.monotonic() - start, 2)
        x.tofile(work / "rows.bin")
        for key, threads in (("h1_java_one_thread", 1), ("h_java_every_core", cores)):
            run = subprocess.run(["java", "-cp", str(work), "Trees", str(work / "rows.bin"), str(len(columns)),
                                  str(threads), str(args.repeat), str(work / "out.bin")],
                                 check=True, capture_output=True, text=True)
            seconds = [float(line) for line in run.stdout.split()]
            figures[f"{key}_rows_s"] = rate(statistics.median(seconds))
            log(f"({key}) {figures[f'{key}_rows_s']:,} rows/s (runs: {', '.join(f'{s:.2f}s' for s in seconds)})")
        figures["max_abs_diff_java"] = float(np.abs(np.fromfile(work / "out.bin") - expected).max())

        spark = (SparkSession.builder.master(f"local[{cores}]").appName("jvm-trees")
                 .config("spark.ui.enabled", "false").config("spark.driver.memory", "4g")
                 .config("spark.ui.showConsoleProgress", "false").config("spark.sql.codegen.wholeStage", "false")
                 .getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        spark.createDataFrame(rows).write.parquet(str(work / "rows.parquet"))
        df = spark.read.parquet(str(work / "rows.parquet"))
        trees = [F.expr(tree).alias(f"tree{i}") for i, tree in enumerate(sql_trees(dump))]
        scored = df.select(*trees).select(
            (F.lit(1.0) / (F.lit(1.0) + F.exp(-balanced_sum([F.col(f"tree{i}") for i in range(len(trees))]))))
            .alias("p"))
        for key, frame in (("scan_only", df), ("g_spark_sql_trees", scored)):
            seconds = warm_timed(lambda: frame.write.format("noop").mode("overwrite").save(), args.repeat)
            figures[f"{key}_rows_s"] = rate(statistics.median(seconds))
            log(f"({key}) {figures[f'{key}_rows_s']:,} rows/s (runs: {', '.join(f'{s:.2f}s' for s in seconds)})")
        # Parquet keeps the rows' order within one file per task: compare by a row index.
        indexed = spark.createDataFrame(rows.assign(_row=np.arange(args.rows)).head(20_000))
        check = indexed.select("_row", *[F.expr(t).alias(f"tree{i}") for i, t in enumerate(sql_trees(dump))])
        check = check.select("_row", (F.lit(1.0) / (F.lit(1.0) + F.exp(-balanced_sum(
            [F.col(f"tree{i}") for i in range(len(trees))])))).alias("p")).toPandas().sort_values("_row")
        figures["max_abs_diff_spark_sql"] = float(np.abs(check["p"].to_numpy() - expected[:20_000]).max())
        spark.stop()

    for fast, slow in (("h1_java_one_thread", "e1_lleaves_one_thread"), ("h_java_every_core", "e_lleaves_every_core"),
                       ("g_spark_sql_trees", "e_lleaves_every_core"), ("scan_only", "e_lleaves_every_core")):
        figures[f"ratio_{fast.split('_')[0]}_vs_{slow.split('_')[0]}"] = round(
            figures[f"{fast}_rows_s"] / figures[f"{slow}_rows_s"], 3)
    recorder.write(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
