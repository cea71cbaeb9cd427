"""The driver JVM's class-data archive (pipeline_defs/spark/jvm_archive.py): named by the JDK and
classpath it was made for, used only by a session whose classpath it matches, and really
mapped by the JVM of this test session (`make setup` builds it)."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline_defs.spark import jvm_archive
from pipeline_defs.spark.session import SparkSettings, default_jars_dir


def _conf(**extra) -> dict[str, str]:
    return SparkSettings("local[1]", jars_dir=str(default_jars_dir()),
                         conf=tuple(extra.items())).builder_conf()


def test_the_name_follows_the_classpath_and_the_jdk(tmp_path, monkeypatch):
    more = tmp_path / "more"
    more.mkdir()
    (more / "a.jar").write_bytes(b"one")
    cp = f"/x/jars/*{os.pathsep}{more}/*"
    first = jvm_archive.digest(cp)
    assert first and jvm_archive.digest(cp) == first  # the same classpath, the same name
    (more / "b.jar").write_bytes(b"two")  # a jar more
    second = jvm_archive.digest(cp)
    assert second != first
    (more / "b.jar").write_bytes(b"three")  # a jar changed (its size)
    assert jvm_archive.digest(cp) != second
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))  # a directory in front of the jars
    assert jvm_archive.digest(cp) not in (first, second)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))  # no java: no archive at all
    assert jvm_archive.digest(cp) is None


def test_a_session_gets_the_archive_of_its_classpath_only(tmp_path, monkeypatch):
    where = tmp_path / "with space"
    monkeypatch.setenv(jvm_archive.ARCHIVE_ENV, str(where))
    assert "SharedArchiveFile" not in _conf()["spark.driver.extraJavaOptions"]  # none made
    conf = _conf(**{"spark.driver.extraJavaOptions": "-Dmine=1"})
    key = jvm_archive.digest(conf["spark.driver.extraClassPath"])
    where.mkdir()
    archive = where / f"driver-{key}.jsa"
    archive.write_bytes(b"")
    options = _conf(**{"spark.driver.extraJavaOptions": "-Dmine=1"})[
        "spark.driver.extraJavaOptions"]
    # quoted (the path has a space), silenced, before the product's and the user's flags
    assert options.startswith(f'"-XX:SharedArchiveFile={archive}" -Xlog:cds=off ')
    assert options.endswith(" -Dmine=1")
    other = _conf(**{"spark.driver.extraClassPath": str(tmp_path / "*")})  # another classpath
    assert "SharedArchiveFile" not in other["spark.driver.extraJavaOptions"]
    monkeypatch.setenv(jvm_archive.ARCHIVE_ENV, "off")
    assert "SharedArchiveFile" not in _conf()["spark.driver.extraJavaOptions"]


def test_this_sessions_jvm_maps_the_archive_setup_made(spark):
    java = jvm_archive._java()
    assert java is not None and (java.parent.parent / "lib" / "server" / "classes.jsa"
                                 ).is_file(), "Java 17 ships the base archive this one extends"
    conf = dict(spark.sparkContext.getConf().getAll())
    archive = jvm_archive._path(conf)
    assert archive is not None and archive.is_file(), "make setup builds it"
    assert f"-XX:SharedArchiveFile={archive}" in conf["spark.driver.extraJavaOptions"]
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    mapped = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
              if line.endswith(".jsa")}
    # the JVM checked it against its JDK and classpath and mapped it (it would skip it, silently,
    # if it did not match)
    assert str(archive) in mapped
