"""ds01.proxy.policy: the create/exec/update policy of the proxy, from hand-built Facts (pure: no engine, no
filesystem)."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ds01 import labels, records
from ds01.config import BUILTIN_DEFAULTS, NetworkSettings, SecuritySettings
from ds01.errors import Denied
from ds01.gpus.placement import GpuRequest
from ds01.proxy import bodies, devices, policy, runas
from ds01.proxy.policy import Facts, ResolvedPath
from ds01.proxy.runas import Caller
from ds01.reasons import Reason

GIB = 2**30
LONG_S = "\u017f"  # LATIN SMALL LETTER LONG S: folds to "s", and Go's JSON decoder matches it to "s" too
KELVIN = "\u212a"  # KELVIN SIGN: folds to "k"

LIMITS = BUILTIN_DEFAULTS.with_overrides({"cpus": 4.0, "memory_bytes": 8 * GIB, "shm_size_bytes": GIB,
                                          "pids_limit": 1000})
ALICE = Caller(uid=1000, user="alice", home="/home/alice", is_admin=False, limits=LIMITS, gid=1000,
               gids=frozenset({1000, 100}), login="alice")
AL = Caller(uid=1003, user="al", home="/home/al", is_admin=False, limits=LIMITS, gid=1003, gids=frozenset({1003}),
            login="al")
ADMIN = Caller(uid=1002, user="boss", home="/home/boss", is_admin=True, limits=LIMITS, gid=1002,
               gids=frozenset({1002}), login="boss")
GPU_GID = 993

SECURITY = SecuritySettings(data_dirs=("/data",), cap_add_allowed=frozenset({"SYS_PTRACE"}))
CGROUP = "ds01-alice.slice"
RESERVED = NetworkSettings().reserved_ports  # the shipped defaults
NOW = "2025-01-02T03:04:05+00:00"
ENGINE_SOCKETS = frozenset({"/run/docker.sock", "/data/ds01/ds01.sock"})
STAMPED = set(labels.KNOWN_LABELS)
NO_GPU_ENV = ["NVIDIA_VISIBLE_DEVICES=void"]  # every create without a grant ends its Env with this


def real(path: str, *, is_socket: bool = False) -> ResolvedPath:
    return ResolvedPath(path, is_socket)


PATHS = {
    "/home/alice": real("/home/alice"),
    "/home/alice/work": real("/home/alice/work"),
    "/home/alice/work/": real("/home/alice/work"),
    "/home/alice/suid": ResolvedPath("/home/alice/suid", False, mount_point="/home", mount_hardened=False),
    "/home/alice/link": real("/etc"),  # a symlink pointing out of the home
    "/home/alice/data-link": real("/data/shared"),  # a symlink into a data directory
    "/home/alice/sock-link": real("/run/docker.sock", is_socket=True),
    "/home/alice/docker.sock": real("/home/alice/docker.sock", is_socket=True),
    "/home/alice/run/containerd.sock": real("/home/alice/run/containerd.sock", is_socket=True),
    "/home/alicewonder": real("/home/alicewonder"),
    "/home/alice/../bob": real("/home/bob"),
    "/home/al": real("/home/al"),
    "/home/al/x": real("/home/al/x"),
    "/data": real("/data"),
    "/data/shared": real("/data/shared"),
    "/data/ds01": real("/data/ds01"),
    "/data/ds01/ds01.sock": real("/data/ds01/ds01.sock", is_socket=True),
    "/datastore": real("/datastore"),
    "/etc": real("/etc"),
    "/": real("/"),
    "/run": real("/run"),
    "/var/run/docker.sock": real("/run/docker.sock", is_socket=True),
}
CONTAINER_OWNERS = {"mine": "alice", "bobs": "bob", "orphan": None}
VOLUME_OWNERS = {"my-data": "alice", "bobs-data": "bob", "orphan-vol": None}
FACTS = Facts(PATHS, CONTAINER_OWNERS, VOLUME_OWNERS, ENGINE_SOCKETS,
              network_owners={"bobs-net": "bob", "my-net": "alice", "shared-net": ""})
LABELLED_IMAGE = Facts(PATHS, CONTAINER_OWNERS, VOLUME_OWNERS, ENGINE_SOCKETS,
                       image_labels={labels.PROTECTED: "true", "ds01.surprise": "x"})


def host(**fields: Any) -> dict[str, Any]:
    return {"Image": "busybox", "HostConfig": fields}


def plan(body: dict[str, Any], *, caller: Caller = ALICE, facts: Facts = FACTS,
         security: SecuritySettings = SECURITY, client_type: str = "docker") -> policy.CreatePlan:
    return policy.plan_create(caller, body, facts, security, RESERVED, cgroup_parent=CGROUP, client_type=client_type,
                              created_at=NOW, gpu_gid=GPU_GID)


def refused(body: dict[str, Any], reason: str, **kwargs: Any) -> Denied:
    with pytest.raises(Denied) as info:
        plan(body, **kwargs)
    assert info.value.reason == reason, info.value.message
    return info.value


def host_config(result: policy.CreatePlan) -> dict[str, Any]:
    return result.body["HostConfig"]


def gpu(**fields: Any) -> dict[str, Any]:
    return {"Driver": "nvidia", "Count": 0, "DeviceIDs": None, "Capabilities": [["gpu"]], **fields}


# --- every denial reason, with its trigger and what the message tells the user ------------------------------------

DENIALS: list[tuple[str, dict[str, Any], str, str]] = [
    ("privileged", host(Privileged=True), "privileged", "can take over the host"),
    ("capability", host(CapAdd=["SYS_ADMIN"]), "capability", "allowed: SYS_PTRACE"),
    ("capability-all", host(CapAdd=["ALL"]), "capability", "allowed: SYS_PTRACE"),
    ("devices", host(Devices=[{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda",
                               "CgroupPermissions": "rwm"}]), "devices", "GPUs are granted with --gpus"),
    ("device-cgroup-rules", host(DeviceCgroupRules=["c 195:* rwm"]), "devices", "GPUs are granted with --gpus"),
    ("device-request-cdi", host(DeviceRequests=[{"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=all"]}]),
     "devices", "(--gpus)"),
    ("device-request-not-gpu", host(DeviceRequests=[{"Driver": "", "Count": 1, "Capabilities": [["tpu"]]}]),
     "devices", "(--gpus)"),
    ("host-namespace", host(PidMode="host"), "host_namespace", "PidMode=host"),
    ("security-opt", host(SecurityOpt=["seccomp=unconfined"]), "security_opt", "changes confinement"),
    ("links", host(Links=["bobs:db"]), "links", "legacy --link is not allowed"),
    ("masked-paths", host(MaskedPaths=[]), "security_opt", "masked or read-only system paths"),
    ("sysctls", host(Sysctls={"kernel.shmmax": "1"}), "sysctls", "sysctls is not allowed"),
    ("cgroup-parent", host(CgroupParent="/"), "cgroup_parent", "leave it out"),
    ("runtime", host(Runtime="nvidia"), "runtime", "GPUs are granted with --gpus"),
    ("mount-outside-home", host(Binds=["/etc:/host-etc"]), "mount_outside_home", "Mount a directory under them"),
    ("mount-missing", host(Binds=["/home/alice/missing:/x"]), "mount_outside_home", "create it in your home first"),
    ("mount-relative", host(Mounts=[{"Type": "bind", "Source": "work", "Target": "/w"}]), "mount_outside_home",
     "must be an absolute path"),
    ("socket", host(Binds=["/var/run/docker.sock:/var/run/docker.sock"]), "socket_mount", "give away the host"),
    ("socket-directory", host(Binds=["/data/ds01:/d"]), "socket_mount", "mount a narrower directory"),
    ("not-owner", host(Binds=["bobs-data:/d"]), "not_owner", "only refer to your own containers and volumes"),
    ("mount-type", host(Mounts=[{"Type": "npipe", "Source": "//./pipe/docker_engine", "Target": "/p"}]),
     "mount_type", "use bind, volume or tmpfs"),
    ("foreign-uid", {"Image": "busybox", "User": "1001"}, "foreign_uid", "containers run as you (uid 1000, gid 1000)"),
    ("foreign-group", host(GroupAdd=["0"]), "foreign_group", "you are not in group 0"),
    ("group-name", host(GroupAdd=["docker"]), "foreign_group", "names a group"),
    ("no-new-privileges-off", host(SecurityOpt=["no-new-privileges=false"]), "security_opt",
     "no-new-privileges is always on"),
    ("mount-not-hardened", host(Binds=["/home/alice/suid:/x"]), "mount_not_hardened", "nosuid,nodev"),
    ("nested-mount", host(Binds=["/home/alice/work:/w"], Tmpfs={"/w/t": ""}), "nested_mount", "side by side"),
    ("system-mount-point", host(Binds=["/home/alice/work:/etc"]), "system_mount_point", "such as /workspace"),
    ("restart-policy-mounts", host(Binds=["/home/alice/work:/w"], RestartPolicy={"Name": "on-failure"}),
     "restart_policy", "the engine's own restarts would skip that"),
    ("restart-policy", host(RestartPolicy={"Name": "always"}), "restart_policy", "restart on failure at most"),
    ("unknown-field", host(Privileged=False, NewShinyThing=1), "unknown_field", "HostConfig.NewShinyThing is not"),
    ("oom-score-adj", host(OomScoreAdj=-1000), "oom_score_adj", "other users' processes the kernel's OOM victims"),
    ("oom-kill-disable", host(OomKillDisable=True), "oom_kill_disable", "turning the OOM killer off"),
    ("realtime", host(CpuRealtimeRuntime=950000), "realtime", "real-time CPU scheduling"),
    ("annotations", host(Annotations={"cdi.k8s.io/x": "y"}), "annotations", "the GPU hook among them"),
    ("storage-opt", host(StorageOpt={"size": "1t"}), "storage_opt", "storage driver options"),
    ("volume-driver", host(VolumeDriver="nfs"), "volume_driver", "only local volumes"),
    ("propagation", host(Mounts=[{"Type": "bind", "Source": "/home/alice/work", "Target": "/w",
                                  "BindOptions": {"Propagation": "rshared"}}]), "mount_propagation",
     "carry mounts made in the container back to the host"),
    ("ulimit-raise", host(Ulimits=[{"Name": "rtprio", "Soft": 99, "Hard": 99}]), "limit_ulimit",
     "HARD at most your limit of 0"),
    ("ulimit-unknown", host(Ulimits=[{"Name": "nproc", "Soft": 1, "Hard": 1}]), "limit_ulimit",
     "may not be set here"),
    ("swap-unlimited", host(MemorySwap=-1), "limit_memory", "unlimited swap"),
    ("swap-over", host(Memory=GIB, MemorySwap=3 * GIB), "limit_memory", "at most twice the container's memory"),
    ("tmpfs-shm", host(Tmpfs={"/dev/shm": "size=64g"}), "limit_shm", "its size is ShmSize"),
    ("tmpfs-over", host(Memory=GIB, Tmpfs={"/scratch": "size=2g"}), "limit_tmpfs", "must fit in its memory"),
    ("log-driver", host(LogConfig={"Type": "syslog", "Config": {"syslog-address": "tcp://x:514"}}), "log_config",
     "the engine's default driver"),
    ("log-size", host(LogConfig={"Config": {"max-size": "10g"}}), "log_config", "over the cap of 100m"),
    ("host-port", host(PortBindings={"80/tcp": [{"HostPort": "80"}]}), "host_port", "below 1024 are root's"),
    ("foreign-network", host(NetworkMode="bobs-net"), "not_owner", "there is no network bobs-net of yours"),
    ("image-label", {"Image": "labelled"}, "image_label", "ds01.surprise"),
    ("negative-quota", host(CpuQuota=-1), "limit_lifted", "would remove your CPU limit"),
    ("selinux-type", host(SecurityOpt=["label=type:spc_t"]), "security_opt", "changes confinement"),
    ("relabel", host(Binds=["/home/alice/work:/w:Z"]), "security_opt", "relabel the whole tree"),
    ("bad-volume-name", host(Binds=[".:/x"]), "bad_request", "neither an absolute path nor a volume name"),
    ("tmpfs-twice", host(Tmpfs={"/t": "size=1g,size=0"}), "limit_tmpfs", "give its size once"),
    ("missing-network", host(NetworkMode="later-net"), "not_owner", "there is no network later-net of yours"),
    ("negative-swap", host(MemorySwap=-2), "limit_memory", "MemorySwap=-2 (unlimited swap)"),
    ("shared-bind", host(Binds=["/home/alice/work:/w:rshared"]), "mount_propagation", "shared propagation"),
    ("endpoint-network-id", {"Image": "busybox", "NetworkingConfig": {"EndpointsConfig": {"my-net": {
        "NetworkID": "bobs-net-id"}}}}, "not_owner", "would join the network NetworkID names"),
    ("endpoint-driver-opts", {"Image": "busybox", "NetworkingConfig": {"EndpointsConfig": {"my-net": {
        "DriverOpts": {"com.docker.network.endpoint.sysctls": "x"}}}}}, "network_driver", "endpoint driver options"),
    ("create-mountpoint", host(Mounts=[{"Type": "bind", "Source": "/home/alice/new", "Target": "/n",
                                        "BindOptions": {"CreateMountpoint": True}}]), "mount_outside_home",
     "create it yourself first"),
    ("label-reserved", {"Image": "busybox", "Labels": {"ds01.user": "bob"}}, "label_reserved",
     "ds01 sets the ds01.* labels itself"),
    ("limit-cpus", host(NanoCpus=5 * 10**9), "limit_cpus", "your per-container limit is 4"),
    ("limit-memory", host(Memory=8 * GIB + 1), "limit_memory", "your per-container limit is 8g"),
    ("limit-shm", host(ShmSize=GIB + 1), "limit_shm", "your per-container limit is 1g"),
    ("limit-pids", host(PidsLimit=1001), "limit_pids", "your per-container limit is 1000"),
    ("bad-hostconfig", {"Image": "busybox", "HostConfig": ["x"]}, "bad_request", "must be a JSON object"),
    ("bad-binds", host(Binds="/home/alice:/x"), "bad_request", "HostConfig.Binds must be a list"),
    ("bad-bind", host(Binds=["/home/alice"]), "bad_request", "SOURCE:TARGET[:OPTIONS]"),
    ("bad-bind-type", host(Binds=[7]), "bad_request", "SOURCE:TARGET[:OPTIONS]"),
    ("bad-mounts", host(Mounts=["/home/alice:/x"]), "bad_request", "Mounts entries must be objects"),
    ("bad-capadd", host(CapAdd="SYS_PTRACE"), "bad_request", "HostConfig.CapAdd must be a list"),
    ("bad-labels", {"Image": "busybox", "Labels": ["a=b"]}, "bad_request", "Labels must be an object"),
    ("bad-user", {"Image": "busybox", "User": 1000}, "bad_request", "User must be a string"),
    ("bad-env", {"Image": "busybox", "Env": "A=b"}, "bad_request", "Env must be a list"),
    ("bad-device-request", host(DeviceRequests=["gpu"]), "bad_request", "entries must be objects"),
    ("two-gpu-requests", host(DeviceRequests=[gpu(Count=1), gpu(Count=1)]), "bad_request", "not several"),
    ("label-and-gpus", {"Image": "busybox", "Labels": {labels.REQUEST_MIG: "1g.10gb"},
                        "HostConfig": {"DeviceRequests": [gpu(Count=1)]}}, "bad_request", "not both"),
]


@pytest.mark.parametrize(("body", "reason", "hint"), [case[1:] for case in DENIALS], ids=[c[0] for c in DENIALS])
def test_denial(body: dict[str, Any], reason: str, hint: str) -> None:
    denial = refused(copy.deepcopy(body), reason, facts=LABELLED_IMAGE if body["Image"] == "labelled" else FACTS)
    assert hint in denial.message
    assert str(denial) == denial.message


def test_admins_are_excepted_from_ownership_only() -> None:
    plan(host(Binds=["bobs-data:/d"], NetworkMode="container:bobs"), caller=ADMIN)
    plan(host(VolumesFrom=["bobs"]), caller=ADMIN)
    refused(host(Privileged=True), "privileged", caller=ADMIN)
    refused(host(Binds=["/etc:/e"]), "mount_outside_home", caller=ADMIN)
    refused(host(PidMode="host"), "host_namespace", caller=ADMIN)


# --- fields are read the way the engine reads them: case-insensitively ---------------------------------------------

@pytest.mark.parametrize("body", [
    {"hostconfig": {"PRIVILEGED": True}},
    {"HOSTCONFIG": {"privileged": 1}},
    {"hostConfig": {"Privileged": "yes"}},
    {f"Ho{LONG_S}tConfig": {"Privileged": True}},
])
def test_privileged_is_refused_under_any_spelling(body: dict[str, Any]) -> None:
    refused(body, "privileged")


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("pidmode", "host", "host_namespace"),
    ("NETWORKMODE", "host", "host_namespace"),
    ("capadd", ["sys_admin"], "capability"),
    ("DEVICES", [{"PathOnHost": "/dev/mem"}], "devices"),
    (f"Sy{LONG_S}ctls", {"kernel.x": "1"}, "sysctls"),
    ("securityopt", ["apparmor=unconfined"], "security_opt"),
    ("maskedpaths", [], "security_opt"),
    ("readonlypaths", [], "security_opt"),
    ("cgroupparent", "/system.slice", "cgroup_parent"),
    ("RUNTIME", "sysbox-runc", "runtime"),
    ("binds", ["/etc:/e"], "mount_outside_home"),
    ("mounts", [{"type": "bind", "source": "/etc", "target": "/e"}], "mount_outside_home"),
    ("volumesfrom", ["bobs"], "not_owner"),
    ("nanocpus", 9 * 10**9, "limit_cpus"),
    ("MEMORY", 9 * GIB, "limit_memory"),
    ("shmsize", 2 * GIB, "limit_shm"),
    ("pidslimit", 5000, "limit_pids"),
])
def test_host_config_fields_are_case_insensitive(field: str, value: Any, reason: str) -> None:
    refused({"hostconfig": {field: value}}, reason)


def test_top_level_fields_are_case_insensitive() -> None:
    refused({"user": "1001"}, "foreign_uid")
    refused({"LABELS": {"ds01.uid": "0"}}, "label_reserved")
    result = plan({"env": ["NVIDIA_VISIBLE_DEVICES=all", "A=1"], "labels": {"x": "y"}})
    assert result.body["Env"] == ["A=1", "HOME=/tmp", "USER=alice", "LOGNAME=alice", *NO_GPU_ENV]
    assert "env" not in result.body
    assert "labels" not in result.body
    assert result.body["Labels"]["x"] == "y"


def test_field_and_set_field() -> None:
    assert bodies.field(None, "Image") is None
    assert bodies.field({}, "Image") is None
    assert bodies.field({"image": "a"}, "Image") == "a"
    assert bodies.field({f"Ho{LONG_S}tConfig": 1}, "HostConfig") == 1
    assert bodies.field({f"{KELVIN}ernelMemory": 5}, "KernelMemory") == 5
    assert bodies.field({"Image": "a"}, "Imag") is None
    obj: dict[str, Any] = {"image": "a", "IMAGE": "b", "Other": 1}
    bodies.set_field(obj, "Image", "c")
    assert obj == {"Image": "c", "Other": 1}


# --- strict JSON: no duplicate or case-variant keys, at any depth ---------------------------------------------------

@pytest.mark.parametrize("raw", [
    b'{"Image": "a", "Image": "b"}',
    b'{"Image": "a", "image": "b"}',
    b'{"HostConfig": {"Privileged": false, "privileged": true}}',
    b'{"HostConfig": {"Privileged": false, "PRIVILEGED": true}}',
    b'{"HostConfig": {"Mounts": [{"Type": "volume", "type": "bind"}]}}',
    b'{"Labels": {"a": "1"}, "x": [[{"k": 1, "K": 2}]]}',
    '{"HostConfig": {}, "Ho\u017ftConfig": {"Privileged": true}}'.encode(),
    '{"HostConfig": {"Sysctls": null, "Sy\u017fctls": {"a": "b"}}}'.encode(),
    '{"KernelMemory": 1, "\u212aernelMemory": 2}'.encode(),
    '{"HostConfig": {"Privileged": false, "Privileged": true}}'.encode("utf-16"),
])
def test_duplicate_and_case_variant_keys_are_refused(raw: bytes) -> None:
    with pytest.raises(Denied) as info:
        bodies.parse_json_object(raw, "container create body")
    assert info.value.reason == "bad_request"
    assert "twice" in info.value.message
    assert "send each field once" in info.value.message


def test_duplicate_message_names_both_spellings() -> None:
    with pytest.raises(Denied) as info:
        bodies.parse_json_object(b'{"Image": "a", "IMAGE": "b"}', "container create body")
    assert "'Image'" in info.value.message
    assert "'IMAGE'" in info.value.message
    assert "container create body" in info.value.message


@pytest.mark.parametrize(("raw", "hint"), [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"{'a': 1}", "not valid JSON"),
    (b'{"a": 1} x', "not valid JSON"),
    (b"\xff\xfe\xfd", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),
    (b'{"a":' * 100_000, "not valid JSON"),
    (b"[]", "must be a JSON object"),
    (b'"x"', "must be a JSON object"),
    (b"null", "must be a JSON object"),
    (b"1", "must be a JSON object"),
])
def test_malformed_bodies_are_refused(raw: bytes, hint: str) -> None:
    with pytest.raises(Denied) as info:
        bodies.parse_json_object(raw, "exec create body")
    assert info.value.reason == "bad_request"
    assert hint in info.value.message
    assert "exec create body" in info.value.message


def test_well_formed_bodies_parse() -> None:
    raw = b'{"Image": "a", "Labels": {"ds01.x": "1", "b": "2"}, "HostConfig": {"Binds": ["/h:/h"]}}'
    assert bodies.parse_json_object(raw, "body") == json.loads(raw)
    assert bodies.parse_json_object(b"{}", "body") == {}
    # The same name in different objects is not a duplicate.
    assert bodies.parse_json_object(b'{"a": {"a": {"A": 1}}}', "body") == {"a": {"a": {"A": 1}}}


# --- labels ------------------------------------------------------------------------------------------------------

def test_labels_are_stamped_and_client_labels_kept() -> None:
    result = plan({"Image": "busybox", "Labels": {"com.example.app": "x", "ds01x": "kept"}}, client_type="compose")
    assert result.body["Labels"] == {
        "com.example.app": "x", "ds01x": "kept",
        **dict.fromkeys(labels.KNOWN_LABELS, ""),  # empty: an image's labels of these names never show
        labels.USER: "alice", labels.UID: "1000", labels.CREATED_AT: NOW, labels.TYPE: "compose"}


def test_labels_are_stamped_without_client_labels() -> None:
    result = plan({"Image": "busybox"})
    assert set(result.body["Labels"]) == STAMPED
    assert result.gpu_request is None


@pytest.mark.parametrize("key", [labels.USER, labels.UID, labels.TYPE, labels.CREATED_AT,
                                 labels.ALLOCATION, labels.GPU_EQUIVALENTS, labels.PROTECTED,
                                 "DS01.USER", "Ds01.request.mig", "ds01.request.other", f"d{LONG_S}01.user",
                                 "ds01."])
def test_client_ds01_labels_are_refused(key: str) -> None:
    denial = refused({"Image": "busybox", "Labels": {key: "x"}}, "label_reserved")
    assert key in denial.message


def test_mig_label_becomes_the_gpu_request() -> None:
    result = plan({"Image": "busybox", "Labels": {labels.REQUEST_MIG: "3g.40gb", "a": "b"}})
    assert result.gpu_request == GpuRequest(mig_profile="3g.40gb")
    assert result.body["Labels"][labels.REQUEST_MIG] == ""  # consumed, and written empty
    assert result.body["Labels"]["a"] == "b"


def test_empty_mig_label_asks_for_nothing() -> None:
    result = plan({"Image": "busybox", "Labels": {labels.REQUEST_MIG: ""}})
    assert result.gpu_request is None
    assert result.body["Labels"][labels.REQUEST_MIG] == ""


# --- GPU requests and grants -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("request_", "expected"), [
    (gpu(Count=2), GpuRequest(count=2)),
    (gpu(Count=1, Driver=""), GpuRequest(count=1)),
    ({"Count": 1, "Capabilities": [["gpu"]]}, GpuRequest(count=1)),
    ({"Driver": "nvidia", "Count": 1}, GpuRequest(count=1)),
    (gpu(Count=-1), GpuRequest(all_gpus=True)),
    (gpu(DeviceIDs=["GPU-aaa", "MIG-bbb"]), GpuRequest(devices=("GPU-aaa", "MIG-bbb"))),
    (gpu(DeviceIDs=[0, 1]), GpuRequest(devices=("0", "1"))),
    (gpu(Count=0), GpuRequest(count=0)),
    ({"driver": "nvidia", "count": 3, "capabilities": [["compute", "gpu"]]}, GpuRequest(count=3)),
])
def test_gpu_requests(request_: dict[str, Any], expected: GpuRequest) -> None:
    result = plan(host(DeviceRequests=[request_]))
    assert result.gpu_request == expected
    assert host_config(result)["DeviceRequests"] == []


@pytest.mark.parametrize("request_", [
    {"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=all"]},
    {"Driver": "amd", "Count": 1, "Capabilities": [["gpu"]]},
    {"Driver": "NVIDIA", "Count": 1},
    {"Count": 1},
    {"Count": 1, "Capabilities": [["compute"]]},
])
def test_non_gpu_device_requests_are_refused(request_: dict[str, Any]) -> None:
    refused(host(DeviceRequests=[request_]), "devices")


def test_apply_grant_rewrites_to_exactly_the_granted_devices() -> None:
    body = host(DeviceRequests=[gpu(Count=-1, Options=None)])
    result = plan(body)
    devices.apply_grant(result.body, ["GPU-1", "MIG-2"], "alloc-7", "8/7")
    assert host_config(result)["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": 0, "DeviceIDs": ["GPU-1", "MIG-2"], "Capabilities": [["gpu"]], "Options": {}}]
    assert result.body["Labels"][labels.ALLOCATION] == "alloc-7"
    assert result.body["Labels"][labels.GPU_EQUIVALENTS] == "8/7"
    assert result.body["Labels"][labels.USER] == "alice"


def test_apply_grant_replaces_any_spelling_of_device_requests() -> None:
    body = {"hostconfig": {"devicerequests": [gpu(Count=4)]}, "Labels": {}}
    devices.apply_grant(body, ["GPU-9"], "a", "1")
    assert list(body) == ["Labels", "HostConfig", "Env"]
    assert body["HostConfig"] == {"DeviceRequests": [
        {"Driver": "nvidia", "Count": 0, "DeviceIDs": ["GPU-9"], "Capabilities": [["gpu"]], "Options": {}}]}


# --- environment -------------------------------------------------------------------------------------------------

def test_gpu_environment_is_stripped_and_reported() -> None:
    env = ["NVIDIA_VISIBLE_DEVICES=all", "PATH=/usr/bin", "CUDA_VISIBLE_DEVICES=0,1", "nvidia_driver_capabilities=all",
           "MY_NVIDIA_VAR=1", "HOME=/root", "NVIDIA_REQUIRE_CUDA", "CUDA_HOME=/usr/local/cuda", "X=NVIDIA_Y=1"]
    result = plan({"Image": "busybox", "Env": env})
    assert result.body["Env"] == ["PATH=/usr/bin", "MY_NVIDIA_VAR=1", "HOME=/root", "CUDA_HOME=/usr/local/cuda",
                                  "X=NVIDIA_Y=1", "USER=alice", "LOGNAME=alice", *NO_GPU_ENV]
    assert result.stripped_env == ("NVIDIA_VISIBLE_DEVICES=all", "CUDA_VISIBLE_DEVICES=0,1",
                                   "nvidia_driver_capabilities=all", "NVIDIA_REQUIRE_CUDA")


def test_no_environment_gets_the_login_variables() -> None:
    result = plan({"Image": "busybox"})
    assert result.body["Env"] == ["HOME=/tmp", "USER=alice", "LOGNAME=alice", *NO_GPU_ENV]
    assert result.stripped_env == ()


def test_home_is_the_workspace_when_one_is_mounted() -> None:
    result = plan(host(Binds=["/home/alice/work:/workspace"]))
    assert "HOME=/workspace" in result.body["Env"]
    result = plan(host(Mounts=[{"Type": "bind", "Source": "/home/alice/work", "Target": "/workspace/"}]))
    assert "HOME=/workspace" in result.body["Env"]


# --- limits ------------------------------------------------------------------------------------------------------

def test_defaults_are_filled_when_absent() -> None:
    hc = host_config(plan({"Image": "busybox"}))
    assert hc["NanoCpus"] == 4 * 10**9
    assert hc["Memory"] == 8 * GIB
    assert hc["ShmSize"] == GIB
    assert hc["PidsLimit"] == 1000


@pytest.mark.parametrize(("field", "value", "default"), [
    ("Memory", 0, 8 * GIB), ("Memory", -1, 8 * GIB), ("ShmSize", 0, GIB), ("PidsLimit", 0, 1000),
    ("PidsLimit", -1, 1000), ("PidsLimit", None, 1000), ("NanoCpus", 0, 4 * 10**9), ("NanoCpus", None, 4 * 10**9),
])
def test_unlimited_values_get_the_default(field: str, value: Any, default: int) -> None:
    assert host_config(plan(host(**{field: value})))[field] == default


def test_values_within_limits_are_kept() -> None:
    hc = host_config(plan(host(NanoCpus=4 * 10**9, Memory=8 * GIB, ShmSize=64 * 2**20, PidsLimit=10)))
    assert (hc["NanoCpus"], hc["Memory"], hc["ShmSize"], hc["PidsLimit"]) == (4 * 10**9, 8 * GIB, 64 * 2**20, 10)


def test_case_variant_limit_fields_are_replaced_by_the_canonical_spelling() -> None:
    hc = host_config(plan({"HostConfig": {"memory": 0, "pidslimit": -1}}))
    assert "memory" not in hc
    assert "pidslimit" not in hc
    assert hc["Memory"] == 8 * GIB
    assert hc["PidsLimit"] == 1000


@pytest.mark.parametrize(("quota", "period", "allowed"), [
    (400_000, None, True),
    (400_001, None, False),
    (500_000, 100_000, False),
    (200_000, 50_000, True),
    (300_000, 50_000, False),
    (4_000_000, 1_000_000, True),
])
def test_cpu_quota_and_period_count_as_cpus(quota: int, period: int | None, allowed: bool) -> None:
    body = host(CpuQuota=quota, **({"CpuPeriod": period} if period else {}))
    if allowed:
        hc = host_config(plan(body))
        assert hc["CpuQuota"] == quota
        if quota > 0:
            assert "NanoCpus" not in hc  # the quota is the CPU limit; the engine refuses both
    else:
        refused(body, "limit_cpus")


def test_fractional_cpu_limit() -> None:
    caller = Caller(1000, "alice", "/home/alice", False, LIMITS.with_overrides({"cpus": 0.5}), 1000,
                    frozenset({1000}), "alice")
    assert host_config(plan({"Image": "busybox"}, caller=caller))["NanoCpus"] == 500_000_000
    denial = refused(host(NanoCpus=600_000_000), "limit_cpus", caller=caller)
    assert "0.6 CPUs" in denial.message
    assert "limit is 0.5" in denial.message


# --- bind mounts -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bind", [
    "/home/alice:/h", "/home/alice/work:/w", "/home/alice/work/:/w:ro", "/data/shared:/s:ro,rslave",
    "/home/alice/data-link:/d",
])
def test_binds_inside_home_and_data_dirs_are_allowed(bind: str) -> None:
    plan(host(Binds=[bind]))


@pytest.mark.parametrize("bind", [
    "/etc:/e", "/:/host", "/home/alicewonder:/x", "/datastore:/x", "/home/alice/link:/x", "/home/alice/../bob:/b",
    "/run:/r",
])
def test_binds_outside_are_refused(bind: str) -> None:
    denial = refused(host(Binds=[bind]), "mount_outside_home")
    assert "/home/alice" in denial.message
    assert "/data" in denial.message


def test_home_prefix_is_not_a_parent() -> None:
    plan(host(Binds=["/home/al:/h", "/home/al/x:/x"]), caller=AL)
    denial = refused(host(Binds=["/home/alice:/x"]), "mount_outside_home", caller=AL)
    assert "outside your home (/home/al)" in denial.message
    refused(host(Mounts=[{"Type": "bind", "Source": "/home/alice", "Target": "/x"}]), "mount_outside_home", caller=AL)


def test_data_dir_prefix_is_not_a_parent() -> None:
    refused(host(Binds=["/datastore:/x"]), "mount_outside_home")


def test_symlink_target_outside_is_refused() -> None:
    denial = refused(host(Binds=["/home/alice/link:/x"]), "mount_outside_home")
    assert "really /etc" in denial.message


def test_no_data_dirs_configured() -> None:
    denial = refused(host(Binds=["/data:/d"]), "mount_outside_home", security=SecuritySettings())
    assert "none configured" in denial.message


@pytest.mark.parametrize("source", ["/var/run/docker.sock", "/home/alice/sock-link", "/home/alice/docker.sock",
                                    "/home/alice/run/containerd.sock", "/data/ds01/ds01.sock", "/data/ds01",
                                    "/data"])
def test_engine_sockets_and_their_directories_are_refused(source: str) -> None:
    refused(host(Binds=[f"{source}:/x"]), "socket_mount")
    refused(host(Mounts=[{"Type": "bind", "Source": source, "Target": "/x"}]), "socket_mount")


def test_directory_outside_home_that_contains_a_socket_is_refused() -> None:
    with pytest.raises(Denied) as info:
        plan(host(Binds=["/run:/r"]))
    assert info.value.reason in ("mount_outside_home", "socket_mount")


def test_home_containing_a_socket_is_refused() -> None:
    facts = Facts(PATHS, CONTAINER_OWNERS, VOLUME_OWNERS, ENGINE_SOCKETS | {"/home/alice/.ds01/proxy.sock"})
    refused(host(Binds=["/home/alice:/h"]), "socket_mount", facts=facts)
    plan(host(Binds=["/home/alice/work:/w"]), facts=facts)


def test_missing_source_is_refused() -> None:
    denial = refused(host(Mounts=[{"Type": "bind", "Source": "/home/alice/missing", "Target": "/x"}]),
                     "mount_outside_home")
    assert "does not exist" in denial.message
    refused(host(Mounts=[{"Type": "bind", "Target": "/x"}]), "mount_outside_home")


def test_bind_sources_are_listed_once_and_pinned_to_staging_paths() -> None:
    result = plan(host(
        Binds=["/home/alice/data-link:/d:ro", "my-data:/v", "/home/alice/work/:/w"],
        Mounts=[{"Type": "bind", "Source": "/home/alice/data-link", "Target": "/m", "ReadOnly": True},
                {"type": "bind", "source": "/home/alice/work/", "target": "/n"},
                {"Type": "volume", "Source": "my-data", "Target": "/mv"},
                {"Type": "tmpfs", "Target": "/t"}]))
    assert result.bind_sources == ("/home/alice/data-link", "/home/alice/work/")
    staged = {"/home/alice/data-link": "/pins/k/0", "/home/alice/work/": "/pins/k/1"}
    policy.pin_bind_sources(result.body, staged, "k", ["/data/shared", "/home/alice/work"])
    hc = host_config(result)
    assert hc["Binds"] == ["/pins/k/0:/d:ro", "my-data:/v", "/pins/k/1:/w"]
    assert hc["Mounts"] == [
        {"Type": "bind", "Target": "/m", "ReadOnly": True, "Source": "/pins/k/0"},
        {"Type": "bind", "Target": "/n", "Source": "/pins/k/1"},
        {"Type": "volume", "Source": "my-data", "Target": "/mv"},
        {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 8 * GIB}}]  # sized: tmpfs is memory
    stamped = result.body["Labels"]
    assert stamped[labels.BIND_KEY] == "k"
    assert json.loads(stamped[labels.BIND_SOURCES]) == ["/data/shared", "/home/alice/work"]
    assert records.original_bind_source(stamped, "/pins/k/1") == "/home/alice/work"
    assert records.original_bind_source(stamped, "/elsewhere") == "/elsewhere"


def test_unhardened_mounts_pass_only_when_the_admin_turns_the_check_off() -> None:
    denial = refused(host(Binds=["/home/alice/suid:/x"]), "mount_not_hardened")
    assert "/etc/fstab" in denial.message and "/home" in denial.message
    plan(host(Binds=["/home/alice/suid:/x"]), security=SecuritySettings(require_nosuid_mounts=False))


def test_a_source_behind_a_directory_the_caller_cannot_enter_is_refused() -> None:
    paths = {**PATHS, "/data/bob/public": ResolvedPath("/data/bob/public", False, closed_at="/data/bob")}
    facts = Facts(paths, CONTAINER_OWNERS, VOLUME_OWNERS, ENGINE_SOCKETS)
    denial = refused(host(Binds=["/data/bob/public:/p"]), "mount_outside_home", facts=facts)
    assert "lies inside /data/bob, which you may not enter" in denial.message


@pytest.mark.parametrize(("body", "words"), [
    (host(Binds=["/home/alice/work:/w", "/home/alice/work:/w/a"]), "/w/a lies inside the bind mounted at /w"),
    (host(Binds=["/home/alice/work:/w"], Tmpfs={"/w/t": ""}), "/w/t lies inside the bind mounted at /w"),
    (host(Binds=["my-data:/v"], Mounts=[{"Type": "tmpfs", "Target": "/v/x/../t"}]), "/v/t lies inside the volume"),
    ({"Image": "busybox", "Volumes": {"/anon": {}}, "HostConfig": {"Binds": ["/home/alice/work:/anon/w/"]}},
     "/anon/w lies inside the anonymous mounted at /anon"),
    ({"Image": "busybox", "WorkingDir": "/w/deep", "HostConfig": {"Binds": ["/home/alice/work:/w"]}},
     "the working directory /w/deep lies below the bind mounted at /w"),
    ({"Image": "busybox", "WorkingDir": "/v/new", "HostConfig": {"Binds": ["my-data:/v"]}},
     "the working directory /v/new lies below the volume mounted at /v"),
    (host(VolumesFrom=["mine"], Binds=["/home/alice/work:/w"]), "--volumes-from cannot be combined"),
])
def test_no_mount_point_or_working_dir_is_made_inside_a_mount(body: dict[str, Any], words: str) -> None:
    assert words in refused(body, "nested_mount").message


@pytest.mark.parametrize("binds", [["/home/alice/work:/etc"], ["/home/alice/work:/"], ["/home/alice/work:/usr/lib"],
                                   ["/home/alice/work:/etc/vulkan"], ["my-data:/run"], ["/home/alice/work:/dev/x"]])
def test_host_directories_and_volumes_stay_out_of_system_trees(binds: list[str]) -> None:
    assert "where the engine and the GPU runtime put files" in refused(host(Binds=binds), "system_mount_point").message


def test_the_images_volumes_count_as_mounts() -> None:
    image = Facts(PATHS, CONTAINER_OWNERS, VOLUME_OWNERS, ENGINE_SOCKETS, image_volumes=("/w/sub",))
    refused(host(Binds=["/home/alice/work:/w"]), "nested_mount", facts=image)
    # Anonymous volumes too: their owner can mount one elsewhere and fill it with symlinks.
    denial = refused({"Image": "busybox", "Volumes": {"/etc/app": {}}}, "system_mount_point")
    assert "the image's VOLUME" in denial.message
    refused(host(), "system_mount_point", facts=Facts(PATHS, CONTAINER_OWNERS, VOLUME_OWNERS, ENGINE_SOCKETS,
                                                      image_volumes=("/usr/lib",)))


def test_side_by_side_mounts_and_the_mount_as_working_dir_pass() -> None:
    plan({"Image": "busybox", "WorkingDir": "/w", "Volumes": {"/cache": {}},
          "HostConfig": {"Binds": ["/home/alice/work:/w", "my-data:/wa"], "Tmpfs": {"/t": ""},
                         "Mounts": [{"Type": "tmpfs", "Target": "/t/x"}]}})  # inside a tmpfs is fine
    image_dir = Facts(PATHS, CONTAINER_OWNERS, VOLUME_OWNERS, ENGINE_SOCKETS, image_working_dir="/w/src")
    refused(host(Binds=["/home/alice/work:/w"]), "nested_mount", facts=image_dir)  # the image's WORKDIR counts


def test_containers_with_host_mounts_do_not_restart_on_their_own() -> None:
    denial = refused(host(Binds=["/home/alice/work:/w"], RestartPolicy={"Name": "on-failure"}), "restart_policy")
    assert "docker start" in denial.message
    plan(host(Binds=["/home/alice/work:/w"], RestartPolicy={"Name": "no"}))
    plan(host(RestartPolicy={"Name": "on-failure", "MaximumRetryCount": 3}))  # nothing of the host's to re-check
    with pytest.raises(Denied):
        policy.check_update(ALICE, {"RestartPolicy": {"Name": "on-failure"}}, True, {})
    policy.check_update(ALICE, {"RestartPolicy": {"Name": "on-failure"}}, False, {})
    policy.check_update(ADMIN, {"RestartPolicy": {"Name": "always"}}, False, {})


def test_a_caller_without_a_home_binds_only_data_dirs() -> None:
    homeless = Caller(uid=998, user="svc", home="", is_admin=False, limits=LIMITS, gid=998, gids=frozenset({998}),
                      login="svc",
                      home_problem="/ is not below the home roots (/home)")
    for source in ("/", "/etc", "/home/alice"):
        denial = refused(host(Binds=[f"{source}:/x"]), "mount_outside_home", caller=homeless)
        assert "none: / is not below the home roots" in denial.message
    plan(host(Binds=["/data/shared:/x"]), caller=homeless)


# --- volumes, VolumesFrom, container namespaces: the caller must own them ---------------------------------------

@pytest.mark.parametrize("hc", [
    {"Binds": ["bobs-data:/d"]},
    {"Binds": ["orphan-vol:/d"]},
    {"Binds": ["never-seen:/d"]},
    {"Mounts": [{"Type": "volume", "Source": "bobs-data", "Target": "/d"}]},
    {"Mounts": [{"Type": "volume", "Source": "never-seen", "Target": "/d"}]},
    {"VolumesFrom": ["bobs"]},
    {"VolumesFrom": ["bobs:ro"]},
    {"VolumesFrom": ["orphan"]},
    {"VolumesFrom": ["never-seen:rw"]},
])
def test_referring_to_what_is_not_yours_is_refused(hc: dict[str, Any]) -> None:
    refused({"HostConfig": copy.deepcopy(hc)}, "not_owner")
    plan({"HostConfig": copy.deepcopy(hc)}, caller=ADMIN)


@pytest.mark.parametrize("hc", [
    {"Binds": ["my-data:/d", "my-data:/e:ro"]},
    {"Mounts": [{"Type": "volume", "Source": "my-data", "Target": "/d"}]},
    {"Mounts": [{"Type": "volume", "Target": "/anonymous"}]},
    {"Mounts": [{"Type": "tmpfs", "Target": "/t"}]},
    {"VolumesFrom": ["mine", "mine:ro"]},
])
def test_referring_to_your_own_is_allowed(hc: dict[str, Any]) -> None:
    plan({"HostConfig": hc})


@pytest.mark.parametrize("mode", policy.HOST_MODES)
def test_host_namespaces_are_refused(mode: str) -> None:
    denial = refused(host(**{mode: "host"}), "host_namespace")
    assert f"{mode}=host" in denial.message
    refused({"hostconfig": {mode.upper(): "host"}}, "host_namespace")
    refused(host(**{mode: "host"}), "host_namespace", caller=ADMIN)


@pytest.mark.parametrize("mode", policy.HOST_MODES)
def test_container_namespaces_need_the_owner(mode: str) -> None:
    denial = refused(host(**{mode: "container:bobs"}), "not_owner")
    assert f"container bobs (in {mode})" in denial.message
    refused(host(**{mode: "container:never-seen"}), "not_owner")
    plan(host(**{mode: "container:mine"}))
    plan(host(**{mode: "container:bobs"}), caller=ADMIN)


@pytest.mark.parametrize(("network", "ipc"), [("", ""), ("none", "private"), ("bridge", "shareable"),
                                              ("my-net", "none"), ("ds01-alice", "")])
def test_other_namespace_modes_are_allowed(network: str, ipc: str) -> None:
    plan(host(NetworkMode=network, IpcMode=ipc))


def test_references() -> None:
    body = host(Binds=["/home/alice/work:/w", "my-data:/d"],
                Mounts=[{"Type": "bind", "Source": "/data/shared", "Target": "/s"},
                        {"Type": "volume", "Source": "bobs-data", "Target": "/v"},
                        {"Type": "volume", "Target": "/anon"},
                        {"Type": "tmpfs", "Target": "/t"}],
                PidMode="container:a", NetworkMode="container:b", IpcMode="host", VolumesFrom=["c:ro", "d"])
    refs = policy.references(body)
    assert refs.bind_sources == ("/home/alice/work", "/data/shared")
    assert refs.volumes == ("my-data", "bobs-data")
    assert refs.containers == ("a", "b", "c", "d")
    assert policy.references({"Image": "x"}) == policy.References((), (), ())
    assert policy.references({"HostConfig": "nope"}) == policy.References((), (), ())
    assert policy.references({"hostconfig": {"binds": ["/x:/y"]}}).bind_sources == ("/x",)


# --- security options, masked paths, runtime, cgroup parent ------------------------------------------------------

@pytest.mark.parametrize("option", [
    "seccomp=unconfined", "seccomp:unconfined", "apparmor=unconfined", "apparmor:unconfined", "label=disable",
    "label:disable", "systempaths=unconfined", "SECCOMP=UNCONFINED", "Label=Disable", "label=type:spc_t",
    "label=level:s0:c100,c200", "label=user:system_u",
])
def test_unconfined_security_options_are_refused(option: str) -> None:
    denial = refused(host(SecurityOpt=["no-new-privileges", option]), "security_opt")
    assert option in denial.message


@pytest.mark.parametrize("option", ["no-new-privileges", "no-new-privileges=true", "apparmor=docker-default",
                                    "label=type:container_t", "label:type:container_t"])
def test_confining_security_options_are_allowed(option: str) -> None:
    plan(host(SecurityOpt=[option]))


@pytest.mark.parametrize("field", ["MaskedPaths", "ReadonlyPaths"])
@pytest.mark.parametrize("value", [[], ["/proc/kcore"]])
def test_changing_system_paths_is_refused(field: str, value: list[str]) -> None:
    refused(host(**{field: value}), "security_opt")


def test_null_system_paths_are_allowed() -> None:
    plan(host(MaskedPaths=None, ReadonlyPaths=None))


@pytest.mark.parametrize("runtime", [None, "", "runc"])
def test_default_runtime_is_allowed(runtime: str | None) -> None:
    plan(host(Runtime=runtime))


@pytest.mark.parametrize("runtime", ["nvidia", "runsc", "sysbox-runc", "io.containerd.runc.v2", "RUNC"])
def test_other_runtimes_are_refused(runtime: str) -> None:
    assert runtime in refused(host(Runtime=runtime), "runtime").message


def test_cgroup_parent_is_set_by_ds01() -> None:
    assert host_config(plan({"Image": "busybox"}))["CgroupParent"] == CGROUP
    hc = host_config(plan({"HostConfig": {"cgroupparent": ""}}))
    assert hc["CgroupParent"] == CGROUP
    assert "cgroupparent" not in hc


@pytest.mark.parametrize("value", ["/", "system.slice", "ds01-bob.slice", "../x"])
def test_cgroup_parent_from_the_client_is_refused(value: str) -> None:
    refused(host(CgroupParent=value), "cgroup_parent")
    refused({"HostConfig": {"CGROUPPARENT": value}}, "cgroup_parent")


@pytest.mark.parametrize("cap", ["SYS_PTRACE", "sys_ptrace", "CAP_SYS_PTRACE", "cap_sys_ptrace"])
def test_allowed_capabilities(cap: str) -> None:
    plan(host(CapAdd=[cap]))


@pytest.mark.parametrize("cap", ["SYS_ADMIN", "CAP_NET_ADMIN", "all", "DAC_READ_SEARCH"])
def test_other_capabilities_are_refused(cap: str) -> None:
    refused(host(CapAdd=["SYS_PTRACE", cap]), "capability")


def test_capability_message_when_none_allowed() -> None:
    assert "allowed: none" in refused(host(CapAdd=["SYS_PTRACE"]), "capability", security=SecuritySettings()).message


@pytest.mark.parametrize("mount_type", ["npipe", "cluster", "image", "Bind", None, ""])
def test_other_mount_types_are_refused(mount_type: str | None) -> None:
    refused(host(Mounts=[{"Type": mount_type, "Source": "/home/alice", "Target": "/x"}]), "mount_type")


# --- users -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("user", "runs_as"), [(None, "1000:1000"), ("", "1000:1000"), ("1000", "1000:1000"),
                                              ("1000:1000", "1000:1000"), ("01000", "1000:1000"),
                                              ("1000:100", "1000:100"), ("+1000:0100", "1000:100"),
                                              ("1000:", "1000:1000")])
def test_the_caller_runs_as_themselves(user: str | None, runs_as: str) -> None:
    assert runas.check_user(ALICE, user) == runs_as
    assert plan({"Image": "busybox", "User": user}).body["User"] == runs_as


@pytest.mark.parametrize("user", ["0", "0:0", "root", "alice", "nobody:nogroup", "1000:0", "0:1000", "user1001",
                                  "1001", "1001:1000", "65534", "2000:2000", "00001001", "1000:1000:1",
                                  "1000:docker", "+1001", "+1001:1000", "+01001", " 1000"])
def test_any_other_user_is_refused(user: str) -> None:
    with pytest.raises(Denied) as info:
        runas.check_user(ALICE, user)
    assert info.value.reason == "foreign_uid"
    assert "containers run as you (uid 1000, gid 1000)" in info.value.message


@pytest.mark.parametrize("user", [1000, 0, ["0"], {"uid": 0}])
def test_non_string_users_are_refused(user: Any) -> None:
    with pytest.raises(Denied) as info:
        runas.check_user(ALICE, user)
    assert info.value.reason == "bad_request"


def test_the_container_gets_the_callers_groups_and_no_new_privileges() -> None:
    result = plan(host(SecurityOpt=["no-new-privileges"], GroupAdd=["100"]))
    hc = host_config(result)
    assert hc["GroupAdd"] == ["100"]
    assert hc["SecurityOpt"] == [runas.NO_NEW_PRIVILEGES]
    assert set(hc["CapDrop"]) == set(runas.DROPPED_CAPABILITIES)
    assert result.notes and "runs as 1000:1000" in result.notes[0] and "CHOWN" in result.notes[0]


def test_a_gpu_container_also_gets_the_gpu_group() -> None:
    hc = host_config(plan(host(DeviceRequests=[gpu(Count=1)])))
    assert hc["GroupAdd"] == ["100", str(GPU_GID)]
    assert host_config(plan(host()))["GroupAdd"] == ["100"]


def test_an_allowed_capability_is_kept_only_when_asked_for() -> None:
    security = SecuritySettings(cap_add_allowed=frozenset({"CHOWN"}))
    assert "CHOWN" not in host_config(plan(host(CapAdd=["CAP_CHOWN"]), security=security))["CapDrop"]
    assert "CHOWN" in host_config(plan(host(), security=security))["CapDrop"]
    refused(host(CapAdd=["SETUID"]), "capability")


def test_admin_root_lets_admins_run_as_root_only() -> None:
    security = SecuritySettings(admin_root=True)
    result = plan({"Image": "busybox", "User": "0:0"}, caller=ADMIN, security=security)
    assert result.body["User"] == "0:0" and "CapDrop" not in host_config(result)
    assert host_config(result)["SecurityOpt"] == [runas.NO_NEW_PRIVILEGES]
    refused({"Image": "busybox", "User": "0"}, "foreign_uid", caller=ADMIN)
    refused({"Image": "busybox", "User": "0"}, "foreign_uid", security=security)


def test_root_containers_with_host_mounts_are_found() -> None:
    def info(name: str, user: str, mounts: tuple[str, ...]) -> records.ContainerInfo:
        return records.ContainerInfo(id=name, name=name, labels={labels.USER: "alice"}, status="running",
                                        device_ids=(), gpu_count=0, user=user, host_mounts=mounts)
    found = [info("a._.1000", "", ("/home/alice",)), info("b", "0:0", ("/data",)), info("c", "1000:1000", ("/x",)),
             info("d", "root", ()), info("e", "root", ("/y",))]
    assert [i.name for i in runas.root_with_host_mounts(found)] == ["a._.1000", "b", "e"]
    assert "container remove a, then create it again" in runas.root_container_warning(found[0])


# --- exec --------------------------------------------------------------------------------------------------------

def test_exec_runs_as_the_caller_and_loses_gpu_environment() -> None:
    body = {"Cmd": ["sh"], "User": "1000", "Env": ["NVIDIA_VISIBLE_DEVICES=all", "CUDA_VISIBLE_DEVICES=1", "A=b"]}
    body = policy.check_exec(ALICE, body, "1000:1000", SECURITY)
    assert body == {"Cmd": ["sh"], "User": "1000:1000", "Env": ["A=b"]}


@pytest.mark.parametrize(("container_user", "runs_as"), [("1000:100", "1000:100"), ("", "1000:1000"),
                                                         ("0", "1000:1000"), ("root", "1000:1000")])
def test_exec_without_user_takes_the_containers_own_or_the_callers(container_user: str, runs_as: str) -> None:
    body = policy.check_exec(ALICE, {"Cmd": ["sh"]}, container_user, SECURITY)
    assert body == {"Cmd": ["sh"], "User": runs_as, "Env": []}


@pytest.mark.parametrize(("body", "reason"), [
    ({"Privileged": True}, "privileged"),
    ({"privileged": 1}, "privileged"),
    ({"PRIVILEGED": "true"}, "privileged"),
    ({"User": "1001"}, "foreign_uid"),
    ({"user": "4242:0"}, "foreign_uid"),
    ({"User": "0"}, "foreign_uid"),
    ({"User": "root"}, "foreign_uid"),
    ({"User": "0:0"}, "foreign_uid"),
    ({"User": "bob"}, "foreign_uid"),
    ({"User": 0}, "bad_request"),
    ({"Env": "A=b"}, "bad_request"),
])
def test_exec_denials(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(Denied) as info:
        policy.check_exec(ALICE, body, "1000:1000", SECURITY)
    assert info.value.reason == reason


def test_exec_as_root_only_for_admins_with_admin_root() -> None:
    body = policy.check_exec(ADMIN, {"Privileged": False, "User": "root"}, "", SecuritySettings(admin_root=True))
    assert body["User"] == "root"
    with pytest.raises(Denied):
        policy.check_exec(ADMIN, {"User": "root"}, "", SECURITY)


# --- update ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {}, {"Memory": GIB}, {"NanoCpus": 10**9}, {"PidsLimit": 100}, {"CpuQuota": 400_000},
    {"Memory": 8 * GIB, "NanoCpus": 4 * 10**9, "PidsLimit": 1000}, {"RestartPolicy": {"Name": "no"}},
    {"Devices": [], "CgroupParent": ""},
])
def test_update_within_limits_is_allowed_and_untouched(body: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    if before.get("Memory"):
        before["MemorySwap"] = 2 * before["Memory"]  # swap follows a new memory limit
    assert policy.check_update(ALICE, body, False, {}) == before  # no other defaults are filled in on update


@pytest.mark.parametrize(("body", "reason"), [
    ({"Devices": [{"PathOnHost": "/dev/mem"}]}, "devices"),
    ({"DeviceCgroupRules": ["a *:* rwm"]}, "devices"),
    ({"DeviceRequests": [gpu(Count=-1)]}, "devices"),
    ({"devicerequests": [gpu(Count=1)]}, "devices"),
    ({"CgroupParent": "/"}, "cgroup_parent"),
    ({"cgroupPARENT": "x"}, "cgroup_parent"),
    ({"NanoCpus": 5 * 10**9}, "limit_cpus"),
    ({"CpuQuota": 500_000}, "limit_cpus"),
    ({"CpuQuota": 300_000, "CpuPeriod": 50_000}, "limit_cpus"),
    ({"Memory": 9 * GIB}, "limit_memory"),
    ({"memory": 9 * GIB}, "limit_memory"),
    ({"PidsLimit": 1001}, "limit_pids"),
    ({"PidsLimit": 0}, "limit_lifted"),
    ({"CpuQuota": -1}, "limit_lifted"),
])
def test_update_denials(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(Denied) as info:
        policy.check_update(ALICE, body, False, {})
    assert info.value.reason == reason


@pytest.mark.parametrize("body", [{"PidsLimit": -1}, {"PidsLimit": 0}, {"CpuQuota": -1}])
def test_update_cannot_lift_a_limit(body: dict[str, Any]) -> None:
    # On update the engine reads PidsLimit 0 or -1 and CpuQuota -1 as "unlimited", not as "unchanged".
    try:
        policy.check_update(ALICE, body, False, {})
    except Denied:
        return
    pids, quota = bodies.field(body, "PidsLimit"), bodies.field(body, "CpuQuota")
    assert pids is None or 0 < pids <= LIMITS.pids_limit
    assert quota is None or quota >= 0


# --- escapes found while reviewing the policy ----------------------------------------------------------------------

def test_bare_disable_security_option_is_refused() -> None:
    # The engine reads a bare "disable" exactly like "label=disable".
    refused(host(SecurityOpt=["disable"]), "security_opt")


def test_allow_all_seccomp_profile_is_refused() -> None:
    # The CLI sends the profile's content; a profile whose default action allows every syscall is "unconfined".
    profile = json.dumps({"defaultAction": "SCMP_ACT_ALLOW"})
    refused(host(SecurityOpt=[f"seccomp={profile}"]), "security_opt")


def test_anonymous_volume_cannot_bind_a_host_path_through_driver_options() -> None:
    # The engine creates an anonymous volume with these options; the local driver then bind-mounts /etc.
    mount = {"Type": "volume", "Target": "/x", "VolumeOptions": {
        "DriverConfig": {"Name": "local", "Options": {"type": "none", "o": "bind", "device": "/etc"}}}}
    with pytest.raises(Denied):
        plan(host(Mounts=[mount]))


def test_links_are_refused() -> None:
    # A legacy link copies the linked container's environment into the new one as ALIAS_ENV_*.
    refused(host(Links=["bobs:db"]), "links")
    refused(host(Links=["mine:db"]), "links")


@pytest.mark.parametrize("body", [
    host(Memory="1g"),
    host(NanoCpus="2"),
    host(PidsLimit=[100]),
    host(DeviceRequests=[{"Driver": "nvidia", "Count": "two"}]),
    host(DeviceRequests=[{"Driver": "nvidia", "Capabilities": [1]}]),
    {"Image": "busybox", "User": "\u00b2"},  # str.isdigit() is true for a superscript two; int() refuses it
], ids=["memory-str", "nanocpus-str", "pidslimit-list", "count-str", "capabilities-int", "user-superscript"])
def test_mistyped_fields_raise_only_denied(body: dict[str, Any]) -> None:
    # The proxy answers a Denied; any other exception drops the client's connection without an answer.
    with contextlib.suppress(Denied):
        plan(body)


# --- properties --------------------------------------------------------------------------------------------------

def spellings(name: str) -> st.SearchStrategy[str]:
    """`name` in random case, sometimes with "s" written as the long s that folds to it."""

    def spell(flags: list[tuple[bool, bool]]) -> str:
        out = []
        for char, (upper, long_s) in zip(name, flags, strict=True):
            if char in "sS" and long_s:
                out.append(LONG_S)
            else:
                out.append(char.upper() if upper else char.lower())
        return "".join(out)

    flag = st.tuples(st.booleans(), st.integers(0, 7).map(lambda n: n == 0))
    return st.one_of(st.just(name), st.lists(flag, min_size=len(name), max_size=len(name)).map(spell))


def objects(values: dict[str, st.SearchStrategy[Any]], max_size: int = 8) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with a random subset of the given fields, each name spelled in random case."""
    item = st.one_of(*(st.tuples(spellings(name), strategy) for name, strategy in values.items()))
    return st.lists(item, max_size=max_size).map(dict)


SOURCES = ["/home/alice", "/home/alice/work", "/home/alice/link", "/home/alice/data-link", "/data", "/data/shared",
           "/etc", "/var/run/docker.sock", "/home/alice/missing", "my-data", "bobs-data", "relative"]
INTS = st.integers(-2, 10**11)
MODES = st.sampled_from([None, "", "host", "private", "container:mine", "container:bobs", "bridge"])
DEVICE_REQUEST = objects({
    "Driver": st.sampled_from([None, "", "nvidia", "cdi"]),
    "Count": st.integers(-1, 4),
    "DeviceIDs": st.lists(st.sampled_from(["GPU-a", "MIG-b", "0"]), max_size=2),
    "Capabilities": st.lists(st.lists(st.sampled_from(["gpu", "compute", "utility"]), max_size=2), max_size=2),
}, max_size=4)
MOUNT = objects({
    "Type": st.sampled_from(["bind", "volume", "tmpfs", "npipe"]),
    "Source": st.sampled_from(SOURCES),
    "Target": st.just("/target"),
}, max_size=3)
HOST_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "Privileged": st.one_of(st.booleans(), st.integers(0, 2), st.none(), st.sampled_from(["", "false"])),
    "CgroupParent": st.one_of(st.none(), st.just(""), st.text(max_size=6)),
    "NanoCpus": INTS, "CpuQuota": INTS, "CpuPeriod": st.integers(0, 10**6), "Memory": INTS, "ShmSize": INTS,
    "PidsLimit": st.one_of(st.none(), st.integers(-2, 5000)),
    **dict.fromkeys(policy.HOST_MODES, MODES),
    "SecurityOpt": st.lists(st.sampled_from(["no-new-privileges", "seccomp=unconfined", "label:disable",
                                             "apparmor=docker-default"]), max_size=2),
    "Runtime": st.sampled_from([None, "", "runc", "nvidia"]),
    "Binds": st.lists(st.sampled_from(SOURCES).map(lambda s: f"{s}:/target"), max_size=3),
    "Mounts": st.lists(MOUNT, max_size=2),
    "CapAdd": st.lists(st.sampled_from(["SYS_PTRACE", "SYS_ADMIN", "cap_sys_ptrace"]), max_size=2),
    "DeviceRequests": st.lists(DEVICE_REQUEST, max_size=2),
    "VolumesFrom": st.lists(st.sampled_from(["mine", "bobs:ro"]), max_size=2),
    "MaskedPaths": st.sampled_from([None, [], ["/proc/kcore"]]),
    "Sysctls": st.sampled_from([None, {}, {"net.core.somaxconn": "1"}]),
    "Devices": st.sampled_from([None, [], [{"PathOnHost": "/dev/mem"}]]),
}
ENV_ENTRY = st.one_of(st.sampled_from(["NVIDIA_VISIBLE_DEVICES=all", "nvidia_driver_capabilities=all",
                                       "CUDA_VISIBLE_DEVICES=0", "PATH=/bin", "A=NVIDIA_X"]), st.text(max_size=12))
LABEL_KEY = st.one_of(st.sampled_from([labels.USER, labels.UID, labels.REQUEST_MIG, "DS01.TYPE",
                                       labels.ALLOCATION, "com.example", "ds01x"]), st.text(max_size=8))
BODIES = objects({
    "Image": st.just("busybox"),
    "User": st.sampled_from([None, "", "0", "1000", "1001", "alice", "1001:0"]),
    "Env": st.lists(ENV_ENTRY, max_size=4),
    "Labels": st.dictionaries(LABEL_KEY, st.text(max_size=8), max_size=3),
    "HostConfig": st.one_of(st.none(), objects(HOST_VALUES, max_size=10)),
})
PROPERTY_FACTS = Facts(PATHS, CONTAINER_OWNERS, VOLUME_OWNERS, ENGINE_SOCKETS)


def gpu_variable(entry: str) -> bool:
    name = entry.split("=", 1)[0]
    return name == "CUDA_VISIBLE_DEVICES" or name.upper().startswith("NVIDIA_")


@settings(max_examples=400, deadline=None)
@given(body=BODIES, client_type=st.sampled_from(["docker", "compose", "container"]))
def test_plan_create_output_is_always_confined(body: dict[str, Any], client_type: str) -> None:
    """Through the proxy's own pipeline (strict parse, then plan): a refusal, or a body that is confined."""
    try:
        parsed = bodies.parse_json_object(json.dumps(body).encode(), "container create body")
        result = plan(parsed, facts=PROPERTY_FACTS, client_type=client_type)
    except Denied:
        return
    out = result.body
    hc = out["HostConfig"]
    assert isinstance(hc, dict)
    assert [k for k in out if k.casefold() == "hostconfig"] == ["HostConfig"]
    assert not any(value for key, value in hc.items() if key.casefold() == "privileged")
    assert [(k, v) for k, v in hc.items() if k.casefold() == "cgroupparent"] == [("CgroupParent", CGROUP)]
    assert hc["DeviceRequests"] == []
    assert not any(v == "host" for k, v in hc.items() if k.casefold() in {m.casefold() for m in policy.HOST_MODES})
    stamped = out["Labels"]
    assert [k for k in out if k.casefold() == "labels"] == ["Labels"]
    assert {k for k in stamped if k.casefold().startswith("ds01.")} == STAMPED
    assert stamped[labels.USER] == "alice"
    assert stamped[labels.UID] == "1000"
    assert stamped[labels.CREATED_AT] == NOW
    assert stamped[labels.TYPE] == client_type
    assert [k for k in out if k.casefold() == "env"] == ["Env"]
    assert [entry for entry in out["Env"] if gpu_variable(entry)] == NO_GPU_ENV
    assert all(gpu_variable(entry) for entry in result.stripped_env)
    assert 0 < bodies.field(hc, "Memory") <= LIMITS.memory_bytes
    assert 0 < bodies.field(hc, "ShmSize") <= LIMITS.shm_size_bytes
    assert 0 < bodies.field(hc, "PidsLimit") <= LIMITS.pids_limit
    nano = bodies.field(hc, "NanoCpus")
    if nano:
        assert nano <= LIMITS.cpus * 1e9
    else:
        quota, period = bodies.field(hc, "CpuQuota"), bodies.field(hc, "CpuPeriod") or 100_000
        assert quota is None or quota <= 0 or quota / period <= LIMITS.cpus
    sources = [bind.split(":", 1)[0] for bind in bodies.field(hc, "Binds") or []]
    mounts = bodies.field(hc, "Mounts") or []
    sources += [bodies.field(m, "Source") for m in mounts if bodies.field(m, "Type") == "bind"]
    # data-link resolves into the data directory /data
    owned = ("/home/alice", "/home/alice/work", "/home/alice/data-link", "/data/shared", "my-data")
    assert all(s in owned for s in sources)


def fold_collision(value: Any) -> bool:
    if isinstance(value, dict):
        folded = [key.casefold() for key in value]
        return len(set(folded)) != len(folded) or any(fold_collision(v) for v in value.values())
    if isinstance(value, list):
        return any(fold_collision(v) for v in value)
    return False


def json_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.text(max_size=4), spellings("Key"), spellings("Privileged"))
    return st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=4)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5), json_containers,
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode),
                     JSON_VALUES.map(lambda v: json.dumps(v).encode())))
def test_parse_json_object_raises_only_denied(raw: bytes) -> None:
    try:
        value = bodies.parse_json_object(raw, "body")
    except Denied as denial:
        assert denial.reason == "bad_request"
        return
    assert isinstance(value, dict)
    assert not fold_collision(value)


@settings(max_examples=300, deadline=None)
@given(value=st.dictionaries(st.one_of(st.text(max_size=4), spellings("HostConfig")), JSON_VALUES, max_size=4))
def test_parse_json_object_accepts_exactly_the_bodies_without_folded_duplicates(value: dict[str, Any]) -> None:
    raw = json.dumps(value, ensure_ascii=False).encode()
    if fold_collision(value):
        with pytest.raises(Denied):
            bodies.parse_json_object(raw, "body")
    else:
        assert bodies.parse_json_object(raw, "body") == value


@pytest.mark.parametrize(("name", "allowed"), [
    ("proj", True), ("proj._.1000", True), ("proj._.1002", False), ("596fe49fec12", False),
    ("/" + "a" * 64, False), ("cafe", True), ("deadbeef-run", True)])
def test_names_stay_in_the_callers_own_space(name: str, allowed: bool) -> None:
    if allowed:
        policy.check_object_name(ALICE, "container", name)
    else:
        with pytest.raises(Denied) as info:
            policy.check_object_name(ALICE, "network", name)
        assert info.value.reason == "foreign_name"
    policy.check_object_name(ADMIN, "container", name)  # admins name anything


def test_cpu_period_alone_gets_the_limit_as_a_quota() -> None:
    hc = host_config(plan(host(CpuPeriod=50_000)))
    assert hc["CpuQuota"] == 200_000 and "NanoCpus" not in hc  # 4 CPUs; the engine refuses NanoCpus beside it


def test_a_missing_named_volume_is_the_callers_to_make() -> None:
    missing = Facts(PATHS, CONTAINER_OWNERS, VOLUME_OWNERS, ENGINE_SOCKETS, missing_volumes=frozenset({"new-vol"}))
    plan(host(Binds=["new-vol:/v"]), facts=missing)
    refused(host(Binds=["new-vol:/v"]), "not_owner")  # without the fact that it is missing: not the caller's


def test_an_update_of_memory_keeps_swap_at_twice_the_memory() -> None:
    current = {"Memory": 8 * GIB, "MemorySwap": 16 * GIB}
    assert policy.check_update(ALICE, {"Memory": GIB}, False, current) == {"Memory": GIB, "MemorySwap": 2 * GIB}
    assert policy.check_update(ALICE, {"Memory": GIB, "MemorySwap": GIB}, False, current)["MemorySwap"] == GIB


def test_tmpfs_options_are_read_as_the_kernel_reads_them() -> None:
    refused(host(Tmpfs={"/x": "size=1m,SIZE=100g"}), "limit_tmpfs")
    assert host_config(plan(host(Tmpfs={"/x": "size=1g,mode=1777"})))["Tmpfs"] == {"/x": "size=1g,mode=1777"}


def test_a_reserved_host_port_is_refused_and_others_pass() -> None:
    """A host service's port (the exporter's 9401 by default), which a user could take while it is down."""
    for taken in ("9401", "9090"):
        with pytest.raises(Denied) as info:
            plan({"Image": "x", "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": taken}]}}})
        assert info.value.reason is Reason.HOST_PORT and "reserved on this host" in info.value.message
    allowed = plan({"Image": "x", "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "9402"}]}}})
    assert allowed.body["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"] == "9402"
    admins = plan({"Image": "x", "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "9401"}]}}}, caller=ADMIN)
    assert admins.body["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"] == "9401"
