"""The shared catalog: a lakeforge session registers a table in Spark's Hive metastore on PostgreSQL, and a
second Spark session that never ran lakeforge code (a plain PySpark script, another process) reads it by name,
with its description."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.cluster

WRITER = """
import sys
from lakeforge import config, lake
from lakeforge.spark import build_session
settings = config.load_settings("test", sys.argv[1:])
spark = build_session(settings)
rows = spark.createDataFrame([("c1", 0.25), ("c2", 0.75)], "customer_id string, prediction double")
lake.append(spark, rows, settings.paths.lakehouse, "gold.churn_predictions",
            properties={"lakeforge.description": "Nightly churn probabilities", "lakeforge.owner": "data-platform",
                        "lakeforge.source": "lakeforge score"})
print("registered", lake.register_tables(spark, settings.paths.lakehouse))
spark.stop()
"""

# Plain PySpark: the Delta jars and the metastore settings any team member's session would be given.
READER = """
import json, sys
from pyspark.sql import SparkSession
delta_jars, driver_jars, url, user, warehouse, notebook_table = sys.argv[1:7]
spark = (SparkSession.builder.master("local[1]").appName("a notebook")
         .config("spark.jars", delta_jars).config("spark.driver.extraClassPath", driver_jars)
         .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
         .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
         .config("spark.sql.catalogImplementation", "hive")
         .config("spark.sql.warehouse.dir", warehouse)
         .config("spark.hadoop.javax.jdo.option.ConnectionURL", url)
         .config("spark.hadoop.javax.jdo.option.ConnectionDriverName", "org.postgresql.Driver")
         .config("spark.hadoop.javax.jdo.option.ConnectionUserName", user)
         .enableHiveSupport().getOrCreate())
# A table of the notebook's own, outside the lakehouse: `lakeforge status` finds it through the catalog only.
spark.sql(f"CREATE TABLE gold.notebook_scores USING DELTA LOCATION '{notebook_table}' "
          "COMMENT 'Scores from a notebook' AS SELECT 'c1' AS customer_id, 0.5 AS score")
properties = {r["key"]: r["value"] for r in spark.sql("SHOW TBLPROPERTIES gold.churn_predictions").collect()}
rows = sorted(tuple(r) for r in spark.table("gold.churn_predictions").collect())
print("RESULT=" + json.dumps({"rows": rows, "description": properties.get("lakeforge.description"),
                              "owner": properties.get("lakeforge.owner"), "source": properties.get("lakeforge.source"),
                              "tables": sorted(t.name for t in spark.catalog.listTables("gold"))}))
spark.stop()
"""


def test_a_session_without_lakeforge_reads_a_table_by_name_with_its_description(postgres, commands, tmp_path):
    import psycopg

    from lakeforge import jars

    with psycopg.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, dbname=postgres.database,
                         autocommit=True) as conn:
        conn.execute("CREATE DATABASE metastore")
    url = f"jdbc:postgresql://127.0.0.1:{postgres.port}/metastore"
    lakehouse = tmp_path / "lakehouse"
    overrides = [f"paths.lakehouse={lakehouse}", f"paths.landing={tmp_path / 'landing'}",
                 f"paths.reports={tmp_path / 'reports'}", f"spark.metastore_url={url}",
                 f"spark.metastore_user={postgres.user}"]
    env = commands.base_env()
    wrote = subprocess.run([sys.executable, "-c", WRITER, *overrides], capture_output=True, text=True, timeout=600,
                           cwd=tmp_path, env=env)
    assert wrote.returncode == 0, wrote.stderr[-3000:]
    assert "registered ['gold.churn_predictions']" in wrote.stdout

    reader_dir = tmp_path / "elsewhere"  # no lakeforge settings, no lakehouse registration: only the catalog
    reader_dir.mkdir()
    args = [",".join(map(str, jars.cached_jars())), ":".join(map(str, jars.cached_jars(jars.POSTGRES_JDBC_PACKAGE))),
            url, postgres.user, str(lakehouse / "_warehouse"), str(reader_dir / "notebook_scores")]
    read = subprocess.run([sys.executable, "-c", READER, *args], capture_output=True, text=True, timeout=600,
                          cwd=reader_dir, env={k: v for k, v in env.items() if k != "LAKEFORGE_CONF_DIR"})
    assert read.returncode == 0, read.stderr[-3000:]
    result = json.loads(next(line for line in read.stdout.splitlines() if line.startswith("RESULT="))[7:])
    assert result == {"rows": [["c1", 0.25], ["c2", 0.75]], "description": "Nightly churn probabilities",
                      "owner": "data-platform", "source": "lakeforge score",
                      "tables": ["churn_predictions", "notebook_scores"]}
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, dbname="metastore") as conn:
        stored = conn.execute('SELECT "TBL_NAME" FROM "TBLS" ORDER BY 1').fetchall()
        version = conn.execute('SELECT "SCHEMA_VERSION" FROM "VERSION"').fetchall()
    assert stored == [("churn_predictions",), ("notebook_scores",)]  # the metastore's own table in PostgreSQL
    assert version == [("2.3.0",)]  # recorded by lakeforge's session: the reader verified it (Hive's default)

    # `lakeforge status` lists the catalog's tables: the notebook's too, which is nowhere under the lakehouse.
    status = subprocess.run([sys.executable, "-m", "lakeforge", "status", "--env", "test",
                             *[arg for pair in overrides for arg in ("--set", pair)],
                             "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr[-3000:]
    tables = {line.split()[0]: line for line in status.stdout.splitlines() if line.startswith("gold.")}
    assert sorted(tables) == ["gold.churn_predictions", "gold.notebook_scores"], status.stdout
    assert tables["gold.churn_predictions"].split()[1:3] == ["1", "2"], tables  # created, then appended: 2 rows
    assert tables["gold.churn_predictions"].endswith("Nightly churn probabilities"), tables
    assert tables["gold.notebook_scores"].split()[1:3] == ["0", "1"], tables
    assert tables["gold.notebook_scores"].endswith("Scores from a notebook"), tables
