"""resource-limits.yaml: strict loading with file:line messages, and resolution defaults -> group -> user."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import pytest

from ds01.config import LIMIT_KEYS, effective_limits, load_config
from ds01.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "resource-limits.yaml"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DS01 = str(Path(sys.executable).parent / "ds01")

BASE = """\
version: 1
default_group: student
defaults:
  gpu_quota: 1
  max_gpus_per_container: 1
  cpus: 4
  memory: 32g
  max_runtime: 24h
groups:
  student:
    system_groups: [students]
    gpu_quota: 0.5
  researcher:
    system_groups: [researchers, students]
    gpu_quota: 2
    cpus: 16
users:
  pat:
    max_runtime: 72h
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "limits.yaml"
    path.write_text(text)
    return path


def test_shipped_config_is_valid_and_every_group_resolves() -> None:
    config = load_config(SHIPPED)
    assert [g.name for g in config.groups] == ["admin", "faculty", "researcher", "student"]
    assert config.default_group == "student"
    admin = effective_limits(config, "opsadmin", ["ds01-admin"], NOW)
    assert admin.is_admin and admin.group == "admin" and admin.limits.max_runtime_seconds is None


def test_resolution_defaults_group_user_changes_only_named_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    pat = effective_limits(config, "pat", ["researchers"], NOW)
    assert pat.group == "researcher"
    assert pat.limits.gpu_quota == 2  # from the group, kept despite the user override
    assert pat.limits.cpus == 16  # group
    assert pat.limits.memory_bytes == 32 * 2**30  # defaults
    assert pat.limits.max_runtime_seconds == 72 * 3600  # user
    other = effective_limits(config, "sam", ["nobody-group"], NOW)
    assert other.group == "student" and other.limits.gpu_quota == Fraction(1, 2)


def test_first_matching_group_in_file_order_wins(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert effective_limits(config, "kim", ["students"], NOW).group == "student"


def test_user_can_pin_a_group(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + "  lee:\n    group: researcher\n"))
    assert effective_limits(config, "lee", ["students"], NOW).group == "researcher"


def test_admins_by_user_and_by_group(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + "admins:\n  users: [root]\n  groups: [wheel]\n"))
    assert effective_limits(config, "root", [], NOW).is_admin
    assert effective_limits(config, "kim", ["wheel"], NOW).is_admin
    assert not effective_limits(config, "kim", ["students"], NOW).is_admin


def test_exemption_lifts_limit_until_expiry(tmp_path: Path) -> None:
    text = BASE + ("exemptions:\n  - user: pat\n    exempt_from: [max_runtime]\n    expires: 2026-11-30\n"
                   "    reason: deadline\n")
    config = load_config(write(tmp_path, text))
    assert effective_limits(config, "pat", [], NOW).limits.max_runtime_seconds is None
    later = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)  # the date is good through the end of that day
    assert effective_limits(config, "pat", [], later).limits.max_runtime_seconds == 72 * 3600
    assert effective_limits(config, "pat", [], datetime(2026, 11, 30, 23, 59, tzinfo=UTC)).exemptions


def test_units_are_converted_at_load(tmp_path: Path) -> None:
    text = BASE.replace("gpu_quota: 0.5", "gpu_quota: 3/7\n    shm_size: 512m\n    idle_timeout: 1h30m")
    limits = effective_limits(load_config(write(tmp_path, text)), "x", ["students"], NOW).limits
    assert limits.gpu_quota == Fraction(3, 7)
    assert limits.shm_size_bytes == 512 * 2**20
    assert limits.idle_timeout_seconds == 5400


@pytest.mark.parametrize(
    ("replace", "by", "line", "key", "words"),
    [
        ("  cpus: 4\n", "  cpus: 4\n  gpu_qouta: 2\n", 7, "defaults.gpu_qouta", "did you mean 'gpu_quota'"),
        ("  cpus: 4\n", "  cpus: -4\n", 6, "defaults.cpus", "positive"),
        ("  memory: 32g\n", "  memory: lots\n", 7, "defaults.memory", "not a size"),
        ("  max_runtime: 24h\n", "  max_runtime: 24 hours\n", 8, "defaults.max_runtime", "not a duration"),
        ("    gpu_quota: 0.5\n", "    gpu_quota: -1\n", 12, "groups.student.gpu_quota", "negative"),
        ("    gpu_quota: 2\n", "    gpu_quota: [2]\n", 15, "groups.researcher.gpu_quota", "GPU-equivalents"),
        ("  pat:\n", "  pat:\n    group: wizards\n", 19, "users.pat.group", "no ds01 group"),
        ("default_group: student\n", "default_group: nobody\n", 2, "default_group", "not one of the groups"),
        ("  cpus: 4\n", "  cpus: 4\n  cpus: 8\n", 7, "defaults.cpus", "duplicate key"),
        ("version: 1\n", "version: 2\n", 1, "version", "must be 1"),
        ("  max_gpus_per_container: 1\n", "  max_gpus_per_container: true\n", 5, "defaults.max_gpus_per_container",
         "whole number"),
    ],
)
def test_invalid_config_names_file_line_and_key(
    tmp_path: Path, replace: str, by: str, line: int, key: str, words: str
) -> None:
    assert replace in BASE
    path = write(tmp_path, BASE.replace(replace, by, 1))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: {key}:"), message
    assert words in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("version: 1\ndefaults: [\n", "not valid YAML"),
        ("- just\n- a list\n", "mapping"),
        ("version: 1\nidentity:\n  source: ldap\n", "ldap section"),
        ("version: 1\nidentity:\n  source: ldap\n  ldap:\n    uri: ldap://x\n    base_dn: dc=x\n"
         "    group_attribute: owner\n", "memberUid"),
        ("version: 1\nallocation:\n  strategy: random\n", "spread"),
        ("version: 1\nexemptions:\n  - user: a\n    exempt_from: [gpu_quota]\n    expires: 2027-01-01\n"
         "    reason: r\n", "cannot be exempted"),
        ("version: 1\nexemptions:\n  - user: a\n    exempt_from: [max_runtime]\n    expires: soon\n"
         "    reason: r\n", "not a date"),
    ],
)
def test_other_invalid_configs(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert str(tmp_path / "limits.yaml") in str(error.value)
    assert words in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "absent.yaml")


def test_ldap_identity_section_is_typed(tmp_path: Path) -> None:
    text = ("version: 1\nidentity:\n  source: ldap\n  ldap:\n    uri: ldap://127.0.0.1:3890\n"
            "    base_dn: dc=ds01,dc=test\n    group_attribute: member\n    timeout: 2s\n")
    ldap = load_config(write(tmp_path, text)).ldap
    assert ldap is not None
    assert (ldap.uri, ldap.base_dn, ldap.group_attribute, ldap.timeout_seconds) == (
        "ldap://127.0.0.1:3890", "dc=ds01,dc=test", "member", 2)


def test_every_limit_key_is_settable_per_user(tmp_path: Path) -> None:
    """No key is read and ignored: each one, set on a user, changes that user's effective value."""
    samples = {"gpu_quota": "5", "max_gpus_per_container": "7", "allow_full_gpu": "false",
               "allowed_mig_profiles": "[1g.10gb]", "max_containers": "9", "cpus": "3", "memory": "3g",
               "shm_size": "3g", "pids_limit": "333", "user_cpus": "33", "user_memory": "33g",
               "max_runtime": "33h", "idle_timeout": "33m", "gpu_hold_after_stop": "3m",
               "ulimits": "{memlock: unlimited}", "max_execs": "7", "max_published_ports": "2",
               "max_networks": "2", "image_storage": "20g", "max_queued_jobs": "4"}
    assert set(samples) == {key.name for key in LIMIT_KEYS}
    lines = "".join(f"    {name}: {value}\n" for name, value in samples.items())
    config = load_config(write(tmp_path, f"version: 1\nusers:\n  pat:\n{lines}"))
    base = effective_limits(config, "someone", [], NOW).limits
    pat = effective_limits(config, "pat", [], NOW).limits
    for key in LIMIT_KEYS:
        assert getattr(pat, key.field) != getattr(base, key.field), key.name
    assert pat.ulimits["nofile"] == base.ulimits["nofile"] == 1048576  # merged by name
    assert pat.ulimits["memlock"] is None


def test_max_networks_resolves_defaults_group_user(tmp_path: Path) -> None:
    text = BASE.replace("  max_runtime: 24h\n", "  max_runtime: 24h\n  max_networks: 3\n").replace(
        "    cpus: 16\n", "    cpus: 16\n    max_networks: 6\n").replace(
        "    max_runtime: 72h\n", "    max_runtime: 72h\n    max_networks: 9\n")
    config = load_config(write(tmp_path, text))
    assert effective_limits(config, "kim", ["students"], NOW).limits.max_networks == 3
    assert effective_limits(config, "lee", ["researchers"], NOW).limits.max_networks == 6
    assert effective_limits(config, "pat", ["researchers"], NOW).limits.max_networks == 9
    assert effective_limits(load_config(write(tmp_path, BASE)), "kim", [], NOW).limits.max_networks == 4


def test_max_networks_counts_the_users_own_network_so_is_at_least_one(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("  cpus: 4\n", "  cpus: 4\n  max_networks: 0\n"))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}:7: defaults.max_networks:")
    assert "not a whole number of at least 1" in str(error.value)


@pytest.mark.parametrize(("text", "message"), [
    ("{nofiles: 10}", "'nofiles' is not a ulimit name"),
    ("{nofile: -1}", "is not a number, a size like 64m, or 'unlimited'"),
    ("[nofile]", "is not a map of ulimit names"),
])
def test_bad_ulimits_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, f"version: 1\ndefaults:\n  ulimits: {text}\n"))


def test_config_check_cli_exit_codes(tmp_path: Path) -> None:
    good = subprocess.run([DS01, "config", "check", str(SHIPPED)], capture_output=True, text=True, check=False)
    assert good.returncode == 0, good.stderr
    assert "valid" in good.stdout
    bad_text = SHIPPED.read_text().replace("  pids_limit: 4096\n", "  pids_limit: 4096\n  gpu_quotas: 2\n")
    bad = write(tmp_path, bad_text)
    expected_line = bad_text.splitlines().index("  gpu_quotas: 2") + 1
    result = subprocess.run([DS01, "config", "check", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert f"{bad}:{expected_line}: defaults.gpu_quotas: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_images_section_is_strict_and_documented_defaults_apply(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "version: 1\n"))
    assert config.images.allowed_registries is None and config.images.max_context_size_bytes == 4 * 2**30
    assert config.images.prune_after_seconds == 7 * 24 * 3600
    config = load_config(write(tmp_path, "version: 1\nimages:\n  allowed_registries: [docker.io, nvcr.io]\n"
                                         "  max_context_size: 2g\n  prune_after: 3d\n"))
    assert config.images.allowed_registries == frozenset({"docker.io", "nvcr.io"})
    assert (config.images.max_context_size_bytes, config.images.prune_after_seconds) == (2 * 2**30, 3 * 86400)
    for bad, said in (("allowed_registries: [Docker.IO]", "is not a registry host"),
                      ("allowed_registries: docker.io", "is not a list of registry hosts"),
                      ("max_context_size: lots", "images.max_context_size"),
                      ("prune_afterr: 3d", "prune_after")):
        with pytest.raises(ConfigError, match=said):
            load_config(write(tmp_path, f"version: 1\nimages:\n  {bad}\n"))


def test_the_scheduler_section_and_the_groups_share_and_priority(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "version: 1\n"))
    assert (config.scheduler.weight_fairshare, config.scheduler.weight_age) == (1000.0, 500.0)
    assert config.scheduler.default_wait_seconds == 3600 and config.scheduler.usage_half_life_seconds == 7 * 86400
    config = load_config(write(tmp_path, (
        "version: 1\nscheduler:\n  weight_age: 0\n  max_age: 2d\n  default_wait: 30m\ndefault_group: lab\n"
        "groups:\n  lab:\n    share: 2.5\n    priority: -50\n    gpu_quota: 2\n  other: {}\n")))
    assert (config.scheduler.weight_age, config.scheduler.max_age_seconds) == (0.0, 2 * 86400)
    assert config.scheduler.default_wait_seconds == 1800
    lab, other = config.groups
    assert (lab.share, lab.priority, lab.overrides) == (2.5, -50.0, {"gpu_quota": 2})
    assert (other.share, other.priority) == (1.0, 0.0)
    for bad, said in (("scheduler:\n  weight_fairshare: -1\n", "scheduler.weight_fairshare"),
                      ("scheduler:\n  default_wait: 0s\n", "scheduler.default_wait"),
                      ("scheduler:\n  half_life: 1d\n", "half_life"),
                      ("groups:\n  lab:\n    share: 0\n", "groups.lab.share"),
                      ("groups:\n  lab:\n    priority: high\n", "groups.lab.priority"),
                      ("users:\n  ann:\n    share: 2\n", "users.ann")):
        with pytest.raises(ConfigError, match=said):
            load_config(write(tmp_path, f"version: 1\ndefault_group: lab\n{bad}"))
