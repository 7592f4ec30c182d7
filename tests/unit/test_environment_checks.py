"""Java and Delta-jar checks fail early with the fix (no Spark session is started)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lakeforge import jars, spark
from lakeforge.errors import EnvironmentProblem


def fake_java(tmp_path: Path, version_line: str) -> Path:
    """A JAVA_HOME whose bin/java prints `version_line` like `java -version` does (on stderr)."""
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return java.parent.parent


def test_java_17_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path, 'openjdk version "17.0.15" 2025-04-15')))
    assert spark.java_major_version() == 17
    spark.check_java()


def test_java_8_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path, 'java version "1.8.0_351"')))
    with pytest.raises(EnvironmentProblem, match=r"Java 8 found, but Spark 4.2 needs Java 17 or 21.*JAVA_HOME"):
        spark.check_java()


def test_java_missing_names_what_was_searched(tmp_path, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    with pytest.raises(EnvironmentProblem, match=r"Java not found \(JAVA_HOME=unset, none on PATH\).*OpenJDK 17"):
        spark.check_java()


def test_build_session_stops_before_spark_when_java_is_wrong(tmp_path, monkeypatch):
    from lakeforge.config import Settings

    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path, 'openjdk version "11.0.2"')))
    with pytest.raises(EnvironmentProblem, match=r"Java 11 found"):
        spark.build_session(Settings())


def test_jars_not_cached_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKEFORGE_JAR_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(EnvironmentProblem, match=r"Delta Lake jars are not cached.*make setup.*--packages io\.delta:delta-spark_4\.2_2\.13"):
        jars.cached_jars()


def test_incomplete_cache_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKEFORGE_JAR_CACHE", str(tmp_path))
    jars.cache_dir().mkdir(parents=True)
    (jars.cache_dir() / jars.MANIFEST).write_text(str(tmp_path / "gone.jar") + "\n")
    with pytest.raises(EnvironmentProblem, match=r"incomplete \(missing .*gone\.jar\).*setup-jars --force"):
        jars.cached_jars()


def test_fetch_without_network_fails_clearly_and_caches_nothing(tmp_path, monkeypatch):
    """Ivy pointed at an empty local repository stands in for 'no network': resolution must fail cleanly."""
    monkeypatch.setenv("LAKEFORGE_JAR_CACHE", str(tmp_path / "cache"))
    empty_repo = tmp_path / "empty-repo"
    empty_repo.mkdir()
    settings = tmp_path / "ivysettings.xml"
    settings.write_text(f"""<ivysettings>
  <settings defaultResolver="offline"/>
  <resolvers>
    <filesystem name="offline"><artifact pattern="{empty_repo}/[organisation]/[module]/[revision]/[artifact].[ext]"/></filesystem>
  </resolvers>
</ivysettings>
""")
    with pytest.raises(EnvironmentProblem, match=r"could not download io\.delta:delta-spark_4\.2_2\.13:4\.4\.0.*Maven Central.*Nothing was cached"):
        jars.fetch_jars(ivy_settings=settings)
    assert not (jars.cache_dir() / jars.MANIFEST).exists()
