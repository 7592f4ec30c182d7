"""Roles without a server: what each verb needs, what `sync` grants whom, who the user is, conf/access.yaml errors."""

from __future__ import annotations

import os
import pwd

import pytest

from lakeforge import access, config
from lakeforge.errors import ConfigError


def settings_with(tmp_path, text: str | None = None, authentication: str = "none"):
    path = tmp_path / "access.yaml"
    if text is not None:
        path.write_text(text)
    return config.load_settings("test", [f"access_file={path}", f"mlflow.authentication={authentication}"])


def test_each_verb_needs_the_capability_of_its_role():
    assert access.needs("ingest") == ("ingest",)
    assert access.needs("promote", "champion") == ("champion",)
    assert access.needs("promote", "challenger") == ("challenger",)
    assert access.needs("generate") == ()
    assert access.roles_with("champion") == ["approver", "service"]
    assert access.roles_with("score") == ["service"]


def test_sync_grants_edit_where_a_role_acts_and_read_elsewhere(tmp_path):
    roles = config.load_access(settings_with(tmp_path, "grantor: ops\nusers: {vera: [viewer], dana: [data_scientist], "
                                                       "alex: [approver]}\n"))
    vera, dana, alex = (access.resource_permissions(roles, u) for u in ("vera", "dana", "alex"))
    assert [key for key, permission in vera.items() if permission == "EDIT"] == [("capability", "read")]
    assert dana[("capability", "train")] == dana[("experiment", "*")] == dana[("registered_model", "*")] == "EDIT"
    assert dana[("capability", "champion")] == "READ"
    assert (alex[("capability", "champion")], alex[("experiment", "*")], alex[("registered_model", "*")]) == (
        "EDIT", "READ", "EDIT")


def test_show_lists_users_roles_and_the_grantor(tmp_path):
    roles = config.load_access(settings_with(tmp_path, "grantor: the platform team\nusers: {sam: [data_scientist, "
                                                       "approver]}\n"))
    shown = access.show(roles)
    assert "sam: data_scientist, approver -> read, features, train, challenger, champion" in shown
    assert shown.endswith("roles are granted by the platform team")


def test_an_unknown_role_is_one_error_naming_the_file_and_key(tmp_path):
    settings = settings_with(tmp_path, "grantor: ops\nusers: {vera: [admin]}\n")
    with pytest.raises(ConfigError, match=r"access.yaml.*users.vera") as raised:
        config.load_access(settings)
    assert "viewer" in str(raised.value)


def test_the_user_is_the_os_account_without_authentication_whatever_logname_says(tmp_path, monkeypatch):
    monkeypatch.setenv("LOGNAME", "anyone")
    monkeypatch.setenv("USER", "anyone")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone")
    assert access.current_user(settings_with(tmp_path)) == pwd.getpwuid(os.getuid()).pw_name


def test_with_authentication_the_user_is_the_mlflow_user_and_credentials_are_required(tmp_path, monkeypatch):
    settings = settings_with(tmp_path, authentication="basic")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "dana")
    with pytest.raises(access.AccessDenied, match="set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
        access.current_user(settings)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "x")
    assert access.current_user(settings) == "dana"


def test_access_yaml_is_not_an_environment():
    assert "access" not in config.available_envs()


def test_a_new_users_password_variable():
    assert access.password_variable("data.eng-1") == "LAKEFORGE_PASSWORD_DATA_ENG_1"
