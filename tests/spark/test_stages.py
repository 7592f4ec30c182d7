"""The stages in one process on the tiny demo: gate, manual promotion with audit, scoring with @champion."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lakeforge import config, lake, registry, runs, scoring, stages
from lakeforge.errors import DataError

pytestmark = pytest.mark.spark


@pytest.fixture
def ctx_for(spark, settings_at, ingested_lakehouse, tmp_path, tiny_landing):
    """A stage Context on a copy of the ingested tiny demo, with this test's MLflow store."""
    landing, _ = tiny_landing
    local = settings_at(landing, ingested_lakehouse, tmp_path)

    def make(overrides: list[str] | None = None) -> stages.Context:
        return stages.Context(local, config.load_pipeline("churn", overrides), spark_factory=lambda _: spark)

    return make


@pytest.mark.slow
def test_weaker_model_becomes_challenger_and_promotion_is_audited(ctx_for, spark, lakehouse):
    strong = ctx_for()
    with pytest.raises(DataError, match=r"has no @champion.*lakeforge train --pipeline churn"):
        stages.score(strong)
    stages.ingest(strong)
    first = stages.train(strong)
    assert (first["version"], first["alias"]) == (1, "champion")

    # One shallow tree of two leaves cannot match the champion on the same holdout.
    weak = ctx_for(["pipeline.model.params.n_estimators=1", "pipeline.model.params.num_leaves=2"])
    second = stages.train(weak)
    assert (second["version"], second["alias"]) == (2, "challenger")
    assert second["auc"] < first["auc"]
    client = strong.mlflow
    assert registry.alias_version(client, "churn", registry.CHAMPION) == 1
    assert registry.alias_version(client, "churn", registry.CHALLENGER) == 2

    scored = stages.nightly(strong)["score"]
    predictions = lake.read(spark, lakehouse, "gold.churn_predictions")
    assert predictions.select("model_version").distinct().collect()[0][0] == 1
    assert predictions.count() == scored["rows"]

    # Backfill the two days before, then rerun the last day: it is replaced, the others are untouched.
    last = dt.date.fromisoformat(scored["score_date"])
    backfill = stages.nightly(strong, last - dt.timedelta(days=2), last - dt.timedelta(days=1))["score"]
    assert backfill["dates"] == 2
    before = lake.version(spark, lakehouse, "gold.churn_predictions")
    stages.score(strong, last)
    after = lake.read(spark, lakehouse, "gold.churn_predictions")
    old = lake.read(spark, lakehouse, "gold.churn_predictions", version=before)
    stable = ["customer_id", "prediction", "score_date", "model_version"]
    assertDataFrameEqual(after.select(stable), old.select(stable))        # the rerun gives identical rows
    assertDataFrameEqual(after.where(F.col("score_date") < last), old.where(F.col("score_date") < last))
    assert after.where(F.col("score_date") == last).select("run_id").distinct().count() == 1

    stages.promote(strong, 2, "rollout test")
    assert registry.alias_version(client, "churn", registry.CHAMPION) == 2
    audit = lake.read(spark, lakehouse, "ops.audit").orderBy("changed_at").select(
        "alias", "from_version", "to_version", F.substring_index("reason", ":", 1).alias("by"), "status").collect()
    # Each change is intended before the registry moves and done after.
    assert [tuple(r) for r in audit] == [(*change, status) for change in [
        ("champion", None, 1, "train"), ("challenger", None, 2, "train"), ("champion", 1, 2, "promote")]
        for status in ("intended", "done")]
    with pytest.raises(DataError, match=r"registered model 'churn' has no version 9"):
        stages.promote(strong, 9, "typo")

    # A date past the data, and a date whose population is empty, are each named as such.
    far = last + dt.timedelta(days=30)
    with pytest.raises(DataError, match=rf"date {far} is 31 days after the last ingested event of silver.orders "
                                        rf"\({last - dt.timedelta(days=1)}\).*up to {last}"):
        stages.score(strong, far)
    nobody = ctx_for(["pipeline.features.population=orders_90d > 1000000"])
    assert stages.build_features(nobody, [last])["population"] == 0
    with pytest.raises(DataError, match=rf"gold.churn_features has \d[\d,]* rows for {last}, but the population "
                                        rf"filter `orders_90d > 1000000` \(features.population\) keeps none"):
        stages.score(nobody, last)


def test_features_refuse_a_date_past_the_ingested_data(ctx_for, lakehouse):
    ctx = ctx_for()
    last = stages.build_features(ctx)["dates"][0]
    assert last == str(_last_event(ctx) + dt.timedelta(days=1))
    far = dt.date.fromisoformat(last) + dt.timedelta(days=1)
    with pytest.raises(DataError, match=rf"date {far} is 2 days after the last ingested event of silver.orders"):
        stages.build_features(ctx, [far])
    written = DeltaTable(str(lakehouse / "gold" / "churn_features")).to_pandas()
    assert sorted(str(d) for d in written["as_of_date"].unique()) == [last]
    # A wider tolerance in the pipeline YAML lets the same date through.
    assert stages.build_features(ctx_for(["pipeline.features.max_days_ahead=2"]), [far])["dates"] == [str(far)]


def _last_event(ctx) -> dt.date:
    from lakeforge import features

    return features.event_date_range(ctx.spark, ctx.lakehouse, ctx.pipeline)[1]


@pytest.mark.slow
def test_killing_scoring_mid_write_leaves_the_partition_as_it_was(ctx_for, spark, lakehouse, tmp_path):
    """SIGKILL the whole score job (driver, JVM, Python workers) while its write task runs: the table
    keeps its version and the date its old rows; a rerun then replaces that date and no other."""
    ctx = ctx_for()
    stages.ingest(ctx)
    stages.train(ctx)
    last = dt.date.fromisoformat(stages.nightly(ctx)["score"]["score_date"])
    stages.nightly(ctx, last - dt.timedelta(days=1), last - dt.timedelta(days=1))
    table = "gold.churn_predictions"
    before = lake.version(spark, lakehouse, table)
    old = lake.read(spark, lakehouse, table, version=before)

    s = ctx.settings
    marker = tmp_path / "write-task-started"
    job = subprocess.Popen(
        [sys.executable, "-m", "lakeforge", "score", "--pipeline", "churn", "--env", "test", "--date", str(last),
         "--set", f"paths.landing={s.paths.landing}", "--set", f"paths.lakehouse={s.paths.lakehouse}",
         "--set", f"paths.model_cache={s.paths.model_cache}", "--set", f"mlflow.tracking_uri={s.mlflow.tracking_uri}",
         "--set", f"mlflow.artifact_root={s.mlflow.artifact_root}"],
        env={**os.environ, scoring.STALL_AFTER_FIRST_BATCH: str(marker)}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert job.poll() is None, f"score exited with {job.returncode} before its write:\n{job.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "the score job never reached its write"
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    assert job.wait(timeout=60) == -signal.SIGKILL

    assert lake.version(spark, lakehouse, table) == before
    assertDataFrameEqual(lake.read(spark, lakehouse, table), old)  # every date, every column, as it was
    killed = runs.read_runs(spark, lakehouse).where("job = 'score' AND status = 'running'").collect()
    assert [(r.run_date, r.ended_at) for r in killed] == [(last, None)]  # the ledger shows a run that never ended

    stages.score(ctx, last)
    after = lake.read(spark, lakehouse, table)
    assert lake.version(spark, lakehouse, table) == before + 1
    stable = ["customer_id", "prediction", "score_date", "model_version"]
    assertDataFrameEqual(after.select(stable), old.select(stable))
    assertDataFrameEqual(after.where(F.col("score_date") < last), old.where(F.col("score_date") < last))
