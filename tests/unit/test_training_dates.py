"""The time-based split: holdout last, labels matured, no training label window reaching into the holdout."""

from __future__ import annotations

import datetime as dt

import pytest

from lakeforge import config, training
from lakeforge.errors import DataError


def test_snapshot_dates_are_purged_and_time_ordered():
    churn = config.load_pipeline("churn")  # every 7 days, from day 60, horizon 30, holdout 2
    first, last = dt.date(2026, 5, 1), dt.date(2026, 10, 27)
    train, holdout = training.snapshot_dates(first, last, churn)
    assert holdout == [dt.date(2026, 9, 15), dt.date(2026, 9, 22)]            # last date <= 10-28 - 30 days
    assert holdout[-1] + dt.timedelta(days=30) <= last + dt.timedelta(days=1)  # label window fully observed
    assert train[0] == dt.date(2026, 6, 30)                                    # 60 days after the first event
    assert len(train) == 7
    assert train[-1] == dt.date(2026, 8, 11)                                   # 8-11 + 30 days <= 9-15; 8-18 would overlap
    assert all(d + dt.timedelta(days=30) <= holdout[0] for d in train)
    assert train == sorted(train) and max(train) < min(holdout)


def test_too_little_history_is_a_clear_error():
    churn = config.load_pipeline("churn")
    with pytest.raises(DataError, match=r"not enough history to train churn: events from 2026-05-01 to 2026-07-01"):
        training.snapshot_dates(dt.date(2026, 5, 1), dt.date(2026, 7, 1), churn)


def test_a_retrain_window_keeps_the_newest_matured_dates():
    churn = config.load_pipeline("churn")  # horizon 30, holdout 2
    first, last = dt.date(2026, 5, 1), dt.date(2026, 10, 27)
    since = last + dt.timedelta(days=1 - 30 - 42)                                # the policy's 42-day window
    train, holdout = training.snapshot_dates(first, last, churn, since=since, every_days=1)
    assert holdout == [dt.date(2026, 9, 27), dt.date(2026, 9, 28)]              # 9-28 + 30 days = 10-28: matured
    assert train[0] == since == dt.date(2026, 8, 17) and train[-1] == dt.date(2026, 8, 28)
    assert all(d + dt.timedelta(days=30) <= holdout[0] for d in train) and len(train) == 12
