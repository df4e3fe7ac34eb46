"""Request bodies through the allow-list, attacked as real users with the docker CLI and docker-py (issue 10's
body classes). Each test asserts what the engine ended up with, not only the refusal."""

from __future__ import annotations

import json
import time
from typing import Any

import docker
import pytest

from ds01.config import load_config
from ds01.gpus.allocator import Allocator
from ds01.gpus.placement import GpuRequest
from tests.conftest import TEST_IMAGE, ProxyHandle
from tests.integration.attacks import account, busybox_image, docker_as
from tests.integration.test_proxy import gpu_slots


def api_as(proxy: ProxyHandle, user: str, method: str, path: str, body: dict[str, Any] | None = None,
           ) -> tuple[int, dict[str, Any]]:
    """One API request as `user`, with curl: (status, decoded answer)."""
    args = ["curl", "-sS", "-w", "\n%{http_code}", "-X", method, "--unix-socket",
            str(proxy.socket), f"http://docker/v1.41{path}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    result = proxy.as_user(user, *args)
    text, _, status = result.stdout.rpartition("\n")
    return int(status), (json.loads(text) if text.strip() else {})


def no_container(engine: docker.DockerClient, name: str) -> bool:
    return not engine.containers.list(all=True, filters={"name": f"^/{name}$"})


@pytest.mark.parametrize(("name", "host", "refusal"), [
    ("oom-adj", {"OomScoreAdj": -1000}, "other users' processes the kernel's OOM victims"),
    ("rtprio", {"Ulimits": [{"Name": "rtprio", "Soft": 99, "Hard": 99}]}, "HARD at most your limit of 0"),
    ("memlock", {"Ulimits": [{"Name": "memlock", "Soft": -1, "Hard": -1}]}, "ulimit memlock=-1:-1 is not allowed"),
    ("swap", {"MemorySwap": -1}, "unlimited swap"),
    ("shm-tmpfs", {"Tmpfs": {"/dev/shm": "size=100g"}}, "its size is ShmSize"),
    ("huge-tmpfs", {"Tmpfs": {"/scratch": "size=100g"}}, "must fit in its memory"),
    ("restart", {"RestartPolicy": {"Name": "always"}}, "restart on failure at most"),
    ("log-driver", {"LogConfig": {"Type": "syslog", "Config": {"syslog-address": "udp://127.0.0.1:514"}}},
     "the engine's default driver"),
    ("log-size", {"LogConfig": {"Type": "json-file", "Config": {"max-size": "100g"}}}, "over the cap"),
    ("volume-label", {"Mounts": [{"Type": "volume", "Target": "/v",
                                  "VolumeOptions": {"Labels": {"ds01.user": "bob"}}}]}, "label ds01.user is reserved"),
    ("unknown-field", {"Privileged": False, "NewHostPower": True}, "HostConfig.NewHostPower is not a field"),
    ("low-port", {"PortBindings": {"80/tcp": [{"HostPort": "80"}]}}, "below 1024 are root's"),
    ("negative-quota", {"CpuQuota": -1}, "would remove your CPU limit"),
    ("negative-swap", {"MemorySwap": -2}, "(unlimited swap) is not allowed"),
    ("shared-bind", {"Binds": ["/tmp:/x:rshared"]}, "shared propagation"),
    ("anonymous-etc", {"Mounts": [{"Type": "volume", "Target": "/x/../etc"}]}, "would hold or sit in /etc"),
])
def test_each_field_nobody_checked_is_refused(proxy: ProxyHandle, engine: docker.DockerClient, name: str,
                                              host: dict[str, Any], refusal: str) -> None:
    container = f"field-{name}"
    status, answer = api_as(proxy, "alice", "POST", f"/containers/create?name={container}",
                            {"Image": TEST_IMAGE, "Cmd": ["true"], "HostConfig": host})
    assert status == 403 and refusal in answer.get("message", ""), answer
    assert no_container(engine, container)
    assert not engine.volumes.list(filters={"label": "ds01.user=bob"})


def test_the_cli_sees_the_refusal_of_a_field(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    made = docker_as(proxy, "alice", "run", "--rm", "--name", "cli-oom", "--oom-score-adj=-1000", TEST_IMAGE, "true")
    assert made.returncode != 0 and "OOM victims" in made.stderr
    made = docker_as(proxy, "alice", "run", "--rm", "--ulimit", "nofile=1024:1024", "--oom-score-adj=100",
                     "--restart", "no", TEST_IMAGE, "sh", "-c", "ulimit -n; cat /proc/self/oom_score_adj")
    assert made.returncode == 0, made.stderr
    assert made.stdout.split() == ["1024", "100"]  # lowering a ulimit, raising one's own OOM score: fine


def test_update_limits_are_computed_from_the_current_values(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    made = docker_as(proxy, "alice", "create", "--name", "quota-trick", "--cpu-quota", "100000", "--cpu-period",
                     "100000", TEST_IMAGE, "sleep", "60")
    assert made.returncode == 0, made.stderr
    container = engine.containers.get("quota-trick")
    try:
        updated = docker_as(proxy, "alice", "update", "--cpu-period", "1000", "quota-trick")
        assert updated.returncode != 0 and "100 CPUs asked for" in updated.stderr
        container.reload()
        assert container.attrs["HostConfig"]["CpuPeriod"] == 100_000  # one CPU, still
        assert docker_as(proxy, "alice", "update", "--cpu-period", "50000", "quota-trick").returncode == 0
        lowered = docker_as(proxy, "alice", "update", "--memory", "1g", "quota-trick")
        assert lowered.returncode == 0, lowered.stderr
        container.reload()
        assert (container.attrs["HostConfig"]["Memory"], container.attrs["HostConfig"]["MemorySwap"]) == (
            2**30, 2 * 2**30)
    finally:
        container.remove(force=True)


def test_an_images_gpu_variables_and_ds01_labels_do_not_reach_the_container(proxy: ProxyHandle,
                                                                             engine: docker.DockerClient) -> None:
    image = busybox_image(engine, changes=["ENV NVIDIA_VISIBLE_DEVICES=all", "ENV CUDA_VISIBLE_DEVICES=0",
                                           "LABEL ds01.protected=true", "LABEL ds01.allocation=fake"])
    try:
        made = docker_as(proxy, "alice", "run", "--name", "baked", image, "sh", "-c",
                         'echo "[$NVIDIA_VISIBLE_DEVICES][$CUDA_VISIBLE_DEVICES]"')
        assert made.returncode == 0, made.stderr
        assert made.stdout.strip() == "[void][]"
        assert "the image's CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES are overridden" in made.stderr
        labels = engine.containers.get("baked").labels
        assert labels["ds01.protected"] == "" and labels["ds01.allocation"] == ""  # cleanup may act on it
        assert labels["ds01.user"] == "alice"
        engine.containers.get("baked").remove(force=True)
        granted = docker_as(proxy, "alice", "run", "--rm", "--gpus", "1", image, "sh", "-c",
                            'echo "$NVIDIA_VISIBLE_DEVICES"')
        assert granted.returncode == 0, granted.stderr
        [device] = granted.stdout.split()
        assert device.startswith(("GPU-", "MIG-"))  # the granted one, never "all"
    finally:
        for leftover in engine.containers.list(all=True, filters={"ancestor": image}):
            leftover.remove(force=True)
        engine.images.remove(image, force=True)


def test_an_image_with_an_unknown_ds01_label_is_refused(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    image = busybox_image(engine, changes=["LABEL ds01.exempt=yes"])
    try:
        made = docker_as(proxy, "alice", "create", "--name", "odd-label", image, "true")
        assert made.returncode != 0 and "ds01.exempt" in made.stderr and "Rebuild the image" in made.stderr
        assert no_container(engine, "odd-label")
    finally:
        engine.images.remove(image, force=True)


def test_anonymous_volumes_belong_to_their_creator(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    image = busybox_image(engine, changes=["VOLUME /cache"])
    try:
        made = docker_as(proxy, "alice", "create", "--name", "anon", "-v", "/scratch", image, "true")
        assert made.returncode == 0, made.stderr
        mounts = engine.containers.get("anon").attrs["Mounts"]
        names = sorted(m["Name"] for m in mounts if m["Type"] == "volume")
        assert sorted(m["Destination"] for m in mounts) == ["/cache", "/scratch"]
        for name in names:
            assert engine.volumes.get(name).attrs["Labels"]["ds01.user"] == "alice"
        listed = docker_as(proxy, "alice", "volume", "ls", "-q")
        assert set(names) <= set(listed.stdout.split())
        assert not set(names) & set(docker_as(proxy, "bob", "volume", "ls", "-q").stdout.split())
        assert docker_as(proxy, "alice", "rm", "anon").returncode == 0
        removed = docker_as(proxy, "alice", "volume", "rm", *names)
        assert removed.returncode == 0, removed.stderr
        assert not {v.name for v in engine.volumes.list()} & set(names)
        ran = docker_as(proxy, "alice", "run", "--rm", "-v", "/gone", image, "true")
        assert ran.returncode == 0, ran.stderr
        assert not engine.volumes.list(filters={"label": "ds01.user=alice", "dangling": True})  # --rm took them
    finally:
        for leftover in engine.containers.list(all=True, filters={"ancestor": image}):
            leftover.remove(force=True, v=True)
        engine.images.remove(image, force=True)


def test_exec_instances_are_capped_per_container(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    made = docker_as(proxy, "alice", "run", "-d", "--name", "exec-flood", TEST_IMAGE, "sleep", "120")
    assert made.returncode == 0, made.stderr
    client = docker.APIClient(base_url=f"unix://{proxy.socket}")
    flood = proxy.as_user("alice", "python3", "-c", (
        "import docker, sys\n"
        f"c = docker.APIClient(base_url='unix://{proxy.socket}')\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(80):\n"
        "        c.exec_create('exec-flood', ['true']); n += 1\n"
        "except docker.errors.APIError as e:\n"
        "    print(n, e.explanation)\n"))
    try:
        count, _, message = flood.stdout.partition(" ")
        assert count == "64", flood.stdout + flood.stderr
        assert "exec-flood has 64 exec instances" in message
        assert len(engine.containers.get("exec-flood").attrs["ExecIDs"]) == 64
    finally:
        client.close()
        engine.containers.get("exec-flood").remove(force=True)


def test_restart_after_a_reclaim_asks_for_the_gpus_again(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    allocator = Allocator(proxy.root / "state", load_config(proxy.config).allocation)
    made = docker_as(proxy, "bob", "run", "-d", "--name", "restart-bob", "--gpus", "1", TEST_IMAGE, "sleep", "300")
    assert made.returncode == 0, made.stderr
    container = engine.containers.get("restart-bob")
    [device] = container.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"]
    try:
        assert docker_as(proxy, "bob", "stop", "-t", "0", "restart-bob").returncode == 0
        allocator.release_container(container.id)  # reclaimed after the hold
        other = allocator.request("carol", 1003, load_config(proxy.config).defaults.with_overrides(
            {"allow_full_gpu": True}), GpuRequest(devices=(device,)), slots=gpu_slots())
        refused = docker_as(proxy, "bob", "restart", "restart-bob")
        assert refused.returncode != 0 and "already allocated" in refused.stderr
        container.reload()
        assert container.status == "exited"  # the device stays carol's alone
        allocator.release(other.id)
        restarted = docker_as(proxy, "bob", "restart", "restart-bob")
        assert restarted.returncode == 0, restarted.stderr
        assert [a.slots for a in allocator.allocations() if a.container == container.id] == [(device,)]
    finally:
        container.remove(force=True)


def test_a_name_conflict_does_not_show_the_other_users_container(proxy: ProxyHandle,
                                                                 engine: docker.DockerClient) -> None:
    made = docker_as(proxy, "bob", "create", "--name", "popular", TEST_IMAGE, "true")
    assert made.returncode == 0, made.stderr
    bobs = engine.containers.get("popular").id
    try:
        status, answer = api_as(proxy, "alice", "POST", "/containers/create?name=popular", {"Image": TEST_IMAGE})
        assert status == 409
        assert bobs not in json.dumps(answer) and bobs[:12] not in json.dumps(answer)
        assert "already in use" in answer["message"]
        own = docker_as(proxy, "bob", "create", "--name", "popular", TEST_IMAGE, "true")
        assert bobs in own.stderr  # one's own container is named in full
    finally:
        engine.containers.get("popular").remove(force=True)


def test_a_volume_or_network_body_goes_through_its_table(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    status, answer = api_as(proxy, "alice", "POST", "/networks/create",
                            {"Name": "alice-lan", "IPAM": {"Config": [{"Subnet": "10.0.0.0/8"}]}})
    assert status == 403 and "for admins" in answer["message"]
    assert not engine.networks.list(names=["alice-lan"])
    status, answer = api_as(proxy, "alice", "POST", "/networks/create",
                            {"Name": "alice-lan", "Options": {"com.docker.network.bridge.name": "eth0"}})
    assert status == 403 and "bridge driver options" in answer["message"]
    status, answer = api_as(proxy, "alice", "POST", "/volumes/create", {"Name": "alice-vol", "Labels": {
        "DS01.user": "bob"}})
    assert status == 403 and "reserved" in answer["message"]
    assert not [v for v in engine.volumes.list() if v.name == "alice-vol"]


def test_stopping_an_ungranted_start_by_the_engine(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    """A GPU container the engine restarts on its own (on-failure) after its grant was released is stopped."""
    allocator = Allocator(proxy.root / "state", load_config(proxy.config).allocation)
    made = docker_as(proxy, "bob", "run", "-d", "--name", "flaky", "--gpus", "1", "--restart", "on-failure:5",
                     TEST_IMAGE, "sh", "-c", "sleep 3; exit 1")
    assert made.returncode == 0, made.stderr
    container = engine.containers.get("flaky")
    assert container.labels["ds01.instance"] == str((proxy.root / "state").resolve())  # whose grants apply
    try:
        allocator.release_container(container.id)
        # From here every start is ungranted: the engine's own restart after the failure, or the first start when
        # the proxy's watcher reads its event only after the release. Either way the proxy stops it, and the
        # engine's restart policy ends there: wait for that (a loaded host takes its time).
        log = proxy.root / "log" / "events.jsonl"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (
                "proxy.ungranted_start" in log.read_text() and container.status == "exited"):
            time.sleep(0.5)
            container.reload()
        assert "proxy.ungranted_start" in log.read_text() and container.status == "exited"
        stopped_at = container.attrs["RestartCount"]
        time.sleep(5)
        container.reload()
        assert container.status == "exited" and container.attrs["RestartCount"] == stopped_at
    finally:
        container.remove(force=True)


def test_no_way_onto_another_users_network(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    made = docker_as(proxy, "bob", "network", "create", "bobs-lan")
    assert made.returncode == 0, made.stderr
    network = engine.networks.get("bobs-lan")
    try:
        status, answer = api_as(proxy, "alice", "POST", "/containers/create?name=lan-spy", {
            "Image": TEST_IMAGE, "NetworkingConfig": {"EndpointsConfig": {"x": {"NetworkID": network.id}}}})
        assert status == 403 and "would join the network NetworkID names" in answer["message"]
        assert no_container(engine, "lan-spy")
        assert docker_as(proxy, "alice", "network", "create", "alice-lan").returncode == 0
        assert docker_as(proxy, "alice", "create", "--name", "lan-spy", TEST_IMAGE, "true").returncode == 0
        status, answer = api_as(proxy, "alice", "POST", "/networks/alice-lan/connect", {
            "Container": "lan-spy", "EndpointConfig": {"NetworkID": network.id}})
        assert status == 403, answer
        network.reload()
        assert not network.attrs["Containers"]  # nobody of alice's joined bob's network
        squat = docker_as(proxy, "alice", "network", "create", "bobs-lan")
        assert squat.returncode != 0 and "the network name bobs-lan is taken" in squat.stderr
        assert network.id not in squat.stderr
        assert len(engine.networks.list(names=["bobs-lan"])) == 1
        by_id = docker_as(proxy, "alice", "network", "create", network.id[:12])
        assert by_id.returncode != 0 and "looks like an object id" in by_id.stderr
    finally:
        for name in ("lan-spy",):
            if not no_container(engine, name):
                engine.containers.get(name).remove(force=True)
        for name in ("alice-lan", "bobs-lan"):
            for found in engine.networks.list(names=[name]):
                found.remove()


def test_no_name_in_another_uids_space_by_rename_or_a_second_parameter(proxy: ProxyHandle,
                                                                       engine: docker.DockerClient) -> None:
    bobs_space = f"proj._.{account('bob').pw_uid}"
    assert docker_as(proxy, "alice", "create", "--name", "renamed", TEST_IMAGE, "true").returncode == 0
    try:
        renamed = docker_as(proxy, "alice", "rename", "renamed", bobs_space)
        assert renamed.returncode != 0 and "another user's name space" in renamed.stderr
        assert engine.containers.get("renamed").name == "renamed"
        status, answer = api_as(proxy, "alice", "POST", f"/containers/create?name={bobs_space}&name=ok2",
                                {"Image": TEST_IMAGE})
        assert status == 400 and "given more than once" in answer["message"]
        assert no_container(engine, bobs_space) and no_container(engine, "ok2")
    finally:
        engine.containers.get("renamed").remove(force=True)


def test_docker_py_list_filters_and_new_named_volumes(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    made = docker_as(proxy, "alice", "run", "--name", "with-new-vol", "-v", "fresh-vol:/v", "--cpu-period",
                     "50000", TEST_IMAGE, "true")
    assert made.returncode == 0, made.stderr
    try:
        assert engine.volumes.get("fresh-vol").attrs["Labels"]["ds01.user"] == "alice"
        assert engine.containers.get("with-new-vol").attrs["HostConfig"]["CpuQuota"] > 0
        listed = proxy.as_user("alice", "python3", "-c", (
            "import docker\n"
            f"c = docker.DockerClient(base_url='unix://{proxy.socket}')\n"
            "print(sorted(x.name for x in c.containers.list(all=True, filters={'name': 'with-new-vol'})))\n"
            "print(sorted(v.name for v in c.volumes.list(filters={'dangling': False})))\n"))
        assert listed.returncode == 0, listed.stderr
        containers_seen, volumes_seen = listed.stdout.splitlines()
        assert containers_seen == "['with-new-vol']" and "fresh-vol" in volumes_seen
        stolen = docker_as(proxy, "bob", "run", "--rm", "-v", "fresh-vol:/v", TEST_IMAGE, "true")
        assert stolen.returncode != 0 and "is not yours" in stolen.stderr
    finally:
        engine.containers.get("with-new-vol").remove(force=True)
        engine.volumes.get("fresh-vol").remove(force=True)


def test_a_network_name_that_changed_hands_is_refused_at_start(proxy: ProxyHandle,
                                                              engine: docker.DockerClient) -> None:
    early = docker_as(proxy, "alice", "create", "--name", "early", "--network", "later-lan", TEST_IMAGE, "true")
    assert early.returncode != 0 and "there is no network later-lan" in early.stderr
    assert docker_as(proxy, "alice", "network", "create", "handed-lan").returncode == 0
    assert docker_as(proxy, "alice", "create", "--name", "waiting", "--network", "handed-lan", TEST_IMAGE,
                     "sleep", "30").returncode == 0
    try:
        assert docker_as(proxy, "alice", "network", "rm", "handed-lan").returncode == 0
        assert docker_as(proxy, "bob", "network", "create", "handed-lan").returncode == 0
        started = docker_as(proxy, "alice", "start", "waiting")
        assert started.returncode != 0 and "which is not its owner's" in started.stderr
        assert engine.containers.get("waiting").status == "created"
        assert not engine.networks.get("handed-lan").attrs["Containers"]
    finally:
        engine.containers.get("waiting").remove(force=True)
        for found in engine.networks.list(names=["handed-lan"]):
            found.remove()


def test_a_symlink_in_the_image_never_leads_a_volume_into_a_system_tree(proxy: ProxyHandle,
                                                                        engine: docker.DockerClient) -> None:
    image = busybox_image(engine, links={"data": "/etc"})
    try:
        made = docker_as(proxy, "alice", "create", "--name", "sym-vol", "-v", "sym-data:/data", image, "sleep", "5")
        assert made.returncode == 0, made.stderr
        started = docker_as(proxy, "alice", "start", "sym-vol")
        assert started.returncode != 0 and "is a symlink (to /etc) on the way to a mount point" in started.stderr
        never_ran = engine.containers.get("sym-vol")
        assert never_ran.status == "created" and never_ran.attrs["State"]["StartedAt"].startswith("0001")
    finally:
        for leftover in engine.containers.list(all=True, filters={"ancestor": image}):
            leftover.remove(force=True)
        for volume in engine.volumes.list(filters={"name": "sym-data"}):
            volume.remove(force=True)
        engine.images.remove(image, force=True)


def test_a_volume_made_through_the_proxy_is_its_owners_to_write(proxy: ProxyHandle,
                                                                engine: docker.DockerClient) -> None:
    assert docker_as(proxy, "alice", "volume", "create", "alice-scratch").returncode == 0
    try:
        wrote = docker_as(proxy, "alice", "run", "--rm", "-v", "alice-scratch:/v", "-v", "alice-new:/w", TEST_IMAGE,
                          "sh", "-c", "touch /v/a /w/b && stat -c %u /v/a /w/b")
        assert wrote.returncode == 0, wrote.stderr
        assert wrote.stdout.split() == [str(account("alice").pw_uid)] * 2
        taken = api_as(proxy, "bob", "POST", "/volumes/create", {"Name": "alice-scratch"})
        assert taken[0] == 409 and "Mountpoint" not in json.dumps(taken[1])
    finally:
        for name in ("alice-scratch", "alice-new"):
            for volume in engine.volumes.list(filters={"name": name}):
                volume.remove(force=True)
