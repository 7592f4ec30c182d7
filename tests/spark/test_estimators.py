"""Estimators, metrics and gates as configuration, end to end on a user's own source (tests/fixtures/parcels.py):
a scikit-learn class by import path (judged by the team's own metric), XGBoost, a multiclass label and a string
feature each train, register, score and monitor with no lakeforge change; a model that cannot beat the naive
answer is refused @champion."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from lakeforge import config, estimation, features, lake, metrics, registry, stages
from lakeforge import runs as lake_runs

import parcels  # tests/fixtures (pytest's pythonpath): the user's own module, known to no lakeforge code

pytestmark = [pytest.mark.spark, pytest.mark.slow]

DAYS = 16
START = dt.date(2026, 3, 1)
LAST = START + dt.timedelta(days=DAYS - 1)
ONLY_REGION = "[region_parcels_7d]"  # the model's inputs: region (a string) and weight_kg (noise for `late`)
PIPELINES = {
    "parcels_sklearn": parcels.pipeline(parcels.LATE, "{estimator: sklearn.ensemble.HistGradientBoostingClassifier, "
                                                      f"params: {{max_iter: 20}}, {parcels.LATE_COST}}}", ONLY_REGION),
    "parcels_xgb": parcels.pipeline(parcels.LATE, "{estimator: xgboost, params: {n_estimators: 20, max_depth: 3}}",
                                    ONLY_REGION),
    "parcels_size": parcels.pipeline(parcels.SIZE, "{metric: macro_f1, params: {n_estimators: 20, num_leaves: 7, "
                                                   "min_child_samples: 5}}", ONLY_REGION),
    # No input but the weight, and no split allowed: a constant, the training base rate; it cannot beat the naive one.
    "parcels_constant": parcels.pipeline(parcels.LATE, "{params: {n_estimators: 5, min_child_samples: 100000}}",
                                         "[region, region_parcels_7d]"),
}


@pytest.fixture(scope="module")
def parcels_conf(user_conf) -> Path:
    return user_conf({"parcels": parcels.SOURCE}, PIPELINES, "parcels.py")


@pytest.fixture(scope="module")
def runs(spark, parcels_conf, tmp_path_factory) -> dict:
    """Every pipeline trained, each winner scored for LAST and monitored on the next day; then a day with a new
    region is scored by the XGBoost model. One lakehouse and MLflow store for all (run once for the module)."""
    where = tmp_path_factory.mktemp("parcels")
    settings = config.load_settings("test", [f"paths.landing={where / 'landing'}",
                                             f"paths.lakehouse={where / 'lakehouse'}",
                                             f"paths.reports={where / 'reports'}",
                                             f"paths.model_cache={where / 'model_cache'}",
                                             f"mlflow.tracking_uri=sqlite:///{where / 'mlflow.db'}",
                                             f"mlflow.artifact_root={where / 'mlartifacts'}"], directory=parcels_conf)
    parcels.generate(settings.paths.landing / "parcels", DAYS, START)
    lake.forget_tables(spark)
    out: dict = {"settings": settings, "pipelines": {}}

    def context(name: str) -> stages.Context:
        pipeline = config.load_pipeline(name, None, parcels_conf)
        out["pipelines"][name] = pipeline
        return stages.Context(settings, pipeline, spark_factory=lambda _: spark)

    stages.ingest(context("parcels_sklearn"))
    for name in PIPELINES:
        ctx = context(name)
        out[name] = {"train": stages.train(ctx)}
        if out[name]["train"]["alias"] == registry.CHAMPION:
            out[name]["score"] = stages.score(ctx, LAST)
            out[name]["monitor"] = stages.monitor(ctx, LAST + dt.timedelta(days=1))
    # The next day brings parcels of a region no model has seen.
    new_day = LAST + dt.timedelta(days=1)
    parcels.day_frame(new_day, 30, 5, regions=("east", "west")).to_csv(
        settings.paths.landing / "parcels" / f"parcels_{new_day}.csv", index=False)
    ctx = context("parcels_xgb")
    stages.ingest(ctx)
    stages.build_features(ctx, [new_day])
    out["unseen"] = stages.score(ctx, new_day)
    out["new_day_points"] = parcels.day_frame(new_day, 30, 5, regions=("east", "west"))
    return out


def _predictions(spark, runs, name: str, day: dt.date) -> pd.DataFrame:
    return (lake.read(spark, runs["settings"].paths.lakehouse, f"gold.{name}_predictions")
            .where(F.col("score_date") == F.lit(day)).toPandas().sort_values("parcel_id").reset_index(drop=True))


def _performance(spark, runs, name: str) -> pd.DataFrame:
    return (lake.read(spark, runs["settings"].paths.lakehouse, "ops.monitoring")
            .where((F.col("pipeline") == name) & (F.col("kind") == "performance")).toPandas())


def _matured_labels(spark, runs, name: str) -> pd.DataFrame:
    """The scored parcels of LAST whose label was known when the monitored day began, with that label."""
    silver = lake.read(spark, runs["settings"].paths.lakehouse, "silver.parcels").toPandas()
    known = silver[pd.to_datetime(silver["arrived_ts"]) < pd.Timestamp(LAST + dt.timedelta(days=1))]
    return _predictions(spark, runs, name, LAST).merge(known[["parcel_id", "late", "size_class"]], on="parcel_id")


@pytest.mark.parametrize("name", ["parcels_sklearn", "parcels_xgb"])
def test_an_estimator_by_import_path_and_xgboost_train_register_score_and_monitor(spark, runs, name):
    trained, scored = runs[name]["train"], runs[name]["score"]
    assert trained["alias"] == registry.CHAMPION and trained["auc"] > 0.75  # region decides lateness
    if name == "parcels_xgb":  # the naive answer's AUC (parcels_sklearn's gate compares its own metric: below)
        assert trained["naive"] == {"base_rate": 0.5}
    model = registry.load_python_model(name, trained["version"])
    assert model.feature_names == ["region", "weight_kg"]
    assert model.estimator.categories == {"region": list(parcels.REGIONS)}
    # XGBoost is stored as its JSON model and scored from it; the scikit-learn class has no data form: its pickle.
    assert scored["scored_from"] == ("model files" if name == "parcels_xgb" else "pickle")
    predictions = _predictions(spark, runs, name, LAST)
    points = parcels.day_frame(LAST, 30, 5)
    assert predictions["parcel_id"].tolist() == sorted(points["parcel_id"].tolist()) and scored["rows"] == 30
    expected = model.predict(None, points.sort_values("parcel_id").reset_index(drop=True))
    np.testing.assert_allclose(predictions["prediction"].to_numpy(), expected, rtol=0, atol=1e-6)
    labelled = _matured_labels(spark, runs, name)
    perf = _performance(spark, runs, name)
    overall = perf[perf["name"] == "overall"]
    assert overall["rows"].tolist() == [len(labelled)]
    if name == "parcels_xgb":
        assert overall["metric"].tolist() == ["auc"]
        assert overall["value"].iloc[0] == pytest.approx(
            metrics.value("auc", "classification", labelled["late"], labelled["prediction"]))
    else:  # judged by the team's own metric, computed here by hand
        assert overall["metric"].tolist() == ["late_cost"]
        assert overall["value"].iloc[0] == pytest.approx(parcels.late_cost(labelled["late"], labelled["prediction"]))


def test_a_teams_own_metric_judges_the_gate_and_monitoring_and_is_said_not_estimated(spark, runs):
    trained = runs["parcels_sklearn"]["train"]
    # Lower is better: the gate compares the holdout's cost with the naive answer's, as it would AUC's.
    assert 0 <= trained["late_cost"] < trained["naive"]["base_rate"]
    assert trained["gate"] == f"holdout LATE_COST {trained['late_cost']:.4f} and no usable champion"
    # A night's estimate (CBPE) covers lakeforge's metrics and says why the team's own is not estimated.
    baseline = registry.load_baseline(registry.connect(runs["settings"].mlflow), "parcels_sklearn", trained["version"])
    predictions = _predictions(spark, runs, "parcels_sklearn", LAST)
    rows = estimation.estimates(baseline, "late_cost", 0.05, predictions, None).set_index("metric")
    assert rows.loc["late_cost", "detail"] == estimation.OWN_NOT_ESTIMATED and pd.isna(rows.loc["late_cost", "value"])
    assert rows.loc["auc", "value"] > 0.5


def test_a_string_feature_is_used_and_an_unseen_category_is_counted_not_refused(spark, runs):
    model = registry.load_python_model("parcels_xgb", runs["parcels_xgb"]["train"]["version"])
    importance = dict(zip(model.feature_names, model.estimator.feature_importances_))
    assert importance["region"] > 0 and importance["region"] == max(importance.values())
    new_day = LAST + dt.timedelta(days=1)
    points = runs["new_day_points"]
    west = int((points["region"] == "west").sum())
    assert west > 0 and runs["unseen"]["unseen_categories"] == {"region": west}
    assert runs["unseen"]["rows"] == 30
    predictions = _predictions(spark, runs, "parcels_xgb", new_day)
    expected = model.predict(None, points.sort_values("parcel_id").reset_index(drop=True))
    np.testing.assert_allclose(predictions["prediction"].to_numpy(), expected, rtol=0, atol=1e-6)
    recorded = (lake_runs.read_runs(spark, runs["settings"].paths.lakehouse)
                .where((F.col("job") == "score") & (F.col("pipeline") == "parcels_xgb")).orderBy("started_at")
                .select("rows").collect())
    assert recorded[-1]["rows"]["unseen.region"] == west


def test_a_multiclass_label_trains_registers_scores_and_monitors(spark, runs):
    trained, scored = runs["parcels_size"]["train"], runs["parcels_size"]["score"]
    assert trained["alias"] == registry.CHAMPION and trained["macro_f1"] > 0.7  # the weight decides the size
    assert set(trained) >= {"log_loss", "accuracy", "macro_f1"}
    model = registry.load_python_model("parcels_size", trained["version"])
    assert model.classes == ["L", "M", "S"]
    assert scored["scored_from"] == "model files" and scored["scoring"] == "native"  # lleaves: one output per row
    predictions = _predictions(spark, runs, "parcels_size", LAST)
    points = parcels.day_frame(LAST, 30, 5).sort_values("parcel_id").reset_index(drop=True)
    expected = model.predict(None, points)
    assert predictions["prediction"].tolist() == [model.classes[i] for i in expected.argmax(axis=1)]
    probabilities = metrics.class_matrix(predictions["probabilities"].map(dict).tolist(), model.classes)
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)
    labelled = _matured_labels(spark, runs, "parcels_size")
    perf = _performance(spark, runs, "parcels_size")
    overall = perf[perf["name"] == "overall"]
    assert overall["metric"].tolist() == ["macro_f1"] and overall["rows"].tolist() == [len(labelled)]
    matrix = metrics.class_matrix(labelled["probabilities"].map(dict).tolist(), model.classes)
    assert overall["value"].iloc[0] == pytest.approx(
        metrics.value("macro_f1", "multiclass", labelled["size_class"], matrix, model.classes))


def test_a_multiclass_champion_is_calibrated_one_vs_rest_and_estimated_from_the_stored_probabilities(spark, runs):
    """CBPE for multiclass: the baseline keeps each class's holdout calibration and the holdout's own estimates; the
    predictions table's `probabilities` (a map, as Delta gives it back) are what a night's estimate reads, and what
    the monitor stage reads for the night. Without that column the rows say so instead of a value."""
    trained = runs["parcels_size"]["train"]
    baseline = registry.load_baseline(registry.connect(runs["settings"].mlflow), "parcels_size", trained["version"])
    calibration = baseline["class_calibration"]
    assert calibration["classes"] == ["L", "M", "S"] and sorted(calibration["by_class"]) == ["L", "M", "S"]
    assert sorted(calibration["holdout_estimate"]) == ["accuracy", "macro_f1"]
    # Calibrated on the holdout itself: its expected macro F1 is near the realized one.
    assert calibration["holdout_estimate"]["macro_f1"] == pytest.approx(trained["macro_f1"], abs=0.05)
    predictions = _predictions(spark, runs, "parcels_size", LAST)
    _, scored, _ = features.monitored_night(spark, runs["settings"].paths.lakehouse, runs["pipelines"]["parcels_size"],
                                            LAST, None, log=lambda _: None)
    assert "probabilities" in scored.columns and len(scored) == len(predictions)
    rows = estimation.estimates(baseline, "macro_f1", 0.05, predictions, None).set_index("metric")
    assert estimation.estimates(baseline, "macro_f1", 0.05, scored, None).value.tolist() == pytest.approx(
        rows.value.tolist(), abs=1e-12)
    matrix = metrics.class_matrix(predictions["probabilities"].map(dict).tolist(), calibration["classes"])
    expected = estimation.estimate_class_performance(calibration, matrix, ("accuracy", "macro_f1"))
    assert rows.value.to_dict() == pytest.approx(expected) and 0 < expected["accuracy"] <= 1
    assert rows.loc["macro_f1", "threshold"] == pytest.approx(calibration["holdout_estimate"]["macro_f1"] - 0.05)
    without = estimation.estimates(baseline, "macro_f1", 0.05, predictions[["prediction"]], None)
    assert without.value.isna().all() and without.detail.str.startswith("not estimated: tonight's class").all()


def test_a_model_that_does_not_beat_the_naive_answer_is_refused_champion(runs):
    lost = runs["parcels_constant"]["train"]
    assert lost["alias"] == registry.CHALLENGER
    assert lost["auc"] == 0.5 and lost["naive"] == {"base_rate": 0.5}
    assert lost["gate"] == ("holdout AUC 0.5000 does not beat the naive base_rate AUC 0.5000 by more than 0.0000 "
                            "(gate.beat_naive_by) on the same rows; set gate.beat_naive: false to promote it anyway")
    won = runs["parcels_xgb"]["train"]
    assert won["alias"] == registry.CHAMPION
    assert won["gate"] == f"holdout AUC {won['auc']:.4f} >= floor 0.5000 and no usable champion"
