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
