"""Ingest landing files into bronze (typed rows + audit columns) and silver (deduplicated, MERGEd).

Exactly-once per landing file: the file ledger `ops.ingested_files` is committed last. Before its
first commit a load leaves a marker `<lakehouse>/_ingest/<source>.pending`, removed after the
ledger commit. Normally quarantine, bronze and ops.quality rows are appended; when the marker is
still there (the previous load was killed or failed after some commits), the rows of the batch's
files are replaced instead, and silver is MERGEd latest-wins in both cases. So a crash anywhere
leaves its files unrecorded, and the rerun loads them without losing or duplicating a row. A rerun
with no new files commits nothing.

A landing file is identified by its name. A new file whose bytes equal a file already loaded
(or an earlier file of the same batch) is recorded as a duplicate delivery and loads nothing.
A file that cannot be read (not valid gzip or Parquet, no CSV header) is recorded as unreadable
with the reason; it is retried when its size or modification time changes. Only regular files
inside the source's folder are read: a symbolic link (to anything), a directory, a FIFO, a socket
or a device is recorded as refused without being opened, and examined again when it changes.

Test hook: with LAKEFORGE_TEST_CRASH_AFTER=<step> in the environment, the process kills itself
with SIGKILL right after that write (steps: quarantine, bronze, silver, quality, ledger), so the
crash tests can stop a load between two commits.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import json
import os
import re
import stat
import threading
import zlib
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import reduce
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from lakeforge import catalog, lake, quality
from lakeforge.config import Source
from lakeforge.errors import DataError
from lakeforge.quality import FILE, MALFORMED, NEW_KEYS, OUTCOME, RAW, REASON, sql_string
from lakeforge.runs import Outcome, Run, crash_point, last_succeeded

FILE_LEDGER = catalog.INGESTED_FILES
QUARANTINE = catalog.QUARANTINE
AUDIT_COLUMNS = ["_ingested_at", "_source_file", "_batch_id"]
EXTENSIONS = {"csv": (".csv",), "json": (".json", ".jsonl", ".ndjson"), "parquet": (".parquet",)}
CORRUPT = "_lf_corrupt"
RECORD = "record"  # the struct a JSON line parses to
JSON_MAX_STRING = 20_000_000  # Spark's JSON parser (Jackson 2.15+): the longest string value, in characters
LEDGER_SCHEMA = ("source string, file string, batch_id string, status string, ingested_at timestamp, bytes bigint, "
                 "modified_at timestamp, content_sha256 string, duplicate_of string, error string, rows_read bigint, "
                 "rows_kept bigint, rows_quarantined bigint, rows_dropped bigint, new_columns array<string>")
# Sources load concurrently: a small source does not wait for a large one (benchmarks/ingest_bench.py).
# The ops tables are shared by every source: their writes take turns, as a replaceWhere after a crash
# must not race another source's append.
PARALLEL_SOURCES = 4
_OPS_WRITES = threading.Lock()
# A column that starts in one type may be read as a wider one (Parquet files); anything else is a type change.
WIDER = {"tinyint": {"smallint", "int", "bigint"}, "smallint": {"int", "bigint"}, "int": {"bigint"},
         "float": {"double"}, "timestamp_ntz": {"timestamp"}}


@dataclass(frozen=True)
class IngestResult:
    """What one source's ingest did: its batch, files and row accounting."""

    source: str
    batch_id: str | None
    files: int  # files loaded by this batch (empty ones included)
    rows_read: int
    rows_kept: int
    rows_quarantined: int
    rows_dropped: int
    duplicates: tuple[str, ...] = ()  # new files whose bytes were already delivered: recorded, nothing loaded
    unreadable: tuple[str, ...] = ()  # new files that could not be read: recorded, retried when they change
    new_columns: tuple[str, ...] = ()  # columns added to bronze/silver by this batch
    warnings: tuple[str, ...] = ()  # broken `warn` expectations, then files without a declared column
    refused: tuple[str, ...] = ()  # entries that are not regular files inside the folder: recorded, never read


@dataclass(frozen=True)
class LandingFile:
    """A landing file as found: its fingerprint, and what reading it needs (or why it cannot or may not be read)."""

    path: Path
    bytes: int | None
    modified_at: dt.datetime | None
    sha256: str | None = None
    problem: str | None = None  # why it cannot be read; None when it can
    header: tuple[str, ...] = ()  # csv: the header row, as declared column names where they match
    types: tuple[tuple[str, str | None], ...] = ()  # parquet: (column, Spark type) as stored in the file
    duplicate_of: str | None = None
    refused: str | None = None  # why it may not be read (not a regular file inside its folder); None when it may
    identity: tuple[int, ...] = ()  # device, inode, size and modification time (ns) of the entry itself

    @property
    def name(self) -> str:
        return self.path.name


# ---------------------------------------------------------------- finding and inspecting landing files


def _data_name(name: str, fmt: str) -> bool:
    lower = name.lower()
    if fmt != "parquet" and lower.endswith(".gz"):
        lower = lower[:-3]
    return lower.endswith(EXTENSIONS[fmt])


def source_folder(landing: Path, source_name: str, source: Source) -> Path:
    """The source's landing folder as a real path; one that leaves the landing root (a symbolic link, `..`)
    is an error: lakeforge reads nothing outside paths.landing."""
    root = landing.resolve()
    folder = (landing / source.path).resolve()
    if not folder.is_relative_to(root):
        raise DataError(f"source {source_name}: landing folder {landing / source.path} leads to {folder}, outside "
                        f"the landing root {root}; nothing was loaded. Landing folders must be real folders under "
                        f"paths.landing: move the files there, or fix the source's path in its YAML.")
    return folder


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _refusal(path: Path, st: os.stat_result, folder: Path) -> str | None:
    """Why a landing entry may not be read (from its own lstat, so nothing is followed or opened); None for a
    regular file, which, listed in the real folder and not a link, lies inside it."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        kind = f"symbolic link to {os.path.realpath(path)}"  # reads links only (a loop too), never a target
    else:
        kind = next((name for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                                             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                                             (stat.S_ISBLK, "a block device")) if test(mode)), "not a regular file")
    return f"{kind}: landing files must be regular files inside {folder}"


def landing_entries(landing: Path, source: Source, source_name: str = "") -> list[LandingFile]:
    """The source's landing entries by name (csv and json may be .gz; names starting with . or _ are not data),
    fingerprinted without following links; those that are not regular files carry why they are refused."""
    folder = source_folder(landing, source_name or source.path, source)
    if not folder.is_dir():
        return []
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith((".", "_")) or not _data_name(entry.name, source.format):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since it was listed
            path = folder / entry.name
            found.append(LandingFile(path, st.st_size, _mtime(st), refused=_refusal(path, st, folder),
                                     identity=_identity(st)))
    return sorted(found, key=lambda f: f.name)


def _mtime(st: os.stat_result) -> dt.datetime:
    return dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc).replace(microsecond=0)


def _options(source: Source) -> dict[str, str]:
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in source.options.items()}


def inspect_file(entry: LandingFile, source: Source, known: dict[str, str]) -> LandingFile:
    """Hash and check that a regular landing file can be read; `known` maps lower-case names to column names.

    The file is opened without following a link and without blocking (a FIFO put in its place since it was
    listed would block a plain open forever), and it must still be the entry that was listed."""
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # a link put in its place (ELOOP), or a file it may not open
        try:
            why = _refusal(entry.path, os.lstat(entry.path), entry.path.parent)
        except OSError:
            why = None
        return replace(entry, refused=why) if why else replace(entry, problem=f"cannot be opened: "
                                                                              f"{exc.strerror or exc}")
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if _identity(st) != entry.identity:
            return replace(entry, refused=(_refusal(entry.path, st, entry.path.parent)
                                           or "replaced while it was being inspected; it is examined again next run"))
        try:
            found = replace(entry, sha256=hashlib.file_digest(fh, "sha256").hexdigest())
        except OSError as exc:
            return replace(entry, problem=f"cannot be read: {exc.strerror or exc}")
        if entry.bytes == 0:
            return found  # an empty delivery: loaded, zero rows
        compressed = source.format != "parquet" and entry.name.lower().endswith(".gz")
        if compressed:
            fh.seek(0)
            try:
                with gzip.GzipFile(fileobj=fh, mode="rb") as unzipped:
                    while unzipped.read(1 << 22):
                        pass
            except (OSError, EOFError, zlib.error) as exc:
                return replace(found, problem=f"not a valid gzip file ({exc})")
        fh.seek(0)
        if source.format == "csv":
            return _inspect_csv(found, fh, source, known, compressed)
        if source.format == "parquet":
            return _inspect_parquet(found, fh)
        return found


def _inspect_csv(found: LandingFile, fh, source: Source, known: dict[str, str], compressed: bool) -> LandingFile:
    options = {k.lower(): v for k, v in _options(source).items()}
    if compressed:
        with gzip.GzipFile(fileobj=fh, mode="rb") as unzipped:
            first = unzipped.readline(1 << 20)
    else:
        first = fh.readline(1 << 20)
    encoding = options.get("encoding", options.get("charset", "utf-8"))
    try:
        text = first.decode("utf-8-sig" if encoding.lower().replace("-", "") == "utf8" else encoding).rstrip("\r\n")
    except (UnicodeDecodeError, LookupError):
        return replace(found, problem=f"the header row is not valid {encoding}")
    sep = options.get("sep", options.get("delimiter", ","))
    quote = options.get("quote", '"')
    try:
        names = [n.strip() for n in next(csv.reader([text], delimiter=sep, quotechar=quote or None), [])]
    except csv.Error as exc:
        return replace(found, problem=f"the header row does not parse as CSV ({exc})")
    header = tuple(known.get(n.lower(), n) for n in names)
    if not any(n.lower() in known for n in names):
        return replace(found, problem=f"no header row naming the declared columns (first line: {text[:80]!r})")
    if "" in header or len({h.lower() for h in header}) != len(header):
        return replace(found, problem=f"the header row has an empty or repeated column name ({text[:80]!r})")
    return replace(found, header=header)


def _arrow_to_spark(t) -> str | None:
    """The Spark type a Parquet column is read as; None when Spark cannot read it as such."""
    import pyarrow.types as pt

    simple = [(pt.is_int8, "tinyint"), (pt.is_int16, "smallint"), (pt.is_int32, "int"), (pt.is_int64, "bigint"),
              (pt.is_uint8, "smallint"), (pt.is_uint16, "int"), (pt.is_uint32, "bigint"),
              (pt.is_float32, "float"), (pt.is_float64, "double"), (pt.is_boolean, "boolean"),
              (pt.is_string, "string"), (pt.is_large_string, "string"), (pt.is_binary, "binary"),
              (pt.is_large_binary, "binary"), (pt.is_date32, "date")]
    for test, name in simple:
        if test(t):
            return name
    if pt.is_timestamp(t):
        return None if t.unit == "ns" else ("timestamp" if t.tz else "timestamp_ntz")
    if pt.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"
    return f"?{t}"  # nested and rare types: left to Spark


def _inspect_parquet(found: LandingFile, fh) -> LandingFile:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(fh)
    except Exception as exc:  # pyarrow raises several types for a bad footer
        return replace(found, problem=f"not a valid Parquet file ({str(exc).splitlines()[0][:200]})")
    return replace(found, types=tuple((f.name, _arrow_to_spark(f.type)) for f in schema))


# ---------------------------------------------------------------- the ledger


def _ledger_entries(spark: SparkSession, lakehouse: Path, source_name: str) -> dict[str, dict]:
    """The latest ledger entry of each file of this source."""
    if not lake.exists(lakehouse, FILE_LEDGER):
        return {}
    rows = (lake.read(spark, lakehouse, FILE_LEDGER).where(F.col("source") == source_name)
            .select("file", "status", "ingested_at", "bytes", "modified_at", "content_sha256", "error").collect())
    latest: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: r["ingested_at"]):
        latest[row["file"]] = row.asDict()
    return latest


def _same_fingerprint(entry: dict, found: LandingFile) -> bool:
    """True when the entry still has the size and modification time the ledger recorded."""
    size, modified = found.bytes, found.modified_at
    recorded = entry["modified_at"]  # naive local time, as PySpark returns timestamps
    same_time = (recorded is None and modified is None) or (
        recorded is not None and modified is not None and int(recorded.timestamp()) == int(modified.timestamp()))
    return entry["bytes"] == size and same_time


# ---------------------------------------------------------------- reading a batch


def _spark_path(path: Path) -> str:
    """The path for a Spark reader: glob characters in a file name are literal."""
    return re.sub(r"([\\*?\[\]{}])", r"\\\1", str(path))


def _file_name(files: list[LandingFile] | None = None) -> Column:
    """The row's landing file name. Spark reports it URI-encoded ("a b" as "a%20b"; a '+' there is literal, not a
    space); when every name of the batch is plain (letters, digits, `._-`) it is its own encoding, and the
    decoding of every row is skipped."""
    name = F.col("_metadata.file_name")
    if files is not None and all(_PLAIN_NAME.fullmatch(f.name) for f in files):
        return name.alias(FILE)
    return F.url_decode(F.replace(name, F.lit("+"), F.lit("%2B"))).alias(FILE)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]+")


def _ddl(columns: dict[str, str]) -> str:
    return ", ".join(f"`{name}` {kind}" for name, kind in columns.items())


def read_batch(spark: SparkSession, files: list[LandingFile], source: Source, columns: dict[str, str]) -> DataFrame:
    """Parse the files with the schema `columns`: the typed columns, `_source_file`, `_lf_malformed` (why a
    record does not parse, else null), `_lf_raw` (its original text where the reader has it, as read: not
    always valid UTF-8) and, for JSON, `_lf_new_keys` (keys the schema does not know)."""
    readable = [f for f in files if f.bytes]
    if not readable:
        empty = ", ".join([_ddl(columns), f"`{FILE}` string, `{MALFORMED}` string, `{RAW}` string"])
        return spark.createDataFrame([], empty)
    if source.format == "json":
        return _read_json(spark, readable, source, columns)
    if source.format == "csv":
        return _read_csv(spark, readable, source, columns)
    return _read_parquet(spark, readable, columns)


def max_record_bytes(source: Source) -> int:
    """The longest JSON line parsed, in bytes: the parser's longest string (its `maxStringLen` option, in
    characters, which a source may raise under `options`), as a character takes at least one byte."""
    limits = [v for k, v in _options(source).items() if k.lower() == "maxstringlen"]
    if not limits:
        return JSON_MAX_STRING
    if not limits[-1].isdigit():
        raise DataError(f"source in landing folder {source.path}: option maxStringLen {limits[-1]!r} is not a whole "
                        f"number of characters; fix it under options in the source's conf/sources/<name>.yaml.")
    return int(limits[-1])


# Why a JSON line is not parsed (the `flaw` of `_parse_once` and `_parse_in_spark`).
TOO_LARGE, NOT_UTF8, NOT_AN_OBJECT = 1, 2, 3


def _read_json(spark: SparkSession, files: list[LandingFile], source: Source, columns: dict[str, str]) -> DataFrame:
    value = F.col("value")
    options = {**_options(source), "mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    lines = spark.read.text([_spark_path(f.path) for f in files]).select(value, _file_name(files))
    schema = _ddl(columns) + f", `{CORRUPT}` string"
    parser = _json_lines(spark)
    if parser is not None:
        parsed = _parse_once(spark, parser, lines, schema, options, list(columns), max_record_bytes(source))
    else:
        parsed = _parse_in_spark(lines, schema, options, list(columns), max_record_bytes(source))
    record, flaw = F.col(RECORD), F.col("flaw")
    corrupt = record[CORRUPT].isNotNull()
    # A record with a value of the wrong type: the key is there (not JSON null) but the typed field is null.
    mismatched = F.concat_ws(", ", *[
        F.when(record[name].isNull() & F.get_json_object(value, f"$['{name}']").isNotNull(),
               F.lit(f"{name} (expected {kind})"))
        for name, kind in columns.items() if kind != "string" and "'" not in name])
    malformed = (F.when(flaw == TOO_LARGE, F.concat(F.lit("record too large: "), F.octet_length(value).cast("string"),
                                                    F.lit(" bytes")))
                 .when(flaw == NOT_UTF8, F.lit("malformed JSON line: not valid UTF-8"))
                 .when(flaw == NOT_AN_OBJECT, F.lit("malformed JSON line: not a JSON object"))
                 .when(corrupt & (mismatched != ""), F.concat(F.lit("type mismatch: "), mismatched))
                 .when(corrupt, F.lit("malformed JSON line: does not parse"))
                 .when(F.col("trailing"), F.lit("malformed JSON line: more text after the JSON object")))
    return parsed.select(*[record[name].alias(name) for name in columns], FILE, malformed.alias(MALFORMED),
                         value.alias(RAW), F.col("new_keys").alias(NEW_KEYS))


def _json_lines(spark: SparkSession):
    """lakeforge's one-pass JSON line parser (lib/lakeforge/jvm, built by `lakeforge setup-jars`) in the session's
    JVM, or None: not built, or a spark-submit that did not pass its jar (`jars.session_jars`)."""
    from py4j.java_gateway import JavaClass

    found = spark.sparkContext._jvm.lakeforge.JsonLines
    return found if isinstance(found, JavaClass) else None


def _parse_once(spark: SparkSession, parser, lines: DataFrame, schema: str, options: dict[str, str],
                declared: list[str], max_bytes: int) -> DataFrame:
    """`lines` without blank lines, with `record`, `new_keys`, `trailing` and `flaw` as `_parse_in_spark` makes
    them, from one pass over each line in lakeforge's JVM class."""
    from pyspark.sql.types import StructType

    zone = spark.conf.get("spark.sql.session.timeZone")
    found = parser.parse(lines._jdf, "value", StructType.fromDDL(schema).json(), options, zone, CORRUPT, declared,
                         max_bytes)
    return DataFrame(found, spark)


def _parse_in_spark(lines: DataFrame, schema: str, options: dict[str, str], declared: list[str],
                    max_bytes: int) -> DataFrame:
    """`lines` without blank lines (white space only: not records), with `record` (from_json of `value` with
    `schema`), `new_keys` (the top-level keys `declared` spells in no case, null when none), `trailing` (more than
    white space after the object) and `flaw`: why a line is not parsed (TOO_LARGE, NOT_UTF8, NOT_AN_OBJECT), null
    when it is. Spark's expressions only: from_json, then json_object_keys, a second parse of every line."""
    value = F.col("value")
    # The JSON parser refuses a string value longer than its limit, and the record would then be blamed on its
    # typed keys. A line within the limit in bytes holds no longer string, so a longer line is not parsed at all:
    # it is quarantined for its size.
    flaw = (F.when(F.octet_length(value) > max_bytes, F.lit(TOO_LARGE))
            .when(~F.is_valid_utf8(value), F.lit(NOT_UTF8))
            .when(~value.rlike(r"^\s*\{"), F.lit(NOT_AN_OBJECT)))
    text = F.when(F.col("flaw").isNull(), value)
    other = F.array_except(F.json_object_keys(text), F.array(*[F.lit(n) for n in declared]))
    # Keys spelled as declared are already out; only the rare line with another key takes the case-insensitive
    # test, a lambda Spark interprets row by row.
    known = [name.lower() for name in declared]
    unknown = F.filter(other, lambda key: ~F.lower(key).isin(known))
    new_keys = F.when(F.size(other) > 0, F.when(F.size(unknown) > 0, unknown))
    # Spark stops at the end of the first JSON value and ignores the rest of the line; as the first item of an
    # array, anything after it (a second object, garbage) makes the array invalid. That second parse costs as
    # much as the first, so only lines where a `}` is followed by more text take it.
    trailing = (text.rlike(r"\}\s*\S")
                & (F.coalesce(F.json_array_length(F.concat(F.lit("["), text, F.lit(",0]"))), F.lit(0)) != 2))
    return (lines.where(~value.rlike(r"^\s*$"))
            .select("*", flaw.alias("flaw"))
            .select("*", F.from_json(text, schema, options).alias(RECORD), new_keys.alias("new_keys"),
                    trailing.alias("trailing")))


def _read_csv(spark: SparkSession, files: list[LandingFile], source: Source, columns: dict[str, str]) -> DataFrame:
    options = _options(source)
    lowered = {k.lower(): v for k, v in options.items()}
    sep = lowered.get("sep", lowered.get("delimiter", ","))
    by_header: dict[tuple[str, ...], list[LandingFile]] = {}
    for f in files:
        by_header.setdefault(f.header, []).append(f)
    frames = []
    for header, group in by_header.items():
        # Spark applies a CSV schema by position, so each header order is read on its own.
        kinds = [(name, columns[name]) for name in header]
        df = (spark.read.schema(_ddl(dict(kinds)) + f", `{CORRUPT}` string").options(**options)
              .option("header", True).option("enforceSchema", True).option("mode", "PERMISSIVE")
              .option("columnNameOfCorruptRecord", CORRUPT).csv([_spark_path(f.path) for f in group]))
        corrupt = F.col(CORRUPT)
        n = len(header)
        fields = F.size(F.split(F.regexp_replace(corrupt, r'"[^"]*"', ""), re.escape(sep), -1))
        tokens = F.from_csv(corrupt, ", ".join(f"`_lf_t{j}` string" for j in range(n)),
                            {k: v for k, v in options.items() if k.lower() in ("sep", "delimiter", "quote", "escape")})
        mismatched = F.concat_ws(", ", *[
            F.when(F.col(f"`{name}`").isNull() & tokens[f"_lf_t{j}"].isNotNull(), F.lit(f"{name} (expected {kind})"))
            for j, (name, kind) in enumerate(kinds) if kind != "string"])
        text = [F.col(f"`{name}`") for name, kind in kinds if kind == "string"]
        replaced = F.concat_ws("", *text).contains("\ufffd") if text else F.lit(False)
        wrong_count = F.concat(F.lit("malformed CSV record: "), fields.cast("string"), F.lit(f" fields, expected {n}"))
        malformed = (F.when(corrupt.isNotNull() & (fields != n), wrong_count)
                     .when(corrupt.isNotNull() & (mismatched != ""), F.concat(F.lit("type mismatch: "), mismatched))
                     .when(corrupt.isNotNull(), F.lit("malformed CSV record: does not parse"))
                     .when(replaced, F.lit("malformed CSV record: not valid UTF-8")))
        frames.append(df.select(*[F.col(f"`{name}`") if name in header else F.lit(None).cast(kind).alias(name)
                                  for name, kind in columns.items()],
                                _file_name(group), malformed.alias(MALFORMED), corrupt.alias(RAW)))
    return reduce(DataFrame.unionByName, frames)


def _read_parquet(spark: SparkSession, files: list[LandingFile], columns: dict[str, str]) -> DataFrame:
    df = spark.read.schema(_ddl(columns)).parquet(*[_spark_path(f.path) for f in files])
    return df.select(*[F.col(f"`{name}`") for name in columns], _file_name(files),
                     F.lit(None).cast("string").alias(MALFORMED), F.lit(None).cast("string").alias(RAW))


# ---------------------------------------------------------------- schema: declared, stored, new


def declared_types(source: Source) -> dict[str, str]:
    """The declared columns with Spark's names for their types (`integer` -> `int`)."""
    schema = StructType.fromDDL(_ddl(source.columns))
    return {f.name: f.dataType.simpleString() for f in schema.fields}


def _stored_types(spark: SparkSession, lakehouse: Path, table: str) -> dict[str, str]:
    if not lake.exists(lakehouse, table):
        return {}
    return {f.name: f.dataType.simpleString() for f in lake.read(spark, lakehouse, table).schema.fields
            if f.name not in AUDIT_COLUMNS}


def effective_columns(spark: SparkSession, lakehouse: Path, source_name: str, source: Source) -> dict[str, str]:
    """The declared columns, then those added to bronze earlier; a declared type unlike the stored one fails."""
    declared = declared_types(source)
    bronze = catalog.bronze(source_name)
    stored = _stored_types(spark, lakehouse, bronze)
    changed = [(name, kind, stored[name]) for name, kind in declared.items() if name in stored and stored[name] != kind]
    if changed:
        detail = "; ".join(f"{name} is declared {kind} but stored as {old}" for name, kind, old in changed)
        raise DataError(f"source {source_name}: type change in {bronze}: {detail}. lakeforge does not "
                        f"change a stored column's type: declare the stored type again in "
                        f"conf/sources/{source_name}.yaml, or rebuild the source (delete {bronze}, "
                        f"{catalog.silver(source_name)} and its rows in {FILE_LEDGER}, then ingest again).")
    return {**declared, **{name: kind for name, kind in stored.items() if name not in declared}}


def _parquet_columns(source_name: str, files: list[LandingFile], columns: dict[str, str]) -> dict[str, dict[str, str]]:
    """Check each Parquet file's column types against the schema; return the columns it does not know."""
    lowered = {name.lower(): name for name in columns}
    new: dict[str, dict[str, str]] = {}  # column -> {file: type}
    for f in files:
        for name, kind in f.types:
            if kind is None:
                raise DataError(f"source {source_name}: file {f.name}: column {name} holds nanosecond timestamps, "
                                f"which Spark cannot read; write the file with microsecond timestamps "
                                f"(pandas: df.to_parquet(path, coerce_timestamps='us')).")
            target = lowered.get(name.lower())
            if target is None and kind.startswith("?"):
                raise DataError(f"source {source_name}: file {f.name}: new column {name} has the Parquet type "
                                f"{kind[1:]}, which lakeforge does not add by itself; declare it under "
                                f"sources.{source_name}.columns with its Spark type (e.g. array<int>).")
            if target is None:  # a new column; naive timestamps are stored like the declared ones
                new.setdefault(name, {})[f.name] = "timestamp" if kind == "timestamp_ntz" else kind
                continue
            expected = columns[target]
            if kind.startswith("?") or kind == expected or expected in WIDER.get(kind, ()):
                continue
            raise DataError(f"source {source_name}: type change in file {f.name}: column {name} is {kind} in the "
                            f"file but {expected} in the source's schema. Fix the file, or declare the column's "
                            f"type in conf/sources/{source_name}.yaml (a stored column's type cannot change).")
    return new


def _checked_new_columns(source_name: str, source: Source, new: dict[str, dict[str, str]]) -> dict[str, str]:
    """The new columns to add (name -> type), or an error when the source forbids them or a name cannot be one."""
    if not new:
        return {}
    where = "; ".join(f"{name} in {', '.join(sorted(files))}" for name, files in sorted(new.items()))
    if source.on_new_column == "fail":
        raise DataError(f"source {source_name}: new column(s) not declared ({where}); nothing was loaded. "
                        f"Declare them under columns in conf/sources/{source_name}.yaml, or set on_new_column: add.")
    bad = [n for n in new if not n or re.search(r"[ ,;{}()\n\t=]", n) or n.startswith("_lf_") or n in AUDIT_COLUMNS]
    if bad:
        raise DataError(f"source {source_name}: new column(s) {', '.join(map(repr, bad))} ({where}) cannot be added: "
                        f"Delta column names cannot contain ' ,;{{}}()=', tabs or newlines, nor be lakeforge's "
                        f"(_lf_*, {', '.join(AUDIT_COLUMNS)}). Rename them in the files, or set on_new_column: fail.")
    return {name: sorted(kinds.values())[0] for name, kinds in sorted(new.items())}


def _add_columns(spark: SparkSession, lakehouse: Path, table: str, columns: dict[str, str]) -> None:
    """Add nullable columns to an existing table, those it lacks (lake.py has no schema-evolution helper)."""
    if not columns or not lake.exists(lakehouse, table):
        return
    stored = {f.name.lower() for f in lake.read(spark, lakehouse, table).schema.fields}
    missing = {n: k for n, k in columns.items() if n.lower() not in stored}
    if missing:
        path = str(lake.table_path(lakehouse, table)).replace("`", "``")
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({_ddl(missing)})")


# ---------------------------------------------------------------- the batch


def _stats_columns(source: Source) -> str:
    """The columns bronze and silver keep file statistics for: those that MERGE (the key), time windows (the
    event time) and rerun clean-up (the audit columns) filter on: statistics on every column made bronze
    writes measurably slower."""
    names = dict.fromkeys([*source.primary_key, source.event_time, *AUDIT_COLUMNS])
    return ",".join(f"`{name.replace('`', '``')}`" for name in names)


def _in_files(column: str, names: list[str]) -> str:
    return f"{column} IN ({', '.join(sql_string(n) for n in names)})"


def batch_id_for(source_name: str, files: list[LandingFile]) -> str:
    """A deterministic batch id: the same files give the same id on a rerun."""
    parts = [source_name] + [f"{f.name}:{f.sha256}" for f in files]
    return f"{source_name}-{hashlib.sha256(chr(10).join(parts).encode()).hexdigest()[:12]}"


def _prepare(spark: SparkSession, files: list[LandingFile], source: Source, columns: dict[str, str]) -> DataFrame:
    """Read and check the batch, keeping what the writes and counts need (persisted: one read of the files).
    Only what varies by row is cached; the batch's constant audit columns are added where rows are written."""
    checked = quality.check(read_batch(spark, files, source, columns), source)
    data = [F.col(f"`{name}`") for name in columns]
    quarantined = F.col(OUTCOME) == "quarantine"
    raw = F.when(quarantined, F.coalesce(F.make_valid_utf8(F.col(RAW)), F.to_json(F.struct(*data))))
    flags = [c for c in checked.columns if c.startswith("_lf_fail_")]
    extra = [NEW_KEYS] if NEW_KEYS in checked.columns else []
    return checked.select(*data, FILE, OUTCOME, F.when(quarantined, F.col(REASON)).alias(REASON), raw.alias(RAW),
                          MALFORMED, quality.NULL_KEY, quality.NULL_EVENT, *flags, *extra).persist()


def _audit_columns(now: dt.datetime, batch_id: str) -> list[Column]:
    """`_ingested_at`, `_source_file`, `_batch_id`: when, from which file and in which batch a row was loaded."""
    return [F.lit(now).alias("_ingested_at"), F.col(FILE), F.lit(batch_id).alias("_batch_id")]


def _validate_patterns(spark: SparkSession, source_name: str, source: Source) -> None:
    for e in source.expectations:
        if e.rule == "pattern":
            try:
                spark.sparkContext._jvm.java.util.regex.Pattern.compile(e.pattern)
            except Exception as exc:
                first = str(exc).strip().splitlines()[-1][:200]
                raise DataError(f"source {source_name}: expectation '{quality.describe_expectation(e)}': not a valid "
                                f"Java regular expression ({first}); fix it in conf/sources/{source_name}.yaml.") from None


def ingest_source(spark: SparkSession, source_name: str, source: Source, landing: Path,
                  lakehouse: Path, owner: str, log=print) -> IngestResult:
    """Load the source's new landing files into bronze and silver; bad rows go to ops.quarantine."""
    ledger = _ledger_entries(spark, lakehouse, source_name)
    candidates = []
    for found in landing_entries(landing, source, source_name):
        entry = ledger.get(found.name)
        if entry is None:
            candidates.append(found)
        elif entry["status"] == "unreadable":
            if not _same_fingerprint(entry, found):
                candidates.append(found)  # changed since it was found unreadable: try again
        elif entry["status"] == "refused":
            # Examined again when it changes (a link replaced by the real file then loads); unchanged, it is not
            # recorded again.
            if found.refused != entry["error"] or not _same_fingerprint(entry, found):
                candidates.append(found)
        elif not _same_fingerprint(entry, found):
            log(f"{source_name}: WARNING {found.name} changed after it was loaded ({entry['status']} "
                f"{entry['ingested_at']}); the change is ignored: deliver corrections under a new file name")
    if not candidates:
        return IngestResult(source_name, None, 0, 0, 0, 0, 0)

    declared_lower = {name.lower(): name for name in source.columns}
    with ThreadPoolExecutor(max_workers=PARALLEL_SOURCES, thread_name_prefix=f"inspect-{source_name}") as pool:
        # Hashing and gzip checks release the GIL: the files are read side by side.
        inspected = list(pool.map(lambda f: f if f.refused else inspect_file(f, source, declared_lower), candidates))
    loaded_hashes = {e["content_sha256"]: name for name, e in ledger.items()
                     if e["status"] == "loaded" and e["content_sha256"] and e["bytes"]}
    to_load, duplicates, unreadable, refused = [], [], [], []
    for f in inspected:
        if f.refused:
            refused.append(f)
            log(f"{source_name}: WARNING {f.name} refused, its content was not read: {f.refused}; recorded in "
                f"{FILE_LEDGER}, examined again when it changes")
        elif f.problem:
            unreadable.append(f)
            log(f"{source_name}: WARNING {f.name} is unreadable: {f.problem}; recorded in {FILE_LEDGER}, "
                f"retried when the file changes")
        elif f.bytes and f.sha256 in loaded_hashes:
            duplicates.append(replace(f, duplicate_of=loaded_hashes[f.sha256]))
            log(f"{source_name}: {f.name} has the same bytes as {loaded_hashes[f.sha256]}: "
                f"a duplicate delivery, recorded and not loaded")
        else:
            to_load.append(f)
            if f.bytes:
                loaded_hashes[f.sha256] = f.name
    batch_id = batch_id_for(source_name, to_load + duplicates + unreadable + refused)
    now = dt.datetime.now(dt.timezone.utc)
    counts: dict[str, quality.FileCounts] = {}
    added: dict[str, str] = {}
    carried: dict[str, list[str]] = {}
    warnings: list[str] = []
    if to_load:
        log(f"{source_name}: loading {len(to_load)} file(s), {sum(f.bytes or 0 for f in to_load) / 2**20:,.1f} MB "
            f"(batch {batch_id})")
        counts, added, carried, warnings = _load(spark, source_name, source, to_load, landing, lakehouse, owner,
                                                 batch_id, now, log)
    ledger_rows = _ledger_rows(spark, source_name, batch_id, now, to_load, duplicates, unreadable, refused, counts,
                               carried)
    with _OPS_WRITES:
        lake.append(spark, ledger_rows, lakehouse, FILE_LEDGER, **catalog.INGESTED_FILES_TABLE.options(owner))
    crash_point("ledger")
    if to_load:
        _pending(lakehouse, source_name).unlink(missing_ok=True)
    total = quality.FileCounts(*(sum(getattr(c, k) for c in counts.values())
                                 for k in ("read", "kept", "quarantined", "dropped")))
    log(f"{source_name}: {len(to_load)} new file(s), {total.read:,} rows read = {total.kept:,} kept + "
        f"{total.quarantined:,} quarantined + {total.dropped:,} dropped"
        + (f"; {len(duplicates)} delivered twice" if duplicates else "")
        + (f"; {len(unreadable)} unreadable" if unreadable else "")
        + (f"; {len(refused)} refused (not regular files inside the folder)" if refused else ""))
    return IngestResult(source_name, batch_id, len(to_load), total.read, total.kept, total.quarantined, total.dropped,
                        tuple(f.name for f in duplicates), tuple(f.name for f in unreadable), tuple(added),
                        tuple(warnings), tuple(f.name for f in refused))


def _load(spark: SparkSession, source_name: str, source: Source, files: list[LandingFile], landing: Path,
          lakehouse: Path, owner: str, batch_id: str, now: dt.datetime, log):
    """Read, check and write one batch: everything is decided before the first commit."""
    _validate_patterns(spark, source_name, source)
    columns = effective_columns(spark, lakehouse, source_name, source)
    lowered = {name.lower(): name for name in columns}
    files = [replace(f, header=tuple(lowered.get(h.lower(), h) for h in f.header)) for f in files]
    new: dict[str, dict[str, str]] = {}  # column -> {file: type}
    for f in files:
        for name in f.header:
            if name.lower() not in lowered:
                new.setdefault(name, {})[f.name] = "string"
    if source.format == "parquet":
        new = _parquet_columns(source_name, files, columns)
    added = _checked_new_columns(source_name, source, new)
    columns = {**columns, **added}
    names = [f.name for f in files]

    checked = _prepare(spark, files, source, columns)
    try:
        counts = quality.count_files(checked, source, now)
        json_new = {}
        for name, c in counts.items():
            for key in c.new_keys:
                json_new.setdefault(key, {})[name] = "string"
        if json_new:  # keys first seen in the data: read the batch again with them as columns
            more = _checked_new_columns(source_name, source, json_new)
            added, columns, new = {**added, **more}, {**columns, **more}, {**new, **json_new}
            checked.unpersist()
            checked = _prepare(spark, files, source, columns)
            counts = quality.count_files(checked, source, now)
        strays = set(counts) - set(names)
        if strays:
            raise RuntimeError(f"rows attributed to files outside the batch: {sorted(strays)}")
        # Spark opens the files by name: one swapped (for a link, say) after it was inspected is caught here.
        changed = [f.name for f in files if not _unchanged(f)]
        if changed:
            raise DataError(f"source {source_name}: landing file(s) {', '.join(changed)} changed or were replaced "
                            f"while they were being read; nothing was loaded. Run `lakeforge ingest` again; deliver "
                            f"files under a name starting with _ or . and rename them when complete.")
        results = quality.evaluate(counts, names, source)
        quality.raise_on_failures(results, source_name)  # `fail` stops here, before any commit
        warnings = [quality.summarize(check, failed, results)
                    for check, failed in quality.broken(results, "warn").items()]
        for warning in warnings:
            log(f"{source_name}: WARNING expectation {warning}")
        for f in files:
            lacking = _declared_but_absent(source, f)
            if lacking:  # a column renamed upstream loads as null under its old name: the one sign of it
                warnings.append(f"file {f.name} has no column {', '.join(lacking)}: null in its rows (renamed? "
                                f"declare the file's name for it in conf/sources/{source_name}.yaml; a not_null "
                                f"expectation quarantines such rows)")
                log(f"{source_name}: WARNING {warnings[-1]}")
        if added:
            log(f"{source_name}: new column(s) added to bronze/silver: "
                f"{', '.join(f'{n} {k}' for n, k in added.items())}")
        bronze_table, silver_table = catalog.source_tables(source_name, source.description,
                                                           str(landing / source.path), _stats_columns(source))
        bronze, silver = bronze_table.name, silver_table.name
        resuming = _mark_pending(lakehouse, source_name, batch_id, names)
        if resuming:
            log(f"{source_name}: an earlier load stopped before its ledger commit: this one replaces its rows")
        undeclared = {name: kind for name, kind in columns.items() if name not in source.columns}
        for table in (bronze, silver):  # every undeclared column, in case a load stopped between the two
            _add_columns(spark, lakehouse, table, undeclared)

        quarantined = checked.where(F.col(OUTCOME) == "quarantine").select(
            F.lit(source_name).alias("source"), F.col(FILE).alias("file"), F.col(RAW).alias("raw_record"),
            F.col(REASON).alias("reason"), F.lit(batch_id).alias("batch_id"), F.lit(now).alias("quarantined_at"))
        with _OPS_WRITES:
            _write_rows_of_files(spark, quarantined, lakehouse, QUARANTINE,
                                 f"source = {sql_string(source_name)} AND {_in_files('file', names)}",
                                 any(c.quarantined for c in counts.values()), resuming, create=False,
                                 properties=catalog.QUARANTINE_TABLE.properties(owner))
        crash_point("quarantine")

        kept = checked.where(F.col(OUTCOME) == "keep").select(*[F.col(f"`{n}`") for n in columns],
                                                              *_audit_columns(now, batch_id))
        any_kept = any(c.kept for c in counts.values())
        _write_rows_of_files(spark, _aligned(spark, kept, lakehouse, bronze), lakehouse, bronze,
                             _in_files(FILE, names), any_kept, resuming, create=True,
                             properties=bronze_table.properties(owner))
        crash_point("bronze")
        order = [source.event_time, "_ingested_at", FILE]
        if not lake.exists(lakehouse, silver):  # the first load: nothing to merge with, a plain insert
            lake.append(spark, lake.latest_per_key(kept, source.primary_key, order), lakehouse, silver,
                        properties=silver_table.properties(owner))
        elif any_kept:
            lake.merge_latest(spark, _aligned(spark, kept, lakehouse, silver), lakehouse, silver,
                              source.primary_key, order, properties=silver_table.properties(owner))
        crash_point("silver")
        with _OPS_WRITES:
            quality.record(spark, results, source_name, batch_id, names, lakehouse, owner, now, replace=resuming)
        crash_point("quality")
    finally:
        checked.unpersist()
    carried = {}  # file -> the new columns it carries
    for column, files_with in new.items():
        for name in files_with:
            carried.setdefault(name, []).append(column)
    return counts, added, carried, warnings


def _declared_but_absent(source: Source, f: LandingFile) -> list[str]:
    """The declared columns a CSV file's header or a Parquet file's schema does not have (JSON lines have no
    header: any key may be absent from a row)."""
    present = {name.lower() for name in f.header} | {name.lower() for name, _ in f.types}
    return [name for name in source.columns if name.lower() not in present] if present else []


def _unchanged(f: LandingFile) -> bool:
    """True when the entry is still the regular file that was inspected (same device, inode, size, time)."""
    try:
        return _identity(os.lstat(f.path)) == f.identity
    except OSError:
        return False


def _has_rows(spark: SparkSession, lakehouse: Path, table: str, where: str) -> bool:
    """True when the table has rows matching `where` (left by an earlier, interrupted load of the same files)."""
    return lake.exists(lakehouse, table) and lake.read(spark, lakehouse, table).where(where).limit(1).count() > 0


def _pending(lakehouse: Path, source_name: str) -> Path:
    return lakehouse / "_ingest" / f"{source_name}.pending"


def _mark_pending(lakehouse: Path, source_name: str, batch_id: str, names: list[str]) -> bool:
    """Note, before the first commit, that a load of these files is under way; True when an earlier one was
    interrupted (its marker is still there: it may have committed rows of files the ledger does not list)."""
    marker = _pending(lakehouse, source_name)
    interrupted = marker.exists()
    marker.parent.mkdir(parents=True, exist_ok=True)
    with open(marker, "w") as fh:
        fh.write(json.dumps({"batch_id": batch_id, "files": names,
                             "started_at": dt.datetime.now(dt.timezone.utc).isoformat()}))
        fh.flush()
        os.fsync(fh.fileno())
    return interrupted


def _write_rows_of_files(spark: SparkSession, df: DataFrame, lakehouse: Path, table: str, where: str,
                         has_rows: bool, resuming: bool, create: bool, properties: dict[str, str]) -> None:
    """Write a batch's rows: appended, or, after an interrupted load, replacing whatever it left for these files."""
    missing = create and not lake.exists(lakehouse, table)
    if not resuming:
        if has_rows or missing:
            lake.append(spark, df, lakehouse, table, properties=properties)
    elif has_rows or missing or _has_rows(spark, lakehouse, table, where):
        lake.replace_where(spark, df, lakehouse, table, where, properties=properties)


def _aligned(spark: SparkSession, df: DataFrame, lakehouse: Path, table: str) -> DataFrame:
    """`df`'s columns in the table's order (columns added later sit at the end of the table)."""
    if not lake.exists(lakehouse, table):
        return df
    return df.select(*[F.col(f"`{c}`") for c in lake.read(spark, lakehouse, table).columns])


def _ledger_rows(spark: SparkSession, source_name: str, batch_id: str, now: dt.datetime,
                 loaded: list[LandingFile], duplicates: list[LandingFile], unreadable: list[LandingFile],
                 refused: list[LandingFile], counts: dict[str, quality.FileCounts],
                 carried: dict[str, list[str]]) -> DataFrame:
    """One ledger row per file of the batch, with its own accounting (an empty file is recorded with zero rows)."""
    rows = []
    for status, files in (("loaded", loaded), ("duplicate", duplicates), ("unreadable", unreadable),
                          ("refused", refused)):
        for f in files:
            c = counts.get(f.name, quality.FileCounts())
            rows.append((source_name, f.name, batch_id, status, now, f.bytes, f.modified_at, f.sha256, f.duplicate_of,
                         f.refused or f.problem, c.read, c.kept, c.quarantined, c.dropped,
                         sorted(carried.get(f.name, []))))
    return spark.createDataFrame(rows, LEDGER_SCHEMA)


def ingest_tables(sources: dict[str, Source]) -> list[str]:
    """The tables ingest writes for these sources: bronze and silver of each, then its ops tables."""
    return [table(name) for name in sources for table in (catalog.bronze, catalog.silver)] + [
        QUARANTINE, quality.QUALITY, FILE_LEDGER]


def maintain(spark: SparkSession, lakehouse: Path, sources: dict[str, Source], target_file_mb: int,
             retention_hours: float, log=print, skip: Collection[str] = ()) -> dict[str, dict[str, int]]:
    """Compact the small files of every table ingest writes for these sources, then VACUUM it; per table, its data
    files before and after and how many unreferenced files VACUUM deleted. Tables in `skip` (maintained earlier in
    this process: a source or ops table another pipeline shares) are left alone. Run under the ingest lock:
    OPTIMIZE rewrites files a concurrent MERGE may be rewriting too."""
    done = {}
    for table in ingest_tables(sources):
        if table in skip:
            log(f"{table}: maintained tonight already (a pipeline before this one shares it)")
            continue
        if not lake.exists(lakehouse, table):
            continue
        before = lake.data_files(spark, lakehouse, table)
        compacted = lake.compact(spark, lakehouse, table, target_file_mb)
        deleted = lake.vacuum(spark, lakehouse, table, retention_hours)
        after = lake.data_files(spark, lakehouse, table)
        log(f"{table}: {before} -> {after} data file(s) ({compacted['files_removed']} compacted into "
            f"{compacted['files_added']}); VACUUM deleted {deleted} unreferenced file(s) older than "
            f"{retention_hours:g} h")
        done[table] = {"files_before": before, "files_after": after, "vacuumed": deleted}
    return done


def ingest_all(spark: SparkSession, sources: dict[str, Source], landing: Path, lakehouse: Path,
               owner: str, log=print) -> list[IngestResult]:
    """Ingest every declared source, several at a time; a source with no landing folder is an error that names it.

    Each source is loaded (or not) on its own: one that fails does not stop the others. Once all are
    done, the first failure in declaration order is raised and any later ones are logged."""
    for name, source in sources.items():
        source_folder(landing, name, source)
    missing = [name for name, s in sources.items() if not (landing / s.path).is_dir()]
    if missing:
        raise DataError(f"no landing folder for source(s) {', '.join(missing)} under {landing} "
                        f"(expected {', '.join(str(landing / sources[m].path) for m in missing)}); "
                        f"run `lakeforge generate` for the demo data or fix paths.landing")
    with ThreadPoolExecutor(max_workers=PARALLEL_SOURCES, thread_name_prefix="ingest") as pool:
        loads = [pool.submit(_ingest_in_own_pool, spark, name, source, landing, lakehouse, owner, log)
                 for name, source in sources.items()]
    failed = [(name, error) for name, load in zip(sources, loads) if (error := load.exception())]
    for name, error in failed[1:]:
        log(f"{name}: ERROR {error}")
    if failed:
        raise failed[0][1]
    return [load.result() for load in loads]


def _ingest_in_own_pool(spark: SparkSession, source_name: str, *args) -> IngestResult:
    """`ingest_source` with its Spark jobs in a scheduler pool of their own (fair shares between sources)."""
    spark.sparkContext.setLocalProperty("spark.scheduler.pool", f"ingest.{source_name}")
    try:
        return ingest_source(spark, source_name, *args)
    finally:
        spark.sparkContext.setLocalProperty("spark.scheduler.pool", None)


def row_counts(results: list[IngestResult], log=print) -> dict[str, int]:
    """What ops.runs records of an ingest: per source, files and rows read, kept, quarantined, dropped, refused."""
    counts = {}
    for r in results:
        counts.update({f"{r.source}.files": r.files, f"{r.source}.read": r.rows_read,
                       f"{r.source}.kept": r.rows_kept, f"{r.source}.quarantined": r.rows_quarantined,
                       f"{r.source}.dropped": r.rows_dropped, f"{r.source}.refused": len(r.refused)})
        if r.files == 0:
            log(f"{r.source}: no new files")
    return counts


def ingest_sources(spark: SparkSession, sources: dict[str, Source], landing: Path, lakehouse: Path, owner: str,
                   run: Run) -> Outcome:
    """The ingest stage's work: every source's new landing files into bronze/silver (`ingest_all`), the silver
    tables' versions noted as the run's inputs first; per source what ops.runs records (`row_counts`)."""
    run.input(spark, lakehouse, *[catalog.silver(name) for name in sources])
    counts = row_counts(ingest_all(spark, sources, landing, lakehouse, owner, log=run.log), log=run.log)
    return Outcome({"stage": "ingest", **counts}, rows=counts, outputs=ingest_tables(sources))


def maintain_sources(spark: SparkSession, lakehouse: Path, sources: dict[str, Source], target_file_mb: int,
                     retention_hours: float, log=print, skip: Collection[str] = ()) -> Outcome:
    """The maintain stage's work: compact and VACUUM the tables ingest writes (`maintain`, but not those in
    `skip`), per table and count for ops.runs, the totals as the summary."""
    tables = maintain(spark, lakehouse, sources, target_file_mb, retention_hours, log=log, skip=skip)
    counts, totals = maintenance_summary(tables)
    return Outcome({"stage": "maintain", **totals}, rows=counts, outputs=list(tables))


def maintenance_summary(tables: dict[str, dict[str, int]]) -> tuple[dict[str, int], dict[str, int]]:
    """What `maintain` did: per table and count (for ops.runs), and the totals (its summary)."""
    rows = {f"{table}.{key}": value for table, counts in tables.items() for key, value in counts.items()}
    totals = {"tables": len(tables), **{key: sum(c[key] for c in tables.values())
                                        for key in ("files_before", "files_after", "vacuumed")}}
    return rows, totals


def maintenance_due(spark: SparkSession, lakehouse: Path, pipeline: str, every_days: int | None) -> bool:
    """True when `every_days` have passed (by date) since the pipeline's last successful maintain, or none ran."""
    if not every_days:
        return False
    last = last_succeeded(spark, lakehouse, "maintain", pipeline)
    return last is None or (dt.datetime.now(dt.timezone.utc).date() - last.date()).days >= every_days
