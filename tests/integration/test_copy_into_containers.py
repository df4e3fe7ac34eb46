"""docker cp and docker import as alice through the proxy: what lands is her own plain files, nothing crosses a host
mount, and no tag others run is replaced. Judged by what the engine and the host hold afterwards."""

from __future__ import annotations

import os
import stat
import sys
import tarfile
import uuid
from pathlib import Path

import docker
import pytest

from tests.conftest import TEST_IMAGE, ProxyHandle
from tests.integration.attacks import PRIVATE_TEXT, account, crafted_tar, docker_as, entry, files_in, put_archive


def test_docker_cp_into_a_bind_mount_is_refused_and_writes_nothing(proxy: ProxyHandle, engine: docker.DockerClient,
                                                                    scratch: Path) -> None:
    assert docker_as(proxy, "alice", "run", "-d", "--name", "cp-bind", "-v", f"{scratch}:/x", TEST_IMAGE,
                     "sleep", "300").returncode == 0
    try:
        tar = crafted_tar(entry("esc", data=b"#!/bin/sh\nid\n", mode=0o4755))
        status, body = put_archive(proxy, "alice", "cp-bind", "/x", tar)
        assert status == 403 and "mounts host directories" in body and str(scratch) in body
        (scratch.parent / "esc-src").write_text("#!/bin/sh\nid\n")
        cli = docker_as(proxy, "alice", "cp", str(scratch.parent / "esc-src"), "cp-bind:/x/esc")
        (scratch.parent / "esc-src").unlink()
        assert cli.returncode != 0 and "mounts host directories" in cli.stderr
        assert list(scratch.iterdir()) == []
    finally:
        engine.containers.get("cp-bind").remove(force=True)

def test_docker_cp_lands_as_the_callers_plain_files(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    assert docker_as(proxy, "alice", "run", "-d", "--name", "cp-plain", TEST_IMAGE, "sleep", "300").returncode == 0
    alice = account("alice")
    try:
        tar = crafted_tar(entry("drop", kind=tarfile.DIRTYPE, mode=0o6755),
                          entry("drop/esc", data=b"#!/bin/sh\nid\n", mode=0o6755),
                          entry("drop/cap", data=b"x", pax_headers={"SCHILY.xattr.security.capability": "\x01"}),
                          entry("drop/link", kind=tarfile.LNKTYPE, linkname="drop/esc"))
        status, body = put_archive(proxy, "alice", "cp-plain", "/tmp", tar)
        assert status == 200, body
        held = files_in(engine, "cp-plain", "/tmp/drop")
        assert set(held) == {"drop", "drop/esc", "drop/cap", "drop/link"}
        for member in held.values():
            assert (member.uid, member.gid) == (alice.pw_uid, alice.pw_gid), member.name
            assert not member.mode & (stat.S_ISUID | stat.S_ISGID), member.name
            assert not any(key.startswith("SCHILY.xattr") for key in member.pax_headers), member.name
    finally:
        engine.containers.get("cp-plain").remove(force=True)

@pytest.mark.parametrize(("bad", "what"), [
    (entry("mem", kind=tarfile.CHRTYPE, devmajor=1, devminor=1, mode=0o666), "device node"),
    (entry("disk", kind=tarfile.BLKTYPE, devmajor=8, devminor=0), "device node"),
    (entry("fifo", kind=tarfile.FIFOTYPE), "FIFO"),
    (entry("shadow", kind=tarfile.LNKTYPE, linkname="/etc/shadow"), "hard link"),
    (entry("../../etc/cron.d/x", data=b"* * * * * root id\n"), "leaves the destination"),
])
def test_a_bad_archive_entry_refuses_the_whole_copy(proxy: ProxyHandle, engine: docker.DockerClient,
                                                     bad: tuple[tarfile.TarInfo, bytes | None], what: str) -> None:
    assert docker_as(proxy, "alice", "run", "-d", "--name", "cp-bad", TEST_IMAGE, "sleep", "300").returncode == 0
    try:
        tar = crafted_tar(entry("before", data=b"1"), bad, entry("after", data=b"2"))
        status, body = put_archive(proxy, "alice", "cp-bad", "/tmp", tar)
        assert status == 403 and what in body and "nothing was copied" in body
        listing = engine.containers.get("cp-bad").exec_run(["ls", "/tmp"]).output.decode().split()
        assert listing == []  # not even the entry before the bad one
    finally:
        engine.containers.get("cp-bad").remove(force=True)

def test_docker_cp_out_of_a_container_with_host_mounts_reads_nothing_of_bobs(
        proxy: ProxyHandle, engine: docker.DockerClient, scratch: Path) -> None:
    """The engine reads a copy out as root: from a container that mounts alice's tree, it would read bob's file."""
    bob = account("bob")
    secret = scratch / "bobfile"
    secret.write_text(PRIVATE_TEXT)
    os.chown(secret, bob.pw_uid, bob.pw_gid)
    secret.chmod(0o600)
    created = docker_as(proxy, "alice", "create", "--name", "cp-out", "-v", f"{scratch}:/h", TEST_IMAGE, "true")
    assert created.returncode == 0, created.stderr
    try:
        copied = proxy.as_user("alice", "sh", "-c", "docker cp cp-out:/h/bobfile - | tar xOf -")
        assert PRIVATE_TEXT not in copied.stdout and "copying out of cp-out is refused" in copied.stderr
        stat_only = proxy.as_user("alice", "curl", "-sS", "-I", "--unix-socket", str(proxy.socket),
                                  "http://docker/v1.41/containers/cp-out/archive?path=/h/bobfile")
        assert "403" in stat_only.stdout.split("\n")[0] and "X-Docker-Container-Path-Stat" not in stat_only.stdout
    finally:
        engine.containers.get("cp-out").remove(force=True)
    assert docker_as(proxy, "alice", "run", "-d", "--name", "cp-out2", TEST_IMAGE, "sh", "-c",
                     "echo result > /tmp/out; sleep 60").returncode == 0
    try:  # without host mounts, copying out works as usual
        copied = proxy.as_user("alice", "sh", "-c", "sleep 1; docker cp cp-out2:/tmp/out - | tar xOf -")
        assert copied.stdout.strip() == "result", copied.stderr
    finally:
        engine.containers.get("cp-out2").remove(force=True)

def test_docker_import_cannot_replace_a_tag_others_run(proxy: ProxyHandle, engine: docker.DockerClient,
                                                       tmp_path: Path) -> None:
    victim = "ds01-victim/shared:1"
    engine.images.get(TEST_IMAGE).tag(victim)
    before = engine.images.get(victim).id
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "id").write_text("#!/bin/sh\necho TROJAN\n")
    trojan = Path(f"/tmp/ds01-trojan-{uuid.uuid4().hex}.tar")
    with tarfile.open(trojan, "w") as out:
        out.add(rootfs, arcname=".")
    trojan.chmod(0o644)
    try:
        imported = docker_as(proxy, "alice", "import", str(trojan), victim)
        assert imported.returncode != 0 and "docker import is for admins only" in imported.stderr
        assert engine.images.get(victim).id == before  # the tag still names the image it named
        by_url = docker_as(proxy, "alice", "import", "http://127.0.0.1:9/", "ds01-victim/other:1")
        assert by_url.returncode != 0 and "for admins only" in by_url.stderr  # the engine fetched nothing
        pulled = proxy.as_user("alice", "curl", "-sS", "-X", "POST", "--unix-socket", str(proxy.socket),
                               "http://docker/v1.41/images/create?fromImage=busybox&tag=1&repo=x")
        assert "repo are not allowed" in pulled.stdout
    finally:
        trojan.unlink()
        engine.images.remove(victim)

STREAM_GIB_ARCHIVE = r"""
import http.client, socket, sys, tarfile
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])
size = 1 << 30
member = tarfile.TarInfo("big"); member.size = size; member.mode = 0o4755
def body():
    yield member.tobuf(tarfile.PAX_FORMAT)
    block = bytes(1 << 20)
    for _ in range(size // len(block)):
        yield block
    yield bytes(1024)  # the end-of-archive marker
conn = Unix("localhost", timeout=600)
conn.request("PUT", f"/v1.41/containers/{sys.argv[2]}/archive?path=/tmp", body=body(),
             headers={"Content-Type": "application/x-tar"}, encode_chunked=True)
print(conn.getresponse().status)
"""

def peak_rss_bytes(pid: int) -> int:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

def test_a_one_gib_archive_streams_in_flat_memory(proxy: ProxyHandle, engine: docker.DockerClient,
                                                  tmp_path: Path) -> None:
    assert docker_as(proxy, "alice", "run", "-d", "--name", "cp-big", TEST_IMAGE, "sleep", "600").returncode == 0
    script = Path(f"/tmp/ds01-stream-{uuid.uuid4().hex}.py")
    script.write_text(STREAM_GIB_ARCHIVE)
    script.chmod(0o644)
    try:
        before = peak_rss_bytes(proxy.process.pid)
        sent = proxy.as_user("alice", sys.executable, str(script), str(proxy.socket), "cp-big", timeout=600)
        assert sent.stdout.strip() == "200", sent.stderr
        growth = peak_rss_bytes(proxy.process.pid) - before
        assert growth < 64 * 2**20, f"the proxy's peak memory grew by {growth / 2**20:.0f} MiB for a 1 GiB copy"
        landed = engine.containers.get("cp-big").exec_run(["stat", "-c", "%u %s %a", "/tmp/big"]).output.decode()
        assert landed.split() == [str(account("alice").pw_uid), str(1 << 30), "755"]  # the caller's, no setuid bit
    finally:
        script.unlink()
        engine.containers.get("cp-big").remove(force=True)
