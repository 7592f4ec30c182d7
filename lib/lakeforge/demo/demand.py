"""The demand pipeline's module: next-day order count per store (plain pandas, run on Spark as is).

Feature function input: one row per (store, as_of_date, order in the lookback window) with the
store's attributes as known before as_of_date; a store with no order in the window has one row
whose order columns are null. Output: one row per (store_id, as_of_date): recent order counts,
the same weekday a week before, the weekday of the date to forecast, the delivery share.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def store_activity(rows: pd.DataFrame) -> pd.DataFrame:
    """Orders in the last 1, 7 and 28 days, the same weekday last week, weekday and delivery share per store."""
    as_of = pd.to_datetime(rows["as_of_date"])
    ordered_at = pd.to_datetime(rows["order_ts"])
    day = (as_of.dt.normalize() - ordered_at.dt.normalize()).dt.days  # 1 = yesterday; NaN where no order
    has_order = ordered_at.notna()
    frame = rows.assign(
        _1d=(day == 1).astype("int64"),
        _7d=(day <= 7).astype("int64"),
        _28d=((day <= 28) & has_order).astype("int64"),
        _last_week=(day == 7).astype("int64"),
        _delivery_7d=((rows["channel"] == "delivery") & (day <= 7)).astype("int64"),
        _weekday=as_of.dt.dayofweek.astype("int64"),
    )
    out = frame.groupby(["store_id", "as_of_date"], sort=True).agg(
        orders_1d=("_1d", "sum"),
        orders_7d=("_7d", "sum"),
        orders_28d=("_28d", "sum"),
        same_weekday_last_week=("_last_week", "sum"),
        delivery_7d=("_delivery_7d", "sum"),
        day_of_week=("_weekday", "first"),
        seats=("seats", "first"),
        has_drive_thru=("has_drive_thru", "first"),
    ).reset_index()
    orders_7d = out["orders_7d"].to_numpy(dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        out["delivery_share_7d"] = np.where(orders_7d > 0, out["delivery_7d"] / orders_7d, 0.0)
    out["seats"] = out["seats"].fillna(0).astype("int64")
    out["has_drive_thru"] = out["has_drive_thru"].fillna(False).astype("int64")
    for column in ("orders_1d", "orders_7d", "orders_28d", "same_weekday_last_week", "day_of_week"):
        out[column] = out[column].astype("int64")
    return out.drop(columns=["delivery_7d"])
