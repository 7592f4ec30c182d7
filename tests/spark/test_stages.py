"""The stages in one process on the tiny demo: gate, manual promotion with audit, scoring with @champion."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from lakeforge import config, lake, registry, stages
from lakeforge.errors import DataError

pytestmark = pytest.mark.spark


@pytest.fixture
def ctx_for(spark, settings, lakehouse, tmp_path, tiny_landing):
    """A stage Context on this test's lakehouse and MLflow store, with the tiny demo landed."""
    landing, _ = tiny_landing
    local = settings.model_copy(update={
        "paths": settings.paths.model_copy(update={"landing": landing, "lakehouse": lakehouse}),
        "mlflow": settings.mlflow.model_copy(update={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                                     "artifact_root": (tmp_path / "artifacts").as_uri()})})

    def make(overrides: list[str] | None = None) -> stages.Context:
        return stages.Context(local, config.load_pipeline("churn", overrides), spark_factory=lambda _: spark)

    return make


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
        "alias", "from_version", "to_version", F.substring_index("reason", ":", 1).alias("by")).collect()
    assert [tuple(r) for r in audit] == [("champion", None, 1, "train"), ("challenger", None, 2, "train"),
                                         ("champion", 1, 2, "promote")]
    with pytest.raises(DataError, match=r"registered model 'churn' has no version 9"):
        stages.promote(strong, 9, "typo")
