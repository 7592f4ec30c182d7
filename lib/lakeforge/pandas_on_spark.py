"""Run a plain pandas function on Spark (applyInPandas, Arrow) or directly on pandas, with one contract.

A grouped function receives whole groups: every row of an entity arrives in the same call,
possibly together with other entities, so the function can be vectorised (one pandas
`groupby` per call instead of one Python call per entity). On pandas it is called once with
the whole frame, which is why both ways give the same rows.
"""

from __future__ import annotations

import importlib
from typing import Callable

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from lakeforge.errors import ConfigError

PandasFn = Callable[[pd.DataFrame], pd.DataFrame]


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


def conforming(fn: PandasFn, schema: StructType) -> PandasFn:
    """Wrap `fn` so its output has exactly the schema's columns, in order, or fails naming the column."""
    names = schema.fieldNames()
    label = f"{fn.__module__}.{getattr(fn, '__qualname__', fn)}"

    def run(pdf: pd.DataFrame) -> pd.DataFrame:
        out = fn(pdf)
        if not isinstance(out, pd.DataFrame):
            raise TypeError(f"feature function {label} returned {type(out).__name__}, expected a pandas DataFrame")
        missing = [name for name in names if name not in out.columns]
        if missing:
            raise ValueError(f"feature function {label} did not return column '{missing[0]}' declared in its "
                             f"output schema (it returned: {', '.join(map(str, out.columns))})")
        return out[names]

    return run


def apply_grouped(df: DataFrame, fn: PandasFn, key: str, schema: StructType, buckets: int) -> DataFrame:
    """Run `fn` on Spark so that each call gets all rows of some values of `key` (hash-bucketed)."""
    bucket = F.pmod(F.xxhash64(F.col(key)), F.lit(buckets))
    return df.groupBy(bucket).applyInPandas(conforming(fn, schema), schema)


def apply_grouped_pandas(pdf: pd.DataFrame, fn: PandasFn, schema: StructType) -> pd.DataFrame:
    """The same function on pandas: one call with every group."""
    return conforming(fn, schema)(pdf)
