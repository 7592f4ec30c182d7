"""The regime-shift story's performance estimate night by night, on pandas (no Spark, seconds): why CBPE moves
so little after the demo's shift.

Same spec and overrides as tests/e2e/test_regime_shift.py (1,200 customers, 7-day churn horizon, margin 0.025):
generate the demo, build the churn features and labels with lakeforge's pandas path, train as of the night
before the first night, calibrate on the holdout, then for each night from shift - 2 to shift + 20 record the
estimated AUC (CBPE), the realized AUC of that score date (known a horizon later), the mean score and the 4-day
dine-in share. Also records the model's feature importances (what the scores follow). `--rate-mult` and
`--surge` try other lockdowns (order rates per primary channel; a share of in-period signups moved just after
the shift, delivery-first) without changing the generator. Last line: one JSON object.

    .venv/bin/python benchmarks/estimate_story.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
from pathlib import Path

import numpy as np

import record  # benchmarks/record.py, beside this script

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_CONF_DIR", str(REPO / "conf"))

SHIFT = dt.date(2026, 7, 25)
HORIZON = 7
STORY = [f"pipeline.label.horizon_days={HORIZON}", "pipeline.training.first_snapshot_after_days=30",
         "pipeline.retrain.performance_margin=0.025", "pipeline.retrain.psi_days=0"]


def _other_lockdown(generator, rate_mult: list[float] | None, surge: float) -> None:
    """Patch the generator's lockdown for this process only (an experiment, not the demo)."""
    if rate_mult:
        generator.SHIFT_RATE_MULT = np.array(rate_mult)
    if surge:
        make = generator._make_customers

        def surged(spec, rng, stores, window):
            cust = make(spec, rng, stores, window)
            shift_day = (spec.shift_date - spec.start_date).days
            pick_rng = np.random.default_rng(99)
            in_period = np.flatnonzero(cust["signup_day"] >= 0)
            moved = in_period[pick_rng.random(in_period.size) < surge]
            cust["signup_day"][moved] = shift_day + pick_rng.integers(0, 10, moved.size)
            cust["signup_day"] = np.sort(cust["signup_day"])
            cust["primary"][moved] = generator.DELIVERY
            pref = 0.45 * pick_rng.dirichlet(np.full(4, 0.6), size=moved.size)
            pref[:, generator.DELIVERY] += 0.55
            cust["pref"][moved] = pref
            return cust

        generator._make_customers = surged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rate-mult", type=float, nargs=4, help="order rate after the shift per primary channel "
                        "(dine_in takeaway delivery drive_thru); the demo's is 0.6 1.0 1.15 1.0")
    parser.add_argument("--surge", type=float, default=0.0, help="share of in-period signups moved after the shift")
    record.add_argument(parser, "estimate_story")
    args = parser.parse_args()
    recorder = record.Recorder("estimate_story", args.results)

    from lakeforge import config, estimation, features, metrics, training
    from lakeforge.demo import churn
    from lakeforge.demo import generator
    from lakeforge.demo.generator import DemoSpec, generate_demo

    _other_lockdown(generator, args.rate_mult, args.surge)
    pipeline = config.load_pipeline("churn", STORY)
    with tempfile.TemporaryDirectory() as work:
        landing = Path(work) / "landing"
        generate_demo(landing, DemoSpec(seed=args.seed, customers=1200, stores=4, days=150, shift_date=SHIFT))
        customers = churn.read_customers(landing)
        orders = churn.read_orders(landing, pipeline.sources["orders"])
    first_night, last_night = SHIFT - dt.timedelta(days=2), SHIFT + dt.timedelta(days=20)
    train_dates, holdout_dates = training.snapshot_dates(orders.order_ts.min().date(),
                                                         first_night - dt.timedelta(days=1), pipeline)
    nights = [first_night + dt.timedelta(days=n) for n in range((last_night - first_night).days + 1)]
    labelled = features.training_set_pandas(
        features.build_features_pandas(customers, orders, train_dates + holdout_dates + nights, pipeline),
        orders, pipeline).sort_values([features.AS_OF, "customer_id"], kind="mergesort")
    columns, label = features.feature_columns(pipeline), pipeline.label.name
    train = labelled[labelled[features.AS_OF].isin(train_dates)]
    holdout = labelled[labelled[features.AS_OF].isin(holdout_dates)]
    model = training.fit(train, columns, label, pipeline)
    holdout_scores = model.predict_proba(holdout[columns])[:, 1]
    calibration = estimation.calibrate(holdout_scores, holdout[label].to_numpy())
    holdout_estimate = estimation.estimate_performance(calibration, holdout_scores)["auc"]
    floor = holdout_estimate - pipeline.retrain.performance_margin
    per_night = []
    for night in nights:
        rows = labelled[labelled[features.AS_OF] == night]
        scores = model.predict_proba(rows[columns])[:, 1]
        estimated = estimation.estimate_performance(calibration, scores)["auc"]
        per_night.append({"night": night.isoformat(), "after_shift": (night - SHIFT).days, "rows": len(rows),
                          "estimated_auc": round(estimated, 4),
                          "realized_auc": round(metrics.value("auc", metrics.CLASSIFICATION,
                                                              rows[label].to_numpy(float), scores), 4),
                          "mean_score": round(float(scores.mean()), 4),
                          "dine_in_share_4d": round(float(rows.dine_in_share_4d.mean()), 4),
                          "estimated_below_floor": bool(estimated < floor)})
    dropped = [n["after_shift"] for n in per_night if n["estimated_below_floor"] and n["after_shift"] >= 0]
    recorder.write({
        "lockdown": {"rate_mult": args.rate_mult or generator.SHIFT_RATE_MULT.tolist(), "surge": args.surge},
        "holdout_auc": round(metrics.value("auc", metrics.CLASSIFICATION, holdout[label].to_numpy(float),
                                           holdout_scores), 4),
        "holdout_estimated_auc": round(holdout_estimate, 4), "floor": round(floor, 4),
        "first_estimated_drop_after_shift": dropped[0] if dropped else None,
        "feature_importance": dict(sorted(zip(columns, map(int, model.feature_importances_)),
                                          key=lambda kv: -kv[1])),
        "nights": per_night})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
