"""Run a plain pandas function on Spark (applyInPandas / mapInPandas, Arrow) or directly on pandas, with one contract.

Two ways to run a function `pd.DataFrame -> pd.DataFrame`:

* grouped: every row of a key arrives in the same call, possibly together with other keys, so
  the function can be vectorised (one pandas `groupby` per call instead of one Python call per
  key). On Spark the rows are grouped by a hash bucket of the key (plus any extra columns such
  as the as-of date); on pandas the function is called once with every row.
* row-wise: the function gets batches of rows and returns one row per input row
  (`mapInPandas` on Spark, one call with every row on pandas).

One contract on both engines, which is why both give the same rows: the input is coerced to the
pandas dtypes Spark's Arrow conversion gives and put in one canonical row order, and the output is
checked against the declared output schema. A missing, undeclared or mistyped column is an error
that names the function and the column (on Spark it arrives inside the task's PythonException).
The dtypes are Spark's: an integer column with nulls is float64, a boolean with nulls is object,
a date is `datetime.date` objects, a timestamp is naive datetime64[ns] in the session time zone
(UTC in lakeforge), a missing string is None.
"""

from __future__ import annotations

import importlib
import re
from typing import Callable, Iterator

import pandas as pd
from pandas.api import types as ptypes
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (BinaryType, BooleanType, ByteType, DataType, DateType, DecimalType, DoubleType,
                               FloatType, IntegerType, LongType, ShortType, StringType, StructField, StructType,
                               TimestampNTZType, TimestampType, _parse_datatype_string)

from lakeforge.errors import ConfigError, DataError

PandasFn = Callable[[pd.DataFrame], pd.DataFrame]

_INTEGERS = {ByteType: "int8", ShortType: "int16", IntegerType: "int32", LongType: "int64"}
_FLOATS = {FloatType: "float32", DoubleType: "float64"}
_ATOMIC = {"string": StringType, "boolean": BooleanType, "bool": BooleanType, "tinyint": ByteType, "byte": ByteType,
           "smallint": ShortType, "short": ShortType, "int": IntegerType, "integer": IntegerType, "bigint": LongType,
           "long": LongType, "float": FloatType, "real": FloatType, "double": DoubleType, "date": DateType,
           "timestamp": TimestampType, "timestamp_ltz": TimestampType, "timestamp_ntz": TimestampNTZType,
           "binary": BinaryType}
_DECIMAL = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


def spark_type(name: str) -> DataType:
    """The Spark type of a YAML type name (`bigint`, `double`, `decimal(10,2)`, ...), without a session."""
    text = name.strip().lower()
    if text in _ATOMIC:
        return _ATOMIC[text]()
    decimal = _DECIMAL.match(text)
    if decimal:
        return DecimalType(int(decimal[1]), int(decimal[2]))
    try:  # arrays, maps, structs: Spark's own parser, which needs a running session
        return _parse_datatype_string(name)
    except Exception:
        raise ConfigError(f"unknown column type '{name}' (expected a Spark SQL type such as string, bigint, double, "
                          f"boolean, date, timestamp, decimal(10,2))") from None


def schema_of(columns) -> StructType:
    """A StructType from (name, type name) pairs, e.g. a YAML `columns:` mapping's `.items()`."""
    return StructType([StructField(str(name), spark_type(kind), True) for name, kind in columns])


def import_function(dotted: str) -> PandasFn:
    """Import `package.module.function`, with an error that names the path when it fails."""
    module_name, _, attr = dotted.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"cannot import function '{dotted}' ({exc}); the pipeline YAML must name an "
                          f"importable module.function") from None
    if not callable(fn):
        raise ConfigError(f"'{dotted}' is not a function")
    return fn


def function_name(fn: Callable) -> str:
    """`module.qualname` of a function, as error messages name it."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# ---------------------------------------------------------------- dtypes: one contract for both engines


class _Mismatch(Exception):
    """A column's values do not fit its Spark type (the message says what was found)."""


def _missing_to_none(values: pd.Series) -> pd.Series:
    return values.astype(object).where(values.notna(), None)


def _numbers(s: pd.Series, lenient: bool) -> pd.Series:
    if ptypes.is_bool_dtype(s.dtype) and not lenient:
        raise _Mismatch("the function returned booleans")
    if ptypes.is_numeric_dtype(s.dtype):
        return s
    inferred = ptypes.infer_dtype(s, skipna=True)
    if inferred in ("integer", "floating", "mixed-integer-float", "decimal", "empty") or lenient:
        try:
            return pd.to_numeric(s)
        except (TypeError, ValueError):
            pass
    raise _Mismatch(f"the function returned {inferred} values ({s.dtype})")


def _integers(s: pd.Series, dtype: str, lenient: bool) -> pd.Series:
    values = _numbers(s, lenient)
    if ptypes.is_integer_dtype(values.dtype) and not values.isna().any():
        return values.astype(dtype)
    floats = values.astype("float64")
    fractional = floats[floats.notna() & (floats % 1 != 0)]
    if len(fractional):
        raise _Mismatch(f"the function returned non-integer values such as {fractional.iloc[0]!r} ({s.dtype})")
    # What Spark hands pandas for an integer column with nulls: float64 with NaN.
    return floats if floats.isna().any() else floats.astype(dtype)


def _booleans(s: pd.Series, lenient: bool) -> pd.Series:
    if s.dtype == bool:
        return s
    inferred = ptypes.infer_dtype(s, skipna=True)
    if inferred == "string" and lenient:
        lowered = s.str.lower()
        if lowered.dropna().isin(["true", "false"]).all():
            s = lowered.map({"true": True, "false": False})
            inferred = "boolean"
    if inferred not in ("boolean", "empty"):
        raise _Mismatch(f"the function returned {inferred} values ({s.dtype})")
    return s.astype(bool) if not s.isna().any() else _missing_to_none(s)


def _strings(s: pd.Series, lenient: bool) -> pd.Series:
    inferred = ptypes.infer_dtype(s, skipna=True)
    if inferred in ("string", "empty"):
        return _missing_to_none(s)
    if lenient:
        return _missing_to_none(s.map(str, na_action="ignore"))
    raise _Mismatch(f"the function returned {inferred} values ({s.dtype})")


def _datetimes(s: pd.Series, lenient: bool) -> pd.Series:
    """Naive datetime64[ns]; aware values are converted to UTC, the lakeforge session time zone."""
    if not ptypes.is_datetime64_any_dtype(s.dtype):
        inferred = ptypes.infer_dtype(s, skipna=True)
        if inferred not in ("datetime", "datetime64", "date", "empty") and not (lenient and inferred == "string"):
            raise _Mismatch(f"the function returned {inferred} values ({s.dtype})")
        try:
            s = pd.to_datetime(s)
        except (TypeError, ValueError) as exc:
            raise _Mismatch(f"values do not parse as times ({exc})") from None
    if getattr(s.dt, "tz", None) is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    return s.astype("datetime64[ns]")


def _dates(s: pd.Series, lenient: bool) -> pd.Series:
    if s.dtype == object and ptypes.infer_dtype(s, skipna=True) in ("date", "empty"):
        return _missing_to_none(s)
    times = _datetimes(s, lenient)
    if (times.dropna() != times.dropna().dt.normalize()).any():
        raise _Mismatch("the function returned times of day, not dates")
    return _missing_to_none(pd.Series(times.dt.date, index=s.index))


def _coerce(s: pd.Series, kind: DataType, lenient: bool) -> pd.Series:
    """`s` with the dtype Spark gives for `kind`; `lenient` also parses text (inputs read from files)."""
    if type(kind) in _INTEGERS:
        return _integers(s, _INTEGERS[type(kind)], lenient)
    if type(kind) in _FLOATS:
        return _numbers(s, lenient).astype(_FLOATS[type(kind)])
    if isinstance(kind, BooleanType):
        return _booleans(s, lenient)
    if isinstance(kind, StringType):
        return _strings(s, lenient)
    if isinstance(kind, DateType):
        return _dates(s, lenient)
    if isinstance(kind, (TimestampType, TimestampNTZType)):
        return _datetimes(s, lenient)
    return s  # decimals, arrays, maps, structs: as the function made them


def prepare(pdf: pd.DataFrame, schema: StructType, order_by: list[str] | None = None) -> pd.DataFrame:
    """The schema's columns with Spark's pandas dtypes, in one canonical row order (a function's input)."""
    missing = [f.name for f in schema.fields if f.name not in pdf.columns]
    if missing:
        raise DataError(f"input column '{missing[0]}' is missing (the frame has: {', '.join(map(str, pdf.columns))})")
    columns = {}
    for f in schema.fields:
        try:
            columns[f.name] = _coerce(pdf[f.name].reset_index(drop=True), f.dataType, lenient=True)
        except _Mismatch as exc:
            raise DataError(f"input column '{f.name}' should be {f.dataType.simpleString()}: {exc}") from None
    frame = pd.DataFrame(columns, index=pd.RangeIndex(len(pdf)))
    if order_by:
        # Rows arrive in shuffle order on Spark; sorting makes every call see the same order on both engines.
        frame = frame.sort_values(order_by, kind="mergesort", na_position="first", ignore_index=True)
    return frame


def conform(out: object, schema: StructType, name: str) -> pd.DataFrame:
    """The function's output with exactly the schema's columns and dtypes, or an error naming `name` and the column."""
    if not isinstance(out, pd.DataFrame):
        raise DataError(f"feature function {name} returned {type(out).__name__}, expected a pandas DataFrame")
    declared = schema.fieldNames()
    returned = [str(c) for c in out.columns]
    missing = [c for c in declared if c not in returned]
    if missing:
        raise DataError(f"feature function {name} did not return column '{missing[0]}' declared in its output "
                        f"schema (it returned: {', '.join(returned)})")
    extra = [c for c in returned if c not in declared]
    if extra:
        hint = _type_hint(out[extra[0]])
        raise DataError(f"feature function {name} returned column '{extra[0]}', which its output schema does not "
                        f"declare: add it to features.columns in the pipeline YAML{hint} or drop it in the function")
    repeated = sorted({c for c in returned if returned.count(c) > 1})
    if repeated:
        raise DataError(f"feature function {name} returned column '{repeated[0]}' more than once")
    columns = {}
    for f in schema.fields:
        try:
            columns[f.name] = _coerce(out[f.name].reset_index(drop=True), f.dataType, lenient=False)
        except _Mismatch as exc:
            raise DataError(f"feature function {name}: column '{f.name}' is declared "
                            f"{f.dataType.simpleString()} but {exc}") from None
    return pd.DataFrame(columns, index=pd.RangeIndex(len(out)))


def derive_schema(pdf: pd.DataFrame) -> StructType:
    """The Spark schema of a pandas frame, to declare as a function's output (`features.columns`)."""
    fields = []
    for column in pdf.columns:
        s = pdf[column]
        if ptypes.is_bool_dtype(s.dtype):
            kind = BooleanType()
        elif ptypes.is_integer_dtype(s.dtype):
            kind = {1: ByteType(), 2: ShortType(), 4: IntegerType()}.get(s.dtype.itemsize, LongType())
        elif ptypes.is_float_dtype(s.dtype):
            kind = FloatType() if s.dtype.itemsize == 4 else DoubleType()
        elif ptypes.is_datetime64_any_dtype(s.dtype):
            kind = TimestampType()
        else:
            inferred = ptypes.infer_dtype(s, skipna=True)
            kinds = {"string": StringType(), "empty": StringType(), "date": DateType(), "boolean": BooleanType(),
                     "integer": LongType(), "floating": DoubleType(), "mixed-integer-float": DoubleType(),
                     "datetime": TimestampType(), "datetime64": TimestampType()}
            if inferred not in kinds:
                raise DataError(f"cannot derive a Spark type for column '{column}' ({inferred} values, {s.dtype})")
            kind = kinds[inferred]
        fields.append(StructField(str(column), kind, True))
    return StructType(fields)


def _type_hint(s: pd.Series) -> str:
    try:
        return f" (e.g. `{s.name}: {derive_schema(s.to_frame()).fields[0].dataType.simpleString()}`)"
    except DataError:
        return ""


# ---------------------------------------------------------------- running a function


def conforming(fn: PandasFn, schema: StructType, inputs: StructType | None = None,
               order_by: list[str] | None = None, rowwise: bool = False) -> PandasFn:
    """Wrap `fn`: canonical input (when `inputs` is given), then its output checked and typed by `schema`."""
    name = function_name(fn)

    def run(pdf: pd.DataFrame) -> pd.DataFrame:
        if inputs is not None:
            pdf = prepare(pdf, inputs, order_by)
        out = fn(pdf)
        if rowwise and isinstance(out, pd.DataFrame) and len(out) != len(pdf):
            raise DataError(f"row-wise function {name} returned {len(out)} rows for {len(pdf)} input rows; "
                            f"a row-wise function returns one row per input row")
        return conform(out, schema, name)

    return run


def buckets_of(spark) -> int:
    """How many hash buckets apply_grouped spreads keys over: the session's shuffle partitions (at least 2)."""
    return max(2, int(spark.conf.get("spark.sql.shuffle.partitions")))


# Each call of a grouped pandas function has a fixed cost (the Arrow hand-off, the function's own set-up), so one call
# per date made a backfill of few entities over many dates mostly that cost. A call takes as many consecutive dates
# as keep it near this many rows; a date that alone holds more still gets calls of its own (memory stays bounded).
ROWS_PER_CALL = 100_000


def call_span(rows_per_date: int, buckets: int) -> int:
    """How many consecutive dates one call of apply_grouped takes, given (an upper bound of) the rows of a date."""
    rows_per_bucket = max(1, -(-rows_per_date // buckets))
    return max(1, ROWS_PER_CALL // rows_per_bucket)


def apply_grouped(df: DataFrame, fn: PandasFn, key: str | list[str], schema: StructType, buckets: int,
                  by_date: str | None = None, dates_per_call: int = 1,
                  order_by: list[str] | None = None) -> DataFrame:
    """Run `fn` on Spark so that each call gets every row of some values of `key` (a hash bucket of them) and, with
    `by_date`, of a span of `dates_per_call` consecutive days of that date column. A call may hold several keys and
    dates, as the pandas twin's one call holds them all."""
    keys = [key] if isinstance(key, str) else key
    groups = [F.pmod(F.xxhash64(*[F.col(k) for k in keys]), F.lit(buckets)).alias("_bucket")]
    if by_date is not None:
        groups.append(F.floor(F.unix_date(F.col(by_date)) / dates_per_call).alias("_days"))
    run = conforming(fn, schema, inputs=df.schema, order_by=order_by)
    return df.groupBy(*groups).applyInPandas(run, schema)


def apply_grouped_pandas(pdf: pd.DataFrame, fn: PandasFn, schema: StructType, inputs: StructType | None = None,
                         order_by: list[str] | None = None) -> pd.DataFrame:
    """The same function on pandas: one call with every group."""
    return conforming(fn, schema, inputs=inputs, order_by=order_by)(pdf)


def apply_rowwise(df: DataFrame, fn: PandasFn, schema: StructType) -> DataFrame:
    """Run a row-wise `fn` on Spark over Arrow batches of rows (mapInPandas)."""
    run = conforming(fn, schema, inputs=df.schema, rowwise=True)

    def batches(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            yield run(frame)

    return df.mapInPandas(batches, schema)


def apply_rowwise_pandas(pdf: pd.DataFrame, fn: PandasFn, schema: StructType,
                         inputs: StructType | None = None) -> pd.DataFrame:
    """The same row-wise function on pandas: one call with every row."""
    return conforming(fn, schema, inputs=inputs, rowwise=True)(pdf)

