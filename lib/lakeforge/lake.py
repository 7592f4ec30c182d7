"""All Delta table I/O: read, append, replace a slice, merge, and the by-name catalog.

A table `layer.name` lives at `<lakehouse>/<layer>/<name>`. Every write here is rerunnable:
slices are replaced with `replaceWhere`, upserts use `MERGE`, so running a job twice for the
same input never duplicates rows. The catalog is the lakehouse folder itself: each session
registers the tables it finds, so `bronze.orders` is queryable by name in every process, and
a table's description, owner and source live in its Delta properties.
"""

from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakeforge.catalog import DESCRIPTION, LAYERS, OWNER, SOURCE
from lakeforge.errors import DataError, root_cause

# Jobs that write from several threads (ingest loads its sources concurrently) create a table once:
# two creations racing would both find it missing, and the second would fail.
_CREATING = threading.Lock()


def table_path(lakehouse: Path, name: str) -> Path:
    """The folder of table `layer.name`."""
    layer, _, table = name.partition(".")
    if layer not in LAYERS or not table:
        raise DataError(f"table name {name!r} must be <layer>.<table> with layer one of {', '.join(LAYERS)}")
    return lakehouse / layer / table


def exists(lakehouse: Path, name: str) -> bool:
    """True when the table has at least one commit."""
    return (table_path(lakehouse, name) / "_delta_log").is_dir()


def read(spark: SparkSession, lakehouse: Path, name: str, version: int | None = None) -> DataFrame:
    """The table (optionally as of a version), or an error that says which job creates it."""
    if not exists(lakehouse, name):
        raise DataError(f"table {name} does not exist yet ({table_path(lakehouse, name)}); "
                        f"run the stage that writes it first (see `lakeforge --help`)")
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(str(table_path(lakehouse, name)))


def read_pandas(spark: SparkSession, lakehouse: Path, name: str, where=None, columns: list[str] | None = None):
    """A (small) slice of a table on the driver; None when the table does not exist yet."""
    if not exists(lakehouse, name):
        return None
    df = read(spark, lakehouse, name)
    df = df.where(where) if where is not None else df
    return (df.select(*columns) if columns else df).toPandas()


def from_pandas(spark: SparkSession, frame, schema: str) -> DataFrame:
    """A pandas frame as a Spark DataFrame of `schema` (pandas NaN/NaT become SQL nulls)."""
    return spark.createDataFrame(frame.astype(object).where(frame.notna(), None), schema)


def snapshots(spark: SparkSession, lakehouse: Path, versions: dict[str, int]) -> list[tuple[str, str, int, DataFrame]]:
    """Each table at its version, by name: (name, folder, version, DataFrame), e.g. to log a run's inputs."""
    return [(name, str(table_path(lakehouse, name)), v, read(spark, lakehouse, name, version=v))
            for name, v in sorted(versions.items())]


def version(spark: SparkSession, lakehouse: Path, name: str) -> int | None:
    """The table's current version as Delta reads it (its newest commit), None when the table does not exist."""
    if not exists(lakehouse, name):
        return None
    # forPath loads the newest snapshot (and fails on a broken log); its version is read from that snapshot
    # through Delta's internal DeltaLog, because the public history(1) runs a query each time and every stage
    # asks for several versions (the cost of each way is in the commit that chose this).
    table = DeltaTable.forPath(spark, str(table_path(lakehouse, name)))
    return int(table._jdt.deltaLog().unsafeVolatileSnapshot().version())


def _ensure(spark: SparkSession, lakehouse: Path, name: str, df: DataFrame,
            partition_by: list[str] | None, properties: dict[str, str] | None) -> None:
    """Create the table from `df`'s schema with its catalog properties, if it is not there yet."""
    if exists(lakehouse, name):
        return
    with _CREATING:
        if not exists(lakehouse, name):
            _create(spark, lakehouse, name, df, partition_by, properties)


def _create(spark: SparkSession, lakehouse: Path, name: str, df: DataFrame,
            partition_by: list[str] | None, properties: dict[str, str] | None) -> None:
    layer = name.partition(".")[0]
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {layer}")
    builder = (DeltaTable.createIfNotExists(spark).tableName(name)
               .location(str(table_path(lakehouse, name))).addColumns(df.schema))
    if partition_by:
        builder = builder.partitionedBy(*partition_by)
    for key, value in (properties or {}).items():
        builder = builder.property(key, value)
    description = (properties or {}).get(DESCRIPTION)
    if description:  # the table's comment: what Spark's catalog (spark.catalog.listTables) shows
        builder = builder.comment(description)
    builder.execute()


def _writer(df: DataFrame, partition_by: list[str] | None):
    writer = df.write.format("delta")
    return writer.partitionBy(*partition_by) if partition_by else writer


def append(spark: SparkSession, df: DataFrame, lakehouse: Path, name: str, *,
           partition_by: list[str] | None = None, properties: dict[str, str] | None = None,
           merge_schema: bool = False) -> None:
    """Append rows (for ledgers whose rows are unique by construction); `merge_schema` adds `df`'s new columns
    to an existing table (its old rows read them as null)."""
    _ensure(spark, lakehouse, name, df, partition_by, properties)
    writer = _writer(df, partition_by).mode("append")
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    writer.save(str(table_path(lakehouse, name)))


def replace_where(spark: SparkSession, df: DataFrame, lakehouse: Path, name: str, where: str, *,
                  partition_by: list[str] | None = None, properties: dict[str, str] | None = None,
                  merge_schema: bool = False) -> None:
    """Atomically replace the rows matching `where` with `df` (one commit: old rows or new, never a mix);
    `merge_schema` adds `df`'s new columns to an existing table (its other rows read them as null)."""
    _ensure(spark, lakehouse, name, df, partition_by, properties)
    writer = _writer(df, partition_by).mode("overwrite").option("replaceWhere", where)
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    writer.save(str(table_path(lakehouse, name)))


def merge_latest(spark: SparkSession, updates: DataFrame, lakehouse: Path, name: str, keys: list[str],
                 order_by: list[str], *, properties: dict[str, str] | None = None) -> None:
    """Upsert `updates` on `keys`; where a key repeats, the row latest by `order_by` wins, also against the table."""
    _ensure(spark, lakehouse, name, updates, None, properties)
    target = DeltaTable.forPath(spark, str(table_path(lakehouse, name)))
    on = F.expr(" AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys))
    # A row replaces the stored one only when it is not older, so late records never overwrite newer ones.
    newer = " OR ".join(_not_older_than(order_by))
    latest = latest_per_key(updates, keys, order_by)
    (target.alias("t").merge(latest.alias("s"), on & _key_range(updates, keys[0]))
     .whenMatchedUpdateAll(condition=newer)
     .whenNotMatchedInsertAll()
     .execute())


def _key_range(updates: DataFrame, key: str):
    """`t.key` within the updates' smallest and largest key (or null), as literals: implied by the join on the key,
    and what lets MERGE skip, by their key statistics, the target files no update can match. A night's new keys
    (increasing ids) then touch the files of recent nights only, however long the history."""
    value = F.col(f"`{key}`")
    low, high, nulls = updates.agg(F.min(value), F.max(value), F.count(F.when(value.isNull(), 1))).first()
    column = F.col(f"t.`{key}`")
    if low is None:
        return column.isNull()
    in_range = column.between(F.lit(low), F.lit(high))
    return (in_range | column.isNull()) if nulls else in_range


def _not_older_than(order_by: list[str]) -> list[str]:
    """SQL for "s is at least as new as t" under a lexicographic order of columns."""
    clauses = []
    for i, column in enumerate(order_by):
        equal_before = [f"s.`{c}` <=> t.`{c}`" for c in order_by[:i]]
        last = i == len(order_by) - 1
        compare = f"s.`{column}` >= t.`{column}`" if last else f"s.`{column}` > t.`{column}`"
        clauses.append(" AND ".join(equal_before + [f"({compare} OR t.`{column}` IS NULL)"]))
    return clauses


def latest_per_key(df: DataFrame, keys: list[str], order_by: list[str]) -> DataFrame:
    """One row per key: the greatest by `order_by` (a pure transform)."""
    from pyspark.sql import Window

    window = Window.partitionBy(*keys).orderBy(*[F.col(c).desc_nulls_last() for c in order_by])
    return df.withColumn("_rank", F.row_number().over(window)).where("_rank = 1").drop("_rank")


# ---------------------------------------------------------------- maintenance (lakeforge maintain)

# Below this VACUUM retention Delta refuses to run unless its check is off: a reader of a version older than the
# retention (a long query, time travel) may then miss files. lakeforge turns the check off only for such a call.
DELTA_MIN_RETENTION_HOURS = 168


@contextmanager
def _session_conf(spark: SparkSession, settings: dict[str, str]):
    """Spark settings for the block, then back to what they were (maintenance runs alone under the ingest lock)."""
    before = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def data_files(spark: SparkSession, lakehouse: Path, name: str) -> int:
    """How many data files the table's current version has (Delta's own count, from its log)."""
    return int(DeltaTable.forPath(spark, str(table_path(lakehouse, name))).detail().first()["numFiles"])


def compact(spark: SparkSession, lakehouse: Path, name: str, target_file_mb: int) -> dict[str, int]:
    """OPTIMIZE (bin-packing): files smaller than the target are rewritten into files of about the target size;
    files already that large are left alone, so a compaction costs what was written since the last one."""
    size = str(target_file_mb * 2**20)
    with _session_conf(spark, {"spark.databricks.delta.optimize.minFileSize": size,
                               "spark.databricks.delta.optimize.maxFileSize": size}):
        metrics = DeltaTable.forPath(spark, str(table_path(lakehouse, name))).optimize().executeCompaction() \
            .first()["metrics"]
    return {"files_removed": int(metrics["numFilesRemoved"]), "files_added": int(metrics["numFilesAdded"])}


def vacuum(spark: SparkSession, lakehouse: Path, name: str, retention_hours: float) -> int:
    """VACUUM: delete the table's files that no version younger than the retention needs; returns how many.
    Files of the current version are never deleted, whatever the retention."""
    path = table_path(lakehouse, name)
    before = _files_on_disk(path)
    # VACUUM lists the folder with one task per `parallelPartitionDiscovery.parallelism` (10,000 by default):
    # seconds of empty tasks for a table of a few files. The session's parallelism lists any table in one wave.
    settings = {"spark.sql.sources.parallelPartitionDiscovery.parallelism": str(spark.sparkContext.defaultParallelism)}
    if retention_hours < DELTA_MIN_RETENTION_HOURS:
        settings["spark.databricks.delta.retentionDurationCheck.enabled"] = "false"
    with _session_conf(spark, settings):
        DeltaTable.forPath(spark, str(path)).vacuum(float(retention_hours))
    return before - _files_on_disk(path)


def _files_on_disk(path: Path) -> int:
    """Data files in the table's folder, referenced or not (what VACUUM may delete is not in the log any more)."""
    return sum(1 for p in path.rglob("*.parquet") if "_delta_log" not in p.parts)


def register_tables(spark: SparkSession, lakehouse: Path) -> list[str]:
    """Make every table under the lakehouse queryable by name (`bronze.orders`) in this session."""
    names = []
    for layer in LAYERS:
        layer_dir = lakehouse / layer
        tables = sorted(p.parent.name for p in layer_dir.glob("*/_delta_log")) if layer_dir.is_dir() else []
        if tables:
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {layer}")
        for table in tables:
            location = str(layer_dir / table).replace("'", "\\'")
            try:
                spark.sql(f"CREATE TABLE IF NOT EXISTS {layer}.{table} USING DELTA LOCATION '{location}'")
            except Exception:  # a table whose log does not load stays unnamed; status and doctor report it
                continue
            names.append(f"{layer}.{table}")
    return names


def rename_table(spark: SparkSession, lakehouse: Path, name: str, new_name: str) -> None:
    """Give a table another name in the same layer: its folder moves (Delta's log holds paths relative to it, so
    every version stays readable) and the by-name entries follow."""
    source, target = table_path(lakehouse, name), table_path(lakehouse, new_name)
    if name.partition(".")[0] != new_name.partition(".")[0]:
        raise DataError(f"cannot rename {name} to {new_name}: a table keeps its layer")
    if target.exists():
        raise DataError(f"cannot rename {name} to {new_name}: {target} already exists; move one of them aside")
    source.rename(target)
    spark.sql(f"DROP TABLE IF EXISTS {name}")
    register_tables(spark, lakehouse)


def forget_tables(spark: SparkSession) -> None:
    """Drop this session's by-name catalog entries (the tables' data and logs stay where they are). Refused on a
    shared (Hive) catalog: there a layer's database also holds tables other sessions registered."""
    if spark.conf.get("spark.sql.catalogImplementation", "in-memory") == "hive":
        raise RuntimeError("lake.forget_tables drops whole databases: refused on a shared (Hive) catalog")
    for layer in LAYERS:
        spark.sql(f"DROP DATABASE IF EXISTS {layer} CASCADE")


def list_tables(lakehouse: Path) -> list[str]:
    """Names of every table in the lakehouse, by layer."""
    return [f"{layer}.{p.parent.name}" for layer in LAYERS
            for p in sorted((lakehouse / layer).glob("*/_delta_log"))]


def table_names(spark: SparkSession, lakehouse: Path, shared: bool) -> list[str]:
    """The tables to report: a shared catalog's (what every session of the team sees), else the lakehouse folder's."""
    return catalog_tables(spark) if shared else list_tables(lakehouse)


def catalog_tables(spark: SparkSession) -> list[str]:
    """Names of every table the session's catalog holds in the lakehouse layers, by layer: with a shared catalog,
    what every session of the team finds by name, including tables registered by others."""
    databases = {database.name for database in spark.catalog.listDatabases()}
    return [f"{layer}.{table}" for layer in LAYERS if layer in databases
            for table in sorted(t.name for t in spark.catalog.listTables(layer) if not t.isTemporary)]


def describe(spark: SparkSession, lakehouse: Path, name: str) -> dict:
    """Version, row count, last write time and catalog properties of one table, and its health.

    A damaged table (see `check`) gets its problems under `health` and no row count: Delta counts rows
    from the log's statistics, so a table missing a data file would still show the file's rows. A table only
    the catalog knows (a shared catalog's entry another session made elsewhere) is read by name, unchecked.

    The count comes first: a table's first read loads its snapshot, which the property and history
    lookups then reuse. SHOW TBLPROPERTIES rather than DESCRIBE DETAIL for the properties: it needs no
    second pass over the snapshot (measured with cProfile on `lakeforge status`).
    """
    unread = {"table": name, "rows": None, "last_write": None, "last_operation": None, "description": "",
              "owner": "", "source": ""}
    in_lakehouse = exists(lakehouse, name)
    if in_lakehouse:
        health = check(spark, lakehouse, name)
        if not health.healthy:
            return unread | {"version": health.version, "health": "; ".join(health.problems)}
    try:
        rows = spark.table(name).count()  # by name: proves the catalog sees the table
        table = (DeltaTable.forPath(spark, str(table_path(lakehouse, name))) if in_lakehouse
                 else DeltaTable.forName(spark, name))
    except Exception as exc:
        if in_lakehouse:
            raise
        return unread | {"version": None, "health": f"in the catalog, but it does not load: {root_cause(exc)}"}
    properties = {row["key"]: row["value"] for row in spark.sql(f"SHOW TBLPROPERTIES {name}").collect()}
    last = table.history(1).select("version", "timestamp", "operation").first()
    return {
        "table": name,
        "version": int(last["version"]),
        "rows": rows,
        "last_write": last["timestamp"],
        "last_operation": last["operation"],
        # A table made outside lakeforge may have only a comment (which the properties do not list).
        "description": properties.get(DESCRIPTION) or spark.catalog.getTable(name).description or "",
        "owner": properties.get(OWNER, ""),
        "source": properties.get(SOURCE, ""),
        "health": "ok",
    }


# ---------------------------------------------------------------- table health (status, doctor)

_COMMIT = re.compile(r"^(\d{20})\.json$")
# What Delta writes next to a commit or in its place: a checksum (.crc) or a checkpoint of version N.
_BESIDE = re.compile(r"^(\d{20})\.(crc|checkpoint(?:\.[^/]*)?\.parquet)$")
RESTORE_SEARCH = 50  # how many versions back doctor looks for one whose data files all exist


@dataclass(frozen=True)
class TableHealth:
    """What `check` found: the version Delta reads now (None when the log does not load), problems and fixes."""

    table: str
    path: Path
    version: int | None
    problems: tuple[str, ...] = ()
    recovery: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return not self.problems


def check(spark: SparkSession, lakehouse: Path, name: str, advise: bool = False) -> TableHealth:
    """Whether the table's log loads, holds every commit up to its newest, and every data file of its current
    version exists; with `advise`, how to recover (which versions RESTORE can go back to)."""
    path = table_path(lakehouse, name)
    commits, beside = _log_files(path / "_delta_log")
    try:
        current = version(spark, lakehouse, name)
    except Exception as exc:  # the snapshot does not load: Delta's own reason, on one line
        gaps = [v for v in range(min(commits, default=0), max(commits, default=-1)) if v not in commits]
        problem = f"its Delta log does not load: {root_cause(exc)}"
        if gaps:
            problem += f" (commits {_ranges(gaps)} missing from _delta_log)"
        recovery = (f"copy the missing _delta_log files back from a backup of {path}, or the whole folder "
                    f"(docs/operations.md, Backups); no version can be read or restored until the log loads",)
        return TableHealth(name, path, None, (problem,), recovery if advise else ())
    problems, recovery = [], []
    lost = sorted({v for v, _ in beside if v > current})
    if lost:
        files = sorted(f for v, f in beside if v > current)
        problems.append(f"commit(s) {_ranges(lost)} missing from _delta_log while their {', '.join(files)} remain: "
                        f"Spark reads version {current} as if they never happened, other readers (delta-rs) refuse "
                        f"the table")
        if advise:
            recovery += [f"copy {', '.join(f'{v:020d}.json' for v in lost)} back into {path / '_delta_log'} from a "
                         f"backup; or accept version {current}: move {', '.join(files)} out of _delta_log and rerun "
                         f"the stage that wrote version {lost[0]} (`lakeforge status` lists the last runs)"]
    missing = _missing_files(spark, path, current)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        problems.append(f"{len(missing)} data file(s) of version {current} missing: {shown}")
        if advise:
            recovery += ["copy the missing file(s) back from a backup (same names, same folders)",
                         _restore_advice(spark, path, current, commits)]
    return TableHealth(name, path, current, tuple(problems), tuple(recovery))


def doctor(spark: SparkSession, lakehouse: Path) -> list[TableHealth]:
    """The health of every table under the lakehouse, with how to recover each damaged one."""
    return [check(spark, lakehouse, name, advise=True) for name in list_tables(lakehouse)]


def _log_files(log: Path) -> tuple[set[int], list[tuple[int, str]]]:
    """The commit versions in the log folder, and the (version, file name) of its checksums and checkpoints.

    Read from file names on purpose: this looks for what Delta's snapshot hides (the traces of a commit
    that is gone), which no Delta API reports.
    """
    names = [p.name for p in log.iterdir()] if log.is_dir() else []
    commits = {int(m.group(1)) for m in map(_COMMIT.match, names) if m}
    beside = [(int(m.group(1)), m.group(0)) for m in map(_BESIDE.match, names) if m]
    last = log / "_last_checkpoint"
    if last.is_file():
        try:
            beside.append((int(json.loads(last.read_text())["version"]), "_last_checkpoint"))
        except (ValueError, KeyError, TypeError):
            pass  # Delta itself ignores an unreadable _last_checkpoint and lists the log
    return commits, beside


def _missing_files(spark: SparkSession, path: Path, at: int) -> list[str]:
    """The data files version `at` of the table references that are not on disk, relative to the table folder."""
    uris = spark.read.format("delta").option("versionAsOf", at).load(str(path)).inputFiles()
    files = [Path(unquote(urlparse(u).path)) for u in uris if urlparse(u).scheme in ("", "file")]
    return sorted(str(f.relative_to(path)) if f.is_relative_to(path) else str(f) for f in files if not f.exists())


def _restore_advice(spark: SparkSession, path: Path, current: int, commits: set[int]) -> str:
    """The RESTORE command to the newest earlier version whose data files all exist, or why there is none."""
    oldest = current
    while oldest - 1 in commits:  # time travel needs every commit from a checkpoint or 0 up to the version
        oldest -= 1
    for v in range(current - 1, max(oldest, current - RESTORE_SEARCH) - 1, -1):
        try:
            if not _missing_files(spark, path, v):
                return (f"or go back to version {v}, the newest whose files all exist (versions {oldest}..{current} "
                        f"are in the log): RESTORE TABLE delta.`{path}` TO VERSION AS OF {v}; then rerun the "
                        f"stages that wrote versions {v + 1}..{current}. Open-source Delta 4.4 has no FSCK REPAIR "
                        f"TABLE (a Databricks command)")
        except Exception:  # a version time travel cannot read is not a restore target
            continue
    return (f"no version from {max(oldest, current - RESTORE_SEARCH)} to {current - 1} has all its files: restore the "
            f"table folder from a backup. Open-source Delta 4.4 has no FSCK REPAIR TABLE (a Databricks command)")


def _ranges(versions: list[int]) -> str:
    """1, 2, 3, 7 -> '1..3, 7'."""
    spans: list[list[int]] = []
    for v in sorted(versions):
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in spans)
