"""The Delta Lake jars: resolved once with their dependencies by Spark's own Ivy, then cached.

`make setup` runs `lakeforge setup-jars`, which resolves DELTA_PACKAGE (and everything it pulls:
delta-storage, delta-kernel, ...) into a cache folder and writes a manifest listing the exact
jars. Every later session reads the manifest and never touches the network. On a cluster with
Maven access, `spark-submit --packages DELTA_PACKAGE` works too and skips the cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pyspark.find_spark_home import _find_spark_home

from lakeforge.errors import EnvironmentProblem

# Maven Central serves delta-spark_4.2_2.13 up to 4.4.0 (4.4.1 exists only on PyPI, with Python
# sources identical to 4.4.0), so the pip package and the jars are both pinned to 4.4.0.
DELTA_VERSION = "4.4.0"
DELTA_PACKAGE = f"io.delta:delta-spark_4.2_2.13:{DELTA_VERSION}"
MANIFEST = "manifest.txt"

_PROBE = """
from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[1]").getOrCreate()
print("LAKEFORGE_JARS=" + spark.sparkContext.getConf().get("spark.jars", ""))
spark.stop()
"""


def cache_dir() -> Path:
    """Where resolved jars live: $LAKEFORGE_JAR_CACHE, else ~/.cache/lakeforge/jars/<package>."""
    root = os.environ.get("LAKEFORGE_JAR_CACHE") or Path.home() / ".cache" / "lakeforge" / "jars"
    return Path(root) / DELTA_PACKAGE.replace(":", "_")


def cached_jars() -> list[Path]:
    """The cached Delta jars, or an error that says how to fetch them."""
    manifest = cache_dir() / MANIFEST
    if not manifest.is_file():
        raise EnvironmentProblem(
            f"the Delta Lake jars are not cached (no {manifest}). Run `make setup` (or `lakeforge "
            f"setup-jars`) once with access to Maven Central, or on a cluster pass "
            f"`spark-submit --packages {DELTA_PACKAGE}`.")
    jars = [Path(line) for line in manifest.read_text().split() if line]
    missing = [str(jar) for jar in jars if not jar.is_file()]
    if missing:
        raise EnvironmentProblem(f"the Delta jar cache {cache_dir()} is incomplete (missing {missing[0]}"
                                 f"{' and more' if len(missing) > 1 else ''}); run `lakeforge setup-jars --force`.")
    return jars


def fetch_jars(force: bool = False, ivy_settings: Path | None = None) -> list[Path]:
    """Resolve DELTA_PACKAGE with Spark's Ivy into the cache (once) and write the manifest."""
    target = cache_dir()
    if not force:
        try:
            return cached_jars()
        except EnvironmentProblem:
            pass
    ivy_home = target / "ivy"
    if force and target.exists():
        shutil.rmtree(target)
    ivy_home.mkdir(parents=True, exist_ok=True)
    spark_submit = Path(_find_spark_home()) / "bin" / "spark-submit"
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.py"
        probe.write_text(_PROBE)
        command = [str(spark_submit), "--packages", DELTA_PACKAGE, "--conf", f"spark.jars.ivy={ivy_home}"]
        if ivy_settings is not None:
            command += ["--conf", f"spark.jars.ivySettings={ivy_settings}"]
        env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_HOME=str(_find_spark_home()))
        done = subprocess.run(command + [str(probe)], capture_output=True, text=True, env=env)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("LAKEFORGE_JARS=")), "")
    jars = [Path(uri.removeprefix("file:")) for uri in line.removeprefix("LAKEFORGE_JARS=").split(",") if uri]
    if done.returncode != 0 or not jars:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        unresolved = [ln for ln in lines if "unresolved dependency" in ln]
        detail = (unresolved or lines or ["spark-submit printed nothing"])[-1]
        raise EnvironmentProblem(
            f"could not download {DELTA_PACKAGE} and its dependencies with Spark's Ivy "
            f"(is Maven Central reachable from here?): {detail}. Nothing was cached; rerun "
            f"`make setup` when the network is back, or copy a filled cache into {target}.")
    (target / MANIFEST).write_text("\n".join(str(jar) for jar in jars) + "\n")
    return jars
