"""Scoring a model from its files (model_files): LightGBM estimators compiled to native code with lleaves,
linear ones with NumPy, nothing unpickled.

The driver compiles each LightGBM text model once per model version and keeps the object code in a cache
folder (paths.model_cache), one file per key: the text model's SHA-256, the compiler's versions and the
CPU (name and features), so a second scoring run, or another pipeline with the same model, compiles
nothing. The broadcast carries the model files and the object code as bytes; each Python worker rebuilds
its scorer from them once (lleaves loads the object code without compiling). Where compilation is not
possible (lleaves missing, a model it cannot compile) the estimator predicts with LightGBM's own
`Booster`, built from the same text, and scoring warns; a worker on another CPU compiles for itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from lakeforge import model_files
from lakeforge.model_files import LIGHTGBM, LINEAR, MODEL, XGBOOST

COMPILED, NATIVE = "compiled", "native"
# Each model's entry function is named after the model's SHA-256: with lleaves' default name (forest_root) for
# every model, a process that had loaded one compiled model got that model's function back for the next one.
ENTRY_NAMING = "entry-by-sha"


def entry_name(text: bytes) -> str:
    return f"lakeforge_{model_files.sha256(text)[:24]}"


def compiler_version() -> str | None:
    """`lleaves-<v>-llvmlite-<v>-<entry naming>`, None when lleaves is not installed."""
    try:
        return f"lleaves-{version('lleaves')}-llvmlite-{version('llvmlite')}-{ENTRY_NAMING}"
    except PackageNotFoundError:
        return None


def cpu_key() -> str:
    """The CPU the object code is for: LLVM's host CPU name and a digest of its features."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot detect them: lleaves then compiles for none
        features = ""
    return f"{llvm.get_host_cpu_name()}-{hashlib.sha256(features.encode()).hexdigest()[:12]}"


def cache_file(cache_dir: Path, text: bytes, compiler: str, cpu: str) -> Path:
    return cache_dir / f"{model_files.sha256(text)}-{compiler}-{cpu}.o"


def _lleaves_model(text: bytes, obj: Path | None, folder: str):
    """A compiled lleaves model of LightGBM `text`: loads `obj` when it exists, else compiles (into `obj`)."""
    import lleaves

    model_path = Path(folder) / "model.txt"
    model_path.write_bytes(text)
    model = lleaves.Model(model_file=str(model_path))
    if model.num_model_per_iteration() != 1:
        raise ValueError(f"{model.num_model_per_iteration()} outputs per row (multiclass); lakeforge scores one")
    model.compile(cache=str(obj) if obj is not None else None, froot_func_name=entry_name(text))
    return model


def compile_lightgbm(text: bytes, cache_dir: Path, compiler: str, cpu: str) -> tuple[bytes, bool]:
    """The object code of a LightGBM text model, from the cache or compiled now (then cached); and whether it
    was compiled now. The cache file appears whole (written aside, then renamed), so a reader never sees half."""
    path = cache_file(cache_dir, text, compiler, cpu)
    if path.is_file():
        return path.read_bytes(), False
    with tempfile.TemporaryDirectory(prefix="lakeforge-compile-") as folder:
        obj = Path(folder) / "model.o"
        _lleaves_model(text, obj, folder)
        data = obj.read_bytes()
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return data, True


@dataclass
class Prepared:
    """What the driver broadcasts (plain bytes and strings), and what preparing it took."""

    payload: dict
    compiled_now: int = 0
    from_cache: int = 0
    compile_seconds: float = 0.0
    native: list[str] = field(default_factory=list)  # estimators left to LightGBM's predict, with why


def prepare(files: model_files.ModelFiles, cache_dir: Path, log: Callable[[str], None] = print,
            compile_trees: bool = True) -> Prepared:
    """Compile (or take from the cache) every LightGBM estimator of verified model files; the broadcast payload.

    compile_trees=False scores with LightGBM's own predict (the native path)."""
    objects: dict[str, bytes] = {}
    prepared = Prepared({})
    compiler = compiler_version() if compile_trees else None
    cpu = None
    if compile_trees and compiler is None:
        prepared.native.append("all: lleaves is not installed")
    started = time.perf_counter()
    for stem, estimator in files.estimators.items():
        if estimator["format"] != LIGHTGBM or compiler is None:
            continue
        try:
            cpu = cpu or cpu_key()
            objects[stem], now = compile_lightgbm(files.files[estimator["file"]], cache_dir, compiler, cpu)
        except Exception as exc:  # any compiler failure leaves this estimator to LightGBM's own predict
            prepared.native.append(f"{estimator['file']}: {type(exc).__name__}: {exc}")
            continue
        prepared.compiled_now += now
        prepared.from_cache += not now
    prepared.compile_seconds = time.perf_counter() - started
    for why in prepared.native[:3]:
        log(f"warning: cannot compile {why}; scoring with LightGBM's own predict")
    if len(prepared.native) > 3:
        log(f"warning: {len(prepared.native) - 3} more estimators left to LightGBM's own predict")
    prepared.payload = {"files": files.files, "objects": objects, "cpu": cpu}
    return prepared


class _Linear:
    def __init__(self, body: dict):
        self.coefficients = np.asarray(body["coefficients"], dtype="float64")
        self.intercept = float(body["intercept"])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(x @ self.coefficients + self.intercept)))


class _Native:
    def __init__(self, text: bytes, threads: int):
        import lightgbm

        self.booster = lightgbm.Booster(model_str=text.decode())
        self.threads = threads

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(x, num_threads=self.threads), dtype="float64")


class _XGBoost:
    """An XGBoost model from its JSON file; categorical inputs arrive as their category's position (as at
    training, where XGBoost took the pandas categories' codes)."""

    def __init__(self, data: bytes, threads: int, feature_names: list[str], feature_types: list[str]):
        import xgboost

        self.xgboost = xgboost
        self.booster = xgboost.Booster(model_file=bytearray(data))
        self.booster.set_param({"nthread": threads})
        self.feature_names, self.feature_types = feature_names, feature_types

    def predict(self, x: np.ndarray) -> np.ndarray:
        matrix = self.xgboost.DMatrix(x, feature_names=self.feature_names, feature_types=self.feature_types,
                                      enable_categorical=True)
        return np.asarray(self.booster.predict(matrix), dtype="float64")


class _Compiled:
    def __init__(self, text: bytes, obj: bytes | None, threads: int):
        with tempfile.TemporaryDirectory(prefix="lakeforge-load-") as folder:
            path = None
            if obj is not None:
                path = Path(folder) / "model.o"
                path.write_bytes(obj)
            self.model = _lleaves_model(text, path, folder)
        self.threads = threads

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x, n_jobs=self.threads)


class Scorer:
    """A model rebuilt from its files: predict(frame) -> one float64 per row, as the registered pyfunc gives."""

    def __init__(self, spec: dict, predictors: dict[str, object], how: dict[str, str]):
        self.spec = spec
        self.predictors = predictors
        self.how = how  # estimator -> compiled | native | linear
        self.feature_names = list(spec["feature_names"])
        self.inputs = list(spec["inputs"])
        self.categories = {c: pd.Index(values) for c, values in spec.get("categories", {}).items()}
        if spec["kind"] == "routing":
            self.routes = {group: predictors[stem] for group, stem in spec["groups"]}
            self.fallback = predictors[spec["fallback"]]

    def matrix(self, rows: pd.DataFrame | pa.StructArray) -> np.ndarray:
        """The estimators' input columns as one float64 matrix, row-major (as the compiled code reads it)."""
        columns = _columns(rows)
        x = np.empty((len(rows), len(self.inputs)), dtype="float64")
        for j, name in enumerate(self.inputs):
            if name in self.categories:  # a string input: its category's position, NaN for a null or an unseen value
                at = self.categories[name].get_indexer(columns(name, numeric=False)).astype("float64")
                at[at < 0] = np.nan
                x[:, j] = at
            else:
                x[:, j] = columns(name)
        return x

    def predict(self, rows: pd.DataFrame | pa.StructArray) -> np.ndarray:
        """One prediction per row of a pandas frame or an Arrow struct array (a scoring UDF's batch); a multiclass
        model's is a row of class probabilities."""
        x = self.matrix(rows)
        if self.spec["kind"] != "routing":
            return self.predictors[self.spec["estimator"]].predict(x)
        out = np.empty(len(x), dtype="float64")
        key = pd.Series(_columns(rows)(self.spec["group_key"], numeric=False))
        for group, at in key.groupby(key, sort=False, dropna=False).indices.items():
            out[at] = self.routes.get(group, self.fallback).predict(x[at])
        return out


def _columns(rows: pd.DataFrame | pa.StructArray) -> Callable[..., np.ndarray]:
    """name -> the column as NumPy (numbers as float64, a null as NaN), from a pandas frame or an Arrow struct."""
    if isinstance(rows, pd.DataFrame):
        return lambda name, numeric=True: rows[name].to_numpy(dtype="float64" if numeric else None)
    fields = {rows.type.field(i).name: i for i in range(rows.type.num_fields)}

    def column(name: str, numeric: bool = True) -> np.ndarray:
        array = rows.field(fields[name])
        if numeric and not pa.types.is_floating(array.type):
            array = array.cast(pa.float64())  # a null becomes NaN in to_numpy
        return array.to_numpy(zero_copy_only=False)

    return column


def build(payload: dict, threads: int = 1) -> Scorer:
    """The scorer of a broadcast payload (on a worker, once): object code loaded, never compiled when it was
    compiled for this CPU; estimators without object code predict with LightGBM's own Booster."""
    files, objects = payload["files"], payload["objects"]
    spec = json.loads(files[MODEL])
    predictors, how = {}, {}
    same_cpu = None
    for stem, estimator in spec["estimators"].items():
        data = files[estimator["file"]]
        if estimator["format"] == LINEAR:
            predictors[stem], how[stem] = _Linear(json.loads(data)), "linear"
        elif estimator["format"] == LIGHTGBM and stem in objects:
            same_cpu = same_cpu if same_cpu is not None else payload["cpu"] == cpu_key()
            # Object code for another CPU could use instructions this one lacks: compile here instead.
            predictors[stem], how[stem] = _Compiled(data, objects[stem] if same_cpu else None, threads), COMPILED
        elif estimator["format"] == LIGHTGBM:
            predictors[stem], how[stem] = _Native(data, threads), NATIVE
        elif estimator["format"] == XGBOOST:
            types = ["c" if c in spec.get("categories", {}) else "q" for c in spec["inputs"]]
            predictors[stem], how[stem] = _XGBoost(data, threads, spec["inputs"], types), NATIVE
        else:
            raise ValueError(f"model file {estimator['file']}: unknown format {estimator['format']!r}")
    return Scorer(spec, predictors, how)
