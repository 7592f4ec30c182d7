"""Damaged tables: `status` flags them, `doctor` names each problem and how to recover, exit codes as documented.

Three damages as an operator or a bad disk leaves them: the newest commit file of the log deleted (Spark then
reads the previous version as if nothing happened, delta-rs refuses the table), a data file of the current
version deleted (Delta still counts its rows from the log's statistics), and a commit in the middle deleted
(the log does not load). Each test checks the tables afterwards with delta-rs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import deltalake
import pytest
from py4j.protocol import Py4JJavaError
from pyspark.sql import SparkSession

from lakeforge import cli, lake, stages
from lakeforge.demo.summary import format_status

pytestmark = pytest.mark.spark

SCHEMA = "id string, v int"


def commits(spark, lakehouse, name: str, n: int) -> None:
    """Table `name` with n rows, one commit each: versions 1..n (version 0 creates it)."""
    for i in range(n):
        lake.append(spark, spark.createDataFrame([(f"r{i}", i)], SCHEMA), lakehouse, name)


def added_in(spark, lakehouse, name: str, version: int) -> list[str]:
    """The data files (relative to the table folder) version `version` added."""
    path = str(lake.table_path(lakehouse, name))

    def files(v):
        table = spark.read.format("delta").option("versionAsOf", v).load(path)
        return {f.rsplit("/", 1)[-1] for f in table.inputFiles()}

    return sorted(files(version) - files(version - 1))


def rows_by_delta_rs(lakehouse, name: str) -> list[tuple]:
    frame = deltalake.DeltaTable(str(lake.table_path(lakehouse, name))).to_pandas()
    return sorted(frame.itertuples(index=False, name=None))


@pytest.fixture(scope="module")
def damaged_once(spark, tmp_path_factory) -> tuple[Path, str]:
    """gold.fine (healthy), gold.lost (newest commit file gone), gold.holed (a data file of the current version
    gone) and gold.gap (a commit in the middle gone); each has versions 0..4. Made once; tests take copies."""
    lakehouse = tmp_path_factory.mktemp("damaged") / "lakehouse"
    lake.forget_tables(spark)
    for name in ("gold.fine", "gold.lost", "gold.holed", "gold.gap"):
        commits(spark, lakehouse, name, 4)
    (lake.table_path(lakehouse, "gold.lost") / "_delta_log" / f"{4:020d}.json").unlink()
    [hole] = added_in(spark, lakehouse, "gold.holed", 4)
    (lake.table_path(lakehouse, "gold.holed") / hole).unlink()
    (lake.table_path(lakehouse, "gold.gap") / "_delta_log" / f"{2:020d}.json").unlink()
    lake.forget_tables(spark)
    return lakehouse, hole


@pytest.fixture
def damaged(lakehouse, damaged_once):
    """This test's copy of the damaged lakehouse (Delta logs hold relative paths), and the missing file's name."""
    template, hole = damaged_once
    shutil.copytree(template, lakehouse)
    return {"hole": hole}


def test_status_flags_damaged_tables_instead_of_showing_their_figures(spark, lakehouse, damaged, settings_at,
                                                                      tmp_path, churn):
    ctx = stages.Context(settings_at(tmp_path / "landing", lakehouse, tmp_path), churn,
                         spark_factory=lambda _: spark)
    status = stages.status(ctx)
    tables = {t["table"]: t for t in status["tables"]}
    assert (tables["gold.fine"]["health"], tables["gold.fine"]["version"], tables["gold.fine"]["rows"]) == ("ok", 4, 4)
    assert (tables["gold.lost"]["version"], tables["gold.lost"]["rows"]) == (3, None)
    assert tables["gold.lost"]["health"] == (
        f"commit(s) 4 missing from _delta_log while their {4:020d}.crc remain: Spark reads version 3 as if they "
        f"never happened, other readers (delta-rs) refuse the table")
    assert (tables["gold.holed"]["version"], tables["gold.holed"]["rows"]) == (4, None)
    assert tables["gold.holed"]["health"] == f"1 data file(s) of version 4 missing: {damaged['hole']}"
    assert tables["gold.gap"]["version"] is None
    assert tables["gold.gap"]["health"].startswith(
        "its Delta log does not load: org.apache.spark.sql.delta.DeltaIllegalStateException: "
        "[DELTA_VERSIONS_NOT_CONTIGUOUS] Versions (0, 1, 3, 4) are not contiguous.")
    assert tables["gold.gap"]["health"].endswith("(commits 2 missing from _delta_log)")
    text = format_status(status).splitlines()
    assert [line.split()[:4] for line in text if line.startswith("gold.")] == [
        ["gold.fine", "4", "4", status["tables"][0]["last_write"].strftime("%Y-%m-%d")],
        ["gold.gap", "-", "-", "-"], ["gold.holed", "4", "-", "-"], ["gold.lost", "3", "-", "-"]]
    assert sum("DAMAGED:" in line and line.endswith("(run `lakeforge doctor`)") for line in text) == 3


def doctor(monkeypatch, capsys, repo, lakehouse) -> tuple[int, list[str]]:
    """`lakeforge doctor` in-process on the test session (its stop() is a no-op here, the session is shared)."""
    monkeypatch.setattr(SparkSession, "stop", lambda self: None)
    code = cli.main(["doctor", "--env", "test", "--set", f"paths.lakehouse={lakehouse}"])
    return code, capsys.readouterr().out.splitlines()


def test_doctor_names_each_problem_and_how_to_recover_and_exits_2(spark, lakehouse, damaged, monkeypatch, capsys,
                                                                  repo):
    # What other readers make of the damage: delta-rs refuses the table that lost its newest commit.
    with pytest.raises(deltalake.exceptions.DeltaError, match="CRC file version 4 is newer than log segment version 3"):
        deltalake.DeltaTable(str(lake.table_path(lakehouse, "gold.lost")))

    code, out = doctor(monkeypatch, capsys, repo, lakehouse)
    assert code == 2
    lost, holed = lake.table_path(lakehouse, "gold.lost"), lake.table_path(lakehouse, "gold.holed")
    assert [line.split()[:2] for line in out if line.startswith("gold.")] == [
        ["gold.fine", "ok"], ["gold.gap", "DAMAGED"], ["gold.holed", "DAMAGED"], ["gold.lost", "DAMAGED"]]
    assert f"    problem: 1 data file(s) of version 4 missing: {damaged['hole']}" in out
    assert ("    recover: or go back to version 3, the newest whose files all exist (versions 0..4 are in the log): "
            f"RESTORE TABLE delta.`{holed}` TO VERSION AS OF 3; then rerun the stages that wrote versions 4..4. "
            "Open-source Delta 4.4 has no FSCK REPAIR TABLE (a Databricks command)") in out
    assert (f"    recover: copy {4:020d}.json back into {lost / '_delta_log'} from a backup; or accept version 3: "
            f"move {4:020d}.crc out of _delta_log and rerun the stage that wrote version 4 (`lakeforge status` "
            f"lists the last runs)") in out
    assert any(line.startswith("    problem: its Delta log does not load: ") and "DELTA_VERSIONS_NOT_CONTIGUOUS" in line
               for line in out)
    assert out[-1] == ("1 of 4 tables healthy; damaged: gold.gap, gold.holed, gold.lost "
                       "(see docs/operations.md)")

    # The advice works: after it, every reader agrees and doctor is satisfied with both tables.
    spark.sql(f"RESTORE TABLE delta.`{holed}` TO VERSION AS OF 3")
    (lost / "_delta_log" / f"{4:020d}.crc").rename(lakehouse.parent / "lost-commit-4.crc")
    shutil.rmtree(lake.table_path(lakehouse, "gold.gap"))
    assert rows_by_delta_rs(lakehouse, "gold.holed") == [("r0", 0), ("r1", 1), ("r2", 2)]
    assert rows_by_delta_rs(lakehouse, "gold.lost") == [("r0", 0), ("r1", 1), ("r2", 2)]
    code, out = doctor(monkeypatch, capsys, repo, lakehouse)
    assert (code, out[-1]) == (0, "3 of 3 tables healthy")


def test_doctor_on_a_healthy_lakehouse_exits_0(spark, lakehouse, monkeypatch, capsys, repo):
    commits(spark, lakehouse, "gold.fine", 2)
    commits(spark, lakehouse, "ops.runs_like", 1)
    code, out = doctor(monkeypatch, capsys, repo, lakehouse)
    assert code == 0
    assert [line.split() for line in out] == [["gold.fine", "ok", "version", "2"],
                                              ["ops.runs_like", "ok", "version", "1"],
                                              [], ["2", "of", "2", "tables", "healthy"]]
    assert rows_by_delta_rs(lakehouse, "gold.fine") == [("r0", 0), ("r1", 1)]


def test_version_is_the_one_delta_reads(spark, lakehouse, damaged):
    assert lake.version(spark, lakehouse, "gold.fine") == 4
    assert lake.version(spark, lakehouse, "gold.lost") == 3  # not 4: the leftover 4.crc does not count
    assert lake.version(spark, lakehouse, "gold.none") is None
    with pytest.raises(Py4JJavaError, match=r"DELTA_VERSIONS_NOT_CONTIGUOUS\] Versions \(0, 1, 3, 4\)"):
        lake.version(spark, lakehouse, "gold.gap")  # the newest file name says 4; Delta cannot read the log
