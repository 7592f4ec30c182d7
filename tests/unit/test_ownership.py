"""lakeforge deletes only folders it made for this project, and refuses system and home folders (no Spark)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lakeforge import config, ownership
from lakeforge.errors import ConfigError, DeletionRefused

REPO = Path(__file__).resolve().parents[2]
KEYS = ("paths.landing", "paths.lakehouse", "paths.reports", "paths.model_cache", "mlflow.artifact_root",
        "mlflow.tracking_uri")


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project folder lakeforge runs in (the cwd), with the embedded default layout under ./var."""
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def load(*overrides: str):
    return config.load_settings("test", list(overrides), REPO / "conf")


def made(settings) -> dict[str, Path]:
    """Claim every managed place as a stage would, and put a file in each folder (and create the sqlite store)."""
    ownership.claim(settings, *KEYS)
    places = ownership.managed(settings)
    for key, path in places.items():
        if key == ownership.SQLITE:
            path.write_bytes(b"SQLite format 3\0")
        else:
            (path / "data.txt").write_text(key)
    return places


def test_claim_marks_the_folders_it_creates_and_no_other(project):
    settings = load()
    (project / "var" / "reports").mkdir(parents=True)  # made by someone else before lakeforge ran
    ownership.claim(settings, *KEYS)
    for key in ("paths.landing", "paths.lakehouse", "mlflow.artifact_root"):
        path = ownership.managed(settings)[key]
        record = json.loads((path / ".lakeforge-owned").read_text())
        assert (record["project"], record["setting"], record["path"]) == (settings.project, key, str(path)), key
        assert record["created_by"]["pid"] == os.getpid()
    assert not (project / "var" / "reports" / ".lakeforge-owned").exists()
    store = json.loads((project / "var" / ".mlflow.db.lakeforge-owned").read_text())
    assert (store["setting"], store["path"]) == ("mlflow.tracking_uri", str(project / "var" / "mlflow.db"))
    assert not (project / "var" / ".lakeforge-owned").exists()  # var/ was made as landing's parent, not claimed


def test_fresh_deletes_what_this_project_made(project):
    settings = load()
    places = made(settings)
    (project / "var" / "notes.txt").write_text("mine")  # next to the sqlite store, in a folder not claimed
    removed = ownership.remove(settings, project)
    assert sorted(removed) == sorted(places.values())
    assert not any(p.exists() for p in places.values())
    assert not (project / "var" / ".mlflow.db.lakeforge-owned").exists()
    assert (project / "var" / "notes.txt").read_text() == "mine"


def test_fresh_refuses_a_foreign_folder_and_deletes_nothing(project, tmp_path):
    foreign = project / "my-reports"
    foreign.mkdir()
    (foreign / "quarterly.xlsx").write_text("precious")
    settings = load(f"paths.reports={foreign}")
    places = made(settings)
    with pytest.raises(DeletionRefused, match=rf"refusing to delete anything: paths\.reports {foreign}: lakeforge "
                                              rf"did not create it \(no readable \.lakeforge-owned marker in it\)\..*"
                                              rf"delete these by hand if you are sure"):
        ownership.remove(settings, project)
    assert (foreign / "quarterly.xlsx").read_text() == "precious"
    assert (places["paths.lakehouse"] / "data.txt").exists()  # one refusal and nothing is deleted


def test_fresh_refuses_a_folder_of_another_project(project):
    settings = load()
    places = made(settings)
    marker = places["paths.lakehouse"] / ".lakeforge-owned"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "project": "conf-someoneelse"}))
    with pytest.raises(DeletionRefused, match=rf"paths\.lakehouse {places['paths.lakehouse']}: another lakeforge "
                                              rf"project created it \(its marker names project 'conf-someoneelse', "
                                              rf"this one is '{settings.project}'\)"):
        ownership.remove(settings, project)
    assert (places["paths.lakehouse"] / "data.txt").exists()


def test_fresh_refuses_a_sqlite_store_lakeforge_did_not_create(project):
    store = project / "team.db"
    store.write_bytes(b"SQLite format 3\0")
    settings = load(f"mlflow.tracking_uri=sqlite:///{store}")
    with pytest.raises(DeletionRefused, match=rf"mlflow\.tracking_uri {store}: lakeforge did not create it "
                                              rf"\(no readable \.team\.db\.lakeforge-owned marker next to it\)"):
        ownership.remove(settings, project)
    assert store.exists()


def test_fresh_outside_the_project_folder_needs_allow_outside_project(project, tmp_path):
    outside = tmp_path / "elsewhere"
    settings = load(f"paths.lakehouse={outside}")
    made(settings)
    with pytest.raises(DeletionRefused, match=rf"paths\.lakehouse {outside}: it is outside the project folder "
                                              rf"{project} \(set paths\.allow_outside_project: true"):
        ownership.remove(settings, project)
    assert (outside / "data.txt").exists()
    allowed = load(f"paths.lakehouse={outside}", "paths.allow_outside_project=true")
    ownership.remove(allowed, project)
    assert not outside.exists()


def test_fresh_refuses_a_symbolic_link(project, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / ".lakeforge-owned").write_text("{}")
    (project / "reports").symlink_to(target)
    settings = load(f"paths.reports={project / 'reports'}")
    # Settings resolve links, so the setting names the target, which holds no valid marker.
    with pytest.raises(DeletionRefused, match=rf"paths\.reports {target}: it is outside the project folder"):
        ownership.remove(settings, project)
    assert ownership.refusal(project / "reports", settings.project, None) == "it is a symbolic link"
    assert target.is_dir()


def test_project_id_is_the_conf_folders_unless_set(project):
    settings = load()
    assert settings.project == config.default_project(REPO / "conf") == load().project
    assert config.default_project(project) != settings.project
    assert load("project=shop").project == "shop"


@pytest.mark.parametrize(("override", "message"), [
    ("paths.lakehouse=/", r"--set: key 'paths\.lakehouse' = '/': / is the filesystem root; lakeforge writes its "
                          r"data there and `demo --fresh` may delete it: use a folder of its own, e\.g\. /lakeforge"),
    ("paths.landing=/etc", r"key 'paths\.landing' = '/etc': /etc is a system folder"),
    ("paths.reports=/usr/local", r"key 'paths\.reports' = '/usr/local': /usr/local is a system folder"),
    ("paths.lakehouse=/var/lib", r"key 'paths\.lakehouse' = '/var/lib': /var/lib is a system folder"),
    ("paths.lakehouse=/tmp", r"key 'paths\.lakehouse' = '/tmp': /tmp is a system folder"),
    ("mlflow.artifact_root=/opt", r"key 'mlflow\.artifact_root' = '/opt': /opt is a system folder"),
    ("mlflow.tracking_uri=sqlite:////etc/mlflow.db",
     r"key 'mlflow\.tracking_uri' = 'sqlite:////etc/mlflow\.db': the sqlite store's folder /etc is a system folder"),
])
def test_system_folders_are_refused_at_configuration(project, override, message):
    with pytest.raises(ConfigError, match=message):
        load(override)


def test_the_home_folder_and_its_ancestors_are_refused(project, tmp_path, monkeypatch):
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(ConfigError, match=rf"key 'paths\.reports' = '{home}': {home} is the home folder"):
        load(f"paths.reports={home}")
    with pytest.raises(ConfigError, match=rf"key 'paths\.landing' = '{home.parent}': {home.parent} is an ancestor "
                                          rf"of the home folder {home}"):
        load(f"paths.landing={home.parent}")
    ok = load(f"paths.reports={home / 'proj' / 'var'}", "paths.landing=/tmp/x", "paths.lakehouse=/var/lib/lakeforge",
              "mlflow.tracking_uri=sqlite:////tmp/x/mlflow.db")
    assert (ok.paths.reports, ok.paths.lakehouse) == (home / "proj" / "var", Path("/var/lib/lakeforge"))


def lakeforge(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LAKEFORGE_CONF_DIR": str(REPO / "conf"), "PYTHONPATH": str(REPO / "lib")}
    return subprocess.run([sys.executable, "-m", "lakeforge", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_demo_fresh_refuses_a_foreign_folder(project):
    foreign = project / "shared"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("keep")
    done = lakeforge(project, "demo", "--fresh", "--env", "test", "--customers", "10", "--stores", "1", "--days", "60",
                     "--set", f"paths.reports={foreign}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"lakeforge demo: error: refusing to delete anything: paths.reports {foreign}: "
                                  f"lakeforge did not create it"), done.stderr
    assert (foreign / "keep.txt").read_text() == "keep"
    assert not (project / "var").exists()  # refused before anything was generated


def test_cli_refuses_the_root_folder_before_spark(project):
    # generate only reads the lakehouse, so this test writes nothing at / even if the check were gone.
    done = lakeforge(project, "generate", "--env", "test", "--days", "60", "--customers", "10", "--stores", "1",
                     "--set", "paths.lakehouse=/")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("lakeforge generate: error: --set: key 'paths.lakehouse' = '/': / is the filesystem "
                                   "root; lakeforge writes its data there and `demo --fresh` may delete it: use a "
                                   "folder of its own, e.g. /lakeforge")


def test_generate_replaces_source_folders_only_in_a_landing_folder_it_made(project):
    from lakeforge.demo.commands import generate

    size = {"customers": 10, "stores": 1, "days": 60}
    mine = load()
    generate(mine, **size)
    assert generate(mine, **size)["orders"]["files"] == 60  # a rerun replaces its own folders
    foreign = project / "incoming"
    (foreign / "orders").mkdir(parents=True)
    (foreign / "orders" / "real.jsonl").write_text('{"order_id": 1}\n')
    with pytest.raises(DeletionRefused, match=rf"refusing to replace {foreign / 'orders'}: paths\.landing {foreign}: "
                                              rf"lakeforge did not create it"):
        generate(load(f"paths.landing={foreign}"), **size)
    assert (foreign / "orders" / "real.jsonl").read_text() == '{"order_id": 1}\n'
