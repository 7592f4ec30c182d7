"""A real cluster on loopback for the `cluster` tests, started once per session and always stopped.

PostgreSQL (initdb into a temporary folder, run as the `postgres` user when we are root), an MLflow
tracking server on it, and a Spark standalone master with two one-core workers. The Spark and MLflow
processes are started with docker/entrypoint.sh, the commands the docker-compose services run; jobs
are submitted with `entrypoint.sh submit STAGE ...`, the command the compose scheduler runs.
Every process started here is stopped by a finalizer (its process group, by id), also when a test fails.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
COMPOSE = REPO / "docker" / "docker-compose.yml"
INSTALL_POSTGRES = REPO / "scripts" / "install-postgres.sh"
BUILD_DIST = REPO / "scripts" / "build-dist.sh"
DEMO = {"customers": 300, "stores": 4, "days": 150}  # the suite's tiny demo (tests/conftest.py)
SUBMIT_TIMEOUT_S = 600  # ingest under heavy load took ~5 min here


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: starts PostgreSQL, an MLflow server and a Spark standalone cluster")


# Stop functions of everything started here, newest last. Session fixtures end with the whole test
# session, but nothing after tests/cluster needs these processes: they are stopped as soon as the last
# test of this folder has run (the session finalizers then find nothing left to stop).
_STOPS: list = []


def on_stop(request, stop):
    """Register `stop` to run once: after this folder's last test, or as a session finalizer (also on failure)."""
    done = []

    def once():
        if not done:
            done.append(True)
            stop()

    _STOPS.append(once)
    request.addfinalizer(once)


def pytest_runtest_teardown(item, nextitem):
    here = Path(__file__).parent
    if nextitem is None or here not in Path(nextitem.path).parents:
        while _STOPS:
            _STOPS.pop()()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout_s: float, process: subprocess.Popen | None = None, log: Path | None = None):
    """Poll `check()` until it returns a truthy value; fail with the last error and the log's tail on timeout or
    early exit."""
    deadline = time.monotonic() + timeout_s
    last_error = "none"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode} while starting:\n{tail(log)}")
        try:
            value = check()
            if value:
                return value
        except (OSError, ValueError) as exc:
            # OSError: not listening yet. ValueError: not JSON yet: Spark's UI adds its pages to the running server
            # one by one, so for a moment `/json/` is answered by the HTML page at `/` (seen once in CI as a
            # JSONDecodeError at the master's start).
            last_error = repr(exc)
        time.sleep(0.5)
    pytest.fail(f"{what} not ready after {timeout_s:.0f}s (last error: {last_error}):\n{tail(log)}")


def tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def http_json(url: str, data: dict | None = None, method: str | None = None, timeout: float = 10) -> dict:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{method or ('POST' if body else 'GET')} {url}: {exc.code} {exc.read().decode()}") from None
    return json.loads(text) if text.strip() else {}


@dataclass
class Service:
    """A process started in its own session, so stopping its group stops everything it spawned."""

    name: str
    process: subprocess.Popen
    log: Path
    stopped: bool = False

    @classmethod
    def start(cls, name: str, argv: list[str], env: dict[str, str], log: Path) -> "Service":
        handle = log.open("ab")
        try:
            process = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            handle.close()
        return cls(name, process, log)

    def stop(self, timeout_s: float = 30) -> None:
        if self.stopped:  # its group id may belong to someone else by now
            return
        self.stopped = True
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        _signal_group(self.process.pid, signal.SIGKILL)  # children that outlived their parent (executors, workers)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def command_lines(session: int) -> list[str]:
    """The command lines of every process in a session (a Service's process and all it spawned)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getsid(int(entry.name)) == session:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ProcessLookupError):  # ended meanwhile
            continue
    return found


def run_to_end(argv: list[str], env: dict[str, str], cwd: Path, log: Path, timeout_s: float = SUBMIT_TIMEOUT_S,
               stderr_log: Path | None = None) -> int:
    """Run a command in its own process group, output to `log` (stderr too, unless `stderr_log`); kill the
    group when it ends."""
    with log.open("wb") as handle, (stderr_log or log).open("ab") as errors:
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=handle,
                                   stderr=errors if stderr_log else subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            pytest.fail(f"{' '.join(argv)} did not finish in {timeout_s:.0f}s:\n{tail(log)}")
        finally:
            _signal_group(process.pid, signal.SIGKILL)  # a driver JVM left behind by a failed command
    return process.returncode


def base_env() -> dict[str, str]:
    """The environment every service and job gets: this venv first on PATH, loopback only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEFORGE_", "SPARK_", "PYSPARK_", "MLFLOW_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1", LAKEFORGE_CONF_DIR=str(REPO / "conf"))
    return env


# ---------------------------------------------------------------- PostgreSQL


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found and shutil.which("apt-get"):
        done = subprocess.run(["bash", str(INSTALL_POSTGRES)], capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"PostgreSQL is not installed and {INSTALL_POSTGRES.name} failed:\n{done.stdout}{done.stderr}")
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        pytest.fail(f"PostgreSQL server binaries not found under /usr/lib/postgresql: run {INSTALL_POSTGRES}")
    return found[-1].parent


@dataclass
class Postgres:
    port: int
    user: str
    database: str

    @property
    def uri(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"


@pytest.fixture(scope="session")
def postgres(request) -> Postgres:
    """A throwaway PostgreSQL on 127.0.0.1 (trust auth on loopback), stopped with `pg_ctl stop`."""
    bin_dir = _postgres_bin()
    # PostgreSQL refuses to run as root: run it as `postgres` (made by the Debian package) when we are root.
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root but there is no `postgres` user to run PostgreSQL as; "
                        f"install Debian's postgresql package ({INSTALL_POSTGRES})")
        as_user = ["runuser", "-u", "postgres", "--"]
    # Outside pytest's tmp folder: that one is private to root and postgres could not enter it.
    root = Path(tempfile.mkdtemp(prefix="lakeforge-pg-"))
    data, log = root / "data", root / "postgres.log"
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    port = free_port()
    pg = Postgres(port=port, user="lakeforge", database="mlflow")

    def pg_run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=timeout, cwd=root)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{tail(log)}")
        return done

    started = False

    def stop():
        if started:
            subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"],
                           capture_output=True, timeout=90, cwd=root)
        shutil.rmtree(root, ignore_errors=True)

    on_stop(request, stop)
    pg_run(str(bin_dir / "initdb"), "-D", str(data), "-U", pg.user, "-A", "trust", "-E", "UTF8", "--no-sync")
    started = True  # from here on a half-started server is still stopped by the finalizer
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off"
    pg_run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
    pg_run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", pg.user, pg.database)
    return pg


# ---------------------------------------------------------------- MLflow server


@dataclass
class MlflowServer:
    url: str
    artifact_root: Path
    backend_uri: str

    def api(self, path: str, query: dict | None = None, body: dict | None = None, method: str | None = None) -> dict:
        """One call of the tracking server's REST API (/api/2.0/mlflow/PATH)."""
        url = f"{self.url}/api/2.0/mlflow/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        return http_json(url, body, method)


def _start_mlflow(request, name: str, backend_uri: str, root: Path, extra_env: dict[str, str]):
    """`entrypoint.sh mlflow` on `backend_uri`, on 127.0.0.1, until healthy; stopped with the session. Returns the
    service, its URL and its artifact folder."""
    artifacts = root / "mlartifacts"
    artifacts.mkdir()
    port = free_port()
    env = base_env() | {"MLFLOW_BACKEND_STORE_URI": backend_uri, "MLFLOW_DEFAULT_ARTIFACT_ROOT": artifacts.as_uri(),
                        "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1"} | extra_env
    service = Service.start(name, ["bash", str(ENTRYPOINT), "mlflow"], env, root / "mlflow.log")
    on_stop(request, service.stop)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200

    wait_for(f"MLflow server ({name})", healthy, 180, service.process, service.log)
    return service, url, artifacts


@pytest.fixture(scope="session")
def mlflow_server(request, postgres, tmp_path_factory) -> MlflowServer:
    """`entrypoint.sh mlflow` on the PostgreSQL above, listening on 127.0.0.1."""
    try:
        import psycopg  # noqa: F401  SQLAlchemy 2.1's driver for postgresql:// URIs (what MLflow uses)
    except ImportError:
        pytest.fail("psycopg is missing: MLflow's postgresql:// store needs psycopg[binary] (pyproject.toml [dev])")
    service, url, artifacts = _start_mlflow(request, "mlflow", postgres.uri, tmp_path_factory.mktemp("mlflow"), {})
    # The store URI (which holds the password in the compose set-up) reaches MLflow through its environment:
    # no process of the server (gunicorn/uvicorn workers included) shows it on its command line.
    lines = command_lines(service.process.pid)
    assert any("mlflow" in line for line in lines) and not any(postgres.uri in line for line in lines), lines
    return MlflowServer(url, artifacts, postgres.uri)


@dataclass
class AuthServer:
    """An MLflow server with the basic-auth app: its URL, the admin's credentials and every secret the test made
    (searched for in logs, tables and tags afterwards)."""

    url: str
    artifact_root: Path
    admin: tuple[str, str]
    secrets: list[str]
    log: Path

    def as_user(self, username: str, password: str) -> dict[str, str]:
        """The environment a lakeforge command of this user gets."""
        return {"MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}


@pytest.fixture(scope="session")
def mlflow_auth_server(request, postgres, tmp_path_factory) -> AuthServer:
    """`entrypoint.sh mlflow` with LAKEFORGE_MLFLOW_AUTH=basic-auth on its own PostgreSQL database (runs and auth
    tables together), a random admin password and secret key from the environment, on 127.0.0.1."""
    import secrets

    import psycopg

    database = "access"
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, dbname=postgres.database,
                         autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    uri = f"postgresql://{postgres.user}@127.0.0.1:{postgres.port}/{database}"
    admin_password, secret_key = secrets.token_urlsafe(18), secrets.token_urlsafe(32)
    auth = {"LAKEFORGE_MLFLOW_AUTH": "basic-auth", "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key}
    service, url, artifacts = _start_mlflow(request, "mlflow-auth", uri, tmp_path_factory.mktemp("mlflow-auth"), auth)
    lines = command_lines(service.process.pid)
    assert not any(admin_password in line or secret_key in line for line in lines), lines
    return AuthServer(url, artifacts, ("admin", admin_password), [admin_password, secret_key], service.log)


@pytest.fixture(scope="session")
def commands():
    """What a test module needs to run commands as the services here do: base_env, run_to_end, DEMO."""
    from types import SimpleNamespace

    return SimpleNamespace(base_env=base_env, run_to_end=run_to_end, demo=DEMO)


# ---------------------------------------------------------------- Spark standalone


@dataclass
class SparkCluster:
    master_url: str
    ui_url: str
    worker_dirs: list[Path]
    services: list[Service] = field(default_factory=list)

    def status(self) -> dict:
        return http_json(f"{self.ui_url}/json/")


@pytest.fixture(scope="session")
def spark_cluster(request, tmp_path_factory) -> SparkCluster:
    """`entrypoint.sh master` and two `entrypoint.sh worker` (1 core, 1 GiB each) on 127.0.0.1."""
    root = tmp_path_factory.mktemp("spark")
    port, ui_port = free_port(), free_port()
    cluster = SparkCluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}", [])
    env = base_env() | {"SPARK_MASTER_HOST": "127.0.0.1", "SPARK_MASTER_PORT": str(port),
                        "SPARK_MASTER_WEBUI_PORT": str(ui_port)}

    def stop():
        for service in reversed(cluster.services):  # workers (and their executors) first, then the master
            service.stop()

    on_stop(request, stop)
    master = Service.start("spark-master", ["bash", str(ENTRYPOINT), "master"], env, root / "master.log")
    cluster.services.append(master)
    wait_for("Spark master", lambda: cluster.status().get("status") == "ALIVE", 90, master.process, master.log)
    for n in (1, 2):
        work = root / f"worker-{n}"
        work.mkdir()
        cluster.worker_dirs.append(work)
        worker_env = base_env() | {"SPARK_MASTER_URL": cluster.master_url, "SPARK_WORKER_HOST": "127.0.0.1",
                                   "SPARK_WORKER_CORES": "1", "SPARK_WORKER_MEMORY": "1g",
                                   "SPARK_WORKER_WEBUI_PORT": str(free_port()), "SPARK_WORKER_DIR": str(work)}
        cluster.services.append(Service.start(f"spark-worker-{n}", ["bash", str(ENTRYPOINT), "worker"], worker_env,
                                              root / f"worker-{n}.log"))
    wait_for("two ALIVE Spark workers", lambda: cluster.status().get("aliveworkers") == 2, 90, None,
             cluster.services[-1].log)
    return cluster


# ---------------------------------------------------------------- the pipeline on the cluster


@pytest.fixture(scope="session")
def compose_nightly() -> list[str]:
    """The job the docker-compose scheduler runs every night (its command after `scheduler HH:MM`, which runs
    every pipeline), for churn: the one pipeline these tests train."""
    command = yaml.safe_load(COMPOSE.read_text())["services"]["scheduler"]["command"]
    assert command[:1] == ["scheduler"] and command[2:3] == ["submit"] and "--pipeline" not in command, command
    return [*command[2:], "--pipeline", "churn"]


@dataclass
class Lakehouse:
    """The demo pipeline's folders on this machine, shared by the driver and the executors."""

    root: Path
    cluster: SparkCluster
    mlflow: MlflowServer
    py_files: Path
    logs: Path
    submits: list[tuple[str, float, int, Path]] = field(default_factory=list)  # command, seconds, exit, log

    @property
    def event_logs(self) -> Path:
        return self.root / "spark-events"

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def lakehouse(self) -> Path:
        return self.root / "lakehouse"

    def overrides(self) -> list[str]:
        """--set arguments: what conf/compose.yaml says for the containers, said here for this machine."""
        pairs = {"paths.landing": self.landing, "paths.lakehouse": self.lakehouse, "paths.reports": self.root / "reports",
                 "mlflow.tracking_uri": self.mlflow.url, "mlflow.artifact_root": self.mlflow.artifact_root,
                 "spark.event_log_dir": self.event_logs, "log_format": "json"}  # as conf/cluster.yaml
        return [arg for key, value in pairs.items() for arg in ("--set", f"{key}={value}")]

    def submit(self, command: list[str], extra_py_files: list[Path] = (), env: dict | None = None,
               ) -> subprocess.CompletedProcess:
        """`entrypoint.sh submit STAGE ARGS --env test --set ...` against the cluster; output kept in a log."""
        assert command[0] == "submit", command
        argv = ["bash", str(ENTRYPOINT), *command, "--env", "test", *self.overrides()]
        run_env = base_env() | {"SPARK_MASTER_URL": self.cluster.master_url, "SPARK_DRIVER_HOST": "127.0.0.1",
                                "LAKEFORGE_PY_FILES": ",".join(str(p) for p in [self.py_files, *extra_py_files]),
                                "SPARK_DRIVER_MEMORY": "1g", "SPARK_EXECUTOR_MEMORY": "768m"} | (env or {})
        log = self.logs / f"{len(self.submits):02d}-{'-'.join(command[1:2])}.log"
        started = time.monotonic()
        returncode = run_to_end(argv, run_env, self.root, log)
        self.submits.append((" ".join(command[:2]), time.monotonic() - started, returncode, log))
        return subprocess.CompletedProcess(argv, returncode, log.read_text(errors="replace"), "")

    def submit_ok(self, command: list[str], **kwargs) -> str:
        done = self.submit(command, **kwargs)
        assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-4000:]}"
        return done.stdout

    # Results are read with delta-rs and pandas: independently of Spark and of lakeforge.

    def read(self, table: str):
        """A lakehouse table (`layer.name`) as pandas, read with delta-rs."""
        from deltalake import DeltaTable

        layer, _, name = table.partition(".")
        return DeltaTable(str(self.lakehouse / layer / name)).to_pandas()

    def runs(self):
        """ops.runs with one row per run, in start order: its end row where it has one, else its `running` row
        (the table is append-only: a run appends a row when it starts and one when it ends)."""
        ledger = self.read("ops.runs").sort_values("ended_at", na_position="first", kind="mergesort")
        return (ledger.drop_duplicates("run_id", keep="last").sort_values("started_at", kind="mergesort")
                .reset_index(drop=True))

    @staticmethod
    def utc(column):
        """Timestamps as naive UTC (delta-rs reads Spark timestamps as UTC-aware; lakeforge's session is UTC)."""
        import pandas as pd

        values = pd.to_datetime(column, utc=True)
        return values.dt.tz_localize(None)

    def next_score_date(self) -> dt.date:
        """The day after the last order: what `run nightly` scores when given no --date."""
        import pandas as pd

        return (self.utc(self.read("silver.orders")["order_ts"]).max().normalize() + pd.Timedelta(days=1)).date()

    def churn_population(self, as_of: dt.date) -> set[str]:
        """Customers known before `as_of` with an order in the 90 days before it: who churn scores.

        pandas over bronze.customers and silver.orders, as conf/pipelines/churn.yaml describes it
        (spine rows with `updated_at` and `signup_date` before the date; population `orders_90d > 0`).
        """
        import pandas as pd

        cutoff = pd.Timestamp(as_of)
        customers = self.read("bronze.customers")
        known = customers[(self.utc(customers["updated_at"]) < cutoff) & (self.utc(customers["signup_date"]) < cutoff)]
        orders = self.read("silver.orders")
        ts = self.utc(orders["order_ts"])
        recent = orders[(ts < cutoff) & (ts >= cutoff - pd.Timedelta(days=90))]
        return set(known["customer_id"]) & set(recent["customer_id"])

    def predictions_for(self, score_date: dt.date):
        predictions = self.read("gold.churn_predictions")
        return predictions[predictions["score_date"].astype(str) == score_date.isoformat()]


@pytest.fixture(scope="session")
def trained(spark_cluster, mlflow_server, tmp_path_factory) -> Lakehouse:
    """Demo landing files, then `submit ingest` and `submit train` on the cluster (MLflow over HTTP)."""
    root = tmp_path_factory.mktemp("cluster-run")
    dist = root / "dist"
    built = subprocess.run(["bash", str(BUILD_DIST), str(dist)], capture_output=True, text=True, timeout=300,
                           env=base_env() | {"PYTHON": sys.executable})
    assert built.returncode == 0, built.stdout + built.stderr
    py_files = next(dist.glob("lakeforge-*.zip"))
    logs = root / "logs"
    logs.mkdir()
    run = Lakehouse(root, spark_cluster, mlflow_server, py_files, logs)
    generated = subprocess.run(
        [sys.executable, "-m", "lakeforge", "generate", "--env", "test", *run.overrides(),
         *[f"--{key}={value}" for key, value in DEMO.items()]],
        capture_output=True, text=True, timeout=300, cwd=root, env=base_env())
    assert generated.returncode == 0, generated.stdout + generated.stderr
    run.submit_ok(["submit", "ingest", "--pipeline", "churn"])
    run.submit_ok(["submit", "train", "--pipeline", "churn"])
    yield run
    timings = ", ".join(f"{name} {seconds:.0f}s (exit {code})" for name, seconds, code, _ in run.submits)
    print(f"\ncluster submits: {timings}")


FAILING_MODEL = '''\
"""A churn model whose predictions fail on the executors: it makes the score stage fail on the cluster."""

import mlflow
import numpy as np
import pandas as pd


class FailingModel(mlflow.pyfunc.PythonModel):
    def __init__(self, feature_names):
        self.feature_names = list(feature_names)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        raise RuntimeError("injected executor failure (lakeforge cluster test)")
'''


@dataclass
class Night:
    """The scheduler's nightly job run twice for one date: a failed run, then the rerun."""

    score_date: dt.date
    runs_before: int               # runs in ops.runs before the failed run
    failed: subprocess.CompletedProcess
    failing_version: str           # @champion during the failed run: its predict raises on the executors
    champion_version: str          # @champion during the rerun, set over HTTP


@pytest.fixture(scope="session")
def night(trained, compose_nightly, tmp_path_factory) -> Night:
    """`submit nightly` with @champion on a model that fails on the executors, then the rerun after
    @champion is moved (over HTTP) to a new version of the trained model."""
    import mlflow
    from mlflow import MlflowClient

    from lakeforge import config, features

    url = trained.mlflow.url
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    trained_version = client.get_model_version_by_alias("churn", "champion").version
    good = client.create_model_version("churn", f"models:/churn/{trained_version}",
                                       description="the trained model, registered again by the cluster test").version

    # A failing model, logged and registered through the server the way a training run does.
    chaos = tmp_path_factory.mktemp("chaos")
    (chaos / "lakeforge_chaos.py").write_text(FAILING_MODEL)
    sys.path.insert(0, str(chaos))
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        import lakeforge_chaos

        mlflow.set_tracking_uri(url)
        mlflow.set_registry_uri(url)
        experiment = client.get_experiment_by_name("lakeforge/churn").experiment_id
        with mlflow.start_run(experiment_id=experiment, run_name="failing-model (cluster test)"):
            columns = features.feature_columns(config.load_pipeline("churn", directory=REPO / "conf"))
            logged = mlflow.pyfunc.log_model(name="model", python_model=lakeforge_chaos.FailingModel(columns),
                                             registered_model_name="churn", pip_requirements=[])
    finally:
        sys.path.remove(str(chaos))
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    failing = str(logged.registered_model_version)
    for version in (good, failing):
        wait_for(f"churn version {version} READY",
                 lambda v=version: client.get_model_version("churn", v).status == "READY", 60)

    trained.mlflow.api("registered-models/alias", body={"name": "churn", "alias": "champion", "version": failing},
                       method="POST")
    score_date = trained.next_score_date()
    runs_before = len(trained.runs())
    failed = trained.submit(compose_nightly, extra_py_files=[chaos / "lakeforge_chaos.py"])

    trained.mlflow.api("registered-models/alias", body={"name": "churn", "alias": "champion", "version": good},
                       method="POST")
    trained.submit_ok(compose_nightly)
    return Night(score_date, runs_before, failed, failing, good)


# ---------------------------------------------------------------- operations: History Server, status


@dataclass
class History:
    """What the Spark History Server lists over the run's event logs: applications by start time."""

    url: str
    applications: list[dict]

    def jobs(self, app_id: str) -> list[dict]:
        return http_json(f"{self.url}/api/v1/applications/{app_id}/jobs")


@pytest.fixture(scope="session")
def history(request, night, trained, tmp_path_factory) -> History:
    """`entrypoint.sh history` (the compose spark-history service) on the run's event logs, after every submit."""
    root = tmp_path_factory.mktemp("history")
    port = free_port()
    env = base_env() | {"SPARK_EVENT_LOG_DIR": str(trained.event_logs), "SPARK_HISTORY_PORT": str(port),
                        "SPARK_HISTORY_UPDATE_INTERVAL": "1s"}
    service = Service.start("spark-history", ["bash", str(ENTRYPOINT), "history"], env, root / "history.log")
    on_stop(request, service.stop)
    url = f"http://127.0.0.1:{port}"

    def listed():
        apps = http_json(f"{url}/api/v1/applications")
        return apps if len(apps) >= len(trained.submits) else None

    apps = wait_for("History Server listing every submitted application", listed, 120, service.process, service.log)
    history = History(url, sorted(apps, key=lambda app: app["attempts"][0]["startTime"]))
    # Read the jobs and settings now: the server is stopped when the session ends, and the tests need only these.
    for app in history.applications:
        app["jobs"] = history.jobs(app["id"])
        app["environment"] = http_json(f"{url}/api/v1/applications/{app['id']}/environment")
    service.stop()
    return history


@pytest.fixture(scope="session")
def status_text(history, trained) -> str:
    """`entrypoint.sh lakeforge status` (compose: `run --rm scheduler lakeforge status`) after the rerun."""
    argv = ["bash", str(ENTRYPOINT), "lakeforge", "status", "--pipeline", "churn", "--env", "test", *trained.overrides()]
    log, errors = trained.logs / "status.out", trained.logs / "status.err"
    returncode = run_to_end(argv, base_env(), trained.root, log, stderr_log=errors)
    assert returncode == 0, tail(log, 40) + tail(errors, 40)
    return log.read_text(errors="replace")
