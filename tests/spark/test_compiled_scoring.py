"""Scoring @champion from its model files on the tiny demo: compiled LightGBM equals the registered model,
a second run compiles nothing, and a tampered model file (a pickle with a side effect) is refused unread."""

from __future__ import annotations

import datetime as dt
import pickle
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from lakeforge import compiled, config, features, lake, model_files, registry, scoring, stages, training
from lakeforge.registry import ProbabilityModel

pytestmark = pytest.mark.spark


@pytest.fixture
def ctx(spark, settings_at, ingested_lakehouse, tmp_path, tiny_landing):
    """The churn pipeline (20 trees: quick to compile) on a copy of the ingested tiny demo, its own cache."""
    landing, _ = tiny_landing
    local = settings_at(landing, ingested_lakehouse, tmp_path)
    local = local.model_copy(update={"paths": local.paths.model_copy(update={"model_cache": tmp_path / "cache"})})
    return stages.Context(local, config.load_pipeline("churn", ["pipeline.model.params.n_estimators=20"]),
                          spark_factory=lambda _: spark)


class WritesAMarker:
    """Unpickling this creates `path`: what a malicious model pickle could do."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.mark.slow
def test_compiled_scoring_equals_the_registered_model_and_a_rerun_compiles_nothing(ctx, spark, lakehouse):
    stages.train(ctx)
    stages.build_features(ctx)
    first = stages.score(ctx)
    assert (first["scored_from"], first["scoring"], first["compiled_now"], first["compiled_from_cache"]) == (
        "model files", "compiled", 1, 0)
    assert len(list((ctx.settings.paths.model_cache).glob("*.o"))) == 1

    day = dt.date.fromisoformat(first["score_date"])
    rows = features.in_population(lake.read(spark, lakehouse, features.features_table(ctx.pipeline))
                                  .where(F.col("as_of_date") == F.lit(day)), ctx.pipeline).toPandas()
    expected = registry.load_python_model("churn", 1).predict(None, rows)  # the pickled pyfunc, LightGBM's predict
    scored = (lake.read(spark, lakehouse, "gold.churn_predictions").toPandas().set_index("customer_id")
              .loc[rows["customer_id"], "prediction"].to_numpy())
    difference = np.abs(scored - expected).max()
    print(f"churn, {len(rows)} rows: compiled vs LightGBM, max |difference| {difference:.3g}")
    assert len(rows) == first["rows"] > 50 and difference <= 1e-9

    again = stages.score(ctx, day)
    assert (again["compiled_now"], again["compiled_from_cache"]) == (0, 1)
    rescored = lake.read(spark, lakehouse, "gold.churn_predictions").toPandas().set_index("customer_id")
    assert np.array_equal(rescored.loc[rows["customer_id"], "prediction"].to_numpy(), scored)


@pytest.mark.slow
def test_a_tampered_model_file_is_refused_by_lakeforge_score_and_never_unpickled(ctx, spark, lakehouse, tmp_path):
    stages.train(ctx)
    scored = stages.nightly(ctx)["score"]
    table = "gold.churn_predictions"
    before = lake.version(spark, lakehouse, table)

    marker, control = tmp_path / "unpickled", tmp_path / "control"
    pickle.loads(pickle.dumps(WritesAMarker(control)))
    assert control.exists()  # the payload does what it says when unpickled
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/churn/1/artifacts/{model_files.FOLDER}"))
    assert folder.is_relative_to(tmp_path)  # the registered model's own files (a local artifact store)
    (folder / "estimator.txt").write_bytes(pickle.dumps(WritesAMarker(marker)))

    s = ctx.settings
    job = subprocess.run(
        [sys.executable, "-m", "lakeforge", "score", "--pipeline", "churn", "--env", "test",
         "--date", scored["score_date"], "--set", f"paths.landing={s.paths.landing}",
         "--set", f"paths.lakehouse={s.paths.lakehouse}", "--set", f"paths.model_cache={s.paths.model_cache}",
         "--set", f"mlflow.tracking_uri={s.mlflow.tracking_uri}", "--set", f"mlflow.artifact_root={s.mlflow.artifact_root}",
         "--set", "pipeline.model.params.n_estimators=20"],
        capture_output=True, text=True, timeout=600)
    assert job.returncode == 1, job.stderr[-3000:]
    assert "churn version 1: model file model_files/estimator.txt" in job.stderr
    assert "has SHA-256" in job.stderr and "refusing to score it" in job.stderr
    assert not marker.exists()
    assert lake.version(spark, lakehouse, table) == before  # nothing written


def test_a_worker_that_scored_one_model_scores_another_of_the_same_name_and_version_as_itself(spark, tmp_path):
    """Python workers outlive a job: version 1 of `churn` in a second registry (another project, or a test after
    another) must not be served the first one's model, compiled or not."""
    rng = np.random.default_rng(3)
    rows = pd.DataFrame(rng.normal(size=(400, 3)), columns=["a", "b", "c"]).assign(row=np.arange(400))
    params = {"random_state": 1, "n_jobs": 1, "n_estimators": 10, "num_leaves": 7, "verbose": -1}
    frame = spark.createDataFrame(rows).repartition(2)
    for compile_trees in (True, False):
        for target in ("a", "b"):  # two different models, both "churn version 1"
            model = ProbabilityModel(training.fit_estimator("classification", params, rows[["a", "b", "c"]],
                                                            (rows[target] > 0).astype("int64")), ["a", "b", "c"])
            files = model_files.model_files(model)
            sha = model_files.write(files, tmp_path / target / "files")
            prepared = compiled.prepare(model_files.read(tmp_path / target / "files", sha, "churn version 1"),
                                        tmp_path / "cache", compile_trees=compile_trees)
            how = compiled.COMPILED if compile_trees else compiled.NATIVE
            loaded = scoring.Loaded(prepared.payload, ["a", "b", "c"], how, {},
                                    scoring.fingerprint(how, prepared.payload))
            scored = (scoring.predict(frame, scoring.broadcast_model(spark, loaded), loaded.fingerprint, ["row"],
                                      ["a", "b", "c"]).toPandas().sort_values("row")["prediction"].to_numpy())
            assert np.abs(scored - model.predict(None, rows)).max() <= 1e-9, (target, how)
