"""The `lakeforge` command: argument parsing only; the work is in lakeforge.stages."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import traceback

from lakeforge import flow, interrupts
from lakeforge.demo.commands import GENERATE_DETAILS, add_size_options, size_of
from lakeforge.errors import LakeforgeError, root_cause, users_mistake

DESCRIPTION = """\
lakeforge: ingest raw files into a Delta lakehouse, build features with pandas functions run on
Spark, train and register models in MLflow, and score in batch every night.

Start with `lakeforge demo` (generates the restaurant demo data and runs every stage).
Configuration: conf/base.yaml + conf/<env>.yaml (--env or LAKEFORGE_ENV, default local),
conf/pipelines/<name>.yaml naming sources from conf/sources/<name>.yaml; override any key with --set key=value
(pipeline keys: --set pipeline.KEY=V, source keys: --set sources.NAME.KEY=V).
`lakeforge VERB --help` says what a verb reads and writes.
"""
EXIT_CODES = """exit codes: 0 done; 1 a Spark or MLflow failure (one line here, --debug for the traceback; the run is
recorded in ops.runs), or a model file that differs from the SHA-256 recorded at registration (named); 2 a configuration or data problem, named in the message with its fix, or the same job
already running (lock_wait_s to wait); 130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM: the stage's Spark jobs
are cancelled and its run is recorded in ops.runs as interrupted.
"""
# What `lakeforge VERB --help` says under the usage line: what the verb reads, writes and repeats safely.
DETAILS = {
    "demo": "Generates the demo landing files under paths.landing, ingests them, and for every pipeline (or\n"
            "only --pipeline) builds features, trains and registers the model (@champion), builds the next\n"
            "night's features and scores it; then prints every table with its row count and each model's\n"
            "holdout metric beside the naive answer. A rerun loads no landing file twice.\n"
            "example: lakeforge demo --fresh",
    "generate": GENERATE_DETAILS,
    "ingest": "Reads each source the pipeline names (conf/sources/<name>.yaml) from paths.landing/<its path>;\n"
              "loads each new file once into bronze.<source> (every kept row, with audit columns) and\n"
              "silver.<source> (latest row per key, MERGEd); bad rows go to ops.quarantine with the reason;\n"
              "checks go to ops.quality and each file to ops.ingested_files. A rerun with no new files writes nothing. An expectation with\n"
              "action fail stops the load before any write (exit 2). See docs/ingestion.md.\n"
              "example: lakeforge ingest --pipeline NAME",
    "maintain": "Compacts the small files of the tables ingest writes for the pipeline's sources (bronze.<source>,\n"
                "silver.<source>, ops.quarantine, ops.quality, ops.ingested_files) into files of about\n"
                "maintenance.target_file_mb (OPTIMIZE), then deletes the files no version younger than\n"
                "maintenance.vacuum_retention_hours needs (VACUUM); the current version's files are never deleted.\n"
                "Takes the ingest lock; recorded in ops.runs with each table's files before and after. `run nightly`\n"
                "runs it when the last successful maintain is maintenance.every_days old. Rows never change, so a\n"
                "rerun only finds less to do. See docs/operations.md.\n"
                "example: lakeforge maintain --pipeline NAME",
    "features": "Reads the spine and event sources from bronze/silver and writes gold.<pipeline>_features for\n"
                "--date (default: the next night; see --date below); rebuilding a date replaces that date only.\n"
                "example: lakeforge features --pipeline NAME --date 2026-10-29",
    "train": "Builds the features of its snapshot dates into gold.<pipeline>_features, labels them from the\n"
             "events (point in time), fits the pipeline's model, evaluates it on a later holdout, logs the run\n"
             "and registers a new version in MLflow. It becomes @champion when it passes the pipeline's gate,\n"
             "else @challenger (the champion is kept).\n"
             "example: lakeforge train --pipeline NAME",
    "score": "Scores every entity's features for --date with the version @champion points at into\n"
             "gold.<pipeline>_predictions, stamped with the model version and run id; a rerun replaces that\n"
             "date's predictions.\n"
             "example: lakeforge score --pipeline NAME --date 2026-10-29",
    "monitor": "Compares --date's features and predictions with the champion's training baseline (drift), measures\n"
               "the champion on matured labels, applies the retrain policy, and writes the rows to\n"
               "ops.monitoring (a rerun replaces the date) and an HTML report under paths.reports (unless\n"
               "the pipeline sets monitoring.report: false).\n"
               "example: lakeforge monitor --pipeline NAME --date 2026-10-29",
    "retrain": "Reads the retrain decision `monitor` recorded for --date in ops.monitoring (the pipeline's policy,\n"
               "cooldown included) and, when it fired, retrains on the policy's recent window as of --date through\n"
               "the gate (the outcome goes to ops.monitoring); else prints why not and writes nothing. The last\n"
               "step of `run nightly`, on its own for a scheduler's task.\n"
               "example: lakeforge retrain --pipeline NAME --date 2026-10-29",
    "promote": "Points an alias at a registered version by hand; the change and the reason go to ops.audit and\n"
               "ops.runs.\n"
               "example: lakeforge promote --pipeline NAME --version 3 --reason \"rollback after incident 42\"",
    "run": "nightly: ingest (and maintain when maintenance.every_days have passed), then for each date build\n"
           "features, score and monitor; when the retrain policy fires, retrain through the gate. One date\n"
           "(--date, default the next night) or a backfill (--from/--to), each date its own run\n"
           "in ops.runs.\n"
           "Without --pipeline: every pipeline of conf/pipelines, sorted by name, one after another in one Spark\n"
           "session (a source several pipelines share is ingested and maintained once). A pipeline that fails\n"
           "does not stop the others; a summary ends the run (each pipeline, its steps done, its error in one\n"
           "line), and the exit code is the first failure's. So a new pipeline is scheduled by adding its YAML;\n"
           "--pipeline NAME runs only that one.\n"
           "example: lakeforge run nightly --pipeline NAME --from 2026-10-01 --to 2026-10-07",
    "status": "Lists every lakehouse table (version, rows, last write, description), the last runs from ops.runs,\n"
              "and each pipeline's health and @champion.\n"
              "example: lakeforge status --env cluster",
    "doctor": "Checks every table under paths.lakehouse: its Delta log loads (commits contiguous from 0 or from a\n"
              "checkpoint, none missing after the newest readable one) and every data file its current version\n"
              "references exists. Prints one line per table (ok, or what is wrong) and, for each problem, how to\n"
              "recover (RESTORE to a version whose files all exist, a backup). Writes nothing. Exit 0 when every\n"
              "table is healthy, 2 when any is not. See docs/operations.md.\n"
              "example: lakeforge doctor --env cluster",
    "access": "The team set-up's roles (conf/access.yaml; docs/access.md). sync, as the MLflow admin: creates the\n"
              "users (a new user's first password from LAKEFORGE_PASSWORD_<USER>) and sets their MLflow\n"
              "permissions; each change is a row in ops.audit. show: who may do what.\n"
              "example: lakeforge access sync --env compose",
    "setup-jars": "Resolves io.delta:delta-spark and its dependencies, and the PostgreSQL JDBC driver (the shared\n"
                  "catalog's metastore), with spark-submit --packages (Ivy) into\n"
                  "lakeforge's jar cache, once; later runs, tests and spark-submit use the cache. Compiles\n"
                  "lakeforge's own JVM code (ingest's one-pass JSON line parser) with the JDK's javac against\n"
                  "the installed Spark. Then builds a JVM class archive next to the jars (a small Delta job run\n"
                  "once), which every session lakeforge starts maps: each command starts sooner.",
}


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def _common(parser: argparse.ArgumentParser, pipeline: bool = True, date: bool = False,
            every_pipeline: bool = False) -> None:
    if every_pipeline:
        parser.add_argument("--pipeline", help="only this pipeline: conf/pipelines/<name>.yaml (default: every one)")
    elif pipeline:
        parser.add_argument("--pipeline", help="pipeline name: conf/pipelines/<name>.yaml (required unless the "
                                               "project has only one)")
    parser.add_argument("--env", help="environment overlay conf/<env>.yaml (default: $LAKEFORGE_ENV or local)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set spark.master=local[2] (repeatable)")
    if date:
        parser.add_argument("--date", type=_date, help="the as-of / score date, YYYY-MM-DD (default: the next "
                                                       "night: the day after the last ingested event; for event "
                                                       "points, that event's day)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakeforge", description=DESCRIPTION, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = _verb(verbs, "demo", help="generate the demo data and run every stage, then print a summary")
    _common(p, every_pipeline=True)
    p.add_argument("--fresh", action="store_true", help="first delete the folders lakeforge made for this project "
                                                      "(landing, lakehouse, reports, MLflow store; README: "
                                                      "Configuration)")
    add_size_options(p)

    p = _verb(verbs, "generate", help="write the demo landing files (deterministic for --seed)")
    _common(p, pipeline=False)
    add_size_options(p)

    p = _verb(verbs, "ingest", help="load new landing files into bronze/silver; bad rows to ops.quarantine")
    _common(p)

    p = _verb(verbs, "maintain", help="compact small files and VACUUM the tables ingest writes")
    _common(p)
    p.add_argument("--skipped-exit", type=int, default=0, metavar="CODE",
                   help="as a scheduler calls it: maintain only when due (maintenance.every_days since the last "
                        "successful maintain) and exit with CODE when not (default 0: always maintain)")
    p = _verb(verbs, "features", help="build gold.<pipeline>_features for a date")
    _common(p, date=True)

    p = _verb(verbs, "train", help="train, evaluate on a time-based holdout, register in MLflow, set @champion "
                                   "if it passes the gate")
    _common(p)

    p = _verb(verbs, "score", help="score a date with <pipeline>@champion into gold.<pipeline>_predictions")
    _common(p, date=True)

    p = _verb(verbs, "monitor", help="drift, matured performance and the retrain decision for a date into "
                                     "ops.monitoring, with an HTML report")
    _common(p, date=True)

    p = _verb(verbs, "retrain", help="retrain through the gate when monitor's decision for --date fired")
    _common(p)
    p.add_argument("--date", type=_date, required=True, help="the monitored date whose decision to apply, YYYY-MM-DD")
    p.add_argument("--skipped-exit", type=int, default=0, metavar="CODE",
                   help="exit CODE when the decision did not fire (default 0; a scheduler's 'skipped' code, e.g. 99 "
                        "for Airflow)")

    p = _verb(verbs, "promote", help="point an alias (default champion) at a model version, with a reason")
    _common(p)
    p.add_argument("--version", type=int, required=True, help="registered model version")
    p.add_argument("--reason", required=True, help="why (recorded in ops.runs)")
    p.add_argument("--alias", default="champion", choices=["champion", "challenger"])

    *every_night, last = flow.NIGHTLY
    p = _verb(verbs, "run", help=f"run a named sequence: nightly = {', '.join(s.name for s in every_night)} "
                                 f"(and {last.name} when the policy fires): lakeforge.flow.NIGHTLY")
    p.add_argument("sequence", choices=["nightly"])
    _common(p, date=True, every_pipeline=True)
    p.add_argument("--from", dest="date_from", type=_date, help="backfill: first date to score (with --to)")
    p.add_argument("--to", dest="date_to", type=_date, help="backfill: last date to score, inclusive")

    p = _verb(verbs, "status", help="tables (version, rows, last write), the last runs and the champion")
    _common(p)

    p = _verb(verbs, "doctor", help="check every table's Delta log and data files; say how to recover a damaged one")
    _common(p, pipeline=False)

    p = _verb(verbs, "access", help="roles and permissions of the team set-up: sync them to MLflow, or show them")
    p.add_argument("action", choices=["sync", "show"])
    _common(p, pipeline=False)

    p = _verb(verbs, "setup-jars", help="cache the Delta Lake jars and build lakeforge's JVM jar (run by `make setup`)")
    p.add_argument("--force", action="store_true", help="resolve and build again even when cached")
    p.add_argument("--no-class-archive", dest="class_archive", action="store_false",
                   help="skip the JVM class archive (saves its disk space and build time; each command starts slower)")
    return parser


def _verb(verbs, name: str, help: str) -> argparse.ArgumentParser:
    """A verb whose --help gives its one-line help, then DETAILS and the exit codes."""
    return verbs.add_parser(name, help=help, description=f"{help}.\n\n{DETAILS[name]}", epilog=EXIT_CODES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug = args.debug or os.environ.get("LAKEFORGE_DEBUG") == "1"
    previous = interrupts.raise_on_stop_signals()
    try:
        return run(args)
    except interrupts.Interrupted as exc:
        print(f"lakeforge {args.verb}: {exc}: stopped; a run it had started is recorded in ops.runs as "
              f"interrupted", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lakeforge {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, the traceback on --debug
        if debug:
            traceback.print_exc()
        code, line = _failure(exc)
        print(f"lakeforge {args.verb}: {line}", file=sys.stderr)
        return code
    finally:
        interrupts.restore(previous)


def _failure(exc: Exception) -> tuple[int, str]:
    """A failure's exit code and one line: a user's mistake (a LakeforgeError, raised here or on a Python worker)
    as its message with the fix, a Spark or MLflow failure as its deepest cause."""
    mistake = users_mistake(exc)
    if mistake is not None:
        return getattr(mistake, "exit_code", 2), f"error: {mistake}"
    return 1, f"failed: {root_cause(exc)} (rerun with --debug for the traceback; the run is recorded in ops.runs)"


def run(args: argparse.Namespace) -> int:
    if args.verb == "setup-jars":
        from lakeforge import jars

        started = time.monotonic()
        found = jars.fetch_jars(force=args.force)
        print(f"Delta jars ready: {len(found)} jars for {jars.DELTA_PACKAGE} in {jars.cache_dir()} "
              f"({time.monotonic() - started:.1f}s)")
        driver = jars.fetch_jars(force=args.force, package=jars.POSTGRES_JDBC_PACKAGE)
        print(f"PostgreSQL JDBC driver ready (the shared catalog's metastore): {len(driver)} jar(s) for "
              f"{jars.POSTGRES_JDBC_PACKAGE} in {jars.cache_dir(jars.POSTGRES_JDBC_PACKAGE)}")
        try:
            own, built = jars.build_jvm_jar(force=args.force)
            print(f"lakeforge's JVM jar (one-pass JSON line parser) {'built' if built else 'ready'}: {own}")
        except LakeforgeError as exc:
            print(f"lakeforge setup-jars: warning: {exc}", file=sys.stderr)
        if args.class_archive:
            started = time.monotonic()
            try:
                archive, built = jars.build_class_archive(force=args.force)
            except LakeforgeError as exc:
                print(f"lakeforge setup-jars: warning: {exc}", file=sys.stderr)
                return 0
            print(f"JVM class archive {'built' if built else 'ready'}: {archive} "
                  f"({time.monotonic() - started:.1f}s)")
        return 0

    from lakeforge import config

    # Settings and the pipeline are checked before the stages (and MLflow, LightGBM...) are imported, so a
    # mistake in them is reported in a second rather than after five seconds of imports.
    settings = config.load_settings(args.env, args.overrides)
    demo_pipelines = [args.pipeline] if args.verb == "demo" and args.pipeline else None
    if args.verb == "access":
        return _access(settings, args.action)
    every_night = args.verb == "run" and not args.pipeline  # each pipeline is loaded (and may fail) on its own
    if args.verb == "demo":  # every pipeline by default; the first one's context runs the shared steps
        args.pipeline = (demo_pipelines or config.available_pipelines())[0]
    elif args.verb == "status" and not args.pipeline:  # every pipeline's health: any one gives the context
        args.pipeline = next(iter(config.available_pipelines()), None) or config.chosen_pipeline(None)
    elif args.verb not in ("generate", "doctor") and not every_night:
        args.pipeline = config.chosen_pipeline(args.pipeline)
    pipeline = (None if args.verb in ("generate", "doctor") or every_night
                else config.load_pipeline(args.pipeline, args.overrides))
    from lakeforge import access

    # The server's answer before any Spark job or write: a user without the right stops here (exit 2), the
    # refusal recorded in ops.audit.
    try:
        access.check(settings, args.verb, getattr(args, "alias", None))
    except access.Refused as refused:
        try:
            access.record_refusal(settings, refused, args.pipeline, getattr(args, "version", None))
        except Exception as exc:  # e.g. a lakehouse this user may not write: the refusal still stands
            raise access.AccessDenied(f"{refused} (not recorded in ops.audit: {root_cause(exc)})") from None
        raise
    from lakeforge import stages

    if args.verb == "generate":
        from lakeforge.demo.commands import describe_landing, generate

        print(describe_landing(settings, generate(settings, **size_of(args))))
        return 0
    if every_night:
        return nightly_every_pipeline(settings, args.overrides, *_night_dates(args), debug=args.debug)

    ctx = stages.Context(settings, pipeline)
    try:
        if args.verb == "demo":
            from lakeforge.demo.summary import run_demo

            print(run_demo(ctx, fresh=args.fresh, pipelines=demo_pipelines, **size_of(args)))
        elif args.verb == "ingest":
            _print(stages.ingest(ctx))
        elif args.verb == "maintain":
            if args.skipped_exit and not stages.maintenance_due(ctx):
                print(f"maintenance is not due (maintenance.every_days: {settings.maintenance.every_days})")
                return args.skipped_exit
            _print(stages.maintain(ctx))
        elif args.verb == "features":
            _print(stages.build_features(ctx, [args.date] if args.date else None))
        elif args.verb == "train":
            _print(stages.train(ctx))
        elif args.verb == "score":
            _print(stages.score(ctx, args.date))
        elif args.verb == "monitor":
            _print(stages.monitor(ctx, args.date))
        elif args.verb == "retrain":
            summary = flow.retrain_if_fired(ctx, args.date)
            _print(summary)
            return 0 if summary["fired"] else args.skipped_exit
        elif args.verb == "promote":
            _print(stages.promote(ctx, args.version, args.reason, args.alias))
        elif args.verb == "run":
            _print(stages.nightly(ctx, *_night_dates(args)))
        elif args.verb == "status":
            from lakeforge.demo.summary import format_status

            print(format_status(stages.status(ctx)))
        elif args.verb == "doctor":
            from lakeforge.demo.summary import format_doctor

            report = stages.doctor(ctx)
            print(format_doctor(report))
            return 0 if all(t.healthy for t in report) else 2
    finally:
        if "spark" in ctx.__dict__:
            ctx.spark.stop()
    return 0


def _night_dates(args: argparse.Namespace) -> tuple[dt.date | None, dt.date | None]:
    """The first and last dates `run nightly` scores: --date, or a backfill --from/--to (None: the next night)."""
    if args.date and (args.date_from or args.date_to):
        raise LakeforgeError("give either --date or --from/--to, not both")
    if args.date_to and not args.date_from:
        raise LakeforgeError("--to needs --from (the first date of the backfill)")
    return args.date or args.date_from, args.date_to


def nightly_every_pipeline(settings, overrides: list[str], first: dt.date | None = None, last: dt.date | None = None,
                           spark_factory=None, debug: bool = False) -> int:
    """`run nightly` without --pipeline: the nightly flow for every pipeline of conf/pipelines in turn, in one Spark
    session (spark_factory's, else one built here and stopped at the end). Prints each pipeline's summary as it
    ends, then one line per pipeline; returns the first failure's exit code, or 0."""
    from lakeforge import config, stages

    names = config.available_pipelines() or [config.chosen_pipeline(None)]  # none: the error says where to add one
    sessions = []

    def shared(settings):
        if not sessions:
            from lakeforge.spark import build_session

            sessions.append((spark_factory or build_session)(settings))
        return sessions[0]

    def context_of(name: str) -> stages.Context:
        return stages.Context(settings, config.load_pipeline(name, overrides), spark_factory=shared)

    outcomes, codes = [], []
    try:
        for outcome in flow.run_every_pipeline(names, context_of, first, last):
            print(f"== {outcome.pipeline}", flush=True)
            if outcome.error is None:
                _print(outcome.summary)
            else:
                if debug:
                    traceback.print_exception(outcome.error)
                code, line = _failure(outcome.error)
                codes.append(code)
                print(f"lakeforge run: pipeline {outcome.pipeline}: {line}", file=sys.stderr, flush=True)
            outcomes.append(outcome)
    finally:
        if sessions and spark_factory is None:
            sessions[0].stop()
    print(_nights_summary(outcomes))
    return codes[0] if codes else 0


def _nights_summary(outcomes: list) -> str:
    """One line per pipeline of a run over every pipeline: done or failed, its steps done, its error."""
    failed = [o for o in outcomes if o.error is not None]
    lines = [f"nightly: {len(outcomes) - len(failed)} of {len(outcomes)} pipelines done"
             + (f", {len(failed)} failed (rerun one: lakeforge run nightly --pipeline NAME)" if failed else "")]
    width = max(len(o.pipeline) for o in outcomes)
    for o in outcomes:
        steps = ", ".join(o.steps) or "none"
        line = f"  {o.pipeline:<{width}}  {'failed' if o.error else 'done':<6}  steps done: {steps}"
        lines.append(line + (f"; {o.pipeline}: {' '.join(_failure(o.error)[1].splitlines())}" if o.error else ""))
    return "\n".join(lines)


def _access(settings, action: str) -> int:
    from lakeforge import access, config

    roles = config.load_access(settings)
    if action == "show":
        access.check(settings, "access show")
        print(access.show(roles))
        return 0
    changes = access.sync(settings, roles, config.available_pipelines())
    if changes:
        from lakeforge import runs
        from lakeforge.spark import build_session

        spark = build_session(settings)
        try:
            runs.record_permission_changes(spark, settings.paths.lakehouse, access.current_user(settings), changes)
        finally:
            spark.stop()
    print(f"access synced: {len(roles.users)} users, {len(changes)} permission changes")
    return 0


def _print(summary: dict) -> None:
    for key, value in summary.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    raise SystemExit(main())
