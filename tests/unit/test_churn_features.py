"""The churn feature function on a handful of hand-made orders: channel mix windows and the main channel (no Spark)."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from lakeforge.demo.churn import customer_activity

ORDERS = {  # customer -> (order time, channel)
    "A": [("2026-07-01 12:00", "delivery"), ("2026-08-05 12:00", "dine_in"), ("2026-08-06 00:00", "drive_thru"),
          ("2026-08-07 12:00", "dine_in"), ("2026-08-08 12:00", "takeaway"), ("2026-08-09 12:00", "delivery")],
    # Takeaway was B's channel, but more than 90 days ago.
    "B": [("2026-03-01 12:00", "takeaway"), ("2026-03-02 12:00", "takeaway"), ("2026-04-01 12:00", "takeaway"),
          ("2026-06-01 12:00", "dine_in"), ("2026-07-20 12:00", "dine_in"), ("2026-07-25 12:00", "drive_thru")],
    "C": [],
}


def rows_as_of(customer: str, as_of: dt.date) -> pd.DataFrame:
    """What the function receives for one customer and date: its orders before the date, or one row without one."""
    orders = [(pd.Timestamp(t), c) for t, c in ORDERS[customer] if pd.Timestamp(t) < pd.Timestamp(as_of)]
    orders = orders or [(pd.NaT, None)]
    return pd.DataFrame({"customer_id": customer, "as_of_date": as_of, "signup_date": dt.date(2026, 1, 1),
                         "loyalty_member": True, "order_ts": pd.to_datetime([t for t, _ in orders]),
                         "channel": [c for _, c in orders], "amount": [10.0 if c else float("nan") for _, c in orders]})


def test_short_channel_mix_and_main_channel_as_of_each_date():
    aug9, aug10 = dt.date(2026, 8, 9), dt.date(2026, 8, 10)
    rows = pd.concat([rows_as_of("A", aug9), rows_as_of("A", aug10), rows_as_of("B", aug10), rows_as_of("C", aug10)],
                     ignore_index=True)
    out = customer_activity(rows)
    got = out[["customer_id", "as_of_date", "orders_90d", "dine_in_share_4d", "delivery_share_4d",
               "dine_in_share_90d", "main_channel_90d"]]
    expected = pd.DataFrame({
        "customer_id": ["A", "A", "B", "C"], "as_of_date": [aug9, aug10, aug10, aug10],
        "orders_90d": [5, 6, 3, 0],
        # The 4 days before Aug 9 start on Aug 5 at midnight; Aug 10's start on Aug 6 at midnight (included).
        "dine_in_share_4d": [2 / 4, 1 / 4, 0.0, 0.0],
        "delivery_share_4d": [0.0, 1 / 4, 0.0, 0.0],
        "dine_in_share_90d": [2 / 5, 2 / 6, 2 / 3, 0.0],
        # Aug 10: delivery and dine-in tie at 2 orders each; the tie goes to the first name alphabetically.
        "main_channel_90d": ["dine_in", "delivery", "dine_in", None],
    })
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
