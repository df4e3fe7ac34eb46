"""`ds01 bare-metal` on real accounts: the test user carol (and bob) in a scratch group, real gpasswd and groupadd.

The configured group is a scratch one (ds01-bmtest), created by the first grant and deleted afterwards, so the
host's ds01-gpu group is never disturbed.
"""

from __future__ import annotations

import contextlib
import grp
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ds01.cli import new_parser, run
from ds01.cli.admin import baremetal as baremetal_cmd
from ds01.config import BareMetalSettings, load_config
from ds01.errors import Ds01Error
from ds01.ops import baremetal
from ds01.paths import Paths, paths_from_env
from tests.conftest import REPO, Testbed

GROUP = "ds01-bmtest"


def members(group: str = GROUP) -> set[str]:
    try:
        return set(grp.getgrnam(group).gr_mem)
    except KeyError:
        return set()


def drop_group() -> None:
    with contextlib.suppress(KeyError):
        grp.getgrnam(GROUP)
        subprocess.run(["groupdel", GROUP], check=True, capture_output=True)


@dataclass
class Env:
    paths: Paths
    settings: BareMetalSettings

    def events(self, kind: str) -> list[dict[str, Any]]:
        log = self.paths.log_dir / "events.jsonl"
        found = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return [event for event in found if event["type"] == kind]

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.paths.state_dir / baremetal.STATE_NAME).read_text()))


@pytest.fixture
def env(testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """A config naming the scratch group, private state and log dirs; the group is gone before and after."""
    config = tmp_path / "resource-limits.yaml"
    config.write_text((REPO / "config/resource-limits.yaml").read_text().replace(
        "group: ds01-gpu", f"group: {GROUP}"))
    monkeypatch.setenv("DS01_CONFIG", str(config))
    monkeypatch.setenv("DS01_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DS01_LOG_DIR", str(tmp_path / "log"))
    drop_group()
    try:
        yield Env(paths_from_env(), load_config().bare_metal)
    finally:
        drop_group()


def ds01(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = new_parser("ds01", "test", "ds01 bare-metal list")
    baremetal_cmd.register(parser.add_subparsers())
    code = run(parser, ["bare-metal", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_grant_list_revoke(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    started = datetime.now(UTC)
    code, out, err = ds01(capsys, "grant", "carol", "--for", "2h")
    assert (code, err) == (0, "")
    assert "granted carol membership of ds01-bmtest for 2h" in out
    assert grp.getgrnam(GROUP).gr_gid < 1000  # created on demand, as a system group
    assert members() == {"carol"}
    until = datetime.fromisoformat(env.state()["grants"]["carol"]["until"].replace("Z", "+00:00"))
    assert timedelta(hours=2) - timedelta(seconds=5) <= until - started <= timedelta(hours=2, seconds=5)

    code, out, _ = ds01(capsys, "list", "--format", "json")
    listed = json.loads(out)
    assert code == 0 and listed["group"] == GROUP
    assert [(m["user"], m["managed"], m["status"]) for m in listed["members"]] == [("carol", True, "active")]
    code, out, _ = ds01(capsys, "list")
    assert out.splitlines()[0].split() == ["USER", "UNTIL", "LEFT", "GRANTED", "BY", "STATUS"]
    assert out.splitlines()[1].split()[0] == "carol" and out.splitlines()[1].endswith("active")

    code, out, err = ds01(capsys, "revoke", "carol", "--reason", "done with the benchmark")
    assert (code, err) == (0, "")
    assert members() == set()
    assert env.state()["grants"] == {}
    (granted,) = env.events("bare_metal.grant")
    assert granted["user"] == "carol" and granted["details"]["until"] == _iso(until)
    (revoked,) = env.events("bare_metal.revoke")
    assert revoked["user"] == "carol" and revoked["details"]["reason"] == "done with the benchmark"

    code, _, err = ds01(capsys, "revoke", "carol")
    assert code == 1 and "carol has no bare-metal grant" in err


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def test_the_default_duration_applies_and_a_second_grant_extends(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    started = datetime.now(UTC)
    assert ds01(capsys, "grant", "carol")[0] == 0
    first = datetime.fromisoformat(env.state()["grants"]["carol"]["until"].replace("Z", "+00:00"))
    assert abs((first - started) - timedelta(seconds=env.settings.default_duration_seconds)) < timedelta(seconds=5)
    assert ds01(capsys, "grant", "carol", "--for", "3d")[0] == 0
    second = datetime.fromisoformat(env.state()["grants"]["carol"]["until"].replace("Z", "+00:00"))
    assert abs((second - started) - timedelta(days=3)) < timedelta(seconds=5)
    assert members() == {"carol"}
    assert [e["details"]["extended"] for e in env.events("bare_metal.grant")] == [False, True]
    assert ds01(capsys, "revoke", "carol")[0] == 0


def test_longer_than_the_maximum_is_a_usage_error(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = ds01(capsys, "grant", "carol", "--for", "8d")
    assert code == 2
    assert "longer than bare_metal.max_duration (1w)" in err
    code, _, err = ds01(capsys, "grant", "carol", "--for", "soon")
    assert code == 2 and "--for" in err
    assert members() == set()
    assert not (env.paths.state_dir / baremetal.STATE_NAME).exists()
    assert env.events("bare_metal.grant") == []


def test_an_unknown_user_is_a_clear_error(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = ds01(capsys, "grant", "no-such-user-here")
    assert code == 1
    assert "no user named 'no-such-user-here'" in err
    assert "internal error" not in err


def test_expiry_with_an_injected_clock(env: Env) -> None:
    start = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    baremetal.grant(env.paths, env.settings, "carol", start, 3600)
    assert members() == {"carol"}
    assert baremetal.expire_grants(start + timedelta(minutes=59), env.paths, env.settings).expired == ()
    assert members() == {"carol"}
    (gone,) = [m for m in baremetal.members(env.paths, env.settings) if m.user == "carol"]
    assert gone.status(start + timedelta(hours=2)).startswith("expired")

    report = baremetal.expire_grants(start + timedelta(hours=1), env.paths, env.settings)
    assert [g.user for g in report.expired] == ["carol"] and report.failed == ()
    assert members() == set()
    assert env.state()["grants"] == {}
    (expired,) = env.events("bare_metal.expire")
    assert expired["user"] == "carol" and expired["details"]["until"] == "2030-01-01T13:00:00Z"
    assert baremetal.expire_grants(start + timedelta(hours=3), env.paths, env.settings).expired == ()


def test_due_grants_are_listed_without_being_touched(env: Env) -> None:
    now = datetime.now(UTC)
    baremetal.grant(env.paths, env.settings, "carol", now, 60)
    assert baremetal.due_grants(env.paths, env.settings, now) == []
    assert [g.user for g in baremetal.due_grants(env.paths, env.settings, now + timedelta(minutes=5))] == ["carol"]
    assert members() == {"carol"}
    report = baremetal.expire_grants(now + timedelta(minutes=5), env.paths, env.settings)
    assert [g.user for g in report.expired] == ["carol"]
    assert members() == set()


def test_members_ds01_did_not_add_are_reported_and_left_alone(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(["groupadd", "--system", GROUP], check=True)
    subprocess.run(["gpasswd", "--add", "bob", GROUP], check=True, capture_output=True)
    now = datetime.now(UTC)
    baremetal.grant(env.paths, env.settings, "carol", now, 60)

    code, out, _ = ds01(capsys, "list", "--json")
    listed = {m["user"]: m for m in json.loads(out)["members"]}
    assert listed["bob"]["managed"] is False and listed["bob"]["status"] == "not managed by ds01"
    assert listed["carol"]["managed"] is True

    report = baremetal.expire_grants(now + timedelta(days=30), env.paths, env.settings)
    assert [g.user for g in report.expired] == ["carol"]
    assert members() == {"bob"}

    code, _, err = ds01(capsys, "revoke", "bob")
    assert code == 1 and "not through ds01" in err
    code, _, err = ds01(capsys, "grant", "bob")
    assert code == 1 and "gpasswd --delete bob ds01-bmtest" in err
    assert members() == {"bob"}


def test_naive_time_is_refused(env: Env) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        baremetal.expire_grants(datetime(2030, 1, 1), env.paths, env.settings)  # naive on purpose
    with pytest.raises(Ds01Error):
        baremetal.revoke(env.paths, env.settings, "carol")
