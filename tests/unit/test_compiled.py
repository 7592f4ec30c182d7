"""Models as files and compiled scoring without Spark: compiled vs LightGBM's own predict, the compile cache,
loading object code without compiling, the fallback, routing with compiled group models, hash checks."""

from __future__ import annotations

import json
from pathlib import Path

import lleaves.compiler
import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lakeforge import compiled, model_files, training
from lakeforge.model_files import ModelFilesRefused
from lakeforge.models import LinearProbability, RegressionModel, RoutingModel
from lakeforge.registry import ProbabilityModel

COLUMNS = ["a", "b", "c", "d"]
PARAMS = {"random_state": 7, "n_jobs": 1, "deterministic": True, "force_row_wise": True, "verbose": -1,
          "n_estimators": 20, "num_leaves": 15}


def _rows(n: int = 3000, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    x[rng.uniform(size=n) < 0.05, 3] = np.nan  # missing values take each split's default branch
    frame = pd.DataFrame(x, columns=COLUMNS).assign(
        n=rng.poisson(3, n).astype("int64"), store=rng.choice(["S1", "S2", "S3"], n))
    frame["y"] = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=n) > 0).astype("int64")
    frame["count"] = np.maximum(0, 10 + 3 * x[:, 0] + frame["n"] + rng.normal(size=n))
    return frame


INPUTS = [*COLUMNS, "n"]


def _files(model, tmp_path) -> model_files.ModelFiles:
    files = model_files.model_files(model)
    sha = model_files.write(files, tmp_path / "model_files")
    return model_files.read(tmp_path / "model_files", sha, "test v1")


def _scorer(files, cache, compile_trees=True, log=print) -> compiled.Scorer:
    return compiled.build(compiled.prepare(files, cache, log, compile_trees).payload)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_compiled_and_native_predictions_agree_with_the_registered_model(task, tmp_path):
    rows = _rows()
    estimator = training.fit_estimator(task, PARAMS, rows[INPUTS], rows["y" if task == "classification" else "count"])
    model = (ProbabilityModel if task == "classification" else RegressionModel)(estimator, INPUTS)
    files = _files(model, tmp_path)
    native = _scorer(files, tmp_path / "cache", compile_trees=False)
    fast = _scorer(files, tmp_path / "cache")
    assert (native.how, fast.how) == ({"estimator": "native"}, {"estimator": "compiled"})
    expected = model.predict(None, rows)
    assert np.array_equal(native.predict(rows), expected)  # LightGBM's Booster from the text: the same numbers
    batch = pa.StructArray.from_arrays([pa.array(rows[c], from_pandas=True) for c in INPUTS], INPUTS)
    assert pa.types.is_integer(batch.type.field("n").type) and batch.field("d").null_count > 0
    assert np.array_equal(native.predict(batch), expected)
    difference = np.abs(fast.predict(rows) - expected).max()
    print(f"{task}: compiled vs native, max |difference| {difference:.3g} over {len(rows)} rows")
    assert difference <= 1e-9
    assert not np.array_equal(expected, np.full(len(rows), expected[0]))  # a model that predicts something


def test_a_second_prepare_takes_the_object_code_from_the_cache_and_compiles_nothing(tmp_path, monkeypatch):
    rows = _rows()
    model = RegressionModel(training.fit_estimator("regression", PARAMS, rows[INPUTS], rows["count"]), INPUTS)
    files = _files(model, tmp_path)
    first = compiled.prepare(files, tmp_path / "cache", print)
    assert (first.compiled_now, first.from_cache) == (1, 0)
    [cached] = (tmp_path / "cache").glob("*.o")
    assert cached.name.startswith(model_files.sha256(files.files["estimator.txt"]) + "-lleaves-1.3.0-llvmlite-0.44")

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(lleaves.compiler, "compile_to_module", no_compiling)
    second = compiled.prepare(files, tmp_path / "cache", print)
    assert (second.compiled_now, second.from_cache) == (0, 1)
    assert second.payload["objects"] == first.payload["objects"]
    # A worker rebuilds from the broadcast object code without compiling either.
    assert np.array_equal(compiled.build(second.payload).predict(rows), compiled.build(first.payload).predict(rows))


def test_a_worker_on_another_cpu_compiles_for_itself(tmp_path, monkeypatch):
    rows = _rows()
    model = RegressionModel(training.fit_estimator("regression", PARAMS, rows[INPUTS], rows["count"]), INPUTS)
    prepared = compiled.prepare(_files(model, tmp_path), tmp_path / "cache", print)
    calls = []
    real = lleaves.compiler.compile_to_module
    monkeypatch.setattr(lleaves.compiler, "compile_to_module", lambda *a, **k: calls.append(1) or real(*a, **k))
    same = compiled.build(prepared.payload)
    assert calls == []
    other = compiled.build({**prepared.payload, "cpu": "another-cpu"})
    assert calls == [1]
    assert np.array_equal(other.predict(rows), same.predict(rows))


def test_an_estimator_that_cannot_be_compiled_falls_back_to_lightgbm_with_a_warning(tmp_path, monkeypatch):
    rows = _rows()
    model = ProbabilityModel(training.fit_estimator("classification", PARAMS, rows[INPUTS], rows["y"]), INPUTS)
    files = _files(model, tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("LLVM ran out of patience")

    monkeypatch.setattr(lleaves.compiler, "compile_to_module", broken)
    lines = []
    prepared = compiled.prepare(files, tmp_path / "cache", lines.append)
    assert prepared.payload["objects"] == {} and prepared.compiled_now == 0
    assert lines == ["warning: cannot compile estimator.txt: RuntimeError: LLVM ran out of patience; scoring with "
                     "LightGBM's own predict"]
    assert not list((tmp_path / "cache").glob("*.o"))
    scorer = compiled.build(prepared.payload)
    assert scorer.how == {"estimator": "native"}
    assert np.array_equal(scorer.predict(rows), model.predict(None, rows))


def test_a_routing_model_gives_each_row_its_groups_compiled_model(tmp_path):
    rows = _rows()
    per_group = {store: training.fit_estimator("regression", {**PARAMS, "n_estimators": 10 + 5 * i},
                                               g[INPUTS], g["count"])
                 for i, (store, g) in enumerate(rows[rows.store != "S3"].groupby("store"))}
    fallback = training.fit_estimator("regression", PARAMS, rows[INPUTS], rows["count"])
    model = RoutingModel(per_group, fallback, "store", INPUTS, "regression")
    files = _files(model, tmp_path)
    assert [g for g, _ in files.spec["groups"]] == ["S1", "S2"]
    scorer = _scorer(files, tmp_path / "cache")
    assert set(scorer.how.values()) == {"compiled"} and len(scorer.how) == 3
    out = scorer.predict(rows)
    assert np.abs(out - model.predict(None, rows)).max() <= 1e-9
    # A scoring UDF's batch: the same columns as an Arrow struct (integers and nulls as Spark sends them).
    batch = pa.StructArray.from_arrays([pa.array(rows[c]) for c in model.feature_names], model.feature_names)
    assert np.array_equal(scorer.predict(batch), out)
    for store, estimator in (("S1", per_group["S1"]), ("S2", per_group["S2"]), ("S3", fallback)):
        mask = (rows.store == store).to_numpy()
        assert np.abs(out[mask] - estimator.predict(rows.loc[mask, INPUTS])).max() <= 1e-9
        others = [e for e in (*per_group.values(), fallback) if e is not estimator]
        assert all(np.abs(out[mask] - e.predict(rows.loc[mask, INPUTS])).max() > 1e-3 for e in others)


def test_a_linear_model_is_scored_from_its_coefficients(tmp_path):
    rows = _rows()
    model = ProbabilityModel(LinearProbability(np.array([0.5, -1.0, 0.25, 0.0, 0.1]), -0.2, INPUTS), INPUTS)
    rows = rows.assign(d=rows["d"].fillna(0.0))
    files = _files(model, tmp_path)
    assert files.estimators == {"estimator": {"file": "estimator.json", "format": model_files.LINEAR}}
    assert np.allclose(_scorer(files, tmp_path / "cache").predict(rows), model.predict(None, rows), rtol=0, atol=1e-15)


def test_a_model_file_that_differs_from_its_recorded_sha256_is_refused_by_name(tmp_path):
    rows = _rows(500)
    model = RegressionModel(training.fit_estimator("regression", PARAMS, rows[INPUTS], rows["count"]), INPUTS)
    files = model_files.model_files(model)
    folder = tmp_path / "model_files"
    sha = model_files.write(files, folder)
    assert json.loads(files[model_files.MANIFEST])["files"]["estimator.txt"] == model_files.sha256(
        files["estimator.txt"])
    (folder / "estimator.txt").write_bytes(files["estimator.txt"].replace(b"leaf_value=", b"leaf_value=1", 1))
    with pytest.raises(ModelFilesRefused, match=r"test v1: model file model_files/estimator\.txt .* has SHA-256 "
                                                r"[0-9a-f]{64}, not the [0-9a-f]{64} of its manifest; refusing"):
        model_files.read(folder, sha, "test v1")
    model_files.write(files, folder)
    model_files.read(folder, sha, "test v1")  # intact again
    (folder / model_files.MANIFEST).write_bytes(files[model_files.MANIFEST] + b" ")
    with pytest.raises(ModelFilesRefused, match=r"model file model_files/manifest\.json .* not the "
                                                rf"{sha} recorded at registration"):
        model_files.read(folder, sha, "test v1")


def test_a_custom_estimator_has_no_model_files():
    class Custom:
        def predict(self, x):
            return np.zeros(len(x))

    assert model_files.model_files(RegressionModel(Custom(), ["a"])) is None


class Halves:
    """A custom estimator with no data form: registered as a pickle only."""

    def predict(self, x):
        return np.full(len(x), 0.5)


def test_scoring_loads_model_files_and_says_when_a_version_has_only_its_pickle(tmp_path):
    from lakeforge import registry, scoring
    from lakeforge.config import MlflowSettings

    client = registry.connect(MlflowSettings(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                             artifact_root=(tmp_path / "artifacts").as_uri()))
    rows = _rows(500)
    lightgbm = RegressionModel(training.fit_estimator("regression", PARAMS, rows[INPUTS], rows["count"]), INPUTS)
    custom = RegressionModel(Halves(), INPUTS)
    for model in (lightgbm, custom):
        registry.log_and_register(client, "m", str(tmp_path / "artifacts"), model, rows, {}, {}, {})
    lines = []
    files = scoring.load(client, "m", 1, tmp_path / "cache", lines.append)
    assert (files.how, files.details["scored_from"], files.feature_names) == ("compiled", "model files", INPUTS)
    folder = mlflow.artifacts.download_artifacts(f"models:/m/1/artifacts/{model_files.FOLDER}")
    assert client.get_model_version("m", "1").tags[model_files.MANIFEST_TAG] == model_files.sha256(
        (Path(folder) / model_files.MANIFEST).read_bytes())
    pickled = scoring.load(client, "m", 2, tmp_path / "cache", lines.append)
    assert (pickled.how, pickled.details) == ("pickle", {"scored_from": "pickle"})
    assert lines[-1] == ("m v2 has no model files (registered before them, or an estimator with no data form: "
                         "Halves): scoring its pickled pyfunc (RegressionModel, unpickled with cloudpickle)")
    assert model_files.MANIFEST_TAG not in client.get_model_version("m", "2").tags
