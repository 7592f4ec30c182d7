"""The shared catalog's Spark settings (no Spark started): the embedded default sets none, a metastore URL sets
the Hive client's, with the whole schema named at start-up and the JDBC driver appended to the class path."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakeforge import jars, spark

URL = "jdbc:postgresql://postgres:5432/mlflow"


def test_the_embedded_default_sets_no_metastore(tmp_path, monkeypatch):
    monkeypatch.setenv(spark.METASTORE_PASSWORD, "not-used")
    assert spark.metastore_conf(None, "lakeforge", tmp_path) == {}
    assert spark.metastore_class_path(None) == ""


def test_every_hive_model_class_is_created_when_the_session_starts(tmp_path, monkeypatch):
    monkeypatch.delenv(spark.METASTORE_PASSWORD, raising=False)
    conf = spark.metastore_conf(URL, "mlflow", tmp_path)
    classes = conf.pop("spark.hadoop.datanucleus.autoStartClassNames").split(",")
    assert conf == {
        "spark.sql.catalogImplementation": "hive",
        "spark.hadoop.javax.jdo.option.ConnectionURL": URL,
        "spark.hadoop.javax.jdo.option.ConnectionDriverName": "org.postgresql.Driver",
        "spark.hadoop.javax.jdo.option.ConnectionUserName": "mlflow",
        "spark.hadoop.datanucleus.schema.autoCreateAll": "true",
        "spark.hadoop.datanucleus.autoStartMechanism": "Classes",
        "spark.hadoop.hive.metastore.schema.verification": "false",
        "spark.hadoop.hive.metastore.schema.verification.record.version": "true",
        "spark.sql.warehouse.dir": str(tmp_path / "_warehouse"),
    }
    # Hive 2.3's mapping (package.jdo): 30 classes, tables and the schema version among them.
    assert len(classes) == len(set(classes)) == 30
    model = "org.apache.hadoop.hive.metastore.model."
    assert {f"{model}MDatabase", f"{model}MTable", f"{model}MVersionTable", f"{model}MFunction"} <= set(classes)


def test_the_password_comes_from_the_environment_only(tmp_path, monkeypatch):
    monkeypatch.setenv(spark.METASTORE_PASSWORD, "from-the-env")
    conf = spark.metastore_conf(URL, "mlflow", tmp_path)
    assert conf["spark.hadoop.javax.jdo.option.ConnectionPassword"] == "from-the-env"
    assert "from-the-env" not in conf["spark.hadoop.javax.jdo.option.ConnectionURL"]


def test_the_jdbc_driver_is_appended_to_the_class_path_not_put_first():
    cached = jars.cached_jars(jars.POSTGRES_JDBC_PACKAGE)
    assert spark.metastore_class_path(URL).split(":") == [str(jar) for jar in cached]
    assert any(Path(jar).name.startswith("org.postgresql_postgresql-") for jar in cached)
    assert "spark.driver.extraClassPath" not in spark.metastore_conf(URL, "mlflow", Path("/lake"))


def test_forgetting_tables_is_refused_on_a_shared_catalog():
    """forget_tables drops whole layer databases: harmless in a session's own catalog, a loss in the team's."""
    from lakeforge import lake

    class Conf:
        def __init__(self, kind):
            self.kind = kind

        def get(self, key, default=None):
            return self.kind if key == "spark.sql.catalogImplementation" else default

    class Session:
        def __init__(self, kind):
            self.conf, self.dropped = Conf(kind), []

        def sql(self, statement):
            self.dropped.append(statement)

    shared = Session("hive")
    with pytest.raises(RuntimeError, match="refused on a shared"):
        lake.forget_tables(shared)
    assert shared.dropped == []
    own = Session("in-memory")
    lake.forget_tables(own)
    assert own.dropped == [f"DROP DATABASE IF EXISTS {layer} CASCADE" for layer in lake.LAYERS]
