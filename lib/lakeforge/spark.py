"""The only place a SparkSession is built: Delta on, quiet logs, local or cluster from config."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree

from pyspark import SparkConf
from pyspark.find_spark_home import _find_spark_home
from pyspark.sql import SparkSession

from lakeforge import jars
from lakeforge.config import Settings, conf_dir
from lakeforge.errors import EnvironmentProblem

SUPPORTED_JAVA = (17, 21)  # the LTS releases Spark 4.2 runs on
DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"
_JAVA_FIX = "install OpenJDK 17 (e.g. `apt-get install openjdk-17-jdk-headless`) or point JAVA_HOME at one"


def java_binary() -> str:
    """The `java` Spark will launch: $JAVA_HOME/bin/java, else the PATH's."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise EnvironmentProblem(f"Java not found (JAVA_HOME={os.environ.get('JAVA_HOME', 'unset')}, "
                                 f"none on PATH): Spark 4.2 needs Java 17 or 21; {_JAVA_FIX}.")
    return java


@functools.lru_cache(maxsize=None)
def java_version_text(java: str) -> str:
    """What `java -version` prints (once per process and binary)."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        raise EnvironmentProblem(f"could not run {java} -version ({exc}); {_JAVA_FIX}.") from None
    return out.stderr + out.stdout


def java_major_version(java: str | None = None) -> int:
    """The major version of `java` (default: the one Spark will launch)."""
    java = java or java_binary()
    match = re.search(r'version "(\d+)(?:\.(\d+))?', java_version_text(java))
    if not match:
        raise EnvironmentProblem(f"could not read the Java version from `{java} -version`; {_JAVA_FIX}.")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" means Java 8


def check_java() -> None:
    """Fail early, with the fix, when Java is missing or too old for Spark 4.2."""
    major = java_major_version()
    if major not in SUPPORTED_JAVA:
        raise EnvironmentProblem(f"Java {major} found, but Spark 4.2 needs Java 17 or 21; install OpenJDK 17 "
                                 "or point JAVA_HOME at a JDK 17.")


def _delta_already_supplied(conf: SparkConf) -> bool:
    """True when spark-submit was given the Delta jars (`--packages` or `--jars`)."""
    supplied = conf.get("spark.jars.packages", "") + "," + conf.get("spark.jars", "")
    return "delta-spark" in supplied


def _submitted_conf() -> SparkConf:
    """What spark-submit was told (--master, --packages, --conf); empty when run as plain Python."""
    from pyspark import SparkContext

    if "PYSPARK_GATEWAY_PORT" in os.environ:  # launched by spark-submit: its JVM is already up
        SparkContext._ensure_initialized()
    return SparkConf()


def session_conf(settings: Settings) -> dict[str, str]:
    """Every Spark setting lakeforge sets, as plain strings (also used by spark-submit wrappers)."""
    spark = settings.spark
    log4j = conf_dir() / "log4j2.properties"
    conf = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.shuffle.partitions": str(spark.shuffle_partitions),
        "spark.ui.enabled": str(spark.ui_enabled).lower(),
        "spark.driver.memory": spark.driver_memory,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Keeps CREATE DATABASE from making ./spark-warehouse wherever lakeforge runs.
        "spark.sql.warehouse.dir": str(settings.paths.lakehouse / "_warehouse"),
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        # Delta rebuilds a table's state from its log with 50 tasks by default, and again after each commit:
        # for lakehouse-sized logs the tasks cost more than the work. Two rather than the shuffle partitions
        # (8 by default): measured faster for `lakeforge status` and `lakeforge demo` on two cores. Raise it
        # (under spark.conf in the settings YAML) for tables of hundreds of thousands of files.
        "spark.databricks.delta.snapshotPartitions": "2",
        # lakeforge prints its own progress (stage, rows, elapsed); Spark's bar would garble it.
        "spark.ui.showConsoleProgress": "false",
        # Jobs that name no pool share the default one first come, first served, as in FIFO mode; ingest
        # gives each source its own pool, so a small source's jobs do not queue behind a large one's tasks.
        "spark.scheduler.mode": "FAIR",
        # Ingest reads a batch's files by name: above this many paths Spark lists them with a job of one task per
        # path instead of on the driver.
        "spark.sql.sources.parallelPartitionDiscovery.threshold": "512",
        # Ingest caches each checked batch between its counts and its writes (lakeforge's only cache):
        # uncompressed, the demo's ingest was measured faster (benchmarks/ingest_bench.py).
        "spark.sql.inMemoryColumnarStorage.compressed": "false",
    }
    if spark.event_log_dir is not None:
        spark.event_log_dir.mkdir(parents=True, exist_ok=True)
        conf["spark.eventLog.enabled"] = "true"
        conf["spark.eventLog.dir"] = spark.event_log_dir.as_uri()
    conf.update(metastore_conf(spark.metastore_url, spark.metastore_user, settings.paths.lakehouse))
    conf.update(spark.conf)
    if log4j.is_file():  # JVM options from the settings come after lakeforge's log config, not instead of it
        java_options = f"-Dlog4j2.configurationFile={log4j.as_uri()} {spark.conf.get(DRIVER_JAVA_OPTIONS, '')}"
        conf[DRIVER_JAVA_OPTIONS] = java_options.strip()
    return conf


METASTORE_PASSWORD = "LAKEFORGE_METASTORE_PASSWORD"


@functools.lru_cache(maxsize=None)
def hive_model_classes() -> tuple[str, ...]:
    """Every class Spark's Hive metastore client persists, from the mapping (package.jdo) in the hive-metastore jar
    PySpark ships: DataNucleus makes one or more tables of the metastore's schema for each."""
    found = sorted((Path(_find_spark_home()) / "jars").glob("hive-metastore-*.jar"))
    if not found:
        raise EnvironmentProblem(f"no hive-metastore jar in {Path(_find_spark_home()) / 'jars'}: the shared catalog "
                                 "(spark.metastore_url) needs PySpark's Hive support; reinstall pyspark")
    with zipfile.ZipFile(found[-1]) as jar:
        mapping = ElementTree.fromstring(jar.read("package.jdo"))
    return tuple(f"{package.get('name')}.{cls.get('name')}"
                 for package in mapping.iter("package") for cls in package.iter("class"))


def metastore_conf(url: str | None, user: str, lakehouse: Path) -> dict[str, str]:
    """Spark's Hive metastore in PostgreSQL (the shared catalog), or nothing when no metastore is configured.

    Any Spark session given these connection settings (and Delta's) finds the lakehouse tables by name. The
    password comes from the environment: Spark redacts it (spark.redaction.regex matches `password`) in its UI
    and event logs. The JDBC driver goes on the driver's class path (`metastore_class_path`), not in spark.jars:
    the metastore client loads it from there."""
    if url is None:
        return {}
    conf = {"spark.sql.catalogImplementation": "hive",
            "spark.hadoop.javax.jdo.option.ConnectionURL": url,
            "spark.hadoop.javax.jdo.option.ConnectionDriverName": "org.postgresql.Driver",
            "spark.hadoop.javax.jdo.option.ConnectionUserName": user,
            # An empty database gets the schema from Hive's own mapping, all of it when the session starts.
            # Created lazily instead (a table when a transaction first needs its class), DataNucleus adds a
            # table's foreign keys on a second connection while the first holds the locks they wait for:
            # the first session against an empty PostgreSQL hung there.
            "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
            "spark.hadoop.datanucleus.autoStartMechanism": "Classes",
            "spark.hadoop.datanucleus.autoStartClassNames": ",".join(hive_model_classes()),
            # The schema version goes into the VERSION table, so a plain Spark session (which verifies it,
            # Hive's default) accepts the schema lakeforge created.
            "spark.hadoop.hive.metastore.schema.verification": "false",
            "spark.hadoop.hive.metastore.schema.verification.record.version": "true",
            "spark.sql.warehouse.dir": str(lakehouse / "_warehouse")}
    password = os.environ.get(METASTORE_PASSWORD)
    if password:
        conf["spark.hadoop.javax.jdo.option.ConnectionPassword"] = password
    return conf


def metastore_class_path(url: str | None) -> str:
    """The JDBC driver's jars for the driver JVM's class path when a metastore is configured, else "".

    Appended to the class path (SPARK_DIST_CLASSPATH), not put first (spark.driver.extraClassPath): the JVM maps
    the class archive only while its class path starts with the one the archive was built with."""
    if url is None:
        return ""
    return os.pathsep.join(str(jar) for jar in jars.cached_jars(jars.POSTGRES_JDBC_PACKAGE))


def with_class_archive(java_options: str, archive: Path) -> str:
    """The driver's JVM options, with the class archive `lakeforge setup-jars` built when there is one.

    The JVM then maps the classes a session loads from the archive instead of reading and checking
    them one by one, so every command starts sooner. An archive the JVM cannot use (another Java
    build, other jars) costs one warning line, and the JVM loads its classes as usual."""
    if not archive.is_file():
        return java_options
    return f"-XX:SharedArchiveFile={archive} {java_options}".strip()


def build_session(settings: Settings, app_name: str | None = None) -> SparkSession:
    """Build (or join) the SparkSession for these settings and make the lakehouse tables queryable by name."""
    from lakeforge import lake  # lake needs a session; imported here to keep import order simple

    check_java()
    # Executors must run this interpreter, the one that has pandas and lakeforge installed.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # Local runs bind to loopback instead of guessing a routable address from the host name.
    if settings.spark.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.appName(app_name or settings.spark.app_name)
    submitted = _submitted_conf()
    if not submitted.contains("spark.master"):  # spark-submit's --master wins over the config
        builder = builder.master(settings.spark.master)
    conf = session_conf(settings)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # this process starts the driver JVM: it can map the archive
        conf[DRIVER_JAVA_OPTIONS] = with_class_archive(conf.get(DRIVER_JAVA_OPTIONS, ""), jars.class_archive())
        # Read by Spark's launcher when it starts the JVM (spark-submit: docker/entrypoint.sh sets it).
        known = [jar for jar in os.environ.get("SPARK_DIST_CLASSPATH", "").split(os.pathsep) if jar]
        added = [jar for jar in metastore_class_path(settings.spark.metastore_url).split(os.pathsep)
                 if jar and jar not in known]
        if added:
            os.environ["SPARK_DIST_CLASSPATH"] = os.pathsep.join(known + added)
    for key, value in conf.items():
        builder = builder.config(key, value)
    if not _delta_already_supplied(submitted):
        builder = builder.config("spark.jars", ",".join(str(jar) for jar in jars.session_jars()))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.spark.log_level)
    lake.register_tables(spark, settings.paths.lakehouse)
    return spark
