"""The nightly flow, declared once: its steps in order, what each reads and writes, and when it runs.

Everything that runs a night is made from NIGHTLY:
- `lakeforge run nightly` (and jobs/nightly.py) runs the steps in one process (`run_nightly`), for every pipeline
  of the project in turn (`run_every_pipeline`) or for the one --pipeline names;
- the cron example (deploy/cron/lakeforge.cron) and the compose scheduler run that command at SCHEDULE, for
  every pipeline: a pipeline is scheduled by adding its conf/pipelines/<name>.yaml;
- the Airflow DAG file (deploy/airflow/lakeforge_nightly.py) makes one DAG per pipeline, one task per step, with
  RETRIES, from deploy/airflow/lakeforge_flow.json, which `python -m lakeforge.flow` writes from this module;
- each step is also a verb (`lakeforge <step>`) and a job (`docker/entrypoint.sh submit <step>`).

A step with a `when` runs only when its condition holds: `retrain` when the retrain decision that `monitor`
recorded for the night in ops.monitoring fired (the policy, its cooldown included, is monitoring's).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

RETRAIN_FIRED = "the retrain decision monitor recorded for the date fired (the pipeline's policy, cooldown included)"
MAINTENANCE_DUE = "maintenance.every_days have passed since the last successful maintain"
SCHEDULE = "30 2 * * *"            # every night at 02:30 UTC: the night of day D scores D
RETRIES, RETRY_DELAY_MINUTES = 2, 10  # every step is rerunnable for its date (file ledger, MERGE, replaceWhere)
SKIPPED_EXIT = 99                  # a step whose condition does not hold exits with this under a scheduler
                                   # (`--skipped-exit`): Airflow's BashOperator marks such a task skipped
EXPORT = Path("deploy") / "airflow" / "lakeforge_flow.json"


@dataclass(frozen=True)
class Step:
    """One step of the night: the CLI verb and jobs/<name>.py of that name."""

    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    dated: bool = True        # takes --date (the night's score date)
    per_date: bool = True     # a backfill runs it once per date, in order; else once for all its dates
    when: str | None = None   # runs only when this holds; None: every night


NIGHTLY = (
    Step("ingest", reads=("the landing files of the pipeline's sources",),
         writes=("bronze.<source>", "silver.<source>", "ops.quarantine", "ops.quality", "ops.ingested_files"),
         dated=False, per_date=False),
    Step("maintain", reads=("bronze.<source>", "silver.<source>", "ops tables ingest writes"),
         writes=("the same tables, compacted; files older than the retention vacuumed",),
         dated=False, per_date=False, when=MAINTENANCE_DUE),
    Step("features", reads=("bronze.<spine source>", "silver.<event sources>"),
         writes=("gold.<pipeline>_features",), per_date=False),
    Step("score", reads=("gold.<pipeline>_features", "model <pipeline>@champion"),
         writes=("gold.<pipeline>_predictions",)),
    Step("monitor", reads=("gold.<pipeline>_features", "gold.<pipeline>_predictions", "matured labels",
                           "ops.quality", "ops.monitoring"),
         writes=("ops.monitoring", "<paths.reports>/<pipeline>/<date>.html")),
    Step("retrain", reads=("ops.monitoring (the night's decision)", "gold.<pipeline>_features"),
         writes=("model <pipeline> (a new version through the gate)", "ops.monitoring", "ops.audit"),
         when=RETRAIN_FIRED),
)


# The steps a backfill runs once for all its dates; they come first, so running them first keeps the order.
ONCE = tuple(s for s in NIGHTLY if not s.per_date)
if NIGHTLY[:len(ONCE)] != ONCE:
    raise ValueError("lakeforge.flow.NIGHTLY: the steps that run once for all dates (per_date=False) come first")


def step_names() -> list[str]:
    """The steps of the night, in order."""
    return [s.name for s in NIGHTLY]


def export() -> dict:
    """The flow as JSON-ready data, for schedulers that cannot import lakeforge (the Airflow DAG)."""
    return {"schedule": SCHEDULE, "retries": RETRIES, "retry_delay_minutes": RETRY_DELAY_MINUTES,
            "skipped_exit": SKIPPED_EXIT, "steps": [asdict(s) for s in NIGHTLY]}


def export_text() -> str:
    """What `python -m lakeforge.flow` writes to deploy/airflow/lakeforge_flow.json."""
    return json.dumps(export(), indent=2) + "\n"


@dataclass
class Tonight:
    """What the pipelines run so far tonight in this process did that the next must not do again."""

    ingested: set[str] = field(default_factory=set)  # sources
    maintained: set[str] = field(default_factory=set)  # tables (a source's, and the ops tables every ingest writes)


def run_nightly(ctx, first: dt.date | None = None, last: dt.date | None = None,
                done: dict[str, list[dict]] | None = None, tonight: Tonight | None = None) -> dict:
    """Run NIGHTLY for the dates first..last (default: the next night to score): the steps that are not per
    date once, then the others date by date in order, so each date is its own rerunnable run in ops.runs and a
    retrain changes the champion for the dates after it. Returns each step's summary (a backfill's summed).

    `done` (each step's summaries, filled as they finish) tells a caller how far a failed night got; `tonight`
    names the sources and tables earlier pipelines ingested and maintained tonight in this process: ingest and
    maintain skip them and add their own."""
    from lakeforge import stages
    from lakeforge.errors import DataError

    done = _no_steps_done() if done is None else done
    run = _RUN if tonight is None else {**_RUN, "ingest": partial(_ingest_new_sources, ingested=tonight.ingested),
                                        "maintain": partial(_maintain_new_tables, maintained=tonight.maintained)}
    dates: list[dt.date] = []
    for step in ONCE:
        if step.when is not None and not _CONDITIONS[step.name](ctx):
            continue
        if step.dated and not dates:  # after ingest: the default date is the day after the last ingested event
            start = first or stages._default_score_date(ctx)
            dates = [start + dt.timedelta(days=i) for i in range(((last or start) - start).days + 1)]
            if not dates:
                raise DataError(f"--to {last} is before --from {start}")
        done[step.name].append(run[step.name](ctx, dates, done))
    for day in dates:
        for step in NIGHTLY[len(ONCE):]:
            if _holds(step, day, done):
                done[step.name].append(run[step.name](ctx, day, done))
    return _summary(done)


@dataclass(frozen=True)
class Outcome:
    """One pipeline's night in a run over every pipeline: the steps it finished, and its summary or its error."""

    pipeline: str
    steps: tuple[str, ...]
    summary: dict | None = None
    error: Exception | None = None


def run_every_pipeline(names: list[str], context_of: Callable[[str], object], first: dt.date | None = None,
                       last: dt.date | None = None) -> Iterator[Outcome]:
    """run_nightly for each pipeline in turn (`context_of(name)` loads it; the contexts share one Spark session),
    yielding each one's outcome as it ends. A pipeline that fails (its configuration, a step) does not stop the
    next; a stop signal does. A source several pipelines name is ingested (and maintained) by the first of them
    only."""
    tonight = Tonight()
    for name in names:
        done = _no_steps_done()
        try:
            summary = run_nightly(context_of(name), first, last, done, tonight)
        except Exception as exc:  # the pipeline's failure, reported with the others'; Interrupted is no Exception
            yield Outcome(name, _steps_done(done), error=exc)
        else:
            yield Outcome(name, _steps_done(done), summary)


def _no_steps_done() -> dict[str, list[dict]]:
    return {s.name: [] for s in NIGHTLY}


def _steps_done(done: dict[str, list[dict]]) -> tuple[str, ...]:
    """The steps that finished, in the flow's order; a step of a backfill with its number of dates."""
    return tuple(name if len(runs) == 1 else f"{name} x{len(runs)}" for name, runs in done.items() if runs)


def _ingest_new_sources(ctx, _when, _done, ingested: set[str]) -> dict:
    """The ingest step for the sources of the pipeline that no earlier pipeline ingested tonight (the file ledger
    would make a second load of them a no-op; this spares the listing and the run)."""
    import dataclasses

    from lakeforge import stages

    sources = ctx.pipeline.sources
    new = {name: source for name, source in sources.items() if name not in ingested}
    if not new:
        return {"stage": "ingest", "skipped": f"already ingested tonight: {', '.join(sources)}"}
    only_new = ctx
    if len(new) < len(sources):  # the same session and pipeline, with only its sources not yet ingested
        only_new = dataclasses.replace(ctx, pipeline=ctx.pipeline.model_copy(update={"sources": new}),
                                       spark_factory=lambda _: ctx.spark)
    summary = stages.ingest(only_new)
    ingested.update(new)
    return summary


def _maintain_new_tables(ctx, _when, _done, maintained: set[str]) -> dict:
    """The maintain step for the pipeline's tables that no earlier pipeline maintained tonight; recorded even
    when that leaves none, so the pipeline's maintenance.every_days count from tonight."""
    from lakeforge import ingest, stages

    summary = stages.maintain(ctx, skip=maintained)
    maintained.update(ingest.ingest_tables(ctx.pipeline.sources))
    return summary


def _holds(step: Step, day: dt.date, done: dict[str, list[dict]]) -> bool:
    """A step's condition, in process: retrain when this date's monitor decided to."""
    if step.when is None:
        return True
    night = [m for m in done["monitor"] if m["date"] == day.isoformat()]
    return bool(night and night[-1]["retrain"])


def _retrain(ctx, day: dt.date, done: dict[str, list[dict]]) -> dict:
    from lakeforge import stages

    reason = next(m["reason"] for m in reversed(done["monitor"]) if m["date"] == day.isoformat())
    return stages.retrain(ctx, day, reason)


def _stage(name: str, dated: bool = True):
    """The stages function of a step, looked up when called (so a test can stand in for it)."""
    def call(ctx, when, _done):
        from lakeforge import stages

        return getattr(stages, name)(ctx, when) if dated else getattr(stages, name)(ctx)
    return call


def _maintenance_due(ctx) -> bool:
    from lakeforge import stages

    return stages.maintenance_due(ctx)


# How run_nightly runs each step in process: its stages function (the one its verb and job call), and the
# conditions of the steps run once for all dates (retrain's is the night's monitor decision, in _holds).
_RUN = {"ingest": _stage("ingest", dated=False), "maintain": _stage("maintain", dated=False),
        "features": _stage("build_features"), "score": _stage("score"), "monitor": _stage("monitor"),
        "retrain": _retrain}
_CONDITIONS = {"maintain": _maintenance_due}


def _summary(done: dict[str, list[dict]]) -> dict:
    """One summary per step: the step's own for one date, counts for a backfill."""
    summary: dict = {"ingest": done["ingest"][0], "features": done["features"][0]}
    if done["maintain"]:
        summary["maintain"] = done["maintain"][0]
    scored, monitored, retrained = done["score"], done["monitor"], done["retrain"]
    summary["score"] = scored[0] if len(scored) == 1 else {
        "dates": len(scored), "rows": sum(s["rows"] for s in scored), "first": scored[0]["score_date"],
        "last": scored[-1]["score_date"]}
    summary["monitor"] = monitored[0] if len(monitored) == 1 else {
        "dates": len(monitored), "retrains": [r["date"] for r in retrained],
        "drifted_dates": sum(1 for m in monitored if m["drifted"])}
    if retrained:
        summary["retrain"] = retrained[-1]
    return summary


def recorded_decision(ctx, day: dt.date) -> tuple[bool, str] | None:
    """The retrain decision monitor recorded in ops.monitoring for the pipeline and date: (fired, reason),
    or None when the date was not monitored."""
    from pyspark.sql import functions as F

    from lakeforge import lake, monitoring

    if not lake.exists(ctx.lakehouse, monitoring.MONITORING):
        return None
    rows = (lake.read(ctx.spark, ctx.lakehouse, monitoring.MONITORING)
            .where((F.col("pipeline") == ctx.pipeline.name) & (F.col("monitor_date") == F.lit(day))
                   & (F.col("kind") == "decision") & (F.col("name") == "retrain"))
            .select("value", "detail").collect())
    if not rows:
        return None
    return rows[-1]["value"] == 1.0, rows[-1]["detail"] or ""


def retrain_if_fired(ctx, day: dt.date) -> dict:
    """The `retrain` step on its own (a scheduler's task): retrain as of `day` when monitor's recorded decision
    for it fired; else say why not. `fired` in the summary tells which."""
    from lakeforge import stages
    from lakeforge.errors import DataError

    decision = recorded_decision(ctx, day)
    if decision is None:
        raise DataError(f"no retrain decision in ops.monitoring for {ctx.pipeline.name} on {day}: run "
                        f"`lakeforge monitor --pipeline {ctx.pipeline.name} --date {day}` first")
    fired, reason = decision
    if not fired:
        return {"stage": "retrain", "date": day.isoformat(), "fired": False, "reason": reason}
    return {"fired": True, **stages.retrain(ctx, day, reason)}


def main() -> None:
    """Write deploy/airflow/lakeforge_flow.json from NIGHTLY (run from the repository's root)."""
    EXPORT.write_text(export_text())
    print(f"wrote {EXPORT}: {' >> '.join(step_names())}")


if __name__ == "__main__":
    main()
