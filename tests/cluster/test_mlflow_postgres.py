"""MLflow on PostgreSQL: jobs on the Spark cluster log and register through the tracking server over
HTTP, the registry round-trips over its REST API, and nightly scoring loads @champion from it."""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

MODEL = "churn"


def champion(server) -> dict:
    return server.api("registered-models/alias", {"name": MODEL, "alias": "champion"})["model_version"]


def set_alias(server, alias: str, version: str) -> None:
    server.api("registered-models/alias", body={"name": MODEL, "alias": alias, "version": version}, method="POST")


def register_copy(server, of: dict) -> str:
    """Register a new version of an existing version's model, over HTTP, and wait until it is READY."""
    created = server.api("model-versions/create", body={"name": MODEL, "source": f"models:/{MODEL}/{of['version']}",
                                                        "description": "registered over HTTP by the cluster test"})
    version = created["model_version"]["version"]
    deadline = time.monotonic() + 60
    while server.api("model-versions/get", {"name": MODEL, "version": version})["model_version"]["status"] != "READY":
        assert time.monotonic() < deadline, f"version {version} never became READY"
        time.sleep(0.5)
    return version


def test_training_on_the_cluster_is_logged_and_registered_in_postgresql(trained, postgres, mlflow_server):
    import psycopg

    mv = champion(mlflow_server)
    assert mv["status"] == "READY"
    run = mlflow_server.api("runs/get", {"run_id": mv["run_id"]})["run"]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert 0.5 < metrics["auc"] <= 1.0, metrics
    assert {"lakeforge.config_hash", "lakeforge.input.silver.orders", "lakeforge.input.gold.churn_features"} <= set(tags)
    experiment = mlflow_server.api("experiments/get", {"experiment_id": run["info"]["experiment_id"]})["experiment"]
    assert experiment["name"] == f"lakeforge/{MODEL}"
    # Artifacts went where the job's config said (the folder the server was given), model included.
    artifacts = Path(urllib.parse.urlparse(run["info"]["artifact_uri"]).path)
    assert artifacts.is_relative_to(mlflow_server.artifact_root), (artifacts, mlflow_server.artifact_root)
    assert list(mlflow_server.artifact_root.rglob("MLmodel")), "no logged model under the artifact root"

    # Tracking and registry data live in PostgreSQL, not in a file next to the job.
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, dbname=postgres.database) as conn:
        versions = {str(v): s for v, s in conn.execute(
            "SELECT version, status FROM model_versions WHERE name = %s", (MODEL,))}
        stored_auc = conn.execute("SELECT value FROM metrics WHERE run_uuid = %s AND key = 'auc'",
                                  (mv["run_id"],)).fetchone()[0]
        aliases = {a: str(v) for a, v in conn.execute(
            "SELECT alias, version FROM registered_model_aliases WHERE name = %s", (MODEL,))}
    assert versions[mv["version"]] == "READY"
    assert stored_auc == pytest.approx(metrics["auc"])
    assert aliases["champion"] == mv["version"]
    assert not list(trained.root.rglob("mlflow.db")), "a job wrote a local sqlite store instead of using the server"


def test_registry_round_trip_over_http(trained, mlflow_server):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    before = champion(mlflow_server)
    version = register_copy(mlflow_server, before)
    set_alias(mlflow_server, "challenger", version)
    try:
        got = mlflow_server.api("registered-models/alias", {"name": MODEL, "alias": "challenger"})["model_version"]
        assert (got["version"], got["run_id"]) == (version, before["run_id"])  # same model, same training run
        assert client.get_model_version_by_alias(MODEL, "challenger").version == version
        assert client.get_model_version_by_alias(MODEL, "champion").version == before["version"]  # untouched
    finally:
        client.delete_registered_model_alias(MODEL, "challenger")
    aliases = mlflow_server.api("registered-models/get", {"name": MODEL})["registered_model"].get("aliases", [])
    assert "challenger" not in [a["alias"] for a in aliases] and "champion" in [a["alias"] for a in aliases]


def test_nightly_scoring_on_the_cluster_loads_the_champion_from_the_server(night, trained):
    """The rerun scored with the version @champion pointed at (moved over HTTP); the failed run had tried
    the version @champion pointed at then, and none of its predictions were written."""
    tonight = trained.predictions_for(night.score_date)
    assert set(tonight["model_version"]) == {int(night.champion_version)}
    assert set(tonight["model_name"]) == {MODEL}
    assert set(tonight["customer_id"]) == trained.churn_population(night.score_date)
    assert tonight["prediction"].between(0, 1).all()
    predictions = trained.read("gold.churn_predictions")
    assert int(night.failing_version) not in set(predictions["model_version"])
