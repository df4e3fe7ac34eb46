"""identity against a real slapd (tests/fakes/ldap/slapd.sh) and the host's NSS; LDAP failures fall back."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shlex
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ds01.config import LdapSettings
from ds01.errors import EXIT_FAILURE, ConfigError
from ds01.identity.accounts import UnknownUser, User, resolve_name, resolve_user, sanitize_username

REPO = Path(__file__).resolve().parents[2]
SLAPD = REPO / "tests" / "fakes" / "ldap" / "slapd.sh"
LOCAL_USER = "alice"  # the test bed's local user; LDAP lists it in ml-students
UNKNOWN_UID = 1_999_999


def _require_root() -> None:
    if os.geteuid() != 0:
        message = "the LDAP tests need root (slapd.sh runs slapd as root and the local test user may be created)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        keyword, assignment = shlex.split(line)
        assert keyword == "export", line
        name, _, value = assignment.partition("=")
        env[name] = value
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def directory_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private slapd of this module's own, on a free port so a test bed's slapd on 3890 does not clash."""
    _require_root()
    state = tmp_path_factory.mktemp("ldap-state")
    env = {**os.environ, "DS01_TEST_LDAP_PORT": str(_free_port())}
    try:
        up = subprocess.run([str(SLAPD), "up", str(state)], env=env, capture_output=True, text=True,
                            check=False, timeout=120)
        if up.returncode != 0:
            pytest.fail(f"slapd.sh up failed ({up.returncode}):\n{up.stderr}")
        printed = subprocess.run([str(SLAPD), "env", str(state)], capture_output=True, text=True, check=True,
                                 timeout=30).stdout
        yield _exports(printed)
    finally:
        subprocess.run([str(SLAPD), "down", str(state)], capture_output=True, check=False, timeout=60)


@pytest.fixture(scope="module")
def local_user() -> pwd.struct_passwd:
    """The local test user, created as scripts/testbed creates it when this run has no test bed."""
    _require_root()
    try:
        return pwd.getpwnam(LOCAL_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", LOCAL_USER], check=True, timeout=60)
        return pwd.getpwnam(LOCAL_USER)


@pytest.fixture
def anonymous(directory_env: dict[str, str]) -> LdapSettings:
    return LdapSettings(uri=directory_env["DS01_TEST_LDAP_URI"], base_dn=directory_env["DS01_TEST_LDAP_BASE_DN"])


@pytest.fixture
def bound(anonymous: LdapSettings, directory_env: dict[str, str]) -> LdapSettings:
    return replace(
        anonymous,
        bind_dn=directory_env["DS01_TEST_LDAP_BIND_DN"],
        bind_password_file=Path(directory_env["DS01_TEST_LDAP_PASSWORD_FILE"]),
    )


@pytest.fixture
def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DS01_LOG_DIR", str(tmp_path / "log"))
    return tmp_path / "log" / "events.jsonl"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "bind.password"
    path.write_text("s3cret-that-must-not-leak\n")
    path.chmod(0o600)
    return path


def _logged(events: Path) -> list[dict[str, Any]]:
    if not events.exists():
        return []
    return [json.loads(line) for line in events.read_text().splitlines()]


def _nss_groups(entry: pwd.struct_passwd) -> set[str]:
    return {grp.getgrgid(gid).gr_name for gid in os.getgrouplist(entry.pw_name, entry.pw_gid)}


def _only_fallback_line(events: Path) -> str:
    lines = events.read_text().splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["type"] == "identity.ldap_fallback"
    assert record["source"] == "identity"
    return lines[0]


# --- LDAP up ---------------------------------------------------------------------------------------------


def test_ldap_only_user_gets_member_uid_groups(anonymous: LdapSettings, events: Path) -> None:
    user = resolve_user(20001, anonymous)
    assert user == User(
        uid=20001,
        name="jane.doe@lab.example",
        sanitized=sanitize_username("jane.doe@lab.example"),
        groups=("lab-users", "ml-researchers"),
        gid=20000,
        gids=(20000, 20010),
        home="",  # known only to the directory: no home on this host, so no bind mounts
    )
    assert user.sanitized.startswith("jane_doe_lab_example_")
    assert _logged(events) == []


def test_ldap_only_user_gets_group_of_names_groups(bound: LdapSettings, events: Path) -> None:
    user = resolve_user(20002, replace(bound, group_attribute="member"))
    assert user.name == "248835@hertie-school.lan"
    assert user.sanitized.startswith("248835_hertie_school_lan_")
    assert user.groups == ("gpu-students", "lab-users")
    assert _logged(events) == []


def test_member_uid_setting_ignores_dn_membership(anonymous: LdapSettings) -> None:
    assert resolve_user(20002, anonymous).groups == ("lab-users",)


def test_local_user_gains_ldap_group(local_user: pwd.struct_passwd, anonymous: LdapSettings) -> None:
    user = resolve_user(local_user.pw_uid, anonymous)
    assert user.name == LOCAL_USER
    assert user.sanitized == LOCAL_USER
    assert "ml-students" not in _nss_groups(local_user)
    assert set(user.groups) == _nss_groups(local_user) | {"ml-students"}
    assert list(user.groups) == sorted(set(user.groups))


def test_bound_search_sees_the_same(local_user: pwd.struct_passwd, bound: LdapSettings, events: Path) -> None:
    assert "ml-students" in resolve_user(local_user.pw_uid, bound).groups
    assert _logged(events) == []


def test_resolve_name(local_user: pwd.struct_passwd, anonymous: LdapSettings) -> None:
    assert resolve_name("jane.doe@lab.example", anonymous).uid == 20001
    ravi = resolve_name("RAVI", anonymous)
    assert (ravi.uid, ravi.name, ravi.groups) == (20003, "ravi", ("faculty-staff", "lab-users"))
    assert resolve_name(LOCAL_USER, anonymous) == resolve_user(local_user.pw_uid, anonymous)


@pytest.mark.parametrize("name", ["*", "ravi)(uid=*", "jane*"])
def test_filter_characters_in_names_match_nothing(name: str, anonymous: LdapSettings) -> None:
    with pytest.raises(UnknownUser):
        resolve_name(name, anonymous)


def test_unknown_uid_is_a_clear_error(anonymous: LdapSettings, events: Path) -> None:
    with pytest.raises(UnknownUser) as raised:
        resolve_user(UNKNOWN_UID, anonymous)
    message = str(raised.value)
    assert f"uid {UNKNOWN_UID}" in message
    assert anonymous.uri in message
    assert "getent passwd" in message
    assert raised.value.exit_code == EXIT_FAILURE
    assert _logged(events) == []


# --- LDAP failing ----------------------------------------------------------------------------------------


def test_server_down_falls_back_to_nss(local_user: pwd.struct_passwd, secret_file: Path, events: Path) -> None:
    down = LdapSettings(uri="ldap://127.0.0.1:1", base_dn="dc=ds01,dc=test", bind_dn="cn=admin,dc=ds01,dc=test",
                        bind_password_file=secret_file)
    user = resolve_name(LOCAL_USER, down)
    assert user.uid == local_user.pw_uid
    assert set(user.groups) == _nss_groups(local_user)
    line = _only_fallback_line(events)
    record = json.loads(line)
    assert record["user"] == LOCAL_USER
    assert record["details"]["uri"] == "ldap://127.0.0.1:1"
    assert "contact" in record["details"]["error"]
    assert "s3cret" not in line


def test_server_down_and_ldap_only_uid_is_unknown(events: Path) -> None:
    down = LdapSettings(uri="ldap://127.0.0.1:1", base_dn="dc=ds01,dc=test")
    with pytest.raises(UnknownUser, match="could not be asked"):
        resolve_user(20001, down)
    assert json.loads(_only_fallback_line(events))["user"] is None


def test_wrong_password_falls_back(
    local_user: pwd.struct_passwd, bound: LdapSettings, secret_file: Path, events: Path
) -> None:
    user = resolve_user(local_user.pw_uid, replace(bound, bind_password_file=secret_file))
    assert "ml-students" not in user.groups
    assert set(user.groups) == _nss_groups(local_user)
    line = _only_fallback_line(events)
    assert "Invalid credentials" in json.loads(line)["details"]["error"]
    assert "s3cret" not in line


def test_unreadable_password_file_falls_back(bound: LdapSettings, tmp_path: Path, events: Path) -> None:
    user = resolve_user(0, replace(bound, bind_password_file=tmp_path / "missing"))
    assert user.name == "root"
    assert "password file" in json.loads(_only_fallback_line(events))["details"]["error"]


def test_silent_server_falls_back_at_the_deadline(local_user: pwd.struct_passwd, events: Path) -> None:
    # Accepts connections (the kernel completes them from the backlog) and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings = LdapSettings(uri=f"ldap://127.0.0.1:{port}", base_dn="dc=ds01,dc=test", timeout_seconds=0.5)
        user = resolve_user(local_user.pw_uid, settings)
    assert set(user.groups) == _nss_groups(local_user)
    assert "no answer within 0.5 s" in json.loads(_only_fallback_line(events))["details"]["error"]


# --- NSS only ----------------------------------------------------------------------------------------------


def test_root_from_nss() -> None:
    root = resolve_user(0)
    assert (root.uid, root.name, root.sanitized) == (0, "root", "root")
    assert "root" in root.groups
    assert set(root.groups) == _nss_groups(pwd.getpwuid(0))
    assert list(root.groups) == sorted(set(root.groups))
    assert resolve_name("root") == root


def test_unknown_uid_without_ldap() -> None:
    with pytest.raises(UnknownUser, match="no LDAP directory is configured"):
        resolve_user(UNKNOWN_UID)


@pytest.mark.parametrize("uid", [-1, 2**32 - 1, 2**40])
def test_impossible_uids_are_unknown(uid: int) -> None:
    with pytest.raises(UnknownUser, match="not a valid user id"):
        resolve_user(uid)


def test_empty_name_is_unknown() -> None:
    with pytest.raises(UnknownUser):
        resolve_name("")


@pytest.mark.parametrize(
    "changes",
    [
        {"group_attribute": "owner"},
        {"bind_dn": "cn=admin,dc=ds01,dc=test"},
        {"timeout_seconds": 0},
    ],
)
def test_bad_settings_are_config_errors(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        LdapSettings(uri="ldap://127.0.0.1:3890", base_dn="dc=ds01,dc=test", **changes)
