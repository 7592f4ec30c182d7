"""How apply_grouped sizes its calls (the rule alone; tests/spark/test_features.py runs the calls)."""
from __future__ import annotations

from lakeforge.pandas_on_spark import ROWS_PER_CALL, call_span


def test_a_call_takes_as_many_dates_as_keep_it_near_the_rows_per_call():
    assert ROWS_PER_CALL == 100_000
    assert call_span(4, 2) == 50_000  # the tiny demo's four stores: a backfill is one call per bucket
    assert call_span(1_000, 4) == 400  # 250 rows of a date per bucket
    assert call_span(1_001, 4) == 398  # a bucket's share rounds up: 251 rows
    assert call_span(0, 2) == 100_000  # an empty spine still gives a span of dates, not a division by zero


def test_a_date_larger_than_a_call_keeps_one_date_per_call():
    assert call_span(400_000, 4) == 1  # exactly the rows per call
    assert call_span(10_000_000, 4) == 1
