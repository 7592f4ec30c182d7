"""Typed, frozen configuration: conf/base.yaml deep-merged with one overlay per environment.

`load_settings(env)` and `load_pipeline(name)` are called once per process; everything else
receives the values it needs. A bad file, key or value raises one `ConfigError` that names
the file, the key and what was expected.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lakeforge.errors import ConfigError

DEFAULT_ENV = "local"


class Frozen(BaseModel):
    """Base for every config model: immutable, and unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------- settings (conf/base.yaml + overlay)


class PathSettings(Frozen):
    landing: Path = Path("var/landing")
    lakehouse: Path = Path("var/lakehouse")
    reports: Path = Path("var/reports")


class SparkSettings(Frozen):
    master: str = "local[*]"
    app_name: str = "lakeforge"
    shuffle_partitions: int = Field(8, ge=1)
    ui_enabled: bool = True
    driver_memory: str = "2g"
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    event_log_dir: Path | None = None
    conf: dict[str, str] = Field(default_factory=dict)


class MlflowSettings(Frozen):
    tracking_uri: str = "sqlite:///var/mlflow.db"
    artifact_root: str = "var/mlartifacts"


class DemoSettings(Frozen):
    seed: int = 42
    customers: int = Field(3000, ge=10)
    stores: int = Field(20, ge=1)
    days: int = Field(180, ge=60)
    start_date: dt.date = dt.date(2026, 5, 1)
    shift_date: dt.date | None = dt.date(2026, 9, 1)
    column_added_date: dt.date | None = dt.date(2026, 8, 1)
    dirty: bool = True


class Settings(Frozen):
    env: str = DEFAULT_ENV
    owner: str = "data-platform"
    log_format: Literal["text", "json"] = "text"
    paths: PathSettings = PathSettings()
    spark: SparkSettings = SparkSettings()
    mlflow: MlflowSettings = MlflowSettings()
    demo: DemoSettings = DemoSettings()


# ---------------------------------------------------------------- pipelines (conf/pipelines/<name>.yaml)

SparkType = str  # a Spark SQL type name: string, int, bigint, double, boolean, date, timestamp, ...


class Expectation(Frozen):
    column: str
    rule: Literal["not_null", "range", "accepted_values"]
    min: float | None = None
    max: float | None = None
    values: list[str] | None = None
    action: Literal["warn", "drop", "quarantine", "fail"] = "quarantine"


class Source(Frozen):
    path: str  # folder under paths.landing
    format: Literal["csv", "json", "parquet"]
    columns: dict[str, SparkType]
    primary_key: list[str]
    event_time: str
    description: str = ""
    expectations: list[Expectation] = Field(default_factory=list)


class Spine(Frozen):
    """Which entities get a feature row as of a date: rows of `source` whose `since` is before it."""

    source: str
    since: str
    columns: list[str] = Field(default_factory=list)


class Events(Frozen):
    """Event rows joined to each entity and as-of date: event time in [as_of - lookback, as_of)."""

    source: str
    columns: list[str]
    lookback_days: int = Field(180, ge=1)


class Features(Frozen):
    entity: str
    spine: Spine
    events: Events
    function: str  # dotted path of a pandas function: one entity's rows for one as-of date -> one row
    columns: dict[str, SparkType]  # the function's output schema, key columns first
    population: str | None = None  # SQL filter on feature rows: who is trained on and scored (e.g. recent buyers)


class Label(Frozen):
    name: str
    rule: Literal["no_event_within_horizon"]
    events: str
    horizon_days: int = Field(ge=1)


class Training(Frozen):
    snapshot_every_days: int = Field(7, ge=1)
    first_snapshot_after_days: int = Field(60, ge=0)
    holdout_snapshots: int = Field(2, ge=1)
    seed: int = 7


class Model(Frozen):
    estimator: Literal["lightgbm"] = "lightgbm"
    params: dict[str, Any] = Field(default_factory=dict)
    metric: Literal["auc"] = "auc"


class Gate(Frozen):
    """When a newly trained version may replace @champion (compared on the same holdout)."""

    min_auc: float = Field(0.5, ge=0, le=1)      # absolute floor
    min_improvement: float = 0.0                 # over the champion's AUC on the same holdout rows


class Monitoring(Frozen):
    """What `lakeforge monitor` measures beyond drift of every feature (see lakeforge.monitoring)."""

    window_days: int = Field(7, ge=1)            # score dates pooled into one matured performance window
    segments: list[str] = Field(default_factory=list)  # columns of the features or of segment_source to break down by
    segment_source: str | None = None            # source keyed by the entity with segment columns (default: spine)
    report: bool = True                          # write the HTML report (and log it to MLflow)


class Retrain(Frozen):
    """When `run nightly` retrains: drift on watched features for some days, or matured performance breaches."""

    psi_threshold: float = Field(0.2, gt=0)
    psi_features: list[str] = Field(default_factory=list)
    psi_days: int = Field(3, ge=0)               # 0 turns the drift trigger off
    performance_margin: float = Field(0.05, ge=0)
    windows: int = Field(5, ge=1)
    breaches: int = Field(2, ge=0)               # 0 turns the performance trigger off
    window_days: int = Field(42, ge=1)           # retrain on as-of dates of the last N days with matured labels
    snapshot_every_days: int | None = Field(None, ge=1)  # default: training.snapshot_every_days
    cooldown_days: int = Field(14, ge=0)         # no retrain while the champion's training is this recent


class Pipeline(Frozen):
    name: str
    description: str = ""
    owner: str = "data-science"
    sources: dict[str, Source]
    features: Features
    label: Label
    model: Model = Model()
    training: Training = Training()
    gate: Gate = Gate()
    monitoring: Monitoring = Monitoring()
    retrain: Retrain | None = None               # no policy: `run nightly` never retrains on its own

    def config_hash(self) -> str:
        """A short, stable hash of this pipeline's configuration (logged with each model)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- loading


def conf_dir() -> Path:
    """The configuration folder: $LAKEFORGE_CONF_DIR, else ./conf."""
    return Path(os.environ.get("LAKEFORGE_CONF_DIR", "conf")).resolve()


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """Turn ['spark.master=local[2]', ...] into a nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set spark.master=local[2]")
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    return tree


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Merge `overlay` into a copy of `base`: nested mappings merge, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _has_key(tree: Any, loc: tuple[Any, ...]) -> bool:
    for part in loc:
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _explain(exc: ValidationError, model: type[BaseModel], layers: list[tuple[str, dict]]) -> str:
    """One line per problem: which file set which key, and what was expected instead."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(part) for part in loc)
        origin = next((name for name, tree in reversed(layers) if _has_key(tree, loc)), layers[0][0])
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            hint = f"; known keys here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{origin}: unknown key '{key}'{hint}")
        elif err["type"] == "missing":
            lines.append(f"{origin}: key '{key}' is required but missing")
        else:
            lines.append(f"{origin}: key '{key}': {err['msg'].lower()} (got {err.get('input')!r})")
    return "\n".join(lines)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model found at `loc` (skipping dict keys and list indexes)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            continue  # a dict key or list index: stay on the value type below
        current = _inner_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside `X`, `X | None`, `list[X]` or `dict[str, X]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        inner = _inner_model(arg)
        if inner is not None:
            return inner
    return None


def _validate(model: type[BaseModel], layers: list[tuple[str, dict]]) -> Any:
    merged: dict[str, Any] = {}
    for _, tree in layers:
        merged = deep_merge(merged, tree)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, model, layers)) from None


def available_envs(directory: Path | None = None) -> list[str]:
    """Environment overlays present in the conf folder."""
    directory = directory or conf_dir()
    return sorted(p.stem for p in directory.glob("*.yaml") if p.stem != "base")


def load_settings(env: str | None = None, overrides: list[str] | None = None,
                  directory: Path | None = None) -> Settings:
    """Load conf/base.yaml + conf/<env>.yaml + --set overrides; relative paths resolve against the cwd."""
    directory = directory or conf_dir()
    env = env or os.environ.get("LAKEFORGE_ENV") or DEFAULT_ENV
    base_path = directory / "base.yaml"
    overlay_path = directory / f"{env}.yaml"
    base = _read_yaml(base_path, "base configuration")
    if not overlay_path.is_file():
        known = ", ".join(available_envs(directory)) or "none"
        raise ConfigError(f"unknown environment '{env}': no overlay {overlay_path} "
                          f"(environments here: {known}; choose one with --env or LAKEFORGE_ENV)")
    overlay = _read_yaml(overlay_path, f"overlay for env '{env}'")
    cli = {k: v for k, v in parse_overrides(overrides).items() if k != "pipeline"}
    layers = [(str(base_path), base), (str(overlay_path), overlay), ("--set", cli), ("env", {"env": env})]
    settings: Settings = _validate(Settings, layers)
    return _absolute(settings)


def _absolute(settings: Settings) -> Settings:
    """Resolve relative paths once, so executors and subprocesses agree on them."""
    paths = PathSettings(**{name: Path(value).resolve() for name, value in settings.paths})
    spark = settings.spark
    if spark.event_log_dir is not None:
        spark = spark.model_copy(update={"event_log_dir": spark.event_log_dir.resolve()})
    uri = settings.mlflow.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    root = settings.mlflow.artifact_root
    if "://" not in root:
        root = Path(root).resolve().as_uri()
    mlflow = MlflowSettings(tracking_uri=uri, artifact_root=root)
    return settings.model_copy(update={"paths": paths, "spark": spark, "mlflow": mlflow})


def available_pipelines(directory: Path | None = None) -> list[str]:
    """Pipeline names declared under conf/pipelines/."""
    directory = directory or conf_dir()
    return sorted(p.stem for p in (directory / "pipelines").glob("*.yaml"))


def load_pipeline(name: str, overrides: list[str] | None = None, directory: Path | None = None) -> Pipeline:
    """Load conf/pipelines/<name>.yaml (+ `--set pipeline.<key>=value` overrides)."""
    directory = directory or conf_dir()
    path = directory / "pipelines" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_pipelines(directory)) or "none"
        raise ConfigError(f"unknown pipeline '{name}': no file {path} (pipelines here: {known})")
    tree = _read_yaml(path, f"pipeline '{name}'")
    cli = parse_overrides(overrides).get("pipeline", {})
    return _validate(Pipeline, [(str(path), tree), ("--set", cli), ("name", {"name": name})])
