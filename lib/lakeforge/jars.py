"""The Delta Lake jars: resolved once with their dependencies by Spark's own Ivy, then cached.

`make setup` runs `lakeforge setup-jars`, which resolves DELTA_PACKAGE (and everything it pulls:
delta-storage, delta-kernel, ...) into a cache folder and writes a manifest listing the exact
jars. Every later session reads the manifest and never touches the network. On a cluster with
Maven access, `spark-submit --packages DELTA_PACKAGE` works too and skips the cache.

Next to the jars, `setup-jars` builds a class archive (the JDK's class data sharing): a small Delta
workload runs once with `-XX:ArchiveClassesAtExit`, and every session lakeforge starts itself maps
the archive instead of loading Spark's classes one by one (see `spark.with_class_archive`). The
archive is named after this Java, PySpark installation and jar set, so a change of any of them is
never served a stale one (archives of other checkouts' venvs stay: delete `classes-*.jsa` to reclaim them).

`setup-jars` also compiles lakeforge's own JVM code (`lib/lakeforge/jvm`: ingest's one-pass JSON line parser)
with the JDK's `javac` against the installed Spark, into a jar named after its sources and that Spark. Sessions
lakeforge starts add it next to the Delta jars when it is there; without it (no JDK, or a spark-submit that did
not pass it) ingest takes its slower all-Spark path to the same rows.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pyspark.find_spark_home import _find_spark_home

from lakeforge.errors import EnvironmentProblem

# Maven Central serves delta-spark_4.2_2.13 up to 4.4.0 (4.4.1 exists only on PyPI, with Python
# sources identical to 4.4.0), so the pip package and the jars are both pinned to 4.4.0.
DELTA_VERSION = "4.4.0"
DELTA_PACKAGE = f"io.delta:delta-spark_4.2_2.13:{DELTA_VERSION}"
# The PostgreSQL JDBC driver: the shared catalog's Hive metastore lives in PostgreSQL (spark.metastore_url).
POSTGRES_JDBC_PACKAGE = "org.postgresql:postgresql:42.7.14"
MANIFEST = "manifest.txt"

_PROBE = """
from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[1]").getOrCreate()
print("LAKEFORGE_JARS=" + spark.sparkContext.getConf().get("spark.jars", ""))
spark.stop()
"""


# Run by spark-submit with -XX:ArchiveClassesAtExit: what a lakeforge command does, in miniature (Delta
# create, append, MERGE, replaceWhere, a JSON read, pandas both ways), so its classes are archived.
_CLASS_WORKLOAD = """
import sys, tempfile
import pandas as pd
from delta.tables import DeltaTable
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[1]")
         .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
         .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
         .config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())
with tempfile.TemporaryDirectory() as tmp:
    rows = spark.createDataFrame(pd.DataFrame({"id": [1, 2], "name": ["a", "b"], "x": [1.0, 2.0]}))
    rows.write.format("delta").save(tmp + "/t")
    rows.write.format("delta").mode("append").save(tmp + "/t")
    (DeltaTable.forPath(spark, tmp + "/t").alias("t").merge(rows.alias("s"), "t.id = s.id")
     .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
    rows.where("id = 1").write.format("delta").mode("overwrite").option("replaceWhere", "id = 1").save(tmp + "/t")
    spark.read.format("delta").load(tmp + "/t").where("id = 1").toPandas()
    with open(tmp + "/r.jsonl", "w") as fh:
        fh.write('{"a": 1}\\n')
    spark.read.schema("a int").json(tmp + "/r.jsonl").count()
spark.stop()
"""


def _cache_root() -> Path:
    return Path(os.environ.get("LAKEFORGE_JAR_CACHE") or Path.home() / ".cache" / "lakeforge" / "jars")


def cache_dir(package: str = DELTA_PACKAGE) -> Path:
    """Where resolved jars live: $LAKEFORGE_JAR_CACHE, else ~/.cache/lakeforge/jars/<package>."""
    return _cache_root() / package.replace(":", "_")


def cached_jars(package: str = DELTA_PACKAGE) -> list[Path]:
    """The cached jars of a package (default Delta's), or an error that says how to fetch them."""
    manifest = cache_dir(package) / MANIFEST
    if not manifest.is_file():
        raise EnvironmentProblem(
            f"the {'Delta Lake jars' if package == DELTA_PACKAGE else f'jars of {package}'} are not cached "
            f"(no {manifest}). Run `make setup` (or `lakeforge "
            f"setup-jars`) once with access to Maven Central, or on a cluster pass "
            f"`spark-submit --packages {package}`.")
    jars = [Path(line) for line in manifest.read_text().split() if line]
    missing = [str(jar) for jar in jars if not jar.is_file()]
    if missing:
        raise EnvironmentProblem(f"the jar cache {cache_dir(package)} is incomplete (missing {missing[0]}"
                                 f"{' and more' if len(missing) > 1 else ''}); run `lakeforge setup-jars --force`.")
    return jars


def _submit_script(source: str, options: list[str]) -> subprocess.CompletedProcess:
    """spark-submit (PySpark's own) a Python script given as text, on this interpreter; output captured."""
    spark_home = _find_spark_home()
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, SPARK_HOME=spark_home)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "script.py"
        script.write_text(source)
        return subprocess.run([str(Path(spark_home) / "bin" / "spark-submit"), *options, str(script)],
                              capture_output=True, text=True, env=env, cwd=tmp, timeout=1800)


def fetch_jars(force: bool = False, ivy_settings: Path | None = None, package: str = DELTA_PACKAGE) -> list[Path]:
    """Resolve a package (default DELTA_PACKAGE) with Spark's Ivy into the cache (once) and write the manifest."""
    target = cache_dir(package)
    if not force:
        try:
            return cached_jars(package)
        except EnvironmentProblem:
            pass
    ivy_home = target / "ivy"
    if force and target.exists():
        shutil.rmtree(target)
    ivy_home.mkdir(parents=True, exist_ok=True)
    options = ["--packages", package, "--conf", f"spark.jars.ivy={ivy_home}"]
    if ivy_settings is not None:
        options += ["--conf", f"spark.jars.ivySettings={ivy_settings}"]
    done = _submit_script(_PROBE, options)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("LAKEFORGE_JARS=")), "")
    jars = [Path(uri.removeprefix("file:")) for uri in line.removeprefix("LAKEFORGE_JARS=").split(",") if uri]
    if done.returncode != 0 or not jars:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        unresolved = [ln for ln in lines if "unresolved dependency" in ln]
        detail = (unresolved or lines or ["spark-submit printed nothing"])[-1]
        raise EnvironmentProblem(
            f"could not download {package} and its dependencies with Spark's Ivy "
            f"(is Maven Central reachable from here?): {detail}. Nothing was cached; rerun "
            f"`make setup` when the network is back, or copy a filled cache into {target}.")
    (target / MANIFEST).write_text("\n".join(str(jar) for jar in jars) + "\n")
    return jars


def _spark_jars() -> Path:
    """The installed PySpark's own jars (what javac compiles against and the JVM's class path starts with)."""
    return Path(_find_spark_home()) / "jars"


def _spark_jars_identity() -> list[str]:
    """Where the PySpark jars are and when they last changed: a reinstall or another venv is another identity."""
    jars = _spark_jars()
    return [str(jars.resolve()), str(jars.stat().st_mtime_ns) if jars.is_dir() else ""]


def class_archive() -> Path:
    """Where the class archive for this Java, PySpark installation and Delta jar set is (or would be).

    The JVM maps an archive only for the class path it was built with, down to each jar's size and
    time: a PySpark installed elsewhere (another checkout's venv) or again gets an archive of its own."""
    from lakeforge.spark import java_binary, java_version_text

    java = java_binary()
    manifest = cache_dir() / MANIFEST
    identity = "\n".join([java, java_version_text(java), *_spark_jars_identity(),
                           manifest.read_text() if manifest.is_file() else ""])
    return cache_dir() / f"classes-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.jsa"


def build_class_archive(force: bool = False) -> tuple[Path, bool]:
    """Build the class archive once (it runs a small Delta job); return it and whether it was built now."""
    target = class_archive()
    if target.is_file() and not force:
        return target, False
    partial = target.with_name(target.name + ".partial")  # renamed once complete: never mapped half-written
    partial.unlink(missing_ok=True)
    done = _submit_script(_CLASS_WORKLOAD, ["--master", "local[1]", "--jars", ",".join(map(str, cached_jars())),
                                            "--driver-java-options", f"-XX:ArchiveClassesAtExit={partial}"])
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        raised = [ln for ln in lines if re.match(r"[\w.$]+(Error|Exception)\b", ln)]  # a traceback's last line
        jvm = [ln for ln in lines if "[error]" in ln]  # the JVM's own, e.g. [error][cds] ...
        detail = (raised or jvm or lines or ["spark-submit printed nothing"])[-1][:300]
        raise EnvironmentProblem(f"could not build the JVM class archive ({detail}); lakeforge works without it, "
                                 f"each command only starts a few seconds slower.")
    os.replace(partial, target)
    return target, True


JVM_SOURCES = Path(__file__).resolve().parent / "jvm"  # lakeforge's own Java, one folder per package


def _jvm_sources() -> list[Path]:
    return sorted(JVM_SOURCES.rglob("*.java"))


def jvm_jar() -> Path:
    """Where lakeforge's own JVM classes are (or would be) for these sources and this PySpark installation: a
    change of either is never served a stale jar (Spark's internal classes it calls may change between versions)."""
    identity = "\n".join([*(f"{p.relative_to(JVM_SOURCES)}\n{p.read_text()}" for p in _jvm_sources()),
                          *_spark_jars_identity()])
    return _cache_root() / "lakeforge" / f"lakeforge-jvm-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.jar"


def _javac() -> str:
    """The compiler of the JDK Spark runs on (next to its `java`), else the PATH's."""
    from lakeforge.spark import java_binary

    beside = Path(java_binary()).resolve().parent / "javac"
    javac = str(beside) if beside.is_file() else shutil.which("javac")
    if not javac:
        raise EnvironmentProblem(f"no `javac` beside {java_binary()} or on PATH: install a JDK (Debian: "
                                 f"openjdk-17-jdk-headless), not only a JRE, to build lakeforge's JSON line parser; "
                                 f"lakeforge works without it, ingest only parses each JSON line twice.")
    return javac


def build_jvm_jar(force: bool = False) -> tuple[Path, bool]:
    """Compile lib/lakeforge/jvm against the installed Spark into `jvm_jar()` (once); return it and whether it was
    built now."""
    target = jvm_jar()
    if target.is_file() and not force:
        return target, False
    spark_jars = _spark_jars()
    with tempfile.TemporaryDirectory() as tmp:
        classes = Path(tmp)
        done = subprocess.run([_javac(), "-nowarn", "--release", "17", "-encoding", "UTF-8",
                               "-cp", str(spark_jars / "*"), "-d", str(classes), *map(str, _jvm_sources())],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            errors = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
            raise EnvironmentProblem(f"could not compile lakeforge's JVM code in {JVM_SOURCES} against {spark_jars} "
                                     f"({(errors or ['javac printed nothing'])[0][:300]}); lakeforge works without "
                                     f"it, ingest only parses each JSON line twice.")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")  # renamed once complete: never loaded half-written
        partial.unlink(missing_ok=True)  # a leftover (or a link put there) is replaced, never written through
        try:
            with zipfile.ZipFile(partial, "x", zipfile.ZIP_DEFLATED) as jar:
                jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: lakeforge setup-jars\n")
                for cls in sorted(classes.rglob("*.class")):
                    jar.write(cls, cls.relative_to(classes).as_posix())
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)
    return target, True


def session_jars() -> list[Path]:
    """The jars a session lakeforge starts adds: the cached Delta jars, and lakeforge's JVM jar when it is built."""
    own = jvm_jar()
    return cached_jars() + ([own] if own.is_file() else [])
