"""The allow-list (ds01.proxy.rules) against the Docker API's own field list, and the policy's invariants over bodies
made of the API's real fields, with valid and hostile values, in any key case."""

from __future__ import annotations

import importlib
import json
import posixpath
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ds01 import labels
from ds01.errors import Denied
from ds01.proxy import allowlist, bodies, policy, resources, rules
from ds01.proxy.policy import Facts, ResolvedPath
from tests.unit.test_policy import ALICE, CGROUP, ENGINE_SOCKETS, GIB, LIMITS, NOW, SECURITY

API = json.loads((Path(__file__).resolve().parents[1] / "data" / "docker_api_fields.json").read_text())["objects"]
# Fields real clients send that no API version lists; the engine ignores them.
CLIENT_ONLY = {"ExecConfig": {"Container"}}  # docker-py's exec_create


# --- the table covers the API, and nothing but the API -----------------------------------------------------------

@pytest.mark.parametrize("table", sorted(API))
def test_every_field_of_the_api_has_a_rule(table: str) -> None:
    assert table in rules.TABLES, f"no table for the API object {table}"
    missing = sorted(set(API[table]) - set(rules.TABLES[table]))
    assert not missing, f"{table}: fields of the API with no rule: {missing}"
    invented = sorted(set(rules.TABLES[table]) - set(API[table]) - CLIENT_ONLY.get(table, set()))
    assert not invented, f"{table}: rules for fields the API does not have: {invented}"


@pytest.mark.parametrize("table", sorted(API))
def test_nested_objects_are_read_through_their_own_table(table: str) -> None:
    for name, spec in API[table].items():
        nested = spec.get("object") or spec.get("items") or (spec.get("values") or "").removesuffix("[]") or None
        if nested in API:
            assert rules.TABLES[table][name].of == nested, f"{table}.{name} is not read through {nested}"


def test_every_rule_says_why() -> None:
    for table, fields in rules.TABLES.items():
        for name, rule in fields.items():
            assert rule.why.strip(), f"{table}.{name} has no reason"


@pytest.mark.parametrize(("body", "where"), [
    ({"Image": "busybox", "Hostnmae": "x"}, "Hostnmae"),
    ({"Image": "busybox", "HostConfig": {"Privileged": False, "Rootless": True}}, "HostConfig.Rootless"),
    ({"Image": "busybox", "HostConfig": {"Mounts": [{"Type": "volume", "Target": "/v",
                                                     "VolumeOptions": {"Driver": "x"}}]}},
     "HostConfig.Mounts[0].VolumeOptions.Driver"),
    ({"Image": "busybox", "NetworkingConfig": {"EndpointsConfig": {"net": {"Sysctls": {}}}}},
     "NetworkingConfig.EndpointsConfig[net].Sysctls"),
    ({"Image": "busybox", "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8080", "Proto": "x"}]}}},
     "HostConfig.PortBindings[80/tcp][0].Proto"),
])
def test_a_field_with_no_rule_is_refused_with_its_name(body: dict[str, Any], where: str) -> None:
    with pytest.raises(Denied) as info:
        allowlist.canonical(body, "ContainerConfig")
    assert info.value.reason == "unknown_field"
    assert info.value.message.startswith(f"{where} is not a field the ds01 proxy knows")


def test_keys_are_rewritten_to_the_apis_spelling() -> None:
    long_s = "\u017f"
    body = {"image": "busybox", f"Ho{long_s}tconfig": {"shmsize": 1, "MOUNTS": [{"type": "tmpfs", "target": "/t"}]},
            "labels": {"Keep.As.Is": "1"}}
    assert allowlist.canonical(body, "ContainerConfig") == {
        "Image": "busybox", "HostConfig": {"ShmSize": 1, "Mounts": [{"Type": "tmpfs", "Target": "/t"}]},
        "Labels": {"Keep.As.Is": "1"}}


def test_two_spellings_of_one_field_are_refused() -> None:
    with pytest.raises(Denied, match="given twice"):
        allowlist.canonical({"Privileged": False, "privileged": True}, "HostConfig")


# --- bodies made of the API's real fields ------------------------------------------------------------------------

HOSTILE_TEXT = ["host", "container:bobs", "container:mine", "bobs-net", "my-net", "", "/", "/dev/shm", "unconfined",
                "seccomp=unconfined", "apparmor:unconfined", "rshared", "syslog", "always", "unless-stopped",
                "on-failure", "nvidia", "ds01.user", "ds01.protected", "/home/alice/work", "/home/bob",
                "/var/run/docker.sock", "1001", "0:0", "1000:1000", "bobs-data", "my-data", "80", "8080", "json-file",
                "size=100g", "all", "runc", "private", "gpu"]
HOSTILE_INTS = [-1000, -1, 0, 1, 99, 1024, 10**5, 4 * 10**9, 16 * GIB, 2**62]
TEXT = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=6))
INT = st.one_of(st.sampled_from(HOSTILE_INTS), st.integers(-2, 10**6))
LABEL_KEYS = st.sampled_from([labels.USER, labels.PROTECTED, labels.REQUEST_MIG, "DS01.Uid",
                              "com.example", "x"])
SOURCES = ["/home/alice", "/home/alice/work", "/etc", "/home/alice/link", "my-data", "bobs-data", "/data/shared"]


def any_case(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.lower(), name.upper(), name.swapcase()])


# Fields whose values matter to the policy get values it must tell apart; the rest get values by their type.
SPECIAL_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "Binds": st.lists(st.sampled_from(SOURCES).map(lambda s: f"{s}:/target"), max_size=2),
    "Source": st.sampled_from(SOURCES),
    "Target": st.sampled_from(["/target", "/dev/shm", "/workspace", "/etc"]),
    **dict.fromkeys(("Labels", "Annotations", "StorageOpt", "Sysctls", "Options", "DriverOpts", "Config"),
                    st.dictionaries(LABEL_KEYS, TEXT, max_size=2)),
    "Tmpfs": st.dictionaries(st.sampled_from(["/scratch", "/dev/shm", "/t"]),
                             st.sampled_from(["", "size=1g", "size=100g", "mode=1777"]), max_size=2),
    "Env": st.lists(st.sampled_from(["NVIDIA_VISIBLE_DEVICES=all", "CUDA_VISIBLE_DEVICES=0", "A=1",
                                     "nvidia_driver_capabilities=all"]), max_size=3),
}
BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "boolean": st.one_of(st.booleans(), st.none()),
    "integer": st.one_of(INT, st.none()),
    "array": st.lists(st.one_of(TEXT, INT), max_size=2),
    "map": st.dictionaries(TEXT, TEXT, max_size=2),
    "object": st.dictionaries(TEXT, TEXT, max_size=2),
}


def value_for(name: str, spec: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    nested = spec.get("object") or spec.get("items") or (spec.get("values") or "").removesuffix("[]") or None
    if name in SPECIAL_VALUES:
        return SPECIAL_VALUES[name]
    if nested not in API or depth >= 3:
        return BY_TYPE.get(spec["type"], st.one_of(TEXT, st.none()))
    inner = body_of(nested, depth + 1)
    if spec["type"] == "array":
        return st.lists(inner, max_size=2)
    if spec["type"] == "map":
        keys = st.sampled_from(["80/tcp", "my-net", "bobs-net", "bridge"])
        return st.dictionaries(keys, st.lists(inner, max_size=2) if nested == "PortBinding" else inner, max_size=2)
    return inner


def body_of(table: str, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    fields = API[table]

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        chosen = draw(st.lists(st.sampled_from(sorted(fields)), max_size=6, unique=True)) if fields else []
        body: dict[str, Any] = {}
        for name in chosen:
            body[draw(any_case(name))] = draw(value_for(name, fields[name], depth))
        return body
    return build()


def resolved(path: str) -> ResolvedPath:
    return ResolvedPath("/etc" if path == "/home/alice/link" else path, False)


PROPERTY_FACTS = Facts({s: resolved(s) for s in SOURCES if s.startswith("/")}, {"mine": "alice", "bobs": "bob"},
                       {"my-data": "alice", "bobs-data": "bob"}, ENGINE_SOCKETS,
                       image_labels={labels.PROTECTED: "true"}, image_env=("NVIDIA_VISIBLE_DEVICES=all",),
                       network_owners={"my-net": "alice", "bobs-net": "bob"})
OWNED_SOURCES = {"/home/alice", "/home/alice/work", "/data/shared", "my-data"}


def spelled_as_api(body: Any, table: str) -> bool:
    """Every key of a body, nested ones too, is a field of its table, spelled as the API spells it."""
    fields = rules.TABLES[table]
    for key, value in body.items():
        rule = fields.get(key)
        if rule is None:
            return False
        items = value if rule.shape is rules.Shape.LIST else (
            [v for vs in value.values() for v in (vs if isinstance(vs, list) else [vs])]
            if rule.shape in (rules.Shape.MAP, rules.Shape.MAP_OF_LISTS) and value else [value])
        if rule.of and value is not None and not all(spelled_as_api(item, rule.of) for item in items if item):
            return False
    return True


def ds01_labels(given: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in given.items() if k.casefold().startswith(labels.LABEL_PREFIX)}


def assert_confined_host(hc: dict[str, Any], memory: int) -> None:
    assert not hc.get("Privileged")
    assert not any(hc.get(mode) == "host" for mode in policy.HOST_MODES)
    assert hc["CgroupParent"] == CGROUP
    assert not hc.get("Devices") and not hc.get("DeviceCgroupRules") and not hc.get("Sysctls")
    assert set(hc.get("CapAdd") or []) <= {"SYS_PTRACE"}
    assert "no-new-privileges:true" in hc["SecurityOpt"]
    assert (hc.get("OomScoreAdj") or 0) >= 0
    assert not hc.get("OomKillDisable") and not hc.get("CpuRealtimeRuntime")
    assert 0 < memory <= LIMITS.memory_bytes
    swap = hc.get("MemorySwap")
    assert swap is None or (swap != -1 and swap <= 2 * memory)
    assert 0 < hc["ShmSize"] <= LIMITS.shm_size_bytes and 0 < hc["PidsLimit"] <= LIMITS.pids_limit
    cpus = resources.cpus_asked(hc)
    assert cpus is not None and cpus <= LIMITS.cpus
    for ulimit in hc.get("Ulimits") or []:
        cap = LIMITS.ulimits[ulimit["Name"]]
        assert cap is None or ulimit["Hard"] <= cap
    tmpfs_targets = [*(hc.get("Tmpfs") or {}), *(m["Target"] for m in hc.get("Mounts") or [] if m["Type"] == "tmpfs")]
    assert "/dev/shm" not in {posixpath.normpath(t) for t in tmpfs_targets}
    assert (hc.get("RestartPolicy") or {}).get("Name") in (None, "", "no", "on-failure")
    assert (hc.get("LogConfig") or {}).get("Type") in (None, "", "json-file")
    sources = [b.split(":", 1)[0] for b in hc.get("Binds") or []]
    sources += [m.get("Source") for m in hc.get("Mounts") or [] if m["Type"] in ("bind", "volume") and m.get("Source")]
    assert set(sources) <= OWNED_SOURCES
    assert all(str(v).split(":")[0] == "mine" for v in hc.get("VolumesFrom") or [])
    for mount in hc.get("Mounts") or []:
        volume_labels = ((mount.get("VolumeOptions") or {}).get("Labels")) or {}
        assert ds01_labels(volume_labels) in ({}, {labels.USER: "alice", labels.UID: "1000"})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=body_of("ContainerConfig"), host=body_of("HostConfig"))
def test_a_create_is_refused_or_confined(body: dict[str, Any], host: dict[str, Any]) -> None:
    body = {**{k: v for k, v in body.items() if k.casefold() != "hostconfig"}, "HostConfig": host}
    try:
        parsed = bodies.parse_json_object(json.dumps(body).encode(), "container create body")
        out = policy.plan_create(ALICE, parsed, PROPERTY_FACTS, SECURITY, frozenset(), cgroup_parent=CGROUP,
                                 client_type="docker", created_at=NOW, gpu_gid=None).body
    except Denied:
        return
    assert spelled_as_api(out, "ContainerConfig")
    assert out["User"].startswith("1000:")
    assert_confined_host(out["HostConfig"], out["HostConfig"]["Memory"])
    stamped = ds01_labels(out["Labels"])
    assert set(stamped) == set(labels.KNOWN_LABELS)
    assert (stamped[labels.USER], stamped[labels.UID], stamped[labels.PROTECTED]) == ("alice", "1000", "")
    gpu_env = [e for e in out["Env"] if e.split("=")[0].upper().startswith("NVIDIA_") or
               e.startswith("CUDA_VISIBLE_DEVICES")]
    assert gpu_env == ["NVIDIA_VISIBLE_DEVICES=void"]
    networks = [out["HostConfig"].get("NetworkMode"), *((out.get("NetworkingConfig") or {}).get("EndpointsConfig")
                                                         or {})]
    assert "bobs-net" not in networks


@settings(max_examples=300, deadline=None)
@given(body=body_of("ExecConfig"))
def test_an_exec_is_refused_or_confined(body: dict[str, Any]) -> None:
    try:
        out = policy.check_exec(ALICE, bodies.parse_json_object(json.dumps(body).encode(), "exec"), "", SECURITY)
    except Denied:
        return
    assert spelled_as_api(out, "ExecConfig")
    assert not out.get("Privileged")
    assert out["User"].startswith("1000:")
    assert not any(e.split("=")[0].upper().startswith("NVIDIA_") for e in out.get("Env") or [])


CURRENT = {"NanoCpus": 2 * 10**9, "Memory": 4 * GIB, "PidsLimit": 500, "CpuQuota": 0, "CpuPeriod": 0}


@settings(max_examples=300, deadline=None)
@given(body=body_of("Resources"), current=st.sampled_from([CURRENT, {"CpuQuota": 100_000, "CpuPeriod": 100_000,
                                                                     "Memory": GIB, "PidsLimit": 100}]))
def test_an_update_is_refused_or_leaves_the_container_within_limits(body: dict[str, Any],
                                                                    current: dict[str, Any]) -> None:
    try:
        out = policy.check_update(ALICE, bodies.parse_json_object(json.dumps(body).encode(), "update"), False,
                                  current)
    except Denied:
        return
    assert spelled_as_api(out, "Resources")
    after = resources.merged_for_update(current, out)
    cpus = resources.cpus_asked(after)
    assert cpus is None or cpus <= LIMITS.cpus
    assert (after.get("Memory") or 0) <= LIMITS.memory_bytes
    assert 0 < (after.get("PidsLimit") or 1) <= LIMITS.pids_limit
    assert not out.get("DeviceRequests") and not out.get("Devices") and not out.get("CgroupParent")
    assert (out.get("RestartPolicy") or {}).get("Name") in (None, "", "no", "on-failure")


def test_the_update_arithmetic_uses_the_current_values() -> None:
    """--cpu-quota 100000 --cpu-period 100000 at create, then --cpu-period 1000: 100 CPUs, refused."""
    with pytest.raises(Denied) as info:
        policy.check_update(ALICE, {"CpuPeriod": 1000}, False, {"CpuQuota": 100_000, "CpuPeriod": 100_000})
    assert info.value.reason == "limit_cpus"
    assert "100 CPUs asked for" in info.value.message
    policy.check_update(ALICE, {"CpuPeriod": 50_000}, False, {"CpuQuota": 100_000, "CpuPeriod": 100_000})


def test_every_rule_names_a_check_that_exists() -> None:
    """A rule that says where it is checked (module.function) points at something real."""
    for table, fields in rules.TABLES.items():
        for name, rule in fields.items():
            for module, attribute in re.findall(r"\((\w+)\.(\w+)\)", rule.why):
                found = importlib.import_module(f"ds01.proxy.{module}")
                holder = found.Gate if module == "gate" else found
                assert hasattr(holder, attribute), f"{table}.{name}: {module}.{attribute} does not exist"
