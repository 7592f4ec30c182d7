"""`run nightly` without --pipeline on a user's own project of two pipelines over one source
(tests/fixtures/parcels.py): both run in the same session, the shared source is ingested and maintained once, and
a pipeline whose feature function raises fails alone, named in the summary and the exit code."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakeforge import cli, config, lake, registry, runs, stages

import parcels  # tests/fixtures (pytest's pythonpath): the user's own module, known to no lakeforge code

pytestmark = [pytest.mark.spark, pytest.mark.slow]

DAYS = 12
START = dt.date(2026, 3, 1)
MODEL = "{params: {n_estimators: 5, num_leaves: 3, min_child_samples: 5}}"
GOOD = parcels.pipeline(parcels.LATE, MODEL, "[]")
# Sorted first: the night of the pipeline after it must not depend on it.
BROKEN = GOOD.replace("function: parcels.region_recent", "function: parcels.region_recent_broken")


@pytest.fixture(scope="module")
def conf(user_conf) -> Path:
    return user_conf({"parcels": parcels.SOURCE}, {"a_broken": BROKEN, "b_late": GOOD}, "parcels.py")


def test_every_pipeline_runs_in_turn_and_a_failing_one_stops_no_other(spark, conf, settings_at, tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setenv("LAKEFORGE_CONF_DIR", str(conf))
    settings = settings_at(tmp_path / "landing", tmp_path / "lakehouse", tmp_path, tmp_path / "reports")
    settings = settings.model_copy(update={"maintenance": settings.maintenance.model_copy(update={"every_days": 1})})
    landing = settings.paths.landing / "parcels"
    parcels.generate(landing, DAYS, START)
    lake.forget_tables(spark)
    late = stages.Context(settings, config.load_pipeline("b_late"), spark_factory=lambda _: spark)
    stages.ingest(late)
    assert stages.train(late)["alias"] == registry.CHAMPION
    # The night brings one new file of the source both pipelines read.
    night = START + dt.timedelta(days=DAYS)
    parcels.day_frame(night, 30, 5).to_csv(landing / f"parcels_{night}.csv", index=False)
    before = {r["run_id"] for r in runs.read_runs(spark, settings.paths.lakehouse).select("run_id").collect()}

    code = cli.nightly_every_pipeline(settings, [], spark_factory=lambda _: spark)

    assert code == 1  # the user's exception in a Python worker: a Spark failure
    # The user's module as the Python worker ran it (its copy of the file Spark shipped), at the line that raised.
    line = parcels.region_recent_broken.__code__.co_firstlineno + 2
    where = f"raised in region_recent_broken, <parcels.py>, line {line}"
    failure = (f"failed: KeyError: 'region_code' ({where}) (rerun with --debug for the traceback; the run is "
               f"recorded in ops.runs)")
    out, err = (re.sub(r", /\S*/parcels\.py, line", ", <parcels.py>, line", text) for text in capsys.readouterr())
    assert out.split("nightly: ")[-1].splitlines() == [
        "1 of 2 pipelines done, 1 failed (rerun one: lakeforge run nightly --pipeline NAME)",
        f"  a_broken  failed  steps done: ingest, maintain; a_broken: {failure}",
        "  b_late    done    steps done: ingest, maintain, features, score, monitor"]
    assert f"lakeforge run: pipeline a_broken: {failure}" in err.splitlines()
    tonight = (runs.read_runs(spark, settings.paths.lakehouse).where(~F.col("run_id").isin(*before))
               .orderBy("started_at").select("pipeline", "job", "status", "outputs").collect())
    # b_late ingests nothing: a_broken loaded the night's file of their one source. Its maintenance is due too,
    # and finds every table it would compact (the source's and the ops tables ingest writes) maintained: it is
    # recorded (its maintenance.every_days count from tonight) and writes nothing.
    assert [tuple(r[:3]) for r in tonight] == [
        ("a_broken", "ingest", "succeeded"), ("a_broken", "maintain", "succeeded"), ("a_broken", "features", "failed"),
        ("b_late", "maintain", "succeeded"), ("b_late", "features", "succeeded"), ("b_late", "score", "succeeded"),
        ("b_late", "monitor", "succeeded")]
    maintained = {r["pipeline"]: sorted(r["outputs"]) for r in tonight if r["job"] == "maintain"}
    assert maintained == {"a_broken": ["bronze.parcels", "ops.ingested_files", "ops.quality", "silver.parcels"],
                          "b_late": []}
    files = lake.read(spark, settings.paths.lakehouse, "ops.ingested_files").where(
        F.col("file").endswith(f"parcels_{night}.csv")).count()
    assert files == 1
    predictions = lake.read(spark, settings.paths.lakehouse, "gold.b_late_predictions")
    assert predictions.where(F.col("score_date") == F.lit(night)).count() == 30
