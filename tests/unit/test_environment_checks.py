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


def test_the_class_archive_is_named_after_the_jars_it_was_built_with(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKEFORGE_JAR_CACHE", str(tmp_path))
    jars.cache_dir().mkdir(parents=True)
    (jars.cache_dir() / jars.MANIFEST).write_text("/jars/delta-spark.jar\n")
    first = jars.class_archive()
    (jars.cache_dir() / jars.MANIFEST).write_text("/jars/delta-spark.jar\n/jars/delta-storage.jar\n")
    assert first.parent == jars.cache_dir() and first.suffix == ".jsa"
    assert jars.class_archive() != first  # another jar set never maps an archive built for the first


def test_sessions_map_the_class_archive_only_when_it_is_there(tmp_path):
    archive = tmp_path / "classes.jsa"
    assert spark.with_class_archive("-Dlog4j2.configurationFile=x", archive) == "-Dlog4j2.configurationFile=x"
    archive.write_bytes(b"archive")
    assert spark.with_class_archive("-Dlog4j2.configurationFile=x", archive) == (
        f"-XX:SharedArchiveFile={archive} -Dlog4j2.configurationFile=x")


def test_setup_jars_keeps_a_built_class_archive_and_can_skip_it(capsys):
    from lakeforge import cli

    archive = jars.class_archive()
    assert archive.is_file(), f"no class archive at {archive}: `make setup` (lakeforge setup-jars) builds it"
    built_at = archive.stat().st_mtime
    assert cli.main(["setup-jars"]) == 0
    assert f"JVM class archive ready: {archive}" in capsys.readouterr().out
    assert cli.main(["setup-jars", "--no-class-archive"]) == 0
    assert "class archive" not in capsys.readouterr().out
    assert archive.stat().st_mtime == built_at


def test_a_class_archive_that_cannot_be_built_is_a_warning_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    from lakeforge import cli

    # A `java` that passes the version check but cannot run spark-submit's launcher.
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path, 'openjdk version "17.0.15" 2025-04-15')))
    monkeypatch.setenv("LAKEFORGE_JAR_CACHE", str(tmp_path / "cache"))
    jars.cache_dir().mkdir(parents=True)
    (tmp_path / "delta-spark.jar").write_bytes(b"not a jar")
    (jars.cache_dir() / jars.MANIFEST).write_text(f"{tmp_path / 'delta-spark.jar'}\n")
    jars.cache_dir(jars.POSTGRES_JDBC_PACKAGE).mkdir(parents=True)
    (jars.cache_dir(jars.POSTGRES_JDBC_PACKAGE) / jars.MANIFEST).write_text(f"{tmp_path / 'delta-spark.jar'}\n")
    assert cli.main(["setup-jars"]) == 0
    out, err = capsys.readouterr()
    assert "Delta jars ready: 1 jars" in out and "class archive" not in out
    assert err.startswith("lakeforge setup-jars: warning: could not build the JVM class archive (")
    assert err.rstrip().endswith("lakeforge works without it, each command only starts a few seconds slower.")
    assert sorted(p.name for p in jars.cache_dir().iterdir()) == [jars.MANIFEST]


def test_lakeforge_jvm_jar_is_built_from_its_sources_named_after_them_and_joins_the_session_jars(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.setenv("LAKEFORGE_JAR_CACHE", str(tmp_path / "cache"))
    jars.cache_dir().mkdir(parents=True)
    (tmp_path / "delta-spark.jar").write_bytes(b"jar")
    (jars.cache_dir() / jars.MANIFEST).write_text(f"{tmp_path / 'delta-spark.jar'}\n")
    assert jars.session_jars() == [tmp_path / "delta-spark.jar"]  # not built: Delta's only
    # A link left where the jar is first written: replaced, never written through.
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    jars.jvm_jar().parent.mkdir(parents=True)
    jars.jvm_jar().with_name(jars.jvm_jar().name + ".partial").symlink_to(outside)
    jar, built = jars.build_jvm_jar()
    assert outside.read_text() == "keep" and not jar.is_symlink()
    assert not jar.with_name(jar.name + ".partial").exists()
    assert built and jar == jars.jvm_jar() and jars.session_jars() == [tmp_path / "delta-spark.jar", jar]
    import zipfile

    with zipfile.ZipFile(jar) as contents:
        assert "lakeforge/JsonLines.class" in contents.namelist()
    assert jars.build_jvm_jar() == (jar, False)  # once
    # Another version of the sources is another jar: a session never loads classes built from older sources.
    sources = tmp_path / "jvm" / "lakeforge"
    sources.mkdir(parents=True)
    (sources / "JsonLines.java").write_text((jars.JVM_SOURCES / "lakeforge" / "JsonLines.java").read_text() + "\n")
    monkeypatch.setattr(jars, "JVM_SOURCES", tmp_path / "jvm")
    assert jars.jvm_jar() != jar and jars.jvm_jar().parent == jar.parent


def test_lakeforge_jvm_jar_without_a_jdk_is_a_warning_of_setup_jars(tmp_path, monkeypatch, capsys):
    from lakeforge import cli

    # A JRE: `java` (passing the version check) and no `javac` beside it or on PATH.
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path, 'openjdk version "17.0.15" 2025-04-15')))
    monkeypatch.setenv("PATH", str(tmp_path / "jdk" / "bin"))
    with pytest.raises(EnvironmentProblem, match=r"no `javac` beside .*/jdk/bin/java or on PATH: install a JDK "
                                                 r"\(Debian: openjdk-17-jdk-headless\).*parses each JSON line twice"):
        jars.build_jvm_jar(force=True)
    monkeypatch.setenv("LAKEFORGE_JAR_CACHE", str(tmp_path / "cache"))
    (tmp_path / "some.jar").write_bytes(b"jar")
    for package in (jars.DELTA_PACKAGE, jars.POSTGRES_JDBC_PACKAGE):
        jars.cache_dir(package).mkdir(parents=True)
        (jars.cache_dir(package) / jars.MANIFEST).write_text(f"{tmp_path / 'some.jar'}\n")
    assert cli.main(["setup-jars", "--no-class-archive"]) == 0
    out, err = capsys.readouterr()
    assert "JVM jar" not in out
    assert err.startswith("lakeforge setup-jars: warning: no `javac` beside ")
    assert not (tmp_path / "cache" / "lakeforge").exists()
