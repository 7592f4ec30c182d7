"""Who may do what: roles, their permissions in MLflow, and the check every verb makes before it acts.

The team set-up runs MLflow with its basic-auth app. Each lakeforge capability (ingest, train, champion...)
is an experiment `lakeforge/_access/<capability>` on the server: a user holds the capability when MLflow
gives that user EDIT on it (`sync` grants it from conf/access.yaml). A verb asks the server with a call
that needs EDIT and changes nothing (deleting a tag that does not exist): MLflow answers 403 when the
user lacks it. So the check is the server's own, and a user calling MLflow directly meets the same
permissions on the pipelines' experiments and registered models. With authentication off (the embedded
default) there is no check and the user is the operating-system account.
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass
from typing import Callable

from lakeforge.config import Access, Settings
from lakeforge.errors import ConfigError, LakeforgeError

READ, INGEST, FEATURES, TRAIN, CHALLENGER, CHAMPION, SCORE, MONITOR = (
    "read", "ingest", "features", "train", "challenger", "champion", "score", "monitor")
CAPABILITIES = (READ, INGEST, FEATURES, TRAIN, CHALLENGER, CHAMPION, SCORE, MONITOR)
ROLES = {
    "viewer": {READ},
    "data_engineer": {READ, INGEST, FEATURES},
    "data_scientist": {READ, FEATURES, TRAIN, CHALLENGER},
    "approver": {READ, CHAMPION},
    "service": {READ, INGEST, FEATURES, TRAIN, CHALLENGER, CHAMPION, SCORE, MONITOR},
}
# What each verb needs; `promote` needs the capability named like its alias.
VERBS = {"ingest": (INGEST,), "maintain": (INGEST,), "features": (FEATURES,), "train": (TRAIN,),
         "retrain": (TRAIN,), "score": (SCORE,), "monitor": (MONITOR,),
         "run": (INGEST, FEATURES, SCORE, MONITOR, TRAIN), "status": (READ,), "doctor": (READ,),
         "access show": (READ,)}
PROBE_TAG = "lakeforge.access.probe"  # never set: deleting it needs EDIT and changes nothing
USER_TAG = "lakeforge.user"           # on training runs: who trained (the four-eyes rule reads it)


class AccessDenied(LakeforgeError):
    """The server says this user may not do this (exit 2)."""

    exit_code = 2


class Refused(AccessDenied):
    """The server answered 403 to a capability a verb needs: who asked for what (recorded in ops.audit)."""

    def __init__(self, message: str, user: str, verb: str, alias: str | None):
        super().__init__(message)
        self.user, self.verb, self.alias = user, verb, alias


def authenticated(settings: Settings) -> bool:
    """True in the team set-up: MLflow over HTTP with basic authentication."""
    return settings.mlflow.authentication == "basic"


def current_user(settings: Settings) -> str:
    """Who acts: the authenticated MLflow user in the team set-up, else the operating-system account (its
    uid's name, not $LOGNAME or $USER, which anyone can set)."""
    if authenticated(settings):
        return _credentials()[0]
    return pwd.getpwuid(os.getuid()).pw_name


def _credentials() -> tuple[str, str]:
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not user or not password:
        raise AccessDenied("MLflow requires authentication here (mlflow.authentication: basic): set "
                           "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your MLflow user and password")
    return user, password


def capability_experiment(capability: str) -> str:
    return f"lakeforge/_access/{capability}"


def needs(verb: str, alias: str | None = None) -> tuple[str, ...]:
    """The capabilities a verb needs (none for local verbs: generate, demo, setup-jars)."""
    if verb == "promote":
        return (alias or CHAMPION,)
    return VERBS.get(verb, ())


def roles_with(capability: str) -> list[str]:
    return [role for role, caps in ROLES.items() if capability in caps]


def holds(client, capability: str) -> bool:
    """Whether the server gives the client's user EDIT on the capability's experiment (403: no)."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_experiment_by_name(capability_experiment(capability))
    except MlflowException as exc:
        if _status(exc) == 403:
            return False
        raise
    if found is None:
        raise ConfigError(f"the MLflow server at {client.tracking_uri} has no experiment "
                          f"{capability_experiment(capability)}: access was never set up; the MLflow admin runs "
                          f"`lakeforge access sync` once (docs/access.md)")
    try:
        client.delete_experiment_tag(found.experiment_id, PROBE_TAG)
    except MlflowException as exc:
        if _status(exc) == 403:
            return False
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    return True


def _status(exc) -> int | None:
    if exc.error_code == "PERMISSION_DENIED" or "403" in str(exc).split("Response body")[0]:
        return 403
    if exc.error_code == "UNAUTHENTICATED":
        raise AccessDenied(f"MLflow did not accept the credentials of user "
                           f"'{os.environ.get('MLFLOW_TRACKING_USERNAME')}' (MLFLOW_TRACKING_USERNAME/"
                           f"MLFLOW_TRACKING_PASSWORD): check the password, or ask the MLflow admin to create "
                           f"the user (`lakeforge access sync`)") from None
    return None


def gate_may_promote(settings: Settings, client, user: str) -> bool:
    """Whether a training's gate may move @champion itself: always with authentication off; in the team set-up
    only for a `service` user (conf/access.yaml) the server gives the champion capability. A human's new
    version waits as @challenger for an approver other than its trainer (four eyes)."""
    if not authenticated(settings):
        return True
    from lakeforge.config import load_access

    return "service" in load_access(settings).users.get(user, []) and holds(client, CHAMPION)


def check(settings: Settings, verb: str, alias: str | None = None, client=None) -> str:
    """Before a verb acts: the server must give the user every capability the verb needs, else AccessDenied
    naming the user, the verb, the roles that may and who grants them. Returns the user."""
    if not authenticated(settings):
        return current_user(settings)
    user = current_user(settings)
    client = client or connect(settings)
    for capability in needs(verb, alias):
        if not holds(client, capability):
            what = f"promote --alias {alias}" if verb == "promote" else verb
            grantor = _grantor(settings)
            raise Refused(f"user '{user}' may not run `lakeforge {what}`: it needs the role "
                          f"{' or '.join(roles_with(capability))} (MLflow refused EDIT on "
                          f"{capability_experiment(capability)}); roles are granted by {grantor}",
                          user, verb, alias if verb == "promote" else None)
    return user


def record_refusal(settings: Settings, refused: Refused, model: str | None, version: int | None = None) -> None:
    """The server's refusal as one ops.audit row (action `refusal`, status `refused`): who asked to run which verb
    on which model, and for a promotion the alias's version then and the version asked for. Nothing else is
    written: the verb never ran."""
    from lakeforge import ownership, registry, runs
    from lakeforge.spark import build_session

    ownership.claim(settings, "paths.lakehouse")  # as every recorded run does before its first write
    current = None
    if refused.alias is not None and model is not None:
        current = registry.alias_version(connect(settings), model, refused.alias)
    spark = build_session(settings, app_name=f"lakeforge-{refused.verb}-refused")
    try:
        runs.record_alias_change(spark, settings.paths.lakehouse, model or "", refused.alias, current, version,
                                 f"{refused.verb}: refused: {refused}", None, runs.REFUSED, user=refused.user,
                                 action=runs.REFUSAL)
    finally:
        spark.stop()


def _grantor(settings: Settings) -> str:
    try:
        from lakeforge.config import load_access

        return load_access(settings).grantor
    except ConfigError:
        return "the MLflow admin (conf/access.yaml, then `lakeforge access sync`)"


def connect(settings: Settings):
    """An MlflowClient of the configured server, as the user of the environment's credentials."""
    from mlflow.tracking import MlflowClient

    _credentials()
    return MlflowClient(settings.mlflow.tracking_uri, settings.mlflow.tracking_uri)


# ---------------------------------------------------------------- sync and show


def capabilities_of(access: Access, user: str) -> set[str]:
    return set().union(*(ROLES[role] for role in access.users.get(user, [])))


def resource_permissions(access: Access, user: str) -> dict[tuple[str, str], str]:
    """What a user gets in MLflow, by (resource type, which): capability experiments EDIT or READ; the
    pipelines' experiments EDIT for who trains, else READ; their registered models EDIT for who moves an
    alias, else READ."""
    caps = capabilities_of(access, user)
    grants = {("capability", c): "EDIT" if c in caps else "READ" for c in CAPABILITIES}
    grants[("experiment", "*")] = "EDIT" if TRAIN in caps else "READ"
    grants[("registered_model", "*")] = "EDIT" if caps & {CHALLENGER, CHAMPION} else "READ"
    return grants


def password_variable(user: str) -> str:
    return "LAKEFORGE_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", user).upper()


@dataclass(frozen=True)
class Change:
    """One permission change `sync` made: user, resource, from (None: none) and to."""

    user: str
    resource: str
    before: str | None
    after: str


def sync(settings: Settings, access: Access, pipelines: list[str], log: Callable[[str], None] = print) -> list[Change]:
    """Create the users of conf/access.yaml and set their MLflow permissions (as the MLflow admin); returns
    what changed. A new user's password comes from LAKEFORGE_PASSWORD_<USER>."""
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    from lakeforge import registry

    client = connect(settings)
    auth = get_app_client("basic-auth", tracking_uri=settings.mlflow.tracking_uri)
    admin = current_user(settings)
    try:
        existing = {u: _get_user(auth, u) for u in access.users}
    except MlflowException as exc:
        if _status(exc) == 403:
            raise AccessDenied(f"user '{admin}' may not run `lakeforge access sync`: it needs the MLflow admin "
                               f"(MLFLOW_TRACKING_USERNAME of an admin user)") from None
        raise
    missing = [password_variable(u) for u, found in existing.items()
               if not found and not os.environ.get(password_variable(u))]
    if missing:
        raise ConfigError(f"new MLflow users need a first password: set {', '.join(missing)} (the user changes it "
                          f"afterwards); nothing was changed")
    for user, found in existing.items():
        if not found:
            auth.create_user(user, os.environ[password_variable(user)])
            log(f"created MLflow user {user}")
    ids = {("capability", c): registry.experiment_id(client, capability_experiment(c).removeprefix("lakeforge/"),
                                                     settings.mlflow.artifact_root) for c in CAPABILITIES}
    for pipeline in pipelines:
        ids[("experiment", pipeline)] = registry.experiment_id(client, pipeline, settings.mlflow.artifact_root)
        try:
            client.get_registered_model(pipeline)
        except MlflowException:
            client.create_registered_model(pipeline, description=f"lakeforge pipeline {pipeline}")
        ids[("registered_model", pipeline)] = pipeline
    changes = []
    for user in access.users:
        for (kind, which), permission in resource_permissions(access, user).items():
            targets = [key for key in ids if key[0] == kind and (which == "*" or key[1] == which)]
            for target in targets:
                resource_type = "registered_model" if target[0] == "registered_model" else "experiment"
                before = _permission(auth, user, resource_type, ids[target])
                if before != permission:
                    auth.grant_user_permission(user, resource_type, ids[target], permission)
                    changes.append(Change(user, f"{target[0]} {target[1]}", before, permission))
                    log(f"{user}: {target[0]} {target[1]}: {before or 'none'} -> {permission}")
    return changes


def _get_user(auth, user: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        auth.get_user(user)
        return True
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def _permission(auth, user: str, resource_type: str, resource_id: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        found = auth.get_user_permission(user, resource_type, resource_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return getattr(found, "permission", None)


def show(access: Access) -> str:
    """Who may do what: one line per user with their roles and capabilities, then what each role may do."""
    lines = [f"{user}: {', '.join(roles)} -> {', '.join(c for c in CAPABILITIES if c in capabilities_of(access, user))}"
             for user, roles in sorted(access.users.items())]
    lines.append("")
    lines += [f"{role}: {', '.join(c for c in CAPABILITIES if c in caps)}" for role, caps in ROLES.items()]
    lines.append(f"roles are granted by {access.grantor}")
    return "\n".join(lines)
