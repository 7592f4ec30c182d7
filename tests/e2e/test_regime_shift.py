"""The regime-shift story on demo data: the nightly job, night after night across the generator's shift date,
detects the drift within days, measures the champion's performance drop once post-shift labels mature,
retrains because of that drop, and the new champion recovers: the four events in that order.

Every date asserted below is read from ops.monitoring (and MLflow), as the nightly job recorded it.
The calendar is compressed to keep the test short: a 7-day churn horizon (labels mature in a week
instead of thirty days); with labels maturing sooner, the performance margin is tightened to 0.025 (the
YAML's 0.05 suits 30-day windows). On this data the four events come on shift +4, +18, +19 and +27
(detection, drop, retrain, recovery), so the story stops the night after: 31 nights. 1,200 customers
rather than the usual 300: with ~100 customers in the population a night, a 7-night AUC window moves
by more than the drop.

The watched features are the 4-day channel mix, so the drift shows 3-4 days after the shift. The story
runs the performance trigger only (`psi_days=0` turns the drift trigger off; drift is still measured
and flagged): the retrain waits for the measured drop, as the issue's order of events asks. With the
drift trigger on (the YAML's default) the retrain comes earlier, at detection + horizon.
"""

from __future__ import annotations

import datetime as dt
import time

import pandas as pd
import pytest
from deltalake import DeltaTable

from lakeforge import config, registry, stages
from lakeforge.demo.generator import DemoSpec, generate_demo

pytestmark = [pytest.mark.e2e, pytest.mark.spark, pytest.mark.story]

SHIFT = dt.date(2026, 7, 25)
SPEC = DemoSpec(seed=42, customers=1200, stores=4, days=150, shift_date=SHIFT)
HORIZON = 7
FIRST_NIGHT, LAST_NIGHT = SHIFT - dt.timedelta(days=2), SHIFT + dt.timedelta(days=28)
STORY = [f"pipeline.label.horizon_days={HORIZON}", "pipeline.training.first_snapshot_after_days=30",
         "pipeline.retrain.performance_margin=0.025", "pipeline.retrain.psi_days=0",
         "pipeline.monitoring.report=false"]


@pytest.fixture(scope="module")
def story(spark, settings_at, tmp_path_factory):
    """Land the demo, train @champion as of the night before the first night, then run every night in order."""
    work = tmp_path_factory.mktemp("regime")
    generate_demo(work / "landing", SPEC)
    local = settings_at(work / "landing", work / "lakehouse", work, reports=work / "reports")
    from lakeforge import lake

    lake.forget_tables(spark)
    ctx = stages.Context(local, config.load_pipeline("churn", STORY), spark_factory=lambda _: spark)
    started = time.monotonic()
    stages.ingest(ctx)
    first = stages.train(ctx, as_of=FIRST_NIGHT)
    nights = stages.nightly(ctx, FIRST_NIGHT, LAST_NIGHT)
    print(f"story: {time.monotonic() - started:.0f}s")
    monitoring = DeltaTable(str(work / "lakehouse" / "ops" / "monitoring")).to_pandas()
    return ctx, first, nights, monitoring


def _first(frame: pd.DataFrame) -> dt.date | None:
    return min(frame.monitor_date) if len(frame) else None


def test_detection_drop_retrain_recovery_in_that_order(story):
    ctx, first, nights, m = story
    assert (first["version"], first["alias"]) == (1, "champion")
    m = m.assign(monitor_date=pd.to_datetime(m.monitor_date).dt.date)
    v1 = m[m.model_version == 1]
    watched = v1[(v1.kind == "drift") & (v1.metric == "psi") & (v1.breached == True)]  # noqa: E712 (None: not watched)
    # Quiet until the shift, then detection within four days: a watched feature's PSI crosses the threshold.
    # (The night of the shift sees no order from after it: its features end the day before.)
    assert watched[watched.monitor_date <= SHIFT].empty
    detected = _first(watched)
    assert detected is not None and SHIFT < detected <= SHIFT + dt.timedelta(days=4), detected
    # The drop: v1's own matured AUC falls below its validation AUC minus the margin, on post-shift labels.
    perf = v1[(v1.kind == "performance") & (v1.name == "overall")]
    drops = perf[perf.breached == True]  # noqa: E712
    dropped = _first(drops)
    assert dropped is not None and detected < dropped, (detected, dropped)
    assert all(pd.to_datetime(drops.window_end).dt.date + dt.timedelta(days=HORIZON) <= drops.monitor_date)
    # The retrain: fired by the measured drop (the performance trigger), through the gate, a new @champion.
    retrains = m[(m.kind == "retrain") & (m.value == 1.0)]
    retrained = _first(retrains)
    assert retrained is not None and dropped <= retrained, (dropped, retrained)
    v2 = int(retrains.sort_values("monitor_date").model_version.iloc[0])
    fired = m[(m.kind == "decision") & (m.monitor_date == retrained)]
    assert fired.value.tolist() == [1.0] and fired.detail.iloc[0].startswith("performance"), fired.detail.tolist()
    # Recovery: the new champion's own matured AUC on post-shift data is back above v1's floor and above v1's.
    mine = m[(m.model_version == v2) & (m.kind == "performance") & (m.name == "overall")]
    recovered = _first(mine)
    assert recovered is not None and retrained < recovered, (retrained, recovered)
    floor = perf.threshold.dropna().unique()
    assert len(floor) == 1, floor
    assert (mine.value > floor[0]).all() and mine.value.min() > drops.value.max()
    print(f"shift {SHIFT}: detected {detected}, drop measured {dropped}, retrained {retrained} (v{v2}), "
          f"recovered {recovered}")
    assert registry.alias_version(ctx.mlflow, "churn", registry.CHAMPION) >= v2


def test_every_night_has_one_decision_with_its_reason(story):
    _, _, nights, m = story
    decisions = m[m.kind == "decision"]
    assert len(decisions) == (LAST_NIGHT - FIRST_NIGHT).days + 1
    assert decisions.monitor_date.nunique() == len(decisions)
    assert decisions.detail.str.len().min() > 10
    assert nights["monitor"]["dates"] == len(decisions)


def test_estimated_auc_tracks_the_realized_before_the_shift(story):
    """CBPE: before the shift the champion's AUC estimated from each night's scores (no label) is within 0.03 of the
    realized AUC of the same score dates, known a horizon later. After it the estimate moves far less than the
    realized AUC: the figures are printed, and the README states them; no estimated drop is claimed.

    Why (`benchmarks/estimate_story.py`, this story on pandas in seconds, same spec and overrides; figures in
    benchmarks/results/estimate_story*.json): the shift does move the inputs (the 4-day dine-in share falls from
    0.12 to 0.01 within four nights, orders and amounts change), but the model's scores barely move: its weight is
    on recency, 90/180-day aggregates, tenure and the 180-day average amount, which follow a change over weeks,
    while the 4-day shares carry almost no weight (they predicted nothing before the shift). The mean score goes
    0.440 -> 0.433 by +7 (0.418 at +20) and the calibrated probabilities' histogram keeps its shape, so the expected
    AUC stays 0.833-0.841 up to +16 (0.826 at +20) against a floor of 0.805 (the holdout's estimate 0.830 - 0.025),
    while the realized AUC of single score dates falls from 0.833-0.840 before the shift to 0.777-0.789 on +7 to
    +11. What drops it is the dine-in customers' churn hazard tripling: a concept shift. Other lockdowns were tried
    (the script's --rate-mult and --surge): order rates cut for every channel (dine-in x0.15 to x0.4, takeaway x0.3
    to x0.7) never took the estimate below its floor in 20 nights; 30% of the period's signups arriving in the ten
    days after the shift, delivery-first, did so only at +10. So the generator was left as it is rather than tuned
    until the estimate moves, and the goal (an estimated drop within 7 nights) is not asserted: it is not met on
    this data."""
    _, _, _, m = story
    m = m.assign(monitor_date=pd.to_datetime(m.monitor_date).dt.date)
    v1 = m[m.model_version == 1]
    estimated = v1[(v1.kind == "estimated_performance") & (v1.metric == "auc")].set_index("monitor_date")
    realized = v1[(v1.kind == "performance") & (v1.name == "overall")]
    realized = realized.assign(window_end=pd.to_datetime(realized.window_end).dt.date).set_index("window_end")
    v1_nights = sorted(v1[v1.kind == "decision"].monitor_date)
    assert sorted(estimated.index) == v1_nights   # an estimate every night v1 was champion, from the first
    estimated_drop = _first(estimated[estimated.breached == True].reset_index())  # noqa: E712
    realized_drop = _first(realized[realized.breached == True].reset_index())  # noqa: E712
    before = [d for d in estimated.index if d < SHIFT and d in realized.index]
    gaps = [abs(float(estimated.value[d]) - float(realized.value[d])) for d in before]
    print("estimated auc per night:", {str(d): round(v, 4) for d, v in sorted(estimated.value.items())})
    print("realized auc per window end:", {str(d): round(v, 4) for d, v in sorted(realized.value.items())})
    print(f"floor {estimated.threshold.iloc[0]:.4f}; estimated below it first on {estimated_drop}, realized below it "
          f"first measured on {realized_drop}; pre-shift |estimated - realized| {[round(g, 4) for g in gaps]}, "
          f"mean {sum(gaps) / max(len(gaps), 1):.4f}")
    assert len(before) == 2 and sum(gaps) / len(gaps) <= 0.03, gaps
