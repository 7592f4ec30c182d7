"""The whole demo through the `lakeforge` command, twice, checked with an independent Delta reader.

The tests of the two whole-demo runs are marked `story` (they run in `make test`, not in `make test-fast`); the
command's quick refusals are not."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def lakeforge(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "LAKEFORGE_CONF_DIR": str(REPO / "conf"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "lakeforge", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=900)


def delta_rows(lakehouse: Path, name: str, where=None, version: int | None = None) -> int:
    """Row count read by delta-rs (no Spark), optionally as of a version and filtered with a pandas predicate."""
    layer, table = name.split(".")
    frame = DeltaTable(str(lakehouse / layer / table), version=version).to_pandas()
    return int(where(frame).sum()) if where else len(frame)


def summary_counts(stdout: str) -> dict[str, int]:
    """`table  rows` lines of the demo summary (counted by Spark)."""
    return {m[1]: int(m[2].replace(",", "")) for m in re.finditer(r"^  (\w+\.\w+)\s+([\d,]+)$", stdout, re.M)}


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory, tiny_demo):
    """Run the tiny demo twice in one folder (the embedded default layout under ./var)."""
    cwd = tmp_path_factory.mktemp("demo")
    size = [f"--{k}={v}" for k, v in tiny_demo.items()]
    first = lakeforge(cwd, "demo", "--env", "test", *size)
    assert first.returncode == 0, first.stderr[-3000:]
    snapshot = {name: DeltaTable(str(p)).version() for name, p in _tables(cwd / "var" / "lakehouse")}
    second = lakeforge(cwd, "demo", "--env", "test", *size)
    assert second.returncode == 0, second.stderr[-3000:]
    return cwd, first, second, snapshot


def _tables(lakehouse: Path):
    return [(f"{p.parent.parent.name}.{p.parent.name}", p.parent) for p in sorted(lakehouse.glob("*/*/_delta_log"))]


@pytest.mark.story
def test_demo_accounts_for_every_landing_row(demo_runs):
    cwd, first, _, _ = demo_runs
    lakehouse = cwd / "var" / "lakehouse"
    manifest = json.loads((cwd / "var" / "landing" / "_manifest.json").read_text())
    orders, customers = manifest["orders"], manifest["customers"]
    assert delta_rows(lakehouse, "bronze.orders") == orders["valid_lines"]
    assert delta_rows(lakehouse, "ops.quarantine", lambda f: f.source == "orders") == (
        orders["malformed_lines"] + orders["null_customer_id"])
    assert orders["lines"] == orders["valid_lines"] + orders["malformed_lines"] + orders["null_customer_id"]
    assert delta_rows(lakehouse, "silver.orders") == orders["distinct_valid_orders"]
    assert delta_rows(lakehouse, "bronze.customers") == customers["rows"]
    assert delta_rows(lakehouse, "silver.customers") == customers["distinct_customers"]
    assert delta_rows(lakehouse, "silver.stores") == manifest["stores"]["rows"]
    assert delta_rows(lakehouse, "bronze.deliveries") == manifest["deliveries"]["rows"]
    assert delta_rows(lakehouse, "silver.staffing") == manifest["staffing"]["rows"]
    ledger = DeltaTable(str(lakehouse / "ops" / "ingested_files")).to_pandas()
    sources = ("orders", "customers", "stores", "deliveries", "staffing")
    assert len(ledger) == sum(manifest[source]["files"] for source in sources)
    assert (ledger.rows_read == ledger.rows_kept + ledger.rows_quarantined + ledger.rows_dropped).all()
    # Every pipeline trained, with its metric beside the naive answers on the same holdout rows.
    assert re.search(r"^  churn +version 1 @champion +holdout auc 0\.\d{3} \(higher is better; naive: base rate "
                     r"0\.500\)$", first.stdout, re.M), first.stdout
    assert re.search(r"^  demand +version 1 @\w+ +holdout mae \d+\.\d{3} \(lower is better; naive: mean "
                     r"\d+\.\d{3}, last week \d+\.\d{3}\)$", first.stdout, re.M), first.stdout
    assert re.search(r"^  delivery_time +version 1 @\w+ +holdout mae \d+\.\d{3} \(lower is better; "
                     r"naive: mean \d+\.\d{3}\)$", first.stdout, re.M), first.stdout


@pytest.mark.story
def test_every_table_reads_the_same_in_delta_rs_as_in_spark(demo_runs):
    cwd, first, _, after_first = demo_runs
    spark_counts = summary_counts(first.stdout)
    lakehouse = cwd / "var" / "lakehouse"
    assert set(spark_counts) == set(after_first) == {name for name, _ in _tables(lakehouse)}
    for name, rows in spark_counts.items():  # as of the first run's end: the second run appended to ops.runs
        assert delta_rows(lakehouse, name, version=after_first[name]) == rows, name


@pytest.mark.story
def test_predictions_cover_the_population_with_their_stamps(demo_runs):
    cwd, *_ = demo_runs
    lakehouse = cwd / "var" / "lakehouse"
    predictions = DeltaTable(str(lakehouse / "gold" / "churn_predictions")).to_pandas()
    features = DeltaTable(str(lakehouse / "gold" / "churn_features")).to_pandas()
    score_date = predictions.score_date.unique()
    assert len(score_date) == 1
    population = features[(features.as_of_date == score_date[0]) & (features.orders_90d > 0)]
    assert sorted(predictions.customer_id) == sorted(population.customer_id)
    assert list(predictions.columns) == ["customer_id", "prediction", "score_date", "model_name",
                                         "model_version", "scored_at", "run_id"]
    assert predictions.prediction.between(0, 1).all()
    assert set(predictions.model_name) == {"churn"}
    runs = DeltaTable(str(lakehouse / "ops" / "runs")).to_pandas()
    assert set(predictions.run_id) <= set(runs[runs.job == "score"].run_id)


@pytest.mark.story
def test_second_run_duplicates_nothing_and_keeps_one_champion(demo_runs):
    cwd, first, second, snapshot = demo_runs
    # The ledgers grow with every run, by design, as does the per-group manifest (one row per store and version).
    ledgers = {"ops.runs": 0, "ops.audit": 0, "gold.demand_models": 0}
    assert summary_counts(second.stdout) | ledgers == summary_counts(first.stdout) | ledgers
    lakehouse = cwd / "var" / "lakehouse"
    for name in ("bronze.orders", "silver.orders", "bronze.customers", "ops.quarantine", "ops.ingested_files"):
        layer, table = name.split(".")
        assert DeltaTable(str(lakehouse / layer / table)).version() == snapshot[name], f"{name} was rewritten"
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{cwd / 'var' / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    versions = client.search_model_versions("name = 'churn'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert summary_counts(second.stdout)["gold.demand_models"] == 2 * summary_counts(first.stdout)["gold.demand_models"]
    assert int(client.get_model_version_by_alias("churn", "champion").version) == 2
    # One champion, on the newer version (search results do not carry aliases in MLflow 3: ask the model).
    assert {k: int(v) for k, v in client.get_registered_model("churn").aliases.items()} == {"champion": 2}
    assert client.get_model_version("churn", "1").aliases == []
    ledger = DeltaTable(str(lakehouse / "ops" / "runs")).to_pandas()  # append-only: a start row and an end row
    ended = ledger[ledger.status != "running"]
    assert sorted(ended.run_id) == sorted(ledger[ledger.status == "running"].run_id)  # every run that started ended
    assert (ended.status == "succeeded").all()
    # Per run and pipeline: the demo's ingest, then train, and the nightly features, score, monitor. The nightly
    # ingest runs for churn and delivery_time (deliveries, staffing) only: demand's sources, stores and orders, were
    # churn's that night.
    assert sorted(ended.job.value_counts().items()) == [("features", 6), ("ingest", 10), ("monitor", 6), ("score", 6),
                                                       ("train", 6)]
    assert ended[ended.job == "ingest"].pipeline.value_counts().to_dict() == {"churn": 4, "delivery_time": 4,
                                                                              "demand": 2}


@pytest.mark.story
def test_status_queries_tables_by_name_from_another_process(demo_runs):
    cwd, first, *_ = demo_runs
    status = lakeforge(cwd, "status", "--env", "test")
    assert status.returncode == 0, status.stderr[-2000:]
    counts = summary_counts(first.stdout)
    line = next(ln for ln in status.stdout.splitlines() if ln.startswith("silver.orders "))
    assert f"{counts['silver.orders']:,}" in line
    assert "champion: version 2" in status.stdout


@pytest.mark.story
def test_every_folder_the_demo_made_is_marked_as_this_projects(demo_runs, monkeypatch):
    """What `demo --fresh` may delete: each place the demo wrote carries this project's marker, nothing refuses."""
    from lakeforge import config, ownership

    cwd = demo_runs[0]
    monkeypatch.chdir(cwd)
    settings = config.load_settings("test", directory=REPO / "conf")
    places = ownership.managed(settings)
    assert sorted(places) == ["mlflow.artifact_root", "mlflow.tracking_uri", "paths.lakehouse", "paths.landing",
                              "paths.model_cache", "paths.reports"]
    for key, path in places.items():
        assert path.exists() and path.is_relative_to(cwd / "var"), (key, path)
        assert ownership.refusal(path, settings.project, cwd, is_file=key == ownership.SQLITE) is None, key
    assert not (cwd / "var" / ownership.MARKER).exists()  # var/ itself was made on the way, not claimed


def test_missing_jars_fail_fast_with_the_fix(tmp_path):
    result = lakeforge(tmp_path, "ingest", "--pipeline", "churn", "--env", "test",
                       env={"LAKEFORGE_JAR_CACHE": str(tmp_path / "none")})
    assert result.returncode == 2
    assert "Delta Lake jars are not cached" in result.stderr and "make setup" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_pipeline_is_one_clear_line(tmp_path):
    result = lakeforge(tmp_path, "train", "--pipeline", "fraud", "--env", "test")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"lakeforge train: error: unknown pipeline 'fraud': no file {REPO / 'conf' / 'pipelines' / 'fraud.yaml'} "
        f"(pipelines here: churn, delivery_time, demand)"]
