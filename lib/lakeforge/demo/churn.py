"""The churn pipeline's module: its feature function (plain pandas, written in the prototype notebook,
run on Spark as is) and a pandas reader of the demo's landing files for notebooks and benchmarks.

Feature function input: one row per (customer, as_of_date, order in the lookback window), with the
customer's attributes as known before as_of_date; a customer with no order in the window has one
row whose order columns are null. Output: one row per (customer_id, as_of_date).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lakeforge.config import Source

LOOKBACK_DAYS = 180  # matches features.events.lookback_days in conf/pipelines/churn.yaml


def customer_activity(rows: pd.DataFrame) -> pd.DataFrame:
    """Recency, frequency, spend, channel mix, tenure and loyalty per customer and as-of date."""
    as_of = pd.to_datetime(rows["as_of_date"])
    ordered_at = pd.to_datetime(rows["order_ts"])
    days_ago = (as_of - ordered_at).dt.total_seconds() / 86400.0  # NaN where there is no order
    recent = days_ago <= 90
    frame = rows.assign(
        _days_ago=days_ago,
        _in_30d=(days_ago <= 30).astype("int64"),
        _in_90d=recent.astype("int64"),
        _has_order=ordered_at.notna().astype("int64"),
        _spend_90d=rows["amount"].where(recent, 0.0).fillna(0.0),
        _delivery_90d=((rows["channel"] == "delivery") & recent).astype("int64"),
        _dine_in_90d=((rows["channel"] == "dine_in") & recent).astype("int64"),
        _tenure=(as_of - pd.to_datetime(rows["signup_date"])).dt.days.astype("float64"),
    )
    grouped = frame.groupby(["customer_id", "as_of_date"], sort=True)
    out = grouped.agg(
        orders_30d=("_in_30d", "sum"),
        orders_90d=("_in_90d", "sum"),
        orders_180d=("_has_order", "sum"),
        spend_90d=("_spend_90d", "sum"),
        avg_amount=("amount", "mean"),
        days_since_last_order=("_days_ago", "min"),
        delivery_90d=("_delivery_90d", "sum"),
        dine_in_90d=("_dine_in_90d", "sum"),
        tenure_days=("_tenure", "first"),
        loyalty_member=("loyalty_member", "first"),
    ).reset_index()
    # A customer with no order in the window: recency is "longer than we look back", spend is zero.
    out["days_since_last_order"] = out["days_since_last_order"].fillna(LOOKBACK_DAYS + 1.0)
    out["avg_amount"] = out["avg_amount"].fillna(0.0)
    orders_90d = out["orders_90d"].to_numpy(dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        out["delivery_share_90d"] = np.where(orders_90d > 0, out["delivery_90d"] / orders_90d, 0.0)
        out["dine_in_share_90d"] = np.where(orders_90d > 0, out["dine_in_90d"] / orders_90d, 0.0)
    out["loyalty_member"] = out["loyalty_member"].fillna(False).astype("int64")
    for column in ("orders_30d", "orders_90d", "orders_180d"):
        out[column] = out[column].astype("int64")
    return out.drop(columns=["delivery_90d", "dine_in_90d"])


def read_customers(landing: Path) -> pd.DataFrame:
    """Every customer row of every landing file (like bronze.customers: all versions, as text)."""
    files = sorted((Path(landing) / "customers").glob("*.csv"))
    return pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""]) for f in files],
                     ignore_index=True)


def read_orders(landing: Path, source: Source) -> pd.DataFrame:
    """The orders as silver.orders holds them, with pandas only: the source's contracts applied, one row per key.

    A line that does not parse, a null primary key, or a failed expectation whose action is
    quarantine, drop or fail removes the row (warn keeps it); a key seen twice keeps its latest
    event time.
    """
    records = []
    for path in sorted((Path(landing) / source.path).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a malformed line: ingest quarantines it
            if isinstance(record, dict):
                records.append(record)
    orders = pd.DataFrame.from_records(records, columns=list(source.columns))
    keep = orders[source.primary_key].notna().all(axis=1)
    for e in source.expectations:
        values = orders[e.column]
        if e.rule == "not_null":
            broken = values.isna()
        elif e.rule == "range":
            numbers = pd.to_numeric(values)
            broken = (numbers < (e.min if e.min is not None else -np.inf)) | (numbers > (e.max if e.max is not None
                                                                                         else np.inf))
        else:
            broken = values.notna() & ~values.astype(str).isin(e.values or [])
        if e.action != "warn":
            keep &= ~broken
    orders = orders[keep].assign(**{source.event_time: pd.to_datetime(orders.loc[keep, source.event_time])})
    return (orders.sort_values(source.event_time, kind="mergesort")
            .drop_duplicates(source.primary_key, keep="last").reset_index(drop=True))
