"""The delivery_time pipeline's module: minutes from order to delivery, for each delivery order (plain pandas).

Each function gets the rows of many prediction points (one point: an order, `order_id`, predicted at
`prediction_at`, its order time) joined with one source's rows as of that instant, and returns one row
per point (its key and `as_of_date`). A point with no row in the set's window has one row whose source
columns are null.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _per_order(rows: pd.DataFrame, **aggregations) -> pd.DataFrame:
    return rows.groupby(["order_id", "as_of_date"], sort=True).agg(**aggregations).reset_index()


def store_load(rows: pd.DataFrame) -> pd.DataFrame:
    """The store's orders in the hour before the order: how busy the kitchen is."""
    seen = rows["order_ts"].notna()
    frame = rows.assign(_order=seen.astype("int64"),
                        _delivery=(seen & (rows["channel"] == "delivery")).astype("int64"),
                        _items=rows["items"].fillna(0).astype("int64"))
    return _per_order(frame, store_orders_1h=("_order", "sum"), store_deliveries_1h=("_delivery", "sum"),
                      store_items_1h=("_items", "sum"))


def customer_history(rows: pd.DataFrame) -> pd.DataFrame:
    """The customer's deliveries of the last 90 days: how many, and their travel minutes (distance's trace)."""
    travel = (rows["delivered_ts"] - rows["dispatched_ts"]).dt.total_seconds() / 60.0
    frame = rows.assign(_travel=travel, _seen=rows["delivered_ts"].notna().astype("int64"))
    out = _per_order(frame.sort_values(["order_id", "delivered_ts"], kind="mergesort"),
                     customer_deliveries_90d=("_seen", "sum"), customer_travel_min_90d=("_travel", "mean"),
                     customer_last_travel_min=("_travel", "last"))
    return out


def staffing(rows: pd.DataFrame) -> pd.DataFrame:
    """Drivers and cooks on shift in the order's hour (the latest plan as of the order), and the calendar."""
    at = pd.to_datetime(rows["prediction_at"])
    frame = rows.assign(_hour=at.dt.hour.astype("int64"), _weekday=at.dt.dayofweek.astype("int64"),
                        _drivers=rows["drivers"].astype("float64"), _cooks=rows["cooks"].astype("float64"))
    return _per_order(frame, drivers_on_shift=("_drivers", "first"), cooks_on_shift=("_cooks", "first"),
                      hour_of_day=("_hour", "first"), day_of_week=("_weekday", "first"))


def minutes_to_deliver(rows: pd.DataFrame) -> pd.DataFrame:
    """The label: minutes from the order (the prediction instant) to its delivery."""
    minutes = (rows["delivered_ts"] - rows["prediction_at"]).dt.total_seconds() / 60.0
    return pd.DataFrame({"order_id": rows["order_id"], "as_of_date": rows["as_of_date"],
                         "minutes_to_deliver": np.round(minutes, 4)})
