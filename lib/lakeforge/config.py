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
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from typing_extensions import Annotated

from lakeforge import catalog
from lakeforge.demo.settings import DemoSettings
from lakeforge.errors import ConfigError

DEFAULT_ENV = "local"
AS_OF_DATE = catalog.AS_OF       # the date a feature row is as of (snapshot) or its instant's date (event)
PREDICTION_AT = "prediction_at"  # event points: the instant each point is predicted at


class Frozen(BaseModel):
    """Base for every config model: immutable, and unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------- settings (conf/base.yaml + overlay)


class PathSettings(Frozen):
    landing: Path = Path("var/landing")
    lakehouse: Path = Path("var/lakehouse")
    reports: Path = Path("var/reports")
    model_cache: Path = Path("var/model_cache")  # compiled models (object code), keyed by model, compiler and CPU
    # Deletes (demo --fresh) touch only folders inside the folder lakeforge runs in, unless this is true.
    allow_outside_project: bool = False


class SparkSettings(Frozen):
    master: str = "local[*]"
    app_name: str = "lakeforge"
    shuffle_partitions: int = Field(8, ge=1)
    ui_enabled: bool = True
    driver_memory: str = "2g"
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    event_log_dir: Path | None = None
    conf: dict[str, str] = Field(default_factory=dict)
    # The team's shared catalog: Spark's Hive metastore in PostgreSQL, e.g. jdbc:postgresql://postgres:5432/metastore
    # (unset: each session registers the tables itself). Its user here, its password in
    # LAKEFORGE_METASTORE_PASSWORD (never in configuration).
    metastore_url: str | None = Field(None, pattern=r"^jdbc:postgresql://")
    metastore_user: str = "lakeforge"


class MlflowSettings(Frozen):
    tracking_uri: str = "sqlite:///var/mlflow.db"
    artifact_root: str = "var/mlartifacts"
    # basic: the server runs MLflow's basic-auth app (the team set-up); every verb then asks it, as the user of
    # MLFLOW_TRACKING_USERNAME/PASSWORD, whether that user may act (lakeforge.access, docs/access.md).
    authentication: Literal["none", "basic"] = "none"


class MaintenanceSettings(Frozen):
    """`lakeforge maintain`, also a step of `run nightly`: compaction and VACUUM of the tables ingest writes."""

    every_days: int = Field(7, ge=0)  # run nightly maintains when the last successful maintain is this old; 0: never
    target_file_mb: int = Field(128, ge=1)  # OPTIMIZE rewrites files smaller than this into files of about this
    vacuum_retention_hours: float = Field(168, ge=0)  # VACUUM keeps every file a version this recent needs


class Settings(Frozen):
    env: str = DEFAULT_ENV
    # Names this project in the marker of every folder lakeforge creates (see lakeforge.ownership); unset, it is
    # derived from the conf folder's path. Set it when several places (a laptop, a container) share the folders.
    project: str | None = Field(None, min_length=1)
    owner: str = "data-platform"
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    lock_wait_s: float = Field(0.0, ge=0)  # a second ingest/score/train of a pipeline: wait this long, then exit 2
    paths: PathSettings = PathSettings()
    spark: SparkSettings = SparkSettings()
    mlflow: MlflowSettings = MlflowSettings()
    demo: DemoSettings = DemoSettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    access_file: Path | None = None  # who has which role (default conf/access.yaml; see load_access)


# ---------------------------------------------------------------- pipelines (conf/pipelines/<name>.yaml)

SparkType = str  # a Spark SQL type name: string, int, bigint, double, boolean, date, timestamp, ...


class Expectation(Frozen):
    """One data-contract rule of a source, and what happens to what breaks it.

    Row rules judge each row: not_null, range, accepted_values, pattern, unique (the value
    occurs once in its landing file). File rules judge each landing file: freshness (its newest
    `column` value is at most `max_age_hours` old when it is ingested) and min_rows (it has at
    least `min` rows); their action is warn or fail. Nulls pass every rule but not_null.
    """

    rule: Literal["not_null", "range", "accepted_values", "pattern", "unique", "freshness", "min_rows"]
    column: str | None = None  # every rule but min_rows; freshness defaults to the source's event_time
    min: float | dt.datetime | dt.date | None = None  # range: inclusive bounds; min_rows: the least rows per file
    max: float | dt.datetime | dt.date | None = None
    values: list[str | bool | int | float] | None = None  # accepted_values
    pattern: str | None = None  # a Java regular expression the value must contain (anchor it with ^...$)
    max_age_hours: float | None = Field(None, gt=0)  # freshness
    action: Literal["warn", "drop", "quarantine", "fail"] = "quarantine"

    def model_post_init(self, _context: Any) -> None:
        """Each rule gets exactly the settings it uses (a typo'd rule is an error, not a silent pass)."""
        uses = {"not_null": set(), "range": {"min", "max"}, "accepted_values": {"values"},
                "pattern": {"pattern"}, "unique": set(), "freshness": {"max_age_hours"}, "min_rows": {"min"}}[self.rule]
        stray = sorted(f for f in {"min", "max", "values", "pattern", "max_age_hours"} - uses if getattr(self, f) is not None)
        if stray:
            raise ValueError(f"rule {self.rule} does not use {', '.join(stray)}")
        if self.column is None and self.rule not in ("freshness", "min_rows"):
            raise ValueError(f"rule {self.rule} needs a column")
        if self.rule == "range":
            if self.min is None and self.max is None:
                raise ValueError("rule range needs min, max or both")
            if self.min is not None and self.max is not None and type(self.min) is type(self.max) and self.min > self.max:
                raise ValueError(f"rule range: min {self.min} is above max {self.max}")
        if self.rule == "accepted_values" and not self.values:
            raise ValueError("rule accepted_values needs a non-empty list of values")
        if self.rule == "pattern" and not self.pattern:
            raise ValueError("rule pattern needs a pattern (a regular expression)")
        if self.rule == "freshness" and self.max_age_hours is None:
            raise ValueError("rule freshness needs max_age_hours")
        if self.rule == "min_rows" and not (isinstance(self.min, float) and self.min.is_integer() and self.min >= 0):
            raise ValueError("rule min_rows needs min: a whole number of rows (>= 0)")
        if self.rule in ("freshness", "min_rows") and self.action not in ("warn", "fail"):
            raise ValueError(f"rule {self.rule} judges whole files: its action must be warn or fail, not {self.action}")
        if self.rule == "min_rows" and self.column is not None:
            raise ValueError("rule min_rows counts the rows of each file: it takes no column")


class Source(Frozen):
    """A landing source: where its files are, how to read them, their columns, key and contracts."""

    path: str  # folder under paths.landing
    format: Literal["csv", "json", "parquet"]  # json means JSON lines: one object per line
    columns: dict[str, SparkType]
    primary_key: list[str]
    event_time: str  # sorts the versions of a key: silver keeps the latest
    description: str = ""
    expectations: list[Expectation] = Field(default_factory=list)
    on_new_column: Literal["add", "fail"] = "add"  # a column the files carry but `columns` lacks
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)  # extra Spark reader options
    # The largest share of a landing file's rows that may be quarantined: beyond it the night's monitoring
    # verdict is ACT ("act"), or the load stops before anything is written ("fail").
    max_quarantine_share: float | None = Field(None, ge=0, le=1)
    on_quarantine_share: Literal["act", "fail"] = "act"

    def model_post_init(self, _context: Any) -> None:
        """Names, types, the key and every expectation must fit the declared columns."""
        import re

        simple = (r"(tinyint|byte|smallint|short|int|integer|bigint|long|float|real|double|boolean|string|binary|"
                  r"date|timestamp|timestamp_ltz|timestamp_ntz|variant|(decimal|dec|numeric)(\(\d+(,\s*\d+)?\))?|"
                  r"(var)?char\(\d+\))")
        numeric = r"(tinyint|byte|smallint|short|int|integer|bigint|long|float|real|double|decimal|dec|numeric)\b.*"
        temporal = r"(date|timestamp|timestamp_ltz|timestamp_ntz)"
        reserved = {"_ingested_at", "_source_file", "_batch_id"}
        if not self.columns:
            raise ValueError("columns: declare at least one column")
        for name, kind in self.columns.items():
            if not name or re.search(r"[ ,;{}()\n\t=]", name) or name in reserved or name.startswith("_lf_"):
                raise ValueError(f"column name {name!r}: Delta column names cannot contain any of ' ,;{{}}()=', "
                                 f"tabs or newlines, and {', '.join(sorted(reserved))} and _lf_* are lakeforge's")
            text = kind.strip().lower()
            if not (re.fullmatch(simple, text) or text.startswith(("array<", "map<", "struct<"))):
                raise ValueError(f"column {name}: unknown type {kind!r} (expected a Spark SQL type such as string, "
                                 f"int, bigint, double, decimal(10,2), boolean, date, timestamp)")
        missing = [k for k in self.primary_key if k not in self.columns]
        if not self.primary_key or missing or len(set(self.primary_key)) != len(self.primary_key):
            raise ValueError(f"primary_key {self.primary_key}: must be distinct declared columns "
                             f"(declared: {', '.join(self.columns)})")
        if self.event_time not in self.columns:
            raise ValueError(f"event_time {self.event_time!r} is not a declared column ({', '.join(self.columns)})")
        for i, e in enumerate(self.expectations):
            column = e.column or (self.event_time if e.rule == "freshness" else None)
            if column is None:
                continue
            if column not in self.columns:
                raise ValueError(f"expectations[{i}] ({e.rule}): column {column!r} is not declared "
                                 f"({', '.join(self.columns)})")
            kind = self.columns[column].strip().lower()
            bounds = [b for b in (e.min, e.max) if b is not None]
            if e.rule == "range" and re.fullmatch(numeric, kind) and not all(isinstance(b, float) for b in bounds):
                raise ValueError(f"expectations[{i}] (range on {column}, {kind}): min/max must be numbers")
            if e.rule == "range" and re.fullmatch(temporal, kind) and not all(isinstance(b, dt.date) for b in bounds):
                raise ValueError(f"expectations[{i}] (range on {column}, {kind}): min/max must be dates or times")
            if e.rule == "range" and not re.fullmatch(f"{numeric}|{temporal}", kind):
                raise ValueError(f"expectations[{i}]: range needs a numeric, date or timestamp column; "
                                 f"{column} is {kind}")
            if e.rule == "freshness" and not re.fullmatch(temporal, kind):
                raise ValueError(f"expectations[{i}]: freshness needs a date or timestamp column; {column} is {kind}")
        lakeforge_owned = {"header", "mode", "columnnameofcorruptrecord", "enforceschema", "inferschema",
                           "samplingratio", "multiline" if self.format == "json" else "", "pathglobfilter"}
        taken = sorted(k for k in self.options if k.lower() in lakeforge_owned)
        if taken:
            raise ValueError(f"options {', '.join(taken)}: set by lakeforge, not configurable "
                             f"(json sources are JSON lines; csv files have a header row)")


def _duration(value: Any) -> dt.timedelta:
    """`90d`, `1h`, `30m`, `45s` (or a number of days) as a timedelta."""
    if isinstance(value, dt.timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.timedelta(days=value)
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms])\s*", str(value))
    if not match:
        raise ValueError("expected a duration such as 90d, 1h, 30m or 45s")  # the error's line adds the value
    unit = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[match[2]]
    return dt.timedelta(**{unit: float(match[1])})


Duration = Annotated[dt.timedelta, BeforeValidator(_duration)]


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


class Points(Frozen):
    """What one row of the training set and of the predictions is (see docs/your-own-pipeline.md).

    snapshot: every entity of `features.spine` on every as-of date (the instant is the date's midnight).
    event: every row of `source` (keyed by its primary key) that passes `where`, predicted at the instant in
    its column `at` (timestamp precision); its as-of date is that instant's date.
    """

    kind: Literal["snapshot", "event"] = "snapshot"
    source: str | None = None       # event: the source whose rows are the prediction points
    at: str | None = None           # event: the timestamp column of the prediction instant (default: event_time)
    where: str | None = None        # event: which rows are points (an expression SQL and pandas both read)
    columns: list[str] = Field(default_factory=list)      # event: point-row columns known at the instant
    known_later: list[str] = Field(default_factory=list)  # event: columns known only later: never a feature input


class FeatureSet(Frozen):
    """Rows of one source joined to each prediction point as of its instant, through one pandas function.

    A source row is joined when its `join` columns equal the point's, its event time is in
    [instant - window, instant) and it had been ingested when the point's date was first built
    (features never change after they were served). `latest: true` keeps only the latest such row
    (the value as of the instant, `window` being its maximum age).
    """

    source: str
    join: dict[str, str]             # point column -> source column, e.g. {account_id: account_id}
    window: Duration                 # lookback (or, with latest, the maximum age of the latest row)
    latest: bool = False
    columns: list[str] = Field(default_factory=list)  # source columns the function reads (plus its event time)
    function: str                    # module.function: the set's rows of many points -> one row per point
    output: dict[str, SparkType]     # the function's columns besides the point key

    def model_post_init(self, _context: Any) -> None:
        if not self.join:
            raise ValueError("join: map at least one point column to a column of the source, e.g. "
                             "{account_id: account_id}")
        if self.window <= dt.timedelta(0):
            raise ValueError("window must be positive")


class Features(Frozen):
    # snapshot points (and the one-function form): the entity, its spine, its events and one function
    entity: str | list[str] | None = None  # one column, or several (a composite key)
    spine: Spine | None = None
    events: Events | None = None
    function: str | None = None  # dotted path of a pandas function: one entity's rows for one as-of date -> one row
    columns: dict[str, SparkType] = Field(default_factory=dict)  # the function's output schema, key columns first
    # event points: named feature sets, each joined point-in-time by its own key(s)
    sets: dict[str, FeatureSet] = Field(default_factory=dict)
    population: str | None = None  # SQL filter on feature rows: who is trained on and scored (e.g. recent buyers)
    # How far past the last ingested event a features or score date may be: further out, every window is
    # empty and the rows would describe a world with no activity (the next night is 1 day ahead).
    max_days_ahead: int = Field(1, ge=1)
    # Output columns kept in the features table but not given to the model, e.g. a text column that only
    # names a monitoring segment (the estimator takes numbers).
    not_model_inputs: list[str] = Field(default_factory=list)


LABEL_RULES = ("no_event_within_horizon", "event_count_within_horizon")


class Label(Frozen):
    """The target, one of:

    a rule over later events (`no_event_within_horizon`: 1 when the entity has none within the horizon,
    will-they-leave; `event_count_within_horizon`: how many), or, for event points, `column`: a column of a
    source row joined to the point (`source`, `join`; default the point's own row), known at `known_at`,
    optionally through a pandas `function` of the point's instant and that row (e.g. minutes until delivered).
    """

    name: str
    rule: Literal["no_event_within_horizon", "event_count_within_horizon", "column"]
    task: Literal["classification", "multiclass", "regression"] | None = None  # column: required; rules: implied
    events: str | None = None               # rules: the source of the later events
    horizon_days: int | None = Field(None, ge=1)  # rules: the label window; column: days until labels are known
    source: str | None = None               # column: the source holding the label (default: the points' source)
    join: dict[str, str] = Field(default_factory=dict)  # column: point column -> label source column (default: key)
    column: str | None = None               # column: the label's value (or the function's input)
    known_at: str | None = None             # column: the timestamp column saying when the label became known
    columns: list[str] = Field(default_factory=list)  # column + function: label-source columns the function reads
    function: str | None = None             # column: pandas function (rows with prediction_at) -> label per point

    @model_validator(mode="before")
    @classmethod
    def _implied_task(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("task") is None and data.get("rule") in LABEL_RULES:
            data = {**data, "task": "classification" if data["rule"] == LABEL_RULES[0] else "regression"}
        if isinstance(data, dict) and data.get("rule") == "column" and data.get("horizon_days") is None:
            data = {**data, "horizon_days": 1}  # a day's points are complete once the day is over
        return data

    def model_post_init(self, _context: Any) -> None:
        if self.rule in LABEL_RULES:
            if not self.events or not self.horizon_days:
                raise ValueError(f"rule {self.rule} needs events (a source) and horizon_days")
            return
        if self.task is None:
            raise ValueError("rule column needs task: classification, multiclass or regression")
        if not self.known_at:
            raise ValueError("rule column needs known_at: the timestamp column saying when the label became known "
                             "(rows whose label was not yet known at a training cutoff are left out)")
        if not (self.column or self.function):
            raise ValueError("rule column needs column (the label's value) or function (computing it)")


class Training(Frozen):
    snapshot_every_days: int = Field(7, ge=1)
    first_snapshot_after_days: int = Field(60, ge=0)
    holdout_snapshots: int = Field(2, ge=1)
    seed: int = 7


class SearchParam(Frozen):
    """One hyperparameter's prior for the TPE search (hyperopt's hp.<type>)."""

    type: Literal["uniform", "loguniform", "quniform", "choice"]
    low: float | None = None
    high: float | None = None
    q: float | None = None          # quniform: step (values are cast to int when q is a whole number)
    values: list[Any] | None = None  # choice


class Tuning(Frozen):
    """Hyperparameter search: TPE over model.search_space, `parallelism` trials at a time (Spark jobs when > 1)."""

    max_evals: int = Field(20, ge=1)
    parallelism: int = Field(2, ge=1)     # trials at a time; 1: one after another on the driver
    validation_snapshots: int = Field(2, ge=1)  # the last training dates, purged, score each trial
    timeout_s: int | None = Field(None, ge=1)   # no trial starts after it (the trial count then varies)
    metric: str | None = None  # each trial's loss (lakeforge.metrics); default log_loss, or mae for regression


class OwnMetric(Frozen):
    """A team's own metric: a function of its module, (labels, predictions) -> number, and its direction."""

    function: str                # module.function; it gets what a metric of the label's task gets (lakeforge.metrics)
    higher_is_better: bool
    about: str = ""              # one line for people: what it measures


class Model(Frozen):
    # lightgbm, xgboost, or the import path of a scikit-learn-compatible class (see lakeforge.estimators)
    estimator: str = "lightgbm"
    params: dict[str, Any] = Field(default_factory=dict)
    # What the gate, monitoring and the retrain policy compare (lakeforge.metrics: each knows its direction),
    # or the name of one of own_metrics; default by the label's task: auc, log_loss (multiclass), mae.
    metric: str | None = None
    own_metrics: dict[str, OwnMetric] = Field(default_factory=dict)  # name -> the team's own metric
    top_k: float = Field(0.1, gt=0, le=1)   # precision at the top k share of scores (classification)
    search_space: dict[str, SearchParam] = Field(default_factory=dict)  # empty: no search, params as given
    tuning: Tuning = Tuning()
    pattern: Literal["global", "per_group"] = "global"  # one model, or one model per value of group_key
    group_key: str | None = None            # per_group: the column that picks the model (e.g. a shop's id)
    min_group_rows: int = Field(30, ge=1)   # per_group: fewer training rows and the group uses the fallback
    distributed: bool = False               # train with Spark MLlib on the executors instead of on the driver
    mllib_params: dict[str, Any] = Field(default_factory=dict)  # distributed: LogisticRegression's (e.g. regParam)


class Gate(Frozen):
    """When a newly trained version may replace @champion (compared on the same holdout)."""

    min_auc: float = Field(0.5, ge=0, le=1)      # absolute floor (metric auc)
    max_mae: float | None = Field(None, ge=0)    # absolute ceiling (metric mae)
    min_improvement: float = 0.0                 # over the champion's metric on the same holdout rows
    beat_naive: bool = True                      # refuse @champion to a version that does not beat the naive answer
    beat_naive_by: float = Field(0.0, ge=0)      # ... by more than this (in the metric's units)


class Monitoring(Frozen):
    """What `lakeforge monitor` measures beyond drift of every feature (see lakeforge.monitoring)."""

    window_days: int = Field(7, ge=1)            # score dates pooled into one matured performance window
    segments: list[str] = Field(default_factory=list)  # columns of the features or of segment_source to break down by
    segment_source: str | None = None            # source keyed by the entity with segment columns (default: spine)
    report: bool = True                          # write the HTML report (and log it to MLflow)
    drift_min_rows: int = Field(30, ge=1)        # fewer rows a night: "too few rows", no drift test
    calendar_features: list[str] = Field(default_factory=list)  # calendar/seasonal features left out of drift
    # seasonal features compared with the baseline's rows of the same period: {feature: period column}
    seasonal_features: dict[str, str] = Field(default_factory=dict)
    history_nights: int = Field(30, ge=1)        # nights drawn in the report's drift and performance charts


class Retrain(Frozen):
    """When `run nightly` retrains: drift on watched features for some days, matured performance breaches, or (if
    `on_estimated_drop`) tonight's estimated performance beyond the margin; otherwise an estimated drop is a WATCH."""

    psi_threshold: float = Field(0.2, gt=0)
    psi_features: list[str] = Field(default_factory=list)
    psi_days: int = Field(3, ge=0)               # 0 turns the drift trigger off
    performance_margin: float = Field(0.05, ge=0)
    windows: int = Field(5, ge=1)
    breaches: int = Field(2, ge=0)               # 0 turns the performance trigger off
    window_days: int = Field(42, ge=1)           # retrain on as-of dates of the last N days with matured labels
    snapshot_every_days: int | None = Field(None, ge=1)  # default: training.snapshot_every_days
    cooldown_days: int = Field(14, ge=0)         # no retrain while the champion's training is this recent
    on_estimated_drop: bool = False              # an estimated drop (before labels) retrains too, not only warns


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
    points: Points = Points()

    def model_post_init(self, _context: Any) -> None:
        if self.model.metric is None and self.label.task is not None:
            from lakeforge.metrics import DEFAULT

            # The metric's default depends on the label: filled in once, as a frozen model's own post-init may.
            object.__setattr__(self, "model", self.model.model_copy(update={"metric": DEFAULT[self.label.task]}))

    @property
    def is_event(self) -> bool:
        return self.points.kind == "event"

    @property
    def keys(self) -> list[str]:
        """The columns that identify a prediction point: the entity (snapshot) or the points source's primary key."""
        if self.is_event:
            return list(self.sources[self.points.source].primary_key)
        entity = self.features.entity
        return [entity] if isinstance(entity, str) else list(entity or [])

    @property
    def point_time(self) -> str:
        """The points source's column holding each point's instant (event points)."""
        return self.points.at or self.sources[self.points.source].event_time

    @property
    def point_source(self) -> str:
        """The source whose rows the points are (event) or whose rows say which entities exist (snapshot)."""
        return self.points.source if self.is_event else self.features.spine.source

    @property
    def point_columns(self) -> list[str]:
        """The point's own columns, known at its instant: points.columns (event), the spine's (snapshot)."""
        if self.is_event:
            names = self.points.columns
        else:
            names = [self.features.spine.since, *self.features.spine.columns]
        return [c for c in dict.fromkeys(names) if c not in self.keys]

    def feature_table_columns(self) -> dict[str, SparkType]:
        """Columns of gold.<pipeline>_features: keys and as-of date first, then every feature."""
        if not self.features.sets:
            return dict(self.features.columns)
        declared = self.sources[self.point_source].columns
        columns = {k: declared[k] for k in self.keys}
        columns.update({AS_OF_DATE: "date", PREDICTION_AT: "timestamp"})
        columns.update({c: declared[c] for c in self.point_columns})
        for feature_set in self.features.sets.values():
            columns.update(feature_set.output)
        return columns

    def model_inputs(self) -> list[str]:
        """The features table's columns the model takes: all but the point's key, as-of date, instant and
        `features.not_model_inputs`."""
        left_out = (*self.keys, AS_OF_DATE, PREDICTION_AT, *self.features.not_model_inputs)
        return [c for c in self.feature_table_columns() if c not in left_out]

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
        origin = next((name for name, tree in reversed(layers) if tree and _has_key(tree, loc)), layers[0][0])
        problem = err["msg"].removeprefix("Value error, ")  # pydantic's wording for a validator's ValueError
        if not loc:  # a check of the whole file (a validator across keys): its message names the keys
            lines.append(f"{origin}: {problem}")
        elif err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            hint = f"; known keys here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{origin}: unknown key '{key}'{hint}")
        elif err["type"] == "missing":
            lines.append(f"{origin}: key '{key}' is required but missing")
        else:
            lines.append(f"{origin}: key '{key}': {problem.lower()} (got {err.get('input')!r})")
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
    return sorted(p.stem for p in directory.glob("*.yaml") if p.stem not in ("base", ACCESS_FILE.removesuffix(".yaml")))


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
    cli = {k: v for k, v in parse_overrides(overrides).items() if k not in ("pipeline", "sources")}
    layers = [(str(base_path), base), (str(overlay_path), overlay), ("--set", cli), ("env", {"env": env})]
    settings: Settings = _validate(Settings, layers)
    if settings.project is None:
        settings = settings.model_copy(update={"project": default_project(directory)})
    settings = _absolute(settings)
    _refuse_system_folders(settings, layers)
    return settings


def default_project(directory: Path) -> str:
    """The project id when settings leave `project` unset: a stable hash of the conf folder's resolved path."""
    return "conf-" + hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()[:16]


# Folders no lakeforge setting may be: lakeforge writes its data there and `demo --fresh` may delete it.
# Their sub-folders (/tmp/x, /var/lib/lakeforge, /data/lakehouse) are fine.
SYSTEM_FOLDERS = frozenset(map(Path, [
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/media", "/mnt", "/opt", "/proc", "/root", "/run",
    "/sbin", "/snap", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/backups", "/var/cache", "/var/lib",
    "/var/local", "/var/lock", "/var/log", "/var/mail", "/var/opt", "/var/run", "/var/spool", "/var/tmp"]))


def _system_folder(path: Path) -> str | None:
    """Why `path` (resolved) cannot hold lakeforge's data, None when it can."""
    if path in SYSTEM_FOLDERS or path.parent == Path("/usr") or (path.parent == Path("/")
                                                                  and path.name.startswith("lib")):
        return "the filesystem root" if path == Path("/") else "a system folder"
    try:
        home = Path.home().resolve()
    except (KeyError, RuntimeError):  # no HOME and no passwd entry: no home folder to protect
        return None
    if path == home:
        return "the home folder"
    if path in home.parents:
        return f"an ancestor of the home folder {home}"
    return None


def file_uri_path(uri: str) -> Path | None:
    """The local path of a file:// URI (percent-escapes decoded), None for any other scheme."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// tracking URI, None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _refuse_system_folders(settings: Settings, layers: list[tuple[str, dict]]) -> None:
    """Settings that point lakeforge's folders at /, a system folder or the home folder: one error naming each."""
    places = [(("paths", name), getattr(settings.paths, name), "") for name in ("landing", "lakehouse", "reports", "model_cache")]
    artifacts = file_uri_path(settings.mlflow.artifact_root)
    if artifacts is not None:
        places.append((("mlflow", "artifact_root"), artifacts, ""))
    store = sqlite_path(settings.mlflow.tracking_uri)
    if store is not None:
        places.append((("mlflow", "tracking_uri"), store.parent, "the sqlite store's folder "))
    lines = []
    for loc, path, lead in places:
        why = _system_folder(path)
        if why:
            origin, given = next(((name, tree[loc[0]][loc[1]]) for name, tree in reversed(layers)
                                  if _has_key(tree, loc)), ("defaults", None))
            lines.append(f"{origin}: key '{'.'.join(loc)}' = {given!r}: {lead}{path} is {why}; lakeforge writes "
                         f"its data there and `demo --fresh` may delete it: use a folder of its own, "
                         f"e.g. {path / 'lakeforge'}")
    if lines:
        raise ConfigError("\n".join(lines))


def _absolute(settings: Settings) -> Settings:
    """Resolve relative paths once, so executors and subprocesses agree on them."""
    paths = settings.paths.model_copy(update={name: getattr(settings.paths, name).resolve()
                                              for name in ("landing", "lakehouse", "reports", "model_cache")})
    spark = settings.spark
    if spark.event_log_dir is not None:
        spark = spark.model_copy(update={"event_log_dir": spark.event_log_dir.resolve()})
    uri = settings.mlflow.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    root = settings.mlflow.artifact_root
    if "://" not in root:
        root = Path(root).resolve().as_uri()
    mlflow = settings.mlflow.model_copy(update={"tracking_uri": uri, "artifact_root": root})
    access_file = settings.access_file.resolve() if settings.access_file is not None else None
    return settings.model_copy(update={"paths": paths, "spark": spark, "mlflow": mlflow, "access_file": access_file})


def available_pipelines(directory: Path | None = None) -> list[str]:
    """Pipeline names declared under conf/pipelines/."""
    directory = directory or conf_dir()
    return sorted(p.stem for p in (directory / "pipelines").glob("*.yaml"))


def chosen_pipeline(name: str | None, directory: Path | None = None) -> str:
    """The pipeline a command works on: the one named by --pipeline, else the project's only one."""
    if name:
        return name
    names = available_pipelines(directory)
    if len(names) == 1:
        return names[0]
    folder = (directory or conf_dir()) / "pipelines"
    if not names:
        raise ConfigError(f"no pipeline: {folder} has no <name>.yaml (see docs/your-own-pipeline.md)")
    raise ConfigError(f"--pipeline is required: this project has {len(names)} pipelines ({', '.join(names)}; "
                      f"{folder}), e.g. --pipeline {names[0]}")


def _named_file(directory: Path, kind: str, name: str) -> tuple[Path, dict[str, Any]]:
    """conf/<kind>s/<name>.yaml and its content, or an error listing the names that folder has."""
    folder = directory / f"{kind}s"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
        raise ConfigError(f"unknown {kind} '{name}': no file {path} ({kind}s here: {known})")
    catalog.checked_name(name, kind)  # it names tables: gold.<pipeline>_features, silver.<source>
    return path, _read_yaml(path, f"{kind} '{name}'")


def available_sources(directory: Path | None = None) -> list[str]:
    """Source names declared under conf/sources/."""
    directory = directory or conf_dir()
    return sorted(p.stem for p in (directory / "sources").glob("*.yaml"))


def load_source(name: str, overrides: list[str] | None = None, directory: Path | None = None) -> Source:
    """Load conf/sources/<name>.yaml (+ `--set sources.<name>.<key>=value` overrides)."""
    path, tree = _named_file(directory or conf_dir(), "source", name)
    cli = parse_overrides(overrides).get("sources", {}).get(name, {})
    return _validate(Source, [(str(path), tree), ("--set", cli)])


def _source_names(tree: dict[str, Any], path: Path) -> list[str]:
    """The pipeline's `sources:` list; a source defined inline is refused (its contract belongs to the project)."""
    names = tree.get("sources")
    if isinstance(names, dict):
        raise ConfigError(f"{path}: key 'sources': sources are declared once for the project, each in "
                          f"conf/sources/<name>.yaml, so that every pipeline shares one contract per table; move "
                          f"{', '.join(map(str, names)) or 'them'} there and list the names here, e.g. "
                          f"sources: [{', '.join(map(str, names))}]")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{path}: key 'sources': expected a list of source names from conf/sources/, "
                          f"e.g. sources: [{', '.join(available_sources(path.parent.parent)[:2])}] (got {names!r})")
    return names


def load_pipeline(name: str, overrides: list[str] | None = None, directory: Path | None = None) -> Pipeline:
    """Load conf/pipelines/<name>.yaml with the sources it names (+ `--set pipeline.<key>=value` overrides)."""
    directory = directory or conf_dir()
    path, tree = _named_file(directory, "pipeline", name)
    cli = parse_overrides(overrides).get("pipeline", {})
    if "sources" in cli:
        raise ConfigError(f"--set pipeline.sources...: a source is changed with --set sources.<name>.<key>=value "
                          f"(its file is conf/sources/<name>.yaml)")
    names = _source_names(tree, path)
    stray = [s for s in parse_overrides(overrides).get("sources", {}) if s not in names]
    if stray:
        raise ConfigError(f"--set sources.{stray[0]}...: pipeline {name} has no source '{stray[0]}' "
                          f"(its sources: {', '.join(names)})")
    sources = {source: load_source(source, overrides, directory) for source in names}
    tree = {**tree, "sources": sources}
    pipeline: Pipeline = _validate(Pipeline, [(str(path), tree), ("--set", cli), ("name", {"name": name})])
    _check_points(pipeline, path)
    _check_label_events(pipeline, path)
    _check_monitoring(pipeline, path)
    _check_model(pipeline, path)
    _check_functions(pipeline, path)
    return pipeline


def _refuse(path: Path, key: str, problem: str) -> None:
    raise ConfigError(f"{path}: key '{key}': {problem}")


def _declared(path: Path, key: str, pipeline: Pipeline, source: str, names: list[str], kind: str | None = None):
    """Refuse a source that the pipeline does not list, or a column that the source does not declare."""
    if source not in pipeline.sources:
        _refuse(path, key, f"source '{source}' is not in the pipeline's sources ({', '.join(pipeline.sources)})")
    declared = pipeline.sources[source].columns
    for name in names:
        if name not in declared:
            _refuse(path, key, f"'{name}' is not a column of source '{source}' ({', '.join(declared)})")
        if kind and not declared[name].strip().lower().startswith(kind):
            _refuse(path, key, f"'{name}' of source '{source}' is {declared[name]}; a {kind} column is needed")


def _check_snapshot(pipeline: Pipeline, path: Path) -> None:
    """Snapshot points: an entity and its spine, then one function (with its columns) or feature sets."""
    feat, label = pipeline.features, pipeline.label
    missing = [k for k in ("entity", "spine") if not getattr(feat, k)]
    if missing:
        _refuse(path, f"features.{missing[0]}", "snapshot points need features.entity and features.spine (or set "
                "points.kind: event)")
    _declared(path, "features.spine.source", pipeline, feat.spine.source, [])
    _declared(path, "features.entity", pipeline, feat.spine.source, pipeline.keys)
    _declared(path, "features.spine.since", pipeline, feat.spine.source, [feat.spine.since])
    _declared(path, "features.spine.columns", pipeline, feat.spine.source, feat.spine.columns)
    if feat.events is not None:
        _declared(path, "features.events.source", pipeline, feat.events.source, [])
        _declared(path, "features.entity", pipeline, feat.events.source, pipeline.keys)
        _declared(path, "features.events.columns", pipeline, feat.events.source, feat.events.columns)
        _check_spine_and_events(pipeline, path)
    if label.rule not in LABEL_RULES:
        _refuse(path, "label.rule", f"snapshot points take a rule over later events ({', '.join(LABEL_RULES)})")
    if feat.sets:
        if feat.function or feat.columns or feat.events:
            _refuse(path, "features.sets", "give either feature sets or features.function (with its columns and "
                    "events), not both")
        _check_sets(pipeline, path)
        return
    if not feat.function or not feat.columns:
        _refuse(path, "features.function", "snapshot points need features.function and features.columns (or "
                "features.sets)")
    for name in feat.not_model_inputs:
        if name not in feat.columns or name in (*pipeline.keys, AS_OF_DATE):
            _refuse(path, "features.not_model_inputs", f"'{name}' must be one of the declared output columns "
                    f"other than {' and '.join(pipeline.keys)} and {AS_OF_DATE} ({', '.join(feat.columns)})")


def _check_spine_and_events(pipeline: Pipeline, path: Path) -> None:
    """The function gets the spine's columns and the events' side by side: a name in both (as happens when the
    spine and the events are the same source) would be ambiguous, so it must be listed on one side only."""
    feat = pipeline.features
    spine = [feat.spine.since, *feat.spine.columns]
    clash = [c for c in dict.fromkeys(spine) if c in feat.events.columns and c not in pipeline.keys]
    if clash:
        same = (f"the spine and the events are both source '{feat.spine.source}': "
                if feat.spine.source == feat.events.source else "")
        _refuse(path, "features.events.columns", f"{same}column '{clash[0]}' would reach the function twice, as a "
                f"spine column (features.spine.since or columns: the entity's latest row) and as an event column "
                f"(each event in the lookback); list it on one side only (events columns without it: "
                f"[{', '.join(c for c in feat.events.columns if c not in spine)}])")


def _check_sets(pipeline: Pipeline, path: Path) -> None:
    """Each feature set's source, join columns (the point's on one side, the source's on the other), columns and
    outputs (names unique across the point and the sets)."""
    feat = pipeline.features
    available = {*pipeline.keys, *pipeline.point_columns}
    outputs: dict[str, str] = {}
    for name, fs in feat.sets.items():
        key = f"features.sets.{name}"
        _declared(path, f"{key}.source", pipeline, fs.source, [])
        _declared(path, f"{key}.join", pipeline, fs.source, list(fs.join.values()))
        _declared(path, f"{key}.columns", pipeline, fs.source, fs.columns)
        event_time = pipeline.sources[fs.source].event_time
        same = {s for p, s in fs.join.items() if p == s}
        for column in [c for c in dict.fromkeys([event_time, *fs.columns]) if c not in same]:
            if column in (*pipeline.keys, AS_OF_DATE, PREDICTION_AT, *fs.join):
                _refuse(path, f"{key}.columns", f"source column '{column}' has the name of a column of the point the "
                        "function also gets; rename it in the source or drop it from the set's columns")
        for column in fs.join:
            if column not in available:
                _refuse(path, f"{key}.join", f"'{column}' is not a column of the point (its key and own columns: "
                        f"{', '.join(available)})")
        for column in fs.output:
            taken = outputs.get(column) or (
                "the point" if column in (*available, AS_OF_DATE, PREDICTION_AT) else None)
            if taken:
                _refuse(path, f"{key}.output", f"column '{column}' is also an output of {taken}; names must be unique")
            outputs[column] = f"set {name}"
    for name in feat.not_model_inputs:
        if name not in outputs and name not in pipeline.point_columns:
            _refuse(path, "features.not_model_inputs", f"'{name}' is neither a point column nor an output of a "
                    f"feature set ({', '.join([*pipeline.point_columns, *outputs])})")


def _check_points(pipeline: Pipeline, path: Path) -> None:
    """Cross-references between points, features, label and sources, before any Spark session starts."""
    feat, label, points = pipeline.features, pipeline.label, pipeline.points
    if not pipeline.is_event:
        _check_snapshot(pipeline, path)
        return
    if not points.source:
        _refuse(path, "points.source", "event points need the source whose rows are the points")
    _declared(path, "points.source", pipeline, points.source, [])
    _declared(path, "points.at", pipeline, points.source, [pipeline.point_time], kind="timestamp")
    _declared(path, "points.columns", pipeline, points.source, points.columns)
    _declared(path, "points.known_later", pipeline, points.source, points.known_later)
    leaked = [c for c in points.columns if c in points.known_later
              or (label.source in (None, points.source) and c in (label.column, label.known_at, *label.columns))]
    if leaked:
        _refuse(path, "points.columns", f"'{leaked[0]}' is known only after the instant (points.known_later or the "
                "label's column): it can never be a feature input")
    for key in ("entity", "spine", "events", "function"):
        if getattr(feat, key) is not None:
            _refuse(path, f"features.{key}", "event points take their features from features.sets (one entry per "
                    "source, each with join, window, columns, function and output)")
    if feat.columns:
        _refuse(path, "features.columns", "event points: each set declares its own `output` columns")
    if not feat.sets:
        _refuse(path, "features.sets", "event points need at least one feature set")
    _check_sets(pipeline, path)
    available = {*pipeline.keys, *points.columns}
    if label.rule in LABEL_RULES:
        _refuse(path, "label.rule", "event points take their label from data: rule column (with column or function "
                "and known_at)")
    source = label.source or points.source
    join = label.join or ({k: k for k in pipeline.keys} if source == points.source else {})
    if not join:
        _refuse(path, "label.join", f"the label comes from '{source}', not the points' source: say how a point "
                f"finds its row, e.g. join: {{{pipeline.keys[0]}: {pipeline.keys[0]}}}")
    _declared(path, "label.join", pipeline, source, list(join.values()))
    for column in join:
        if column not in available:
            _refuse(path, "label.join", f"'{column}' is not a column of the point ({', '.join(available)})")
    _declared(path, "label.known_at", pipeline, source, [label.known_at], kind="timestamp")
    _declared(path, "label.column", pipeline, source, [label.column] if label.column else [])
    _declared(path, "label.columns", pipeline, source, label.columns)


def _check_label_events(pipeline: Pipeline, path: Path) -> None:
    """A rule label counts the later events of a listed source that carries the point's key."""
    label = pipeline.label
    if label.rule in LABEL_RULES:
        _declared(path, "label.events", pipeline, label.events, pipeline.keys)


def _check_monitoring(pipeline: Pipeline, path: Path) -> None:
    """Segments are columns of the features table or of the segment source; watched features are model inputs."""
    table = pipeline.feature_table_columns()
    segment_source = pipeline.monitoring.segment_source
    if segment_source is not None:
        _declared(path, "monitoring.segment_source", pipeline, segment_source, pipeline.keys)
    source = segment_source or (None if pipeline.is_event else pipeline.features.spine.source)
    declared = pipeline.sources[source].columns if source else {}
    for name in pipeline.monitoring.segments:
        if name not in table and name not in declared:
            where = f" or of source '{source}' (monitoring.segment_source)" if source else (
                "; set monitoring.segment_source to a source keyed like the points to take it from there")
            _refuse(path, "monitoring.segments", f"'{name}' is not a column of the features table "
                    f"({', '.join(table)}){where}" + (f" ({', '.join(declared)})" if source else ""))
    if pipeline.retrain is not None:
        inputs = pipeline.model_inputs()
        for name in pipeline.retrain.psi_features:
            if name not in inputs:
                _refuse(path, "retrain.psi_features", f"'{name}' is not a model input, so it has no drift to "
                        f"watch (model inputs: {', '.join(inputs)})")


def _check_functions(pipeline: Pipeline, path: Path) -> None:
    """Each pandas function the YAML names is a top-level function or callable of a module that can be found,
    checked without running the module (its imports would cost the check its second; the stage imports it)."""
    named = [("features.function", pipeline.features.function), ("label.function", pipeline.label.function),
             *((f"features.sets.{name}.function", each.function) for name, each in pipeline.features.sets.items())]
    for key, dotted in named:
        if dotted and (problem := _function_problem(dotted)):
            _refuse(path, key, f"{problem}; name a module.function that Python can import (the module on "
                               f"PYTHONPATH or installed)")


def _function_problem(dotted: str) -> str | None:
    """Why `module.function` cannot be imported (None when it can, or when only running the module would tell)."""
    import ast
    import importlib.util

    module_name, _, attr = dotted.rpartition(".")
    if not module_name or not attr:
        return f"'{dotted}' is not a module.function path"
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:
        return f"cannot find module '{module_name}' ({exc})"
    if spec is None:
        return f"no module named '{module_name}'"
    if not spec.origin or not spec.origin.endswith(".py") or not Path(spec.origin).is_file():
        return None  # compiled, namespace or inside a zip (a spark-submit --py-files wheel): importing it tells
    try:
        tree = ast.parse(Path(spec.origin).read_bytes(), spec.origin)
    except SyntaxError as exc:
        return f"module '{module_name}' ({spec.origin}) is not valid Python ({exc})"
    except OSError:
        return None
    defined = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and all(a.name != "*" for a in node.names):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif not isinstance(node, ast.Expr):  # an if, a loop, a star import...: only running the module tells
            return None
    if attr not in defined:
        functions = sorted(n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_"))
        return f"module '{module_name}' ({spec.origin}) defines no '{attr}' (its functions: {', '.join(functions)})"
    return None


def _check_model(pipeline: Pipeline, path: Path) -> None:
    """Model settings that are valid alone but not together: the estimator and its parameters, the metrics for
    the task, and which patterns (per_group, distributed) the estimator and task support. The pipeline's own
    metrics are registered here (lakeforge.metrics.register_own), so that every stage can name them."""
    from lakeforge import estimators, metrics

    model, task = pipeline.model, pipeline.label.task
    for name, own in model.own_metrics.items():
        key = f"model.own_metrics.{name}"
        if not catalog.NAME.fullmatch(name):
            _refuse(path, key, "a metric's name is lowercase letters, digits and _, starting with a letter")
        if problem := _function_problem(own.function):
            _refuse(path, f"{key}.function", f"{problem}; name a module.function (labels, predictions) -> number "
                                             f"that Python can import (the module on PYTHONPATH or installed)")
        try:
            metrics.register_own(name, own.function, own.higher_is_better, task, own.about)
        except ValueError as exc:
            _refuse(path, key, str(exc))
    choices = [*metrics.for_task(task), *model.own_metrics]
    for key, name in (("model.metric", model.metric), ("model.tuning.metric", model.tuning.metric)):
        if name is not None and name not in choices:
            _refuse(path, key, f"'{name}' is not a {task} metric; choose one of {', '.join(choices)}, or declare "
                               f"your own under model.own_metrics")
    try:  # lakeforge's own estimators are dependencies: importing LightGBM here would cost the check a second
        if model.estimator not in estimators.BUILT_IN:
            estimators.resolve(model.estimator, task)
    except ValueError as exc:
        _refuse(path, "model.estimator", f"{exc} (the YAML names code to import: only a class is taken from it)")
    for key, problem in estimators.param_problems(model.estimator, task, model.params):
        _refuse(path, f"model.params.{key}", problem)
    if model.pattern == "per_group":
        if not model.group_key:
            raise ConfigError(f"{path}: key 'model.group_key' is required when model.pattern is per_group "
                              f"(the column that picks each row's model, e.g. a shop's id)")
        columns = pipeline.feature_table_columns()
        if model.group_key not in columns:
            raise ConfigError(f"{path}: key 'model.group_key': '{model.group_key}' is not a feature column "
                              f"({', '.join(columns)})")
        if task == "multiclass":
            _refuse(path, "model.pattern", "per_group models route one number per row (binary classification or "
                    "regression); a multiclass label needs pattern: global")
    if model.distributed and (model.pattern == "per_group" or model.search_space or task != "classification"
                              or model.estimator != "lightgbm"):
        _refuse(path, "model.distributed", "the distributed learner is Spark MLlib's LogisticRegression: one "
                "global binary classifier with its own mllib_params (model.params are not used), no search; unset "
                "model.estimator and model.search_space and use pattern global (or set distributed: false to use "
                "the estimator)")
    seasonal = pipeline.monitoring.seasonal_features
    for key, names in (("calendar_features", pipeline.monitoring.calendar_features),
                       ("seasonal_features", [*seasonal, *seasonal.values()])):
        stray = [c for c in names if c not in pipeline.feature_table_columns()]
        if stray:
            raise ConfigError(f"{path}: key 'monitoring.{key}': '{stray[0]}' is not a feature column "
                              f"({', '.join(pipeline.feature_table_columns())})")
    both = sorted(set(seasonal) & set(pipeline.monitoring.calendar_features))
    if both:
        raise ConfigError(f"{path}: key 'monitoring.seasonal_features': '{both[0]}' is also in "
                          f"monitoring.calendar_features (left out of drift); keep it in one of them")
    for key, param in model.search_space.items():
        ok = param.values if param.type == "choice" else (param.low is not None and param.high is not None
                                                          and param.low < param.high)
        if not ok or (param.type == "quniform" and not param.q):
            raise ConfigError(f"{path}: key 'model.search_space.{key}': {param.type} needs "
                              + ("values" if param.type == "choice" else "low < high" + (" and q" if param.type
                                                                                        == "quniform" else "")))
        kind = estimators.KNOWN_PARAMS.get(model.estimator, {}).get(key)
        for value in (param.values or []) if param.type == "choice" else []:
            if kind and (problem := estimators.type_problem(kind, value)):
                _refuse(path, f"model.search_space.{key}.values", problem)


# ---------------------------------------------------------------- access (conf/access.yaml)

ACCESS_FILE = "access.yaml"
ROLE_NAMES = ("viewer", "data_engineer", "data_scientist", "approver", "service")


class Access(Frozen):
    """Who has which roles in the team set-up (what each role may do is lakeforge.access.ROLES)."""

    grantor: str = Field(min_length=1)  # who grants a role: named in every refusal
    users: dict[str, list[Literal[ROLE_NAMES]]] = {}  # type: ignore[valid-type]


def load_access(settings: Settings, directory: Path | None = None) -> Access:
    """conf/access.yaml (or the settings' access_file), checked: one ConfigError naming the file and key."""
    path = settings.access_file or (directory or conf_dir()) / ACCESS_FILE
    return _validate(Access, [(str(path), _read_yaml(Path(path), "access configuration (roles of the users)"))])
