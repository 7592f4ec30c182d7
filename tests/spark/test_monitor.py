"""`monitor` on the tiny demo: ops.monitoring rows for a date, a rerun replaces them, the report and its MLflow run."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from lakeforge import config, lake, quality, registry, runs, stages
from lakeforge.features import feature_columns

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_monitor_records_drift_performance_and_decision_and_reruns_replace(spark, settings_at, ingested_lakehouse,
                                                                           tmp_path, tiny_landing):
    landing, manifest = tiny_landing
    lakehouse = ingested_lakehouse
    local = settings_at(landing, lakehouse, tmp_path, reports=tmp_path / "reports")
    ctx = stages.Context(local, config.load_pipeline("churn"), spark_factory=lambda _: spark)
    stages.train(ctx)
    last = dt.date.fromisoformat(manifest["end_date"])
    # Score 31 nights back so one matured window (score date + 30 days <= the night) exists on the last night.
    first = last - dt.timedelta(days=31)
    stages.build_features(ctx, [first, last])
    stages.score(ctx, first)
    stages.score(ctx, last)
    summary = stages.monitor(ctx, last)

    rows = lake.read(spark, lakehouse, "ops.monitoring").where(F.col("monitor_date") == F.lit(last))
    kinds = {r["kind"]: r["count"] for r in rows.groupBy("kind").count().collect()}
    # Per numeric model input: its drift test (125 rows: a KS p-value), PSI and the KS statistic.
    assert kinds["drift"] == 3 * len(feature_columns(ctx.pipeline))
    tests = {r["name"]: (r["metric"], r["threshold"], r["breached"]) for r in rows.where(
        "kind = 'drift' AND metric = 'ks_pvalue'").collect()}
    assert tests["orders_180d"] == ("ks_pvalue", 0.05, True) and tests["orders_30d"] == ("ks_pvalue", 0.05, False)
    # CBPE before labels: expected AUC (against the policy's floor) and accuracy of tonight's scores.
    estimated = {r["metric"]: r for r in rows.where("kind = 'estimated_performance'").collect()}
    assert sorted(estimated) == ["accuracy", "auc"] and estimated["auc"]["rows"] == 125
    # Judged against the estimate of the holdout itself (stored with the calibration) minus the policy's margin.
    holdout_estimate = registry.load_baseline(ctx.mlflow, "churn", 1)["calibration"]["holdout_estimate"]["auc"]
    assert 0.5 < estimated["auc"]["value"] <= 1.0
    assert estimated["auc"]["threshold"] == pytest.approx(holdout_estimate - ctx.pipeline.retrain.performance_margin)
    assert estimated["accuracy"]["threshold"] is None
    verdict = rows.where("kind = 'verdict'").first()
    assert (verdict["name"], summary["verdict"]) == ("WATCH", "WATCH")
    assert verdict["detail"].startswith("drift: feature orders_180d moved (ks_pvalue 3.42e-05 < 0.05, 125 rows)")
    assert kinds["prediction_drift"] == 3 and kinds["decision"] == 1 and kinds["quality"] > 0
    perf = rows.where("kind = 'performance'").first()
    # Only the score date whose 30-day horizon has passed: `first`; `last` is not matured and never enters.
    assert (perf["window_start"], perf["window_end"]) == (last - dt.timedelta(days=36), last - dt.timedelta(days=30))
    scored_first = lake.read(spark, lakehouse, "gold.churn_predictions").where(F.col("score_date") == first).count()
    assert perf["rows"] == scored_first and 0.5 < perf["value"] <= 1.0
    segments = rows.where("kind = 'segment'").select("name", "segment", "rows").collect()
    assert {r["name"] for r in segments} == {"region", "home_store_id", "main_channel_90d"}
    assert sum(r["rows"] for r in segments if r["name"] == "region") == scored_first
    # The channel segment is each customer's main channel as of the score date, from the features table.
    scored = lake.read(spark, lakehouse, "gold.churn_predictions").where(F.col("score_date") == first)
    as_of = lake.read(spark, lakehouse, "gold.churn_features").where(F.col("as_of_date") == first)
    channels = scored.join(as_of, on="customer_id", how="inner").groupBy("main_channel_90d").count().collect()
    assert {r["segment"]: r["rows"] for r in segments if r["name"] == "main_channel_90d"} == \
        {r["main_channel_90d"]: r["count"] for r in channels}
    assert {r["main_channel_90d"] for r in channels} == {"delivery", "dine_in", "drive_thru", "takeaway"}
    watched = rows.where("kind = 'drift' AND metric = 'psi' AND threshold IS NOT NULL").select("name").distinct().collect()
    assert sorted(r["name"] for r in watched) == ["delivery_share_4d", "dine_in_share_4d"]
    decision = rows.where("kind = 'decision'").first()
    assert decision["value"] == 0.0 and "cooldown" in decision["detail"]   # the champion was trained today

    # The report: a page with the three plots, logged to a monitoring run in the pipeline's experiment.
    report = tmp_path / "reports" / "churn" / f"{last}.html"
    assert summary["report"] == str(report)
    page = report.read_text()
    # Distributions of the drifted feature and of the predictions, then drift, performance and segment trends.
    assert page.count("data:image/png;base64,") == 5 and 'id="dist-orders_180d"' in page
    assert 'id="verdict-line">WATCH · churn · ' + str(last) in page and "nan" not in page.replace("nanos", "")
    index = (tmp_path / "reports" / "index.html").read_text()
    assert f'href="churn/{last}.html"' in index and 'class="badge WATCH"' in index
    client = ctx.mlflow
    experiment = client.get_experiment_by_name("lakeforge/churn")
    mlflow_runs = client.search_runs([experiment.experiment_id], "tags.`lakeforge.kind` = 'monitoring'")
    assert len(mlflow_runs) == 1 and mlflow_runs[0].data.tags["lakeforge.monitor_date"] == last.isoformat()
    assert [a.path for a in client.list_artifacts(mlflow_runs[0].info.run_id, "reports")] == [f"reports/{last}.html"]
    assert "psi.dine_in_share_4d" in mlflow_runs[0].data.metrics

    # A rerun for the date replaces its rows (one run id), other dates are untouched.
    before = rows.count()
    stages.monitor(ctx, last)
    again = lake.read(spark, lakehouse, "ops.monitoring").where(F.col("monitor_date") == F.lit(last))
    assert again.count() == before and again.select("run_id").distinct().count() == 1
    recorded = runs.read_runs(spark, lakehouse).where("job = 'monitor'").select("status").collect()
    assert [r["status"] for r in recorded] == ["succeeded", "succeeded"]
    assert registry.alias_version(client, "churn", registry.CHAMPION) == 1

    # A source's quarantine limit: a batch of orders 81% quarantined makes the night ACT, whatever else holds.
    quality.record(spark, [quality.CheckResult("late.jsonl", quality.QUARANTINE_SHARE, "act", 1096, 888, False)],
                   "orders", "batch-na", ["late.jsonl"], lakehouse, "test", dt.datetime.now(dt.timezone.utc),
                   replace=False)
    limited = stages.Context(local, config.load_pipeline("churn", ["sources.orders.max_quarantine_share=0.2"]),
                             spark_factory=lambda _: spark)
    acted = stages.monitor(limited, last)
    assert acted["verdict"] == "ACT"
    assert acted["reasons"][0] == "quality: orders: quarantined share 81.0% of rows, limit 20.0%"
    assert 'id="verdict-line">ACT · churn · ' + str(last) in report.read_text()
