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
# The channel mix of the last few days moves as soon as behaviour does; the 90-day mix lags it by weeks.
# Four days, measured on the demo's regime shift: the dine-in share's PSI crosses 0.2 three or four days
# after the shift and stays above it (3 days dips below it again on small populations; 7 days crosses a
# day or two later).
SHORT_DAYS = 4
CHANNEL_WINDOWS = {"90d": 90, "4d": SHORT_DAYS}  # name suffix -> days


def customer_activity(rows: pd.DataFrame) -> pd.DataFrame:
    """Recency, frequency, spend, channel mix (90 and 4 days), main channel, tenure and loyalty per customer and date."""
    as_of = pd.to_datetime(rows["as_of_date"])
    ordered_at = pd.to_datetime(rows["order_ts"])
    days_ago = (as_of - ordered_at).dt.total_seconds() / 86400.0  # NaN where there is no order
    in_window = {}  # per window: its orders, and those of each channel whose share is a feature
    for suffix, days in CHANNEL_WINDOWS.items():
        within = days_ago <= days
        in_window[f"orders_{suffix}"] = within
        in_window[f"delivery_{suffix}"] = within & (rows["channel"] == "delivery")
        in_window[f"dine_in_{suffix}"] = within & (rows["channel"] == "dine_in")
    recent = in_window["orders_90d"]
    frame = rows.assign(
        _days_ago=days_ago,
        _in_30d=(days_ago <= 30).astype("int64"),
        _has_order=ordered_at.notna().astype("int64"),
        _spend_90d=rows["amount"].where(recent, 0.0).fillna(0.0),
        _tenure=(as_of - pd.to_datetime(rows["signup_date"])).dt.days.astype("float64"),
        **{f"_{name}": flags.astype("int64") for name, flags in in_window.items()},
    )
    grouped = frame.groupby(["customer_id", "as_of_date"], sort=True)
    counts = {name: (f"_{name}", "sum") for name in in_window}
    out = grouped.agg(
        orders_30d=("_in_30d", "sum"),
        orders_180d=("_has_order", "sum"),
        spend_90d=("_spend_90d", "sum"),
        avg_amount=("amount", "mean"),
        days_since_last_order=("_days_ago", "min"),
        tenure_days=("_tenure", "first"),
        loyalty_member=("loyalty_member", "first"),
        **counts,
    ).reset_index()
    # A customer with no order in the window: recency is "longer than we look back", spend is zero.
    out["days_since_last_order"] = out["days_since_last_order"].fillna(LOOKBACK_DAYS + 1.0)
    out["avg_amount"] = out["avg_amount"].fillna(0.0)
    for suffix in CHANNEL_WINDOWS:
        orders = out[f"orders_{suffix}"].to_numpy(dtype="float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            for channel in ("delivery", "dine_in"):
                out[f"{channel}_share_{suffix}"] = np.where(orders > 0, out[f"{channel}_{suffix}"] / orders, 0.0)
    out["loyalty_member"] = out["loyalty_member"].fillna(False).astype("int64")
    for column in ("orders_30d", "orders_90d", "orders_180d"):
        out[column] = out[column].astype("int64")
    out = out.merge(main_channel(frame[recent]).rename("main_channel_90d").reset_index(),
                    on=["customer_id", "as_of_date"], how="left")
    return out.drop(columns=[c for c in counts if c != "orders_90d"])


def main_channel(orders: pd.DataFrame) -> pd.Series:
    """The channel of most of each customer's orders, per (customer_id, as_of_date); a tie goes to the first channel
    in alphabetical order, so the answer never depends on row order. Customers without orders are absent."""
    counts = orders.groupby(["customer_id", "as_of_date", "channel"]).size().rename("_n").reset_index()
    top = (counts.sort_values(["customer_id", "as_of_date", "_n", "channel"], ascending=[True, True, False, True],
                              kind="mergesort")
           .drop_duplicates(["customer_id", "as_of_date"], keep="first"))
    return top.set_index(["customer_id", "as_of_date"])["channel"]


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
