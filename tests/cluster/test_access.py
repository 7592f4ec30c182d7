"""Roles and four eyes against a real MLflow server with basic-auth on PostgreSQL (loopback): each user runs the
lakeforge command line with their own credentials, and the server's answers decide.

The tests run in file order on one lakehouse: the data engineer ingests, the viewer is held back, the data
scientist trains (@challenger), the service user's gate moves @champion, an approver approves, a user who
is approver and trainer is refused, an alias set directly in MLflow is found, and at the end no secret is
anywhere it was not given.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.cluster

MODEL = "churn"
GRANTOR = "the platform team (#platform)"
USERS = {"vera": ["viewer"], "eddie": ["data_engineer"], "dana": ["data_scientist"], "alex": ["approver"],
         "sam": ["data_scientist", "approver"], "nightly": ["service"]}


@dataclass
class Team:
    server: object
    root: Path
    passwords: dict[str, str]
    commands: object
    logs: list[Path] = field(default_factory=list)

    @property
    def lakehouse(self) -> Path:
        return self.root / "lakehouse"

    def overrides(self) -> list[str]:
        pairs = {"paths.landing": self.root / "landing", "paths.lakehouse": self.lakehouse,
                 "paths.reports": self.root / "reports", "paths.model_cache": self.root / "model_cache",
                 "mlflow.tracking_uri": self.server.url, "mlflow.artifact_root": self.server.artifact_root.as_uri(),
                 "mlflow.authentication": "basic", "access_file": self.root / "access.yaml"}
        return [arg for key, value in pairs.items() for arg in ("--set", f"{key}={value}")]

    def secrets(self) -> list[str]:
        return [*self.passwords.values(), *self.server.secrets]

    def lakeforge(self, user: str, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        """`python -m lakeforge ARGS --env test --set ...` as `user` (LOGNAME says someone else: it must not count)."""
        verb = args[0]
        argv = [sys.executable, "-m", "lakeforge", *args, "--env", "test", *self.overrides()]
        env = self.commands.base_env() | self.server.as_user(user, self.passwords[user]) | {"LOGNAME": "anyone", "USER": "anyone"}
        out, err = (self.root / "logs" / f"{len(self.logs):02d}-{user}-{verb}.{kind}" for kind in ("out", "err"))
        out.parent.mkdir(exist_ok=True)
        code = self.commands.run_to_end(argv, env | (extra_env or {}), self.root, out, stderr_log=err)
        self.logs += [out, err]
        return subprocess.CompletedProcess(argv, code, out.read_text(errors="replace"), err.read_text(errors="replace"))

    def ok(self, user: str, *args: str, **kwargs) -> str:
        done = self.lakeforge(user, *args, **kwargs)
        assert done.returncode == 0, f"{user}: lakeforge {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
        return done.stdout

    def client(self, user: str):
        """An MlflowClient as `user` (credentials set for this process while the test runs)."""
        from mlflow import MlflowClient

        os.environ.update(self.server.as_user(user, self.passwords[user]))
        return MlflowClient(self.server.url, self.server.url)

    def read(self, table: str):
        from deltalake import DeltaTable

        layer, _, name = table.partition(".")
        return DeltaTable(str(self.lakehouse / layer / name)).to_pandas()

    def delta_commits(self) -> list[str]:
        return sorted(str(p.relative_to(self.lakehouse)) for p in self.lakehouse.rglob("_delta_log/*.json"))

    def http_get(self, path: str, user: str | None) -> int:
        request = urllib.request.Request(f"{self.server.url}{path}")
        if user is not None:
            token = base64.b64encode(f"{user}:{self.passwords[user]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code


@pytest.fixture(scope="module")
def team(mlflow_auth_server, commands, tmp_path_factory) -> Team:
    """conf/access.yaml's shape with six users, synced to the server by the admin; demo landing files."""
    root = tmp_path_factory.mktemp("access")
    (root / "access.yaml").write_text(yaml.safe_dump({"grantor": GRANTOR, "users": USERS}))
    passwords = {user: secrets.token_urlsafe(16) for user in USERS} | {"admin": mlflow_auth_server.admin[1]}
    team = Team(mlflow_auth_server, root, passwords, commands)
    first = {f"LAKEFORGE_PASSWORD_{user.upper()}": passwords[user] for user in USERS}
    synced = team.ok("admin", "access", "sync", extra_env=first)
    assert f"access synced: {len(USERS)} users" in synced
    again = team.ok("admin", "access", "sync")  # users exist now: no password needed, nothing changes
    assert "0 permission changes" in again
    team.ok("eddie", "generate", *[f"--{key}={value}" for key, value in commands.demo.items()])
    yield team
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(key, None)


class ConstantModel(mlflow.pyfunc.PythonModel):
    """A model sam registers by hand (its predictions are never asked for)."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[float]:
        return [0.5] * len(model_input)


def aliases(team: Team) -> dict[str, str]:
    return dict(team.client("admin").get_registered_model(MODEL).aliases)


def versions(team: Team) -> list[str]:
    return sorted(v.version for v in team.client("admin").search_model_versions(f"name = '{MODEL}'"))


def audit_commit(team: Team, before: list[str]) -> list[str]:
    """The one ops.audit commit a refusal adds to the lakehouse's commits `before`."""
    last = max(int(Path(c).stem) for c in before if c.startswith("ops/audit/"))
    return [f"ops/audit/_delta_log/{last + 1:020d}.json"]


def test_access_show_prints_who_may_do_what(team):
    shown = team.ok("vera", "access", "show")
    assert "dana: data_scientist -> read, features, train, challenger" in shown
    assert "approver: read, champion" in shown and GRANTOR in shown


def test_a_data_engineer_ingests_and_the_runs_say_who_and_where(team):
    import socket

    team.ok("eddie", "ingest", "--pipeline", MODEL)
    run = team.read("ops.runs").query("job == 'ingest' and status == 'succeeded'")
    assert list(run["user"]) == ["eddie"] and list(run["host"]) == [socket.gethostname()]


@pytest.mark.parametrize("args, needs", [
    (["ingest"], "data_engineer or service"),
    (["train"], "data_scientist or service"),
    (["promote", "--version", "1", "--reason", "ship it"], "approver or service"),
    (["score", "--date", "2026-09-20"], "service"),
])
def test_a_viewer_is_held_back_before_anything_is_written(team, args, needs):
    commits, known, held = team.delta_commits(), versions(team), aliases(team)
    done = team.lakeforge("vera", args[0], "--pipeline", MODEL, *args[1:])
    assert done.returncode == 2, done.stderr
    what = "promote --alias champion" if args[0] == "promote" else args[0]
    assert (f"lakeforge {args[0]}: error: user 'vera' may not run `lakeforge {what}`: it needs the role {needs} "
            f"(MLflow refused EDIT on lakeforge/_access/") in done.stderr
    assert f"roles are granted by {GRANTOR}" in done.stderr
    # The refusal is the one thing written: a row in ops.audit (test_ops_audit_holds_one_row_per_...).
    written = sorted(commits + audit_commit(team, commits))
    assert (team.delta_commits(), versions(team), aliases(team)) == (written, known, held)


def test_a_data_scientist_trains_to_challenger_and_may_not_set_champion(team):
    trained = team.ok("dana", "train", "--pipeline", MODEL)
    assert "alias: challenger" in trained and "@champion awaits an approver" in trained
    assert aliases(team) == {"challenger": "1"}
    run = team.client("admin").get_run(team.client("admin").get_model_version(MODEL, "1").run_id)
    assert run.data.tags["lakeforge.user"] == "dana"
    team.ok("dana", "promote", "--pipeline", MODEL, "--alias", "challenger", "--version", "1", "--reason", "keep it")

    commits = team.delta_commits()
    done = team.lakeforge("dana", "promote", "--pipeline", MODEL, "--version", "1", "--reason", "mine is good")
    assert done.returncode == 2
    assert "user 'dana' may not run `lakeforge promote --alias champion`: it needs the role approver or service" \
           in done.stderr
    written = sorted(commits + audit_commit(team, commits))
    assert (team.delta_commits(), aliases(team)) == (written, {"challenger": "1"})
    # The same user calling MLflow directly on a model it may not edit is refused by the server too.
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="PERMISSION_DENIED|403"):
        team.client("vera").set_registered_model_alias(MODEL, "champion", "1")


def test_the_service_users_gate_promotion_is_audited_as_the_gate(team):
    trained = team.ok("nightly", "train", "--pipeline", MODEL)
    assert "alias: champion" in trained, trained
    assert aliases(team) == {"challenger": "1", "champion": "2"}
    tags = team.client("admin").get_model_version(MODEL, "2").tags
    assert (tags["lakeforge.champion.by"], tags["lakeforge.champion.action"]) == ("nightly", "gate")
    assert json.loads(tags["lakeforge.champion.metrics"])["champion_auc"] is None


def test_an_approver_promotes_another_users_version(team):
    team.ok("alex", "promote", "--pipeline", MODEL, "--version", "1", "--reason", "reviewed the holdout plots")
    assert aliases(team)["champion"] == "1"
    tags = team.client("admin").get_model_version(MODEL, "1").tags
    assert (tags["lakeforge.champion.by"], tags["lakeforge.champion.action"]) == ("alex", "approval")
    assert tags["lakeforge.champion.from_version"] == "2"


def test_an_approver_may_not_approve_a_version_they_trained(team):
    # sam (data scientist and approver) registers a version of their own, as training does.
    experiment = team.client("sam").get_experiment_by_name(f"lakeforge/{MODEL}").experiment_id
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(team.server.url)
    mlflow.set_registry_uri(team.server.url)
    try:
        with mlflow.start_run(experiment_id=experiment, tags={"lakeforge.user": "sam"}):
            logged = mlflow.pyfunc.log_model(name="model", python_model=ConstantModel(),
                                             registered_model_name=MODEL, pip_requirements=[])
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    assert str(logged.registered_model_version) == "3"
    done = team.lakeforge("sam", "promote", "--pipeline", MODEL, "--version", "3", "--reason", "trust me")
    assert done.returncode == 2, done.stderr
    assert ("refused: @champion of churn -> v3 needs an approver other than the version's trainer; user 'sam' "
            "trained version 3") in done.stderr
    assert aliases(team)["champion"] == "1"
    tags = team.client("admin").get_model_version(MODEL, "3").tags
    assert (tags["lakeforge.champion.refused.by"], tags["lakeforge.champion.refused.action"]) == ("sam", "refusal")


def test_an_alias_set_directly_in_mlflow_is_found_by_the_next_command(team):
    team.client("dana").set_registered_model_alias(MODEL, "challenger", "2")  # EDIT on the model: MLflow lets it
    team.ok("dana", "promote", "--pipeline", MODEL, "--alias", "challenger", "--version", "1", "--reason", "back")
    assert aliases(team) == {"challenger": "1", "champion": "1"}


def test_without_read_on_the_model_its_artifacts_cannot_be_downloaded(team):
    from mlflow.server import get_app_client

    team.passwords["mallory"] = secrets.token_urlsafe(16)
    team.client("admin")
    get_app_client("basic-auth", tracking_uri=team.server.url).create_user("mallory", team.passwords["mallory"])
    run_id = team.client("admin").get_model_version(MODEL, "1").run_id
    # The server streams the files itself on these routes (also with --no-serve-artifacts).
    model = f"/model-versions/get-artifact?name={MODEL}&version=1&path=MLmodel"
    run_file = f"/get-artifact?run_uuid={run_id}&path=monitoring/baseline.json"
    assert (team.http_get(model, "vera"), team.http_get(run_file, "vera")) == (200, 200)  # READ: the routes work
    assert (team.http_get(model, "mallory"), team.http_get(run_file, "mallory")) == (403, 403)
    assert team.http_get(model, None) == 401


def test_ops_audit_holds_one_row_per_change_approval_and_refusal_with_the_users(team):
    audit = team.read("ops.audit").sort_values("changed_at", kind="mergesort")
    moves = audit[(audit["model"] == MODEL) & (audit["status"] != "intended")]
    import pandas as pd

    def number(value):
        return None if pd.isna(value) else int(value)

    got = [(r.action, r.user, r.alias, number(r.from_version), number(r.to_version), r.status)
           for r in moves.itertuples()]
    assert got == [
        # The server's 403s: the viewer's four verbs, then a data scientist's @champion.
        ("refusal", "vera", None, None, None, "refused"),
        ("refusal", "vera", None, None, None, "refused"),
        ("refusal", "vera", "champion", None, 1, "refused"),
        ("refusal", "vera", None, None, None, "refused"),
        ("gate", "dana", "challenger", None, 1, "done"),
        ("alias", "dana", "challenger", 1, 1, "done"),
        ("refusal", "dana", "champion", None, 1, "refused"),
        ("gate", "nightly", "champion", None, 2, "done"),
        ("approval", "alex", "champion", 2, 1, "done"),
        ("refusal", "sam", "champion", 1, 3, "refused"),
        ("outside", "unknown (set outside lakeforge; MLflow does not record who)", "challenger", 1, 2, "reconciled"),
        ("alias", "dana", "challenger", 2, 1, "done"),
    ]
    refused = moves[moves["action"] == "refusal"]["reason"].tolist()
    assert [reason.split(":")[0] for reason in refused] == ["ingest", "train", "promote", "score", "promote", "promote"]
    assert all("may not run" in reason for reason in refused[:5]), refused  # the server's message
    permissions = audit[audit["action"] == "permission"]
    assert set(permissions["user"]) == {"admin"} and set(permissions["model"]) == set(USERS)
    assert "anyone" not in set(team.read("ops.runs")["user"])


def test_no_secret_is_in_any_log_table_or_tag(team):
    found = []
    files = [*team.logs, team.server.log, *team.root.rglob("*"), *team.server.artifact_root.rglob("*")]
    for path in files:
        if path.is_file():
            data = path.read_bytes()
            found += [(str(path), s[:3]) for s in team.secrets() if s.encode() in data]
    for table in ("ops.runs", "ops.audit"):
        text = team.read(table).to_json()
        found += [(table, s[:3]) for s in team.secrets() if s in text]
    admin = team.client("admin")
    experiment = admin.get_experiment_by_name(f"lakeforge/{MODEL}").experiment_id
    written = [json.dumps([r.data.tags, r.data.params]) for r in admin.search_runs([experiment])]
    written += [json.dumps(v.tags) for v in admin.search_model_versions(f"name = '{MODEL}'")]
    found += [("mlflow tags", s[:3]) for s in team.secrets() for text in written if s in text]
    assert not found, found
