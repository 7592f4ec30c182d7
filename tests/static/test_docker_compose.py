"""docker/ without a Docker engine: the compose file against the Compose Specification's JSON schema,
and everything it and the Dockerfile reference (files, ports, volumes, variables, commands) against
the repository and conf/compose.yaml. The commands are the entrypoint's, which tests/cluster runs."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
CRON = REPO / "deploy" / "cron" / "lakeforge.cron"
LAKEFORGE_SERVICES = ["mlflow", "spark-master", "spark-worker-1", "spark-worker-2", "spark-history", "scheduler"]
# ${VAR}, ${VAR:-default} / ${VAR-default}, ${VAR:?message} / ${VAR?message}: name, operator, default or message.
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def settings():
    from lakeforge import config

    return config.load_settings("compose", directory=REPO / "conf")


def required_value(name: str) -> str:
    """What these tests set a required variable (${VAR:?...}, a secret) to, as a .env file would."""
    return f"test-{name.lower().replace('_', '-')}"


def interpolate(value: str) -> str:
    """Compose's interpolation: ${VAR:-default} gives its default, a required ${VAR:?...} its test value."""
    return VARIABLE.sub(lambda m: required_value(m.group(1)) if "?" in (m.group(2) or "") else m.group(3) or "", value)


def environment(compose: dict, service: str) -> dict[str, str]:
    env = compose["services"][service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
    return env


def published(service: dict) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each short-syntax port mapping."""
    out = []
    for spec in service.get("ports", []):
        address, host, container = str(spec).rsplit(":", 2) if str(spec).count(":") == 2 else ("0.0.0.0", *str(spec).split(":"))
        out.append((address, int(host), int(container)))
    return out


def mounts(service: dict) -> dict[str, str]:
    """Container path -> volume name or host path."""
    found = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        found[target] = source
    return found


def dry_run(compose: dict, service: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The service's command through the entrypoint, as the container would start it, printed not run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEFORGE_", "SPARK_", "MLFLOW_", "PYSPARK_"))}
    env |= {k: v for k, v in image_env().items() if k != "PATH"} | environment(compose, service) | (extra or {})
    env["LAKEFORGE_DRY_RUN"] = "1"
    command = compose["services"][service]["command"]
    return subprocess.run(["bash", str(ENTRYPOINT), *command], env=env, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- the specification


def test_compose_file_validates_against_the_compose_specification(tmp_path):
    """check-jsonschema ships the Compose Specification's schema: validation works offline, without an engine."""
    check = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    done = subprocess.run([*check, str(COMPOSE_FILE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # The same check rejects a file that breaks the specification (so a pass above means something).
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["scheduler"]["restart_policy"] = "always"
    broken["services"]["mlflow"]["ports"] = 5000
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    rejected = subprocess.run([*check, str(tmp_path / "docker-compose.yml")], capture_output=True, text=True, timeout=120)
    assert rejected.returncode == 1 and "restart_policy" in rejected.stdout and "ports" in rejected.stdout, rejected.stdout


def test_services_are_the_development_cluster(compose):
    services = compose["services"]
    assert set(services) == {"postgres", *LAKEFORGE_SERVICES}
    assert services["postgres"]["image"].startswith("postgres:")
    for name in LAKEFORGE_SERVICES:
        service = services[name]
        assert service["image"] == "lakeforge:dev", name
        assert service["hostname"] == name, f"{name}: the other containers reach it by this name"
        build = service["build"]
        assert (COMPOSE_FILE.parent / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE
        assert environment(compose, name)["LAKEFORGE_ENV"] == "compose"
        assert (REPO / "conf" / "compose.yaml").is_file()


def test_secrets_have_no_default_and_other_variables_have_one(compose, settings):
    used = VARIABLE.findall(COMPOSE_FILE.read_text())
    assert {name for name, _, _ in used} == {"POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SECRET_KEY",
                                             "LAKEFORGE_NIGHTLY_PASSWORD"}
    for name, operator, text in used:
        if SECRET_NAME.search(name):
            # No fallback password: `docker compose` stops and prints the message until the variable is set.
            assert operator == ":?" and "docker/README.md" in text, (name, operator, text)
        else:
            assert operator in (":-", "-") and text, f"a variable without a default breaks `up` without .env: {name}"
    setup = next(line for line in (REPO / "docker" / "README.md").read_text().splitlines() if "for name in" in line)
    assert set(setup.split(";")[0].split()[3:]) == {name for name, _, _ in used}, "docker/README.md makes each secret"
    # The overlay holds no credentials: the database URI (with its password) is the mlflow service's env.
    values = json.dumps(settings.model_dump(mode="json"))
    assert required_value("POSTGRES_PASSWORD") not in values and "@" not in values
    assert settings.spark.metastore_url == "jdbc:postgresql://postgres:5432/mlflow"  # no credentials in the URL


# ---------------------------------------------------------------- agreement with conf/compose.yaml


def test_urls_and_ports_agree_with_the_settings(compose, settings):
    services = compose["services"]
    master, mlflow = environment(compose, "spark-master"), environment(compose, "mlflow")
    assert settings.spark.master == f"spark://{master['SPARK_MASTER_HOST']}:{master['SPARK_MASTER_PORT']}"
    for name in LAKEFORGE_SERVICES:
        assert environment(compose, name)["SPARK_MASTER_URL"] == settings.spark.master, name
    tracking = urlparse(settings.mlflow.tracking_uri)
    assert (tracking.scheme, tracking.hostname, tracking.port) == ("http", "mlflow", int(mlflow["MLFLOW_PORT"]))
    assert f"{tracking.hostname}:{tracking.port}" in mlflow["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert mlflow["MLFLOW_DEFAULT_ARTIFACT_ROOT"] == settings.mlflow.artifact_root

    backend = urlparse(mlflow["MLFLOW_BACKEND_STORE_URI"])
    postgres = environment(compose, "postgres")
    assert backend.scheme == "postgresql" and (backend.hostname, backend.port) == ("postgres", 5432)
    assert (backend.username, backend.password, backend.path.lstrip("/")) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"])

    expected = {"mlflow": {int(mlflow["MLFLOW_PORT"])},
                "spark-master": {int(master["SPARK_MASTER_PORT"]), int(master["SPARK_MASTER_WEBUI_PORT"])}}
    for name in ("spark-worker-1", "spark-worker-2"):
        expected[name] = {int(environment(compose, name)["SPARK_WORKER_WEBUI_PORT"])}
    expected["spark-history"] = {int(environment(compose, "spark-history")["SPARK_HISTORY_PORT"])}
    host_ports = []
    for name, ports in expected.items():
        mapping = published(services[name])
        assert {container for _, _, container in mapping} == ports, name
        assert all(address == "127.0.0.1" for address, _, _ in mapping), f"{name}: publish on loopback only"
        host_ports += [host for _, host, _ in mapping]
    assert len(host_ports) == len(set(host_ports)), f"a host port is published twice: {host_ports}"


def test_the_lakehouse_and_artifacts_live_on_one_volume_every_spark_process_mounts(compose, settings):
    services = compose["services"]
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for target, source in mounts(service).items():
            assert source in declared or (COMPOSE_FILE.parent / source).exists(), f"{name}: {source} is neither"
    artifact_root = PurePosixPath(urlparse(settings.mlflow.artifact_root).path)
    paths = [settings.paths.landing, settings.paths.lakehouse, settings.paths.reports, settings.spark.event_log_dir,
             artifact_root]
    # The driver (scheduler) and both workers' executors read and write the same folders.
    for name in ("scheduler", "spark-worker-1", "spark-worker-2"):
        for path in paths:
            owners = [(t, s) for t, s in mounts(services[name]).items() if PurePosixPath(path).is_relative_to(t)]
            assert owners == [("/data", "lakeforge-data")], f"{name}: {path} is not on the shared volume"
    assert any(artifact_root.is_relative_to(t) for t in mounts(services["mlflow"])), "the server sees the artifacts"
    # The History Server reads the event logs the driver writes.
    assert environment(compose, "spark-history")["SPARK_EVENT_LOG_DIR"] == str(settings.spark.event_log_dir)
    assert mounts(services["spark-history"]) == {"/data": "lakeforge-data"}


# ---------------------------------------------------------------- the image


def test_dockerfile_builds_what_the_services_run(compose):
    instructions = dockerfile_instructions()
    text = " ".join(f"{k} {v}" for k, v in instructions)
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert all("${PYTHON_IMAGE}" in f for f in froms) and 'PYTHON_IMAGE=python:3.11-' in text
    assert "openjdk-17-jdk-headless" in text
    assert "lakeforge setup-jars" in text and "LAKEFORGE_JAR_CACHE=" in text  # the Delta jars are baked in
    assert "scripts/build-dist.sh" in text and "lakeforge-*.whl" in text

    # Every COPY from the build context exists and is not excluded by docker/Dockerfile.dockerignore.
    rules = [line for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "**", "the ignore file starts by excluding everything, then lists what the image needs"
    allowed = [rule[1:] for rule in rules if rule.startswith("!")]
    excluded = [rule for rule in rules[1:] if not rule.startswith("!")]
    copies = [shlex.split(rest) for keyword, rest in instructions if keyword == "COPY" and "--from" not in rest]
    for *sources, _ in copies:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            paths = [source] if (REPO / source).is_file() else [str(p.relative_to(REPO)) for p in (REPO / source).rglob("*")]
            for path in paths:
                if not any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, f"{p}/*") for p in excluded):
                    assert any(path == p or path.startswith(f"{p}/") for p in allowed), f"{path} is .dockerignored"

    destinations = {sources[-2] if len(sources) > 1 else "": sources[-1] for sources in copies}
    entrypoint = json.loads(dict(instructions)["ENTRYPOINT"])
    assert entrypoint[-1] == destinations["docker/entrypoint.sh"]
    env = image_env()
    home = env["LAKEFORGE_HOME"]
    assert destinations["jobs"] == f"{home}/jobs" and destinations["conf"] == env["LAKEFORGE_CONF_DIR"] == f"{home}/conf"
    assert destinations["docker/entrypoint.sh"] == f"{home}/docker/entrypoint.sh"
    assert f"ln -s {home}/dist/lakeforge-*.zip {env['LAKEFORGE_PY_FILES']}" in text


def test_dockerfile_pins_the_postgresql_driver_like_pyproject():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = [r for extra in pyproject["project"].get("optional-dependencies", {}).values() for r in extra
            if r.replace("_", "-").lower().startswith("psycopg[")]
    arg = re.search(r'ARG PSYCOPG_REQUIREMENT="([^"]+)"', DOCKERFILE.read_text()).group(1)
    assert pins, f"pyproject.toml has no psycopg pin in an extra; add \"{arg}\" to [dev] (MLflow on PostgreSQL)"
    assert [p.split("#")[0].strip() for p in pins] == [arg]


# ---------------------------------------------------------------- the commands


@pytest.mark.parametrize("service, program", [
    ("spark-master", ["spark-class", "org.apache.spark.deploy.master.Master"]),
    ("spark-worker-1", ["spark-class", "org.apache.spark.deploy.worker.Worker"]),
    ("spark-worker-2", ["spark-class", "org.apache.spark.deploy.worker.Worker"]),
    ("mlflow", ["mlflow", "server"]),
    ("spark-history", ["env", "SPARK_HISTORY_OPTS", "spark-class", "org.apache.spark.deploy.history.HistoryServer"]),
    ("scheduler", ["daily", "at", "02:30", "UTC:", "spark-submit"]),
])
def test_each_service_command_has_what_it_needs(compose, service, program):
    """The entrypoint accepts the service's command with the service's environment (nothing missing)."""
    done = dry_run(compose, service)
    assert done.returncode == 0, done.stderr
    argv = shlex.split(done.stdout)
    if program[0] == "env":  # env VAR=VALUE PROGRAM...: the variable's value is checked below
        assert argv[0] == "env" and argv[1].startswith(f"{program[1]}=") and argv[2:4] == program[2:], argv
    else:
        assert argv[:len(program)] == program, argv
    env = environment(compose, service)
    if service == "spark-master":
        assert argv[argv.index("--port") + 1] == env["SPARK_MASTER_PORT"]
    if service.startswith("spark-worker"):
        assert argv[-1] == env["SPARK_MASTER_URL"] and argv[argv.index("--cores") + 1] == "1"
    if service == "mlflow":  # the store URI (with the password) is read from the environment: see below
        assert "--backend-store-uri" not in argv and env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    if service == "spark-history":
        options = argv[1].split("=", 1)[1].split()
        assert f"-Dspark.history.fs.logDirectory=file:{env['SPARK_EVENT_LOG_DIR']}" in options
        assert f"-Dspark.history.ui.port={env['SPARK_HISTORY_PORT']}" in options


def test_no_secret_is_on_any_command_line(compose):
    """A process's command line is visible to every user of the machine (ps, /proc/PID/cmdline): secrets stay in the
    environment. Neither a service's command nor what the entrypoint runs for it contains one."""
    secrets = {name: required_value(name) for name, _, _ in VARIABLE.findall(COMPOSE_FILE.read_text())
               if SECRET_NAME.search(name)}
    assert secrets
    for name, service in compose["services"].items():
        for field in ("command", "entrypoint"):
            text = json.dumps(service.get(field, ""))
            assert not any(m for m in VARIABLE.findall(text) if SECRET_NAME.search(m[0])), (name, field, text)
            assert "postgresql://" not in text, (name, field)
        if name in LAKEFORGE_SERVICES:
            done = dry_run(compose, name)
            assert done.returncode == 0, done.stderr
            assert not any(value in done.stdout for value in secrets.values()), (name, done.stdout)
    assert any(secrets["POSTGRES_PASSWORD"] in value for value in environment(compose, "mlflow").values())


def test_mlflow_server_reads_its_backend_store_from_the_environment():
    """`mlflow server` (the pinned MLflow) takes --backend-store-uri from MLFLOW_BACKEND_STORE_URI, which is how
    entrypoint.sh passes it; were that variable dropped, the server would quietly use a local sqlite file."""
    from mlflow.cli import server

    options = {p.name: p for p in server.params}
    assert options["backend_store_uri"].envvar == "MLFLOW_BACKEND_STORE_URI"
    assert options["default_artifact_root"].envvar == "MLFLOW_DEFAULT_ARTIFACT_ROOT"


def test_scheduler_submits_the_nightly_job_with_the_wheel(compose):
    from lakeforge.cli import build_parser

    command = compose["services"]["scheduler"]["command"]
    assert command[:4] == ["scheduler", "02:30", "submit", "nightly"]
    argv = shlex.split(dry_run(compose, "scheduler").stdout)[4:]
    env = image_env()
    assert argv[argv.index("--master") + 1] == environment(compose, "scheduler")["SPARK_MASTER_URL"]
    assert argv[argv.index("--py-files") + 1] == env["LAKEFORGE_PY_FILES"]
    assert "--jars" in argv  # the cached Delta jars (in the image)
    app = argv.index(f"{env['LAKEFORGE_HOME']}/jobs/nightly.py")
    assert (REPO / "jobs" / "nightly.py").is_file()
    # jobs/nightly.py is `lakeforge run nightly ARGS`: the arguments must be ones lakeforge accepts.
    args = build_parser().parse_args(["run", "nightly", *argv[app + 1:]])
    # No --pipeline: every pipeline of the project's conf/pipelines, so a new one needs no edit here.
    assert (args.sequence, args.pipeline, args.overrides) == ("nightly", None, ["spark.app_name=lakeforge-nightly"])
    # The cron example runs at the same time of day.
    job = next(line for line in CRON.read_text().splitlines() if line[:1].isdigit())
    minute, hour = job.split()[:2]
    assert f"{int(hour):02d}:{int(minute):02d}" == command[1]


def test_submit_takes_the_delta_jars_from_maven_when_asked(compose):
    """LAKEFORGE_DELTA_FROM=packages: `--packages` with the coordinates `lakeforge setup-jars` caches, no --jars."""
    from lakeforge import jars

    venv_first = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # python with lakeforge
    done = dry_run(compose, "scheduler", {"LAKEFORGE_DELTA_FROM": "packages", "PATH": venv_first})
    assert done.returncode == 0, done.stderr
    argv = shlex.split(done.stdout)[4:]
    assert argv[argv.index("--packages") + 1] == jars.DELTA_PACKAGE == "io.delta:delta-spark_4.2_2.13:4.4.0"
    assert "--jars" not in argv
    wrong = dry_run(compose, "scheduler", {"LAKEFORGE_DELTA_FROM": "maven"})
    assert wrong.returncode == 2 and "LAKEFORGE_DELTA_FROM must be cache or packages" in wrong.stderr


def test_cluster_tests_run_the_compose_scheduler_command():
    """tests/cluster submits `command[2:]` of the scheduler service for churn, the pipeline it trains (the
    compose_nightly fixture)."""
    conftest = (REPO / "tests" / "cluster" / "conftest.py").read_text()
    assert '["services"]["scheduler"]["command"]' in conftest
    assert 'return [*command[2:], "--pipeline", "churn"]' in conftest
    assert "trained.submit_ok(compose_nightly)" in conftest and "trained.submit(compose_nightly," in conftest


def test_entrypoint_rejects_what_it_cannot_run():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "LAKEFORGE_"))} | {"LAKEFORGE_DRY_RUN": "1"}
    every_job = " ".join(sorted(p.stem for p in (REPO / "jobs").glob("*.py")))
    assert every_job == "features ingest maintain monitor nightly promote retrain score train"
    for argv, message in [(["submit", "nightly"], "SPARK_MASTER_URL"), (["submit", "bogus"], f"one of: {every_job} (got"),
                          (["scheduler", "2:30", "submit", "nightly"], "HH:MM"), (["worker"], "SPARK_MASTER_URL"),
                          (["history"], "SPARK_EVENT_LOG_DIR"), (["nonsense"], "unknown role")]:
        done = subprocess.run(["bash", str(ENTRYPOINT), *argv], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode != 0 and message in done.stderr, (argv, done.stderr)


def test_mlflow_runs_with_basic_auth_and_the_scheduler_as_the_service_user(compose, settings):
    from lakeforge import config

    mlflow = environment(compose, "mlflow")
    assert mlflow["LAKEFORGE_MLFLOW_AUTH"] == "basic-auth"
    assert mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"] == required_value("MLFLOW_ADMIN_PASSWORD")
    assert mlflow["MLFLOW_FLASK_SERVER_SECRET_KEY"] == required_value("MLFLOW_SECRET_KEY")
    assert settings.mlflow.authentication == "basic"
    scheduler = environment(compose, "scheduler")
    access = config.load_access(settings, directory=REPO / "conf")
    assert access.users[scheduler["MLFLOW_TRACKING_USERNAME"]] == ["service"]
    done = subprocess.run(["bash", str(ENTRYPOINT), "mlflow"], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **mlflow, "LAKEFORGE_DRY_RUN": "1"})
    assert done.returncode == 0, done.stderr
    assert "--app-name basic-auth" in done.stdout
    assert required_value("MLFLOW_ADMIN_PASSWORD") not in done.stdout


def test_basic_auth_without_an_admin_password_does_not_start(compose):
    mlflow = environment(compose, "mlflow")
    del mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_AUTH_ADMIN_PASSWORD"}
    done = subprocess.run(["bash", str(ENTRYPOINT), "mlflow"], capture_output=True, text=True, timeout=30,
                          env={**env, **mlflow, "LAKEFORGE_DRY_RUN": "1"})
    assert done.returncode != 0 and "set MLFLOW_AUTH_ADMIN_PASSWORD" in done.stderr, done.stderr
