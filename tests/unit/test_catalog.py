"""The catalog: every table's name, partitioning and properties, as the public contract names them (no Spark)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lakeforge import catalog, config, features, ingest, lake, scoring
from lakeforge.errors import ConfigError

REPO_CONF = Path(__file__).resolve().parents[2] / "conf"


def test_a_pipelines_tables_are_named_as_the_contract_says():
    churn = config.load_pipeline("churn")
    assert features.features_table(churn) == "gold.churn_features"
    assert features.features_table(churn, "0123456789") == "gold.churn_features_0123456789"
    assert features.features_table(churn, features.feature_version(churn)) == "gold.churn_features"
    assert scoring.predictions_table("churn") == "gold.churn_predictions"
    assert catalog.models("demand") == "gold.demand_models"
    assert features.label_events_table(churn) == "silver.orders"
    assert features.input_tables(churn) == ["bronze.customers", "silver.orders"]
    assert ingest.ingest_tables(churn.sources) == [
        "bronze.stores", "silver.stores", "bronze.customers", "silver.customers", "bronze.orders", "silver.orders",
        "ops.quarantine", "ops.quality", "ops.ingested_files"]
    assert (catalog.RUNS, catalog.AUDIT, catalog.MONITORING, catalog.QUALITY, catalog.QUARANTINE,
            catalog.INGESTED_FILES) == ("ops.runs", "ops.audit", "ops.monitoring", "ops.quality", "ops.quarantine",
                                        "ops.ingested_files")
    assert lake.table_path(Path("/lh"), scoring.predictions_table("churn")) == Path("/lh/gold/churn_predictions")


def test_a_pipelines_tables_have_their_partitioning_and_properties():
    churn = config.load_pipeline("churn")
    assert catalog.features_table("churn", churn.keys, "lakeforge.demo.churn.customer_activity").options(
        "team-x") == {"partition_by": ["as_of_date"], "properties": {
            "lakeforge.description": "churn features, one row per customer_id per as_of_date",
            "lakeforge.owner": "team-x", "lakeforge.source": "lakeforge.demo.churn.customer_activity"}}
    assert catalog.predictions_table("churn").options("team-x") == {"partition_by": ["score_date"], "properties": {
        "lakeforge.description": "churn predictions by score_date", "lakeforge.owner": "team-x",
        "lakeforge.source": "models:/churn@champion"}}
    assert catalog.models_table("demand", "store_id").options("team-x") == {"partition_by": None, "properties": {
        "lakeforge.description": "demand: one row per store_id per model version (rows, holdout metrics, "
                                 "fallback used)",
        "lakeforge.owner": "team-x", "lakeforge.source": "models:/demand"}}


def test_source_and_ops_tables_have_their_properties():
    bronze, silver = catalog.source_tables("orders", "Orders, one JSON line each", "/landing/orders", "`order_id`")
    assert (bronze.name, silver.name) == ("bronze.orders", "silver.orders")
    assert bronze.properties("team-x") == silver.properties("team-x") == {
        "lakeforge.description": "Orders, one JSON line each", "lakeforge.owner": "team-x",
        "lakeforge.source": "/landing/orders", "delta.dataSkippingStatsColumns": "`order_id`"}
    assert catalog.source_tables("stores", None, "/landing/stores", "`store_id`")[0].description == \
        "stores landing files"
    # lakeforge's own ledgers are owned by lakeforge whatever the project's owner; the other ops tables by it
    assert catalog.RUNS_TABLE.properties("team-x")["lakeforge.owner"] == "lakeforge"
    assert catalog.AUDIT_TABLE.properties("team-x")["lakeforge.owner"] == "lakeforge"
    assert catalog.MONITORING_TABLE.options("team-x") == {"partition_by": None, "properties": {
        "lakeforge.description": "Drift, matured performance, quality trend and retrain decisions per pipeline "
                                 "and monitor date",
        "lakeforge.owner": "team-x", "lakeforge.source": "lakeforge monitor"}}
    assert [t.properties("team-x")["lakeforge.owner"] for t in (
        catalog.QUALITY_TABLE, catalog.QUARANTINE_TABLE, catalog.INGESTED_FILES_TABLE)] == ["team-x"] * 3


@pytest.mark.parametrize("name", ["Churn", "my-pipeline", "2churn", "churn.v2", "churn features", ""])
def test_a_name_that_cannot_name_a_table_is_refused(name):
    with pytest.raises(ConfigError, match=rf"pipeline name '{name}' cannot name a table: use lower-case letters, "
                                          rf"digits and _, starting with a letter .*rename "
                                          rf"conf/pipelines/{name}\.yaml"):
        catalog.features(name)
    with pytest.raises(ConfigError, match=rf"source name '{name}' cannot name a table"):
        catalog.silver(name)


def test_a_pipeline_file_whose_name_cannot_name_a_table_is_refused_when_loaded(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(REPO_CONF, conf)
    shutil.copy(conf / "pipelines" / "churn.yaml", conf / "pipelines" / "Churn-2.yaml")
    with pytest.raises(ConfigError, match=r"pipeline name 'Churn-2' cannot name a table.*rename "
                                          r"conf/pipelines/Churn-2\.yaml"):
        config.load_pipeline("Churn-2", None, conf)
    assert config.load_pipeline("churn", None, conf).name == "churn"
