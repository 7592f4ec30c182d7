"""Features tables that evolve: changing a feature column and retraining needs no manual step (the earlier
version's rows move to their own table), and the champion keeps scoring from its own feature version until a
version trained on the new one replaces it."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
import yaml
from pyspark.sql import functions as F

from lakeforge import config, features, lake, stages
from lakeforge.errors import DataError

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
FAST = ["pipeline.model.params.n_estimators=30", "pipeline.gate.min_auc=0.0"]


def conf_with(tmp_path: Path, name: str, edit) -> Path:
    """A conf folder whose churn pipeline is the repo's, changed by `edit` (a function of its YAML tree)."""
    conf = tmp_path / name
    (conf / "pipelines").mkdir(parents=True)
    for file in ("base.yaml", "test.yaml", "log4j2.properties"):
        shutil.copy(REPO / "conf" / file, conf / file)
    shutil.copytree(REPO / "conf" / "sources", conf / "sources")
    tree = yaml.safe_load((REPO / "conf" / "pipelines" / "churn.yaml").read_text())
    edit(tree)
    (conf / "pipelines" / "churn.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    return conf


def with_basket_size(tree: dict) -> None:
    """One more feature column (a user's new feature): a new feature version."""
    tree["features"]["function"] = "custom_features.activity_with_basket_size"
    tree["features"]["events"]["columns"].append("items")
    tree["features"]["columns"]["avg_items_180d"] = "double"


def predictions(spark, lakehouse: Path, day: dt.date):
    rows = lake.read(spark, lakehouse, "gold.churn_predictions").where(F.col("score_date") == F.lit(day))
    return rows.select("customer_id", "prediction", "model_version").orderBy("customer_id").toPandas()


def test_a_changed_feature_column_is_a_new_version_and_the_champion_scores_its_own(
        spark, ingested_lakehouse, tiny_landing, settings_at, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))  # the user's module, on the driver and in the workers
    spark.sparkContext.addPyFile(str(FIXTURES / "custom_features.py"))
    settings = settings_at(tiny_landing[0], ingested_lakehouse, tmp_path)
    before = config.load_pipeline("churn", FAST, conf_with(tmp_path, "conf_before", lambda tree: None))
    after = config.load_pipeline("churn", [*FAST, "pipeline.gate.min_improvement=1.0"],  # the gate keeps v1
                                 conf_with(tmp_path, "conf_after", with_basket_size))
    old, new = features.feature_version(before), features.feature_version(after)
    assert old != new and len(old) == len(new) == 10
    ctx_before = stages.Context(settings, before, spark_factory=lambda _: spark)
    ctx_after = stages.Context(settings, after, spark_factory=lambda _: spark)

    assert stages.train(ctx_before)["alias"] == "champion"  # version 1, on feature version `old`
    day = features.event_date_range(spark, ingested_lakehouse, before)[1] + dt.timedelta(days=1)
    stages.build_features(ctx_before, [day])
    built = lake.read(spark, ingested_lakehouse, "gold.churn_features").where(F.col(features.AS_OF) == F.lit(day))
    rows_of_day = built.toPandas().sort_values("customer_id", ignore_index=True)
    stages.score(ctx_before, day)
    scored_before = predictions(spark, ingested_lakehouse, day)
    assert set(scored_before.model_version) == {1} and len(scored_before) > 0

    # The feature columns change: training just works (no DELTA_METADATA_MISMATCH, no folder to move).
    trained = stages.train(ctx_after)
    assert (trained["version"], trained["alias"]) == (2, "challenger")
    assert "avg_items_180d" in lake.read(spark, ingested_lakehouse, "gold.churn_features").columns
    kept = f"gold.churn_features_{old}"
    assert features.features_table(after, old) == kept and features.features_table(before) == "gold.churn_features"
    assert "avg_items_180d" not in lake.read(spark, ingested_lakehouse, kept).columns
    kept_rows = lake.read(spark, ingested_lakehouse, kept).where(F.col(features.AS_OF) == F.lit(day)).toPandas()
    assert kept_rows.sort_values("customer_id", ignore_index=True).equals(rows_of_day)  # readable, unchanged

    # @champion (version 1) still scores the date from its own feature version: the same predictions.
    stages.score(ctx_after, day)
    assert predictions(spark, ingested_lakehouse, day).equals(scored_before)
    # A date its feature version never built: refused, saying how to move on.
    earlier = day - dt.timedelta(days=1)
    with pytest.raises(DataError, match=rf"churn version 1 \(@champion\) was trained on feature version {old}, and "
                                        rf"gold\.churn_features_{old} has no rows for {earlier}; the pipeline's "
                                        rf"features are now version {new} \(gold\.churn_features\)\. Train on them"):
        stages.score(ctx_after, earlier)

    # Once a version trained on the new features is @champion, scoring uses the current table.
    stages.build_features(ctx_after, [day])
    stages.promote(ctx_after, 2, "trained on the new feature version")
    stages.score(ctx_after, day)
    scored_after = predictions(spark, ingested_lakehouse, day)
    assert set(scored_after.model_version) == {2} and len(scored_after) == len(scored_before)

    # Going back to the earlier columns gives version `old` its name back; the newer rows keep theirs.
    stages.build_features(ctx_before, [day])
    assert lake.exists(ingested_lakehouse, f"gold.churn_features_{new}")
    assert not lake.exists(ingested_lakehouse, kept)
    assert "avg_items_180d" not in lake.read(spark, ingested_lakehouse, "gold.churn_features").columns
