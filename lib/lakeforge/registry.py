"""MLflow: experiments, logging a trained model, the registry and its aliases.

Experiment `lakeforge/<pipeline>`, registered model `<pipeline>`, alias `champion` (what scoring
uses) and `challenger`. The tracking URI always comes from config (MLflow 3 would otherwise
create ./mlflow.db wherever it runs).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import tempfile
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema
from pyspark.sql import SparkSession
from pyspark.sql.types import (ArrayType, BinaryType, BooleanType, DataType, DateType, DoubleType, FloatType,
                               IntegralType, StringType, StructType, TimestampType)

from lakeforge import __version__, access, metrics, model_files, plots, runs
from lakeforge.access import AccessDenied
from lakeforge.config import Gate, MlflowSettings, Settings
from lakeforge.errors import DataError

CHAMPION, CHALLENGER = "champion", "challenger"
# Tags set when a training run starts, so the next training can tell a run whose process was killed
# (left RUNNING forever) from one still going: lakeforge's run id, the process id and the host.
RUN_TAG, PID_TAG, HOST_TAG = "lakeforge.run_id", "lakeforge.pid", "lakeforge.host"
OUTSIDE_LAKEFORGE = "changed outside lakeforge (no intent recorded)"
UNKNOWN_USER = "unknown (set outside lakeforge; MLflow does not record who)"
TRAINER_TAG = "lakeforge.user"  # who trained: the authenticated MLflow user, or the OS account
START_TAG = "lakeforge.process_start"  # tells the training process apart from a later one given its pid
FEATURE_VERSION_TAG = "lakeforge.feature_version"  # on each model's training run: see features.feature_version
TRAINED_AS_OF_TAG = "lakeforge.trained_as_of"


class ProbabilityModel(mlflow.pyfunc.PythonModel):
    """A classifier served as the probability of the positive class, for the columns it was trained on."""

    def __init__(self, estimator, feature_names: list[str]):
        self.estimator = estimator
        self.feature_names = list(feature_names)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return self.estimator.predict_proba(model_input[self.feature_names])[:, 1]


def connect(settings: MlflowSettings) -> MlflowClient:
    """Point MLflow at the configured tracking and registry store (and keep its INFO chatter out of our progress)."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per baseline read, every night
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Integer feature columns are intended (counts); MLflow's hint about missing values does not apply.
    warnings.filterwarnings("ignore", message=".*Integer columns in Python cannot represent missing values.*")
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(settings.tracking_uri, settings.tracking_uri)


def experiment_id(client: MlflowClient, pipeline: str, artifact_root: str) -> str:
    """The pipeline's experiment, created with its artifact location under the configured root."""
    name = f"lakeforge/{pipeline}"
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=f"{artifact_root.rstrip('/')}/{pipeline}")


@dataclass(frozen=True)
class LoggedModel:
    run_id: str
    version: int


def _requirements() -> list[str]:
    """Pinned requirements of the served model (given, so MLflow need not infer them by import tracing)."""
    from importlib.metadata import version

    packages = ("lightgbm", "xgboost-cpu", "scikit-learn", "pandas", "numpy", "cloudpickle")
    return [f"{p}=={version(p)}" for p in packages] + [
        f"lakeforge=={__version__}"]


BASELINE_ARTIFACT = "monitoring/baseline.json"


@contextmanager
def training_run(client: MlflowClient, pipeline: str, artifact_root: str, run_id: str,
                 user: str | None = None) -> Iterator[str]:
    """The parent MLflow run of lakeforge run `run_id`'s training (search trials nest under it), tagged with
    who trained it (the four-eyes rule of `promote` reads it) and where; yields its id."""
    mlflow.set_experiment(experiment_id=experiment_id(client, pipeline, artifact_root))
    tags = {RUN_TAG: run_id, PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(),
            TRAINER_TAG: user or runs.os_user(),
            START_TAG: runs.process_start(os.getpid()) or ""}
    with mlflow.start_run(run_name=f"train-{pipeline}", tags=tags) as run:
        yield run.info.run_id


def end_orphan_runs(client: MlflowClient, pipeline: str, log: Callable[[str], None] = print) -> list[str]:
    """End as KILLED the runs of experiment `lakeforge/<pipeline>` left RUNNING by a training whose process is
    gone (and the trial runs nested under them); returns their MLflow run ids."""
    found = client.get_experiment_by_name(f"lakeforge/{pipeline}")
    if found is None:
        return []
    running = client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'")
    orphans = {}
    for run in running:
        tags = run.data.tags
        if PID_TAG in tags and runs.process_gone(tags.get(HOST_TAG, ""), int(tags[PID_TAG]),
                                                 tags.get(START_TAG) or None):
            orphans[run.info.run_id] = tags
    trials = [r.info.run_id for r in running if r.data.tags.get("mlflow.parentRunId") in orphans]
    for run_id in [*orphans, *trials]:
        client.set_terminated(run_id, "KILLED")
    for run_id, tags in orphans.items():
        log(f"MLflow run {run_id} of lakeforge run {tags.get(RUN_TAG)} was still RUNNING but its process "
            f"(pid {tags[PID_TAG]} on {tags.get(HOST_TAG)}) is gone: ended as KILLED")
    return [*orphans, *trials]


def log_inputs(datasets: list[tuple[str, str, int, object]]) -> None:
    """Log each input Delta table (name, path, version, Spark DataFrame as of that version) with mlflow.data: its
    folder, version and columns, without reading a row.

    Not mlflow.data.from_spark: its profile counts the rows by sending every row of the table through Python
    workers (Spark jobs on every training, for a count the version already pins, and "unknown" past 5 s:
    benchmarks/log_inputs_bench.py).
    """
    for name, path, version, df in datasets:
        # The version as text: MLflow's source leaves out a version that is falsy (a table's first, 0).
        dataset = MetaDataset(DeltaDatasetSource(path=path, delta_table_version=str(version)), name=name,
                              digest=f"{name}@v{version}", schema=_columns(df))
        mlflow.log_input(dataset, context="training")


def _columns(df) -> Schema | None:
    """The DataFrame's columns as MLflow's schema, from Spark's schema alone; None when a column is of a type MLflow
    cannot type that way: a map (MLflow would collect every row's keys), a decimal or a timestamp without time zone
    (MLflow would warn on every training and log one untyped column)."""
    if not all(_typed_by_schema(field.dataType) for field in df.schema.fields):
        return None
    return infer_signature(df).inputs


def _typed_by_schema(kind: DataType) -> bool:
    """Whether MLflow's schema inference types this Spark type without reading rows."""
    if isinstance(kind, ArrayType):
        return _typed_by_schema(kind.elementType)
    if isinstance(kind, StructType):
        return all(_typed_by_schema(field.dataType) for field in kind.fields)
    return isinstance(kind, (IntegralType, FloatType, DoubleType, BooleanType, StringType, BinaryType, DateType,
                             TimestampType))


def log_figures(figures: dict[str, object], folder: str = "plots") -> None:
    """Save matplotlib figures as run artifacts under `folder/`."""
    for name, fig in figures.items():
        mlflow.log_figure(fig, f"{folder}/{name}")


def log_and_register(client: MlflowClient, pipeline: str, artifact_root: str, model, example: pd.DataFrame,
                     params: dict, metrics: dict[str, float], tags: dict[str, str],
                     baseline: dict | None = None) -> LoggedModel:
    """Log params, metrics, tags, the model (signature, input example) and the training baseline for
    monitoring, and register a new model version.

    Logs into the active run (the parent run of `training_run`), or into a new run when none is active.
    """
    active = mlflow.active_run()
    if active is None:
        mlflow.set_experiment(experiment_id=experiment_id(client, pipeline, artifact_root))
    with (nullcontext(active) if active is not None else mlflow.start_run(run_name=f"train-{pipeline}")) as run:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        if baseline is not None:
            mlflow.log_dict(baseline, BASELINE_ARTIFACT)
        example = example[model.feature_names].head(5)
        signature = infer_signature(example, model.predict(None, example))
        files = model_files.model_files(model)
        with tempfile.TemporaryDirectory(prefix="lakeforge-model-files-") as tmp:
            # The estimators as data beside the pickled pyfunc (which mlflow.pyfunc.load_model still serves);
            # MLflow keeps a folder artifact under its own name: artifacts/model_files/.
            folder = str(Path(tmp) / model_files.FOLDER)
            manifest_sha = model_files.write(files, Path(folder)) if files is not None else None
            info = mlflow.pyfunc.log_model(name="model", python_model=model, signature=signature,
                                           input_example=example, registered_model_name=pipeline,
                                           pip_requirements=_requirements(),
                                           artifacts={model_files.FOLDER: folder} if files is not None else None)
        version = int(info.registered_model_version)
        if manifest_sha is not None:
            client.set_model_version_tag(pipeline, str(version), model_files.MANIFEST_TAG, manifest_sha)
        runs.crash_point("train.model_registered")  # the version exists, the MLflow run is still RUNNING
    wait_until_ready(client, pipeline, version)
    return LoggedModel(run.info.run_id, version)


def wait_until_ready(client: MlflowClient, name: str, version: int, timeout_s: float = 120) -> ModelVersion:
    """Block until the version is READY (a file store is immediate; a server may take a moment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            mv = client.get_model_version(name, str(version))
        except MlflowException:
            raise DataError(f"registered model '{name}' has no version {version} in {mlflow.get_tracking_uri()}; "
                            f"`lakeforge status` shows the champion, the MLflow UI every version") from None
        if mv.status == "READY":
            return mv
        if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise DataError(f"model {name} version {version} is {mv.status}, not READY")
        time.sleep(0.5)


def set_alias(client: MlflowClient, name: str, alias: str, version: int) -> int | None:
    """Point `alias` at `version`; returns the version it pointed at before (None if unset)."""
    previous = alias_version(client, name, alias)
    client.set_registered_model_alias(name, alias, str(version))
    return previous


def move_alias(client: MlflowClient, spark: SparkSession, lakehouse: Path, name: str, alias: str, version: int,
               job: str, reason: str, run_id: str, user: str | None = None, action: str = runs.ALIAS,
               metrics: dict | None = None) -> int | None:
    """Point `alias` at `version`, its ops.audit row `intended` before and `done` after (a kill in between is
    repaired by `reconcile_aliases`), and the same facts as tags on the version (the MLflow UI shows them);
    returns the version it pointed at before (None if unset)."""
    previous = alias_version(client, name, alias)
    reason = f"{job}: {reason}"
    audit = dict(user=user, action=action, metrics=metrics)
    runs.record_alias_change(spark, lakehouse, name, alias, previous, version, reason, run_id, runs.INTENDED, **audit)
    client.set_registered_model_alias(name, alias, str(version))
    runs.crash_point(f"{job}.alias_moved")
    tag_decision(client, name, version, alias, action, user, previous, reason, metrics)
    runs.record_alias_change(spark, lakehouse, name, alias, previous, version, reason, run_id, runs.DONE, **audit)
    return previous


def tag_decision(client: MlflowClient, name: str, version: int, alias: str, action: str, user: str | None,
                 previous: int | None, reason: str, metrics: dict | None) -> None:
    """The facts of an alias change or refusal as tags `lakeforge.<alias>.<fact>` on the model version."""
    facts = {"action": action, "by": user or runs.os_user(), "host": socket.gethostname(),
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "from_version": str(previous or ""),
             "reason": reason[:5000], "metrics": json.dumps(metrics, sort_keys=True, default=str) if metrics else ""}
    for fact, value in facts.items():
        client.set_model_version_tag(name, str(version), f"lakeforge.{alias}.{fact}", value)


@dataclass(frozen=True)
class AuditGap:
    """A fact ops.audit lacks: the registry holds `alias` -> `to_version` while the audit said `from_version`."""

    alias: str
    from_version: int | None
    to_version: int | None
    reason: str


def audit_gaps(aliases: dict[str, int], audit: list[dict]) -> list[AuditGap]:
    """Where ops.audit (rows oldest first, with status) and the registry's aliases disagree, per alias.

    The audit's word on an alias is its last completed row (done or reconciled); an `intended` row after
    it is an open intent: completed when the registry holds its version, else abandoned (the alias never
    moved). An alias that differs with no open intent pointing there was moved outside lakeforge.
    """
    gaps = []
    for alias in sorted(set(aliases) | {r["alias"] for r in audit}):
        rows = [r for r in audit if r["alias"] == alias]
        completed = [r for r in rows if r["status"] != runs.INTENDED]
        audited = completed[-1]["to_version"] if completed else None
        since = completed[-1]["changed_at"] if completed else None
        intents = [r for r in rows if r["status"] == runs.INTENDED and (since is None or r["changed_at"] > since)]
        actual = aliases.get(alias)
        if actual == audited and not intents:
            continue
        held = f"@{alias} -> v{actual}" if actual is not None else f"no @{alias}"
        said = f"v{audited}" if audited is not None else "nothing"
        facts = [f"registry has {held}, ops.audit said {said}"]
        facts += [f"the intent of run {r['run_id']} (-> v{r['to_version']}, {r['reason']}) was "
                  f"{'completed' if r['to_version'] == actual else 'abandoned'}" for r in intents]
        if actual != audited and not any(r["to_version"] == actual for r in intents):
            facts.append(OUTSIDE_LAKEFORGE)
        gaps.append(AuditGap(alias, audited, actual, "; ".join(facts)))
    return gaps


def reconcile_aliases(client: MlflowClient, spark: SparkSession, lakehouse: Path, name: str, run_id: str,
                      log: Callable[[str], None] = print, user: str | None = None) -> list[AuditGap]:
    """Bring ops.audit into agreement with the registry's aliases of model `name` (see `audit_gaps`): append a
    `reconciled` row per alias that differs or has an open intent; returns what was appended."""
    try:
        aliases = {a: int(v) for a, v in client.get_registered_model(name).aliases.items()}
    except MlflowException:  # no such model yet
        aliases = {}
    gaps = audit_gaps(aliases, runs.read_audit(spark, lakehouse, name))
    for gap in gaps:
        # MLflow records no user for an alias change: one made outside lakeforge is by an unknown user.
        outside = gap.reason.endswith(OUTSIDE_LAKEFORGE)
        runs.record_alias_change(spark, lakehouse, name, gap.alias, gap.from_version, gap.to_version,
                                 f"reconciled: {gap.reason}", run_id, runs.RECONCILED,
                                 user=UNKNOWN_USER if outside else user, action=runs.OUTSIDE if outside else runs.ALIAS)
        log(f"ops.audit reconciled with the registry: {gap.reason}")
    return gaps


def trainer(client: MlflowClient, name: str, version: int) -> str | None:
    """Who trained a version: its run's lakeforge.user tag (None when the version has no such run)."""
    run_id = client.get_model_version(name, str(version)).run_id
    if not run_id:
        return None
    return client.get_run(run_id).data.tags.get(TRAINER_TAG)


def alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    """The version an alias points at, None if the model or alias does not exist."""
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


@dataclass(frozen=True)
class Decision:
    """Which alias a new version gets, and why (recorded with the alias change)."""

    alias: str
    reason: str


def decide(new_value: float, champion_value: float | None, gate: Gate, metric: str = "auc",
           naive: dict[str, float] | None = None) -> Decision:
    """The validation gate: absolute bound, then beating the naive answers, then a minimum improvement over the
    champion, all on the same holdout rows and in the metric's direction (lakeforge.metrics).

    Absolute bounds: metric auc has the floor gate.min_auc, metric mae the ceiling gate.max_mae. `naive` holds the
    metric of each naive prediction (training.naive_metrics); the best of them must be beaten by more than
    gate.beat_naive_by unless gate.beat_naive is false.
    """
    name, higher = metric.upper(), metrics.higher_is_better(metric)
    bound = {"auc": gate.min_auc, "mae": gate.max_mae}.get(metric)
    side = f"{'>=' if higher else '<='} {'floor' if higher else 'ceiling'}"
    if bound is not None and metrics.breaches(metric, new_value, bound):
        return Decision(CHALLENGER, f"holdout {name} {new_value:.4f} "
                                    f"{'below the floor' if higher else 'above the ceiling'} {bound:.4f}")
    if gate.beat_naive and naive:
        which = max(naive, key=lambda k: naive[k] if higher else -naive[k])
        if not metrics.better(metric, new_value, naive[which], gate.beat_naive_by):
            return Decision(CHALLENGER, f"holdout {name} {new_value:.4f} does not beat the naive {which} {name} "
                                        f"{naive[which]:.4f} by more than {gate.beat_naive_by:.4f} "
                                        f"(gate.beat_naive_by) on the same rows; set gate.beat_naive: false to "
                                        f"promote it anyway")
    if champion_value is None:
        limit = f" {side} {bound:.4f}" if bound is not None else ""
        return Decision(CHAMPION, f"holdout {name} {new_value:.4f}{limit} and no usable champion")
    sign = "+" if higher else "-"
    target = f"champion's {champion_value:.4f} {sign} {gate.min_improvement:.4f} on the same rows"
    if not metrics.breaches(metric, new_value, champion_value + (gate.min_improvement if higher
                                                                 else -gate.min_improvement)):
        return Decision(CHAMPION, f"holdout {name} {new_value:.4f} {'>=' if higher else '<='} {target}")
    return Decision(CHALLENGER, f"holdout {name} {new_value:.4f} {'<' if higher else '>'} {target}; champion kept")


def champion(client: MlflowClient, name: str) -> ModelVersion:
    """The READY version behind @champion, or an error that says how to get one."""
    version = alias_version(client, name, CHAMPION)
    if version is None:
        raise DataError(f"registered model '{name}' has no @{CHAMPION} in {mlflow.get_tracking_uri()}: run "
                        f"`lakeforge train --pipeline {name}` (or `lakeforge promote --pipeline {name} --version N`)")
    mv = client.get_model_version(name, str(version))
    if mv.status != "READY":
        raise DataError(f"{name}@{CHAMPION} points at version {version}, which is {mv.status}, not READY")
    return mv


def load_python_model(name: str, version: int):
    """The champion's Python model object (unwrapped from pyfunc), to ship to executors once."""
    return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()


def load_model_files(client: MlflowClient, name: str, version: int) -> model_files.ModelFiles | None:
    """A version's model files, verified against the SHA-256 recorded at registration (`ModelFilesRefused`
    names a file that differs); None for a version registered without them (its estimator has no data form,
    or it predates them): that one is scored from its pickled pyfunc."""
    expected = client.get_model_version(name, str(version)).tags.get(model_files.MANIFEST_TAG)
    if expected is None:
        return None
    folder = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}/artifacts/{model_files.FOLDER}")
    return model_files.read(Path(folder), expected, f"{name} version {version}")


def version_run(client: MlflowClient, name: str, version: int):
    """The MLflow run that logged a registered version (its metrics, tags and artifacts)."""
    return client.get_run(client.get_model_version(name, str(version)).run_id)


def load_baseline(client: MlflowClient, name: str, version: int,
                  missing_ok: Callable[[str], None] | None = None) -> dict | None:
    """The training baseline logged with a version, or an error that says how to get one; with `missing_ok`, a
    version without one (trained before monitoring existed: its performance still counts) gets None, and the
    error's text goes to `missing_ok` instead."""
    run = version_run(client, name, version)
    try:
        return mlflow.artifacts.load_dict(f"{run.info.artifact_uri.rstrip('/')}/{BASELINE_ARTIFACT}")
    except (MlflowException, OSError):
        if missing_ok is not None:
            missing_ok(f"no drift today: {_no_baseline(name, version, run)}")
            return None
        raise DataError(_no_baseline(name, version, run)) from None


def _no_baseline(name: str, version: int, run) -> str:
    return (f"{name} version {version} has no training baseline ({BASELINE_ARTIFACT} in MLflow run "
            f"{run.info.run_id}); it predates monitoring: retrain with `lakeforge train --pipeline {name}`")


# ---------------------------------------------------------------- what a training and a monitoring night log


def training_tags(pipeline, run_id: str, trigger: str, trained_as_of: dt.date, feature_version: str,
                  train_dates: list[dt.date], holdout_dates: list[dt.date], inputs: dict[str, int]) -> dict[str, str]:
    """The tags of a training run: what code and config trained it, as of when, why, on which dates and which
    input table versions."""
    return {"lakeforge.git_commit": runs.git_commit(), "lakeforge.config_hash": pipeline.config_hash(),
            "lakeforge.version": runs.__version__, "lakeforge.run_id": run_id,
            TRAINED_AS_OF_TAG: trained_as_of.isoformat(), "lakeforge.trigger": trigger,
            FEATURE_VERSION_TAG: feature_version,
            "lakeforge.train_dates": f"{train_dates[0]}..{train_dates[-1]}",
            "lakeforge.holdout_dates": f"{holdout_dates[0]}..{holdout_dates[-1]}",
            **{f"lakeforge.input.{name}": str(v) for name, v in inputs.items()}}


def log_training(client: MlflowClient, pipeline, artifact_root: str, trained, data, evaluation, tags: dict[str, str],
                 baseline: dict | None, datasets: list[tuple[str, str, int, object]]) -> LoggedModel:
    """Into the active training run: plots, the input Delta tables (mlflow.data), the per-group metrics table,
    the estimator's inputs; then params, metrics, tags, baseline and the model, registered as a new version
    (training.Trained, training.TrainingSet and training.Evaluation give what was fitted and found)."""
    figures = {}
    if pipeline.label.task == metrics.CLASSIFICATION and len(data.holdout):
        figures.update(plots.classification_plots(evaluation.predictions,
                                                  data.holdout[data.label].astype("int64").to_numpy()))
    if trained.figures_from is not None:
        figures.update(plots.importance_plot(trained.figures_from, data.columns))
    if evaluation.groups is not None:
        figures.update(plots.group_error_plot(evaluation.groups.attrs["errors"], pipeline.model.group_key))
        mlflow.log_dict({"groups": evaluation.groups.to_dict(orient="records")}, "per_group_metrics.json")
    log_figures(figures)
    plots.close(figures)
    log_inputs(datasets)
    params = {"estimator": pipeline.model.estimator, "pattern": pipeline.model.pattern,
              "distributed": pipeline.model.distributed, "seed": pipeline.training.seed, **trained.params}
    if data.train_rows is not None:
        mlflow.log_dict({"categories": data.spec.categories, "classes": list(data.classes)}, "estimator_inputs.json")
    example = data.holdout if len(data.holdout) else data.train_rows
    return log_and_register(client, pipeline.name, artifact_root, trained.model, example, params,
                            evaluation.metrics, tags, baseline=baseline)


def champion_model(client: MlflowClient, name: str):
    """The current champion's Python model, None when there is none."""
    version = alias_version(client, name, CHAMPION)
    return None if version is None else load_python_model(name, version)


def gate(client: MlflowClient, spark: SparkSession, lakehouse: Path, name: str, version: int, gate_config: Gate,
         metric: str, found: dict[str, float], champion_value: float | None, naive: dict[str, float],
         may_promote: Callable[[], bool], job: str, run_id: str, user: str | None) -> tuple[Decision, int | None]:
    """Send a new version through the gate (`decide`) and move the alias it earns: @champion only where
    `may_promote()` (the team set-up's four eyes), else @challenger awaiting an approver. Returns the decision
    and the version the alias pointed at before."""
    decision = decide(found[metric], champion_value, gate_config, metric, naive)
    if decision.alias == CHAMPION and not may_promote():
        decision = Decision(CHALLENGER, f"{decision.reason}; @champion awaits an approver "
                                        f"(`lakeforge promote --alias champion`)")
    seen = {metric: found[metric], f"champion_{metric}": champion_value}
    previous = move_alias(client, spark, lakehouse, name, decision.alias, version, job, decision.reason, run_id,
                          user, runs.GATE, metrics=seen)
    return decision, previous


def feature_version(client: MlflowClient, name: str, version: int) -> str | None:
    """The feature version a registered version was trained on (None: registered before they were recorded)."""
    return version_run(client, name, version).data.tags.get(FEATURE_VERSION_TAG)


def check_four_eyes(client: MlflowClient, spark: SparkSession, lakehouse: Path, name: str, alias: str, version: int,
                    reason: str, run_id: str, user: str) -> None:
    """Four eyes: a user may not promote a version they trained (or one with no record of who did). A refusal is
    recorded (ops.audit row, tags on the version) and raised as AccessDenied (exit 2)."""
    trained_by = trainer(client, name, version)
    if trained_by is not None and trained_by != user:
        return
    why = (f"user '{user}' trained version {version}" if trained_by else
           f"version {version} has no training run that says who trained it ({TRAINER_TAG})")
    message = (f"refused: @{alias} of {name} -> v{version} needs an approver other than the version's trainer; "
               f"{why}. Another user with the role approver runs `lakeforge promote --alias {alias} --version "
               f"{version} --reason ...`")
    current = alias_version(client, name, alias)
    runs.record_alias_change(spark, lakehouse, name, alias, current, version, f"promote: {reason}; {message}",
                             run_id, runs.REFUSED, user=user, action=runs.REFUSAL)
    tag_decision(client, name, version, f"{alias}.refused", runs.REFUSAL, user, current, f"{reason}; {message}", None)
    raise AccessDenied(message)


def promote(client: MlflowClient, spark: SparkSession, settings: Settings, name: str, alias: str, version: int,
            reason: str, run: runs.Run, user: str) -> runs.Outcome:
    """The promote stage's work: point the alias at the version by hand (ops.audit and the version's tags say
    who and why); in the team set-up @champion needs four eyes (`check_four_eyes`), and the move is an approval."""
    lakehouse = settings.paths.lakehouse
    reconcile_aliases(client, spark, lakehouse, name, run.run_id, run.log, user)
    wait_until_ready(client, name, version)
    four_eyes = alias == CHAMPION and access.authenticated(settings)
    if four_eyes:
        check_four_eyes(client, spark, lakehouse, name, alias, version, reason, run.run_id, user)
    previous = move_alias(client, spark, lakehouse, name, alias, version, "promote", reason, run.run_id, user,
                          runs.APPROVAL if four_eyes else runs.ALIAS)
    run.log(f"{name}@{alias}: {previous} -> {version} ({reason})")
    return runs.Outcome({"stage": "promote", "alias": alias, "from": previous, "to": version},
                        details={"alias": alias, "previous": previous, "version": version, "reason": reason})


def log_monitoring(client: MlflowClient, pipeline: str, artifact_root: str, day: dt.date, version: int,
                   summary: dict, today: pd.DataFrame, report: Path) -> None:
    """A monitoring run in the pipeline's experiment: the night's decision as tags, PSI and matured and estimated
    performance as metrics, the HTML report as an artifact."""
    mlflow.set_experiment(experiment_id=experiment_id(client, pipeline, artifact_root))
    with mlflow.start_run(run_name=f"monitor-{pipeline}-{day}"):
        mlflow.set_tags({"lakeforge.kind": "monitoring", "lakeforge.monitor_date": day.isoformat(),
                         "lakeforge.champion_version": str(version), "lakeforge.retrain": str(summary["retrain"]),
                         "lakeforge.reason": summary["reason"][:5000]})
        values = {f"psi.{r.name}": r.value for r in today.itertuples()
                  if r.kind in ("drift", "prediction_drift") and r.metric == "psi"}
        values.update({f"matured.{r.metric}": r.value for r in today.itertuples()
                       if r.kind == "performance" and r.model_version == version and r.value == r.value})
        values.update({f"estimated.{r.metric}": r.value for r in today.itertuples()
                       if r.kind == "estimated_performance" and r.value == r.value})
        mlflow.log_metrics({k: float(v) for k, v in values.items() if v is not None})
        mlflow.log_artifact(str(report), "reports")
