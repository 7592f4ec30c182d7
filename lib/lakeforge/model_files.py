"""A registered model as data: its estimators in their own formats, its columns and routing as JSON, and a
manifest with the SHA-256 of each file, so scoring never unpickles code for a lakeforge model.

The files (one folder, logged inside the registered MLflow model as its pyfunc artifact `model_files`):
  manifest.json     {"format", "files": {name: sha256}}; its own SHA-256 is a tag of the model version
  model.json        what the model is: kind (probability | regression | routing), the columns it reads (in
                    order), the estimators' input columns, and per estimator its file and format;
                    routing: the group key and each group's estimator, plus the fallback
  <name>.txt        a LightGBM model in LightGBM's text format (`Booster.model_to_string()`)
  <name>.json       a linear model's coefficients and intercept (models.LinearProbability)
  <name>.xgb.json   an XGBoost model in XGBoost's JSON format (`Booster.save_raw("json")`)

model.json also holds what the estimators' inputs need as data: `categories` (each string input's
categories, fixed at training: lakeforge.estimators) and, for a multiclass model, its `classes` in the
order of the probabilities.

`read` checks every file against the manifest and the manifest against the tag recorded at registration;
one mismatch and the model is refused (`ModelFilesRefused`, exit 1), naming the file. A model whose
estimator has no data form (a custom scikit-learn estimator) has no model files: it is scored from the
pickled pyfunc, and scoring says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lakeforge.errors import LakeforgeError

FOLDER = "model_files"  # the pyfunc artifact's name, and its folder in the registered model
MANIFEST, MODEL = "manifest.json", "model.json"
FORMAT = "lakeforge-model-files/1"
MANIFEST_TAG = "lakeforge.model_files.sha256"  # model version tag: the manifest's SHA-256
LIGHTGBM, LINEAR, XGBOOST = "lightgbm-text", "linear-json", "xgboost-json"


class ModelFilesRefused(LakeforgeError):
    """A model file does not match the SHA-256 recorded when the model was registered: nothing is scored."""

    exit_code = 1


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _estimator_file(estimator, stem: str) -> tuple[str, str, bytes] | None:
    """(file name, format, bytes) of an estimator's data form, None if it has none."""
    from lakeforge.estimators import Fitted
    from lakeforge.models import LinearProbability

    if isinstance(estimator, Fitted):
        estimator = estimator.estimator
    module = type(estimator).__module__
    booster = getattr(estimator, "booster_", None)
    if booster is not None and module.startswith("lightgbm"):
        return f"{stem}.txt", LIGHTGBM, booster.model_to_string().encode()
    if module.startswith("xgboost") and hasattr(estimator, "get_booster"):
        return f"{stem}.xgb.json", XGBOOST, bytes(estimator.get_booster().save_raw(raw_format="json"))
    if isinstance(estimator, LinearProbability):
        body = {"coefficients": estimator.coefficients.tolist(), "intercept": estimator.intercept,
                "feature_names": [str(c) for c in estimator.feature_names_in_]}
        return f"{stem}.json", LINEAR, json.dumps(body).encode()
    return None


def _categories(estimators: list) -> dict | None:
    """The string inputs' categories, one set for the whole model (None when its estimators disagree)."""
    found = [dict(getattr(e, "categories", {}) or {}) for e in estimators]
    return found[0] if all(f == found[0] for f in found) else None


def _plain(value):
    """A group value as JSON keeps it (str, int, float, bool, None); NumPy scalars become Python ones."""
    return value.item() if hasattr(value, "item") else value


def model_files(model) -> dict[str, bytes] | None:
    """{file name: bytes} of a lakeforge pyfunc model (ProbabilityModel, RegressionModel, RoutingModel) with the
    manifest, None when an estimator has no data form (it is then scored from the pickle)."""
    from lakeforge.models import MulticlassModel, RoutingModel

    files: dict[str, bytes] = {}
    estimators: dict[str, dict] = {}

    def add(estimator, stem: str) -> str | None:
        found = _estimator_file(estimator, stem)
        if found is None:
            return None
        name, fmt, data = found
        files[name] = data
        estimators[stem] = {"file": name, "format": fmt}
        return stem

    if isinstance(model, RoutingModel):
        groups = []
        for i, (group, estimator) in enumerate(sorted(model.models.items(), key=lambda item: str(item[0]))):
            if add(estimator, f"group-{i:05d}") is None:
                return None
            groups.append([_plain(group), f"group-{i:05d}"])
        if add(model.fallback, "fallback") is None:
            return None
        spec = {"kind": "routing", "task": model.task, "group_key": model.group_key, "groups": groups,
                "fallback": "fallback"}
        categories = _categories([*model.models.values(), model.fallback])
    else:
        if add(model.estimator, "estimator") is None:
            return None
        from lakeforge.registry import ProbabilityModel

        kind = "multiclass" if isinstance(model, MulticlassModel) else (
            "probability" if isinstance(model, ProbabilityModel) else "regression")
        spec = {"kind": kind, "estimator": "estimator"}
        if isinstance(model, MulticlassModel):
            spec["classes"] = list(model.classes)
        categories = _categories([model.estimator])
    if categories is None:
        return None
    spec["categories"] = categories
    inputs = list(getattr(model, "inputs", model.feature_names))
    files[MODEL] = json.dumps({**spec, "feature_names": list(model.feature_names), "inputs": inputs,
                               "dtype": "float64", "estimators": estimators}, indent=1).encode()
    files[MANIFEST] = json.dumps({"format": FORMAT, "files": {name: sha256(data) for name, data in sorted(files.items())}},
                                 indent=1).encode()
    return files


def write(files: dict[str, bytes], folder: Path) -> str:
    """Write the files into `folder` (created); returns the manifest's SHA-256, to record at registration."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return sha256(files[MANIFEST])


@dataclass(frozen=True)
class ModelFiles:
    """Verified model files: the parsed model.json and every file's bytes."""

    spec: dict
    files: dict[str, bytes]

    @property
    def estimators(self) -> dict[str, dict]:
        return self.spec["estimators"]


def read(folder: Path, manifest_sha256: str, where: str) -> ModelFiles:
    """The model files in `folder`, each checked against the manifest and the manifest against the SHA-256
    recorded at registration; `where` names the model in the error (e.g. `<pipeline> version 3`)."""
    def refuse(name: str, why: str) -> ModelFilesRefused:
        return ModelFilesRefused(f"{where}: model file {FOLDER}/{name} ({folder / name}) {why}; refusing to score "
                                 f"it. Retrain (`lakeforge train`) or point @champion at an intact version "
                                 f"(`lakeforge promote --version N`)")

    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise refuse(MANIFEST, "is missing")
    manifest_bytes = manifest_path.read_bytes()
    if sha256(manifest_bytes) != manifest_sha256:
        raise refuse(MANIFEST, f"has SHA-256 {sha256(manifest_bytes)}, not the {manifest_sha256} recorded at "
                               f"registration")
    manifest = json.loads(manifest_bytes)
    files = {}
    for name, expected in manifest["files"].items():
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise refuse(name, "is missing")
        data = path.read_bytes()
        if sha256(data) != expected:
            raise refuse(name, f"has SHA-256 {sha256(data)}, not the {expected} of its manifest")
        files[name] = data
    if MODEL not in files:
        raise refuse(MODEL, "is not listed in the manifest")
    return ModelFiles(json.loads(files[MODEL]), files)
