"""The demo's settings (`demo:` in conf/base.yaml): the size and dates of the generated restaurant data."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field


class DemoSettings(BaseModel):
    """Immutable, and an unknown key is an error, like every other settings section (lakeforge.config.Frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 42
    customers: int = Field(3000, ge=10)
    stores: int = Field(20, ge=1)
    days: int = Field(180, ge=60)
    start_date: dt.date = dt.date(2026, 5, 1)
    shift_date: dt.date | None = dt.date(2026, 9, 1)
    column_added_date: dt.date | None = dt.date(2026, 8, 1)
    dirty: bool = True
