"""The session lakeforge starts maps the JVM class archive that `lakeforge setup-jars` built."""

from __future__ import annotations

import subprocess

import pytest

from lakeforge import jars
from lakeforge.spark import java_binary

pytestmark = pytest.mark.spark


def test_the_session_maps_the_class_archive_setup_built(spark):
    archive = jars.class_archive()
    assert archive.is_file(), f"no class archive at {archive}: `make setup` (lakeforge setup-jars) builds it"
    jvm = spark.sparkContext._jvm
    assert f"-XX:SharedArchiveFile={archive}" in list(
        jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    # With -Xshare:on a JVM that cannot map the archive for this class path refuses to start (with -Xshare:auto,
    # the sessions' default, it would only warn and load every class itself).
    classpath = jvm.java.lang.System.getProperty("java.class.path")
    mapped = subprocess.run([java_binary(), "-Xshare:on", f"-XX:SharedArchiveFile={archive}", "-cp", classpath,
                             "-version"], capture_output=True, text=True, timeout=60)
    assert mapped.returncode == 0, mapped.stdout + mapped.stderr
    assert "sharing" in mapped.stderr  # e.g. "OpenJDK 64-Bit Server VM (build ...) mixed mode, sharing"


def test_a_class_archive_that_cannot_be_built_is_a_warning_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    from lakeforge import cli

    monkeypatch.setenv("LAKEFORGE_JAR_CACHE", str(tmp_path))
    jars.cache_dir().mkdir(parents=True)
    broken = tmp_path / "delta-spark.jar"
    broken.write_bytes(b"not a jar")  # the workload's Delta session cannot start on it
    (jars.cache_dir() / jars.MANIFEST).write_text(f"{broken}\n")
    assert cli.main(["setup-jars"]) == 0
    out, err = capsys.readouterr()
    assert "Delta jars ready: 1 jars" in out and "class archive" not in out
    assert err.startswith("lakeforge setup-jars: warning: could not build the JVM class archive (")
    assert err.rstrip().endswith("lakeforge works without it, each command only starts a few seconds slower.")
    assert sorted(p.name for p in jars.cache_dir().iterdir()) == [jars.MANIFEST]
