"""No user gains host powers through containers: each attack as alice, through the proxy, judged by what the host,
the engine or bob ended up with, never by the refusal alone."""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from ds01 import containers
from tests.conftest import TEST_IMAGE, ProxyHandle, Testbed, start_proxy, stop_proxy

ESCAPE_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { setuid(0); setgid(0); printf("uid=%d euid=%d\n", (int)getuid(), (int)geteuid()); return 0; }
"""
PRIVATE_TEXT = "bob's private results"


def account(user: str) -> pwd.struct_passwd:
    return pwd.getpwnam(user)


def docker_as(proxy: ProxyHandle, user: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return proxy.as_user(user, "docker", *args, stdin=stdin)


def owned_dir(path: Path, user: str, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, account(user).pw_uid, account(user).pw_gid)
    path.chmod(mode)
    return path


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A fresh directory of alice's in her (nosuid,nodev) home."""
    path = owned_dir(Path(account("alice").pw_dir) / f"attack-{uuid.uuid4().hex[:8]}", "alice")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def no_privileged_files(tree: Path, user: str = "alice") -> None:
    """Everything under `tree` is the user's own: no file of root's or anyone else's, so a setuid or setgid bit
    could only ever give the user themselves; and no device node."""
    mine = account(user)
    own_gids = set(os.getgrouplist(user, mine.pw_gid))
    for path in [tree, *tree.rglob("*")]:
        info = path.lstat()
        assert info.st_uid == mine.pw_uid, f"{path} is owned by uid {info.st_uid}"
        assert not info.st_mode & stat.S_ISGID or info.st_gid in own_gids, f"{path} is setgid to {info.st_gid}"
        assert not (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)), f"{path} is a device node"


def crafted_tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for member, data in members:
            archive.addfile(member, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def entry(name: str, *, data: bytes = b"", mode: int = 0o644, uid: int = 0, kind: bytes = tarfile.REGTYPE,
          **extra: object) -> tuple[tarfile.TarInfo, bytes | None]:
    member = tarfile.TarInfo(name)
    member.type, member.mode, member.uid, member.gid = kind, mode, uid, uid
    member.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in extra.items():
        setattr(member, key, value)
    return member, data if kind == tarfile.REGTYPE else None


def put_archive(proxy: ProxyHandle, user: str, container: str, path: str, tar: bytes) -> tuple[int, str]:
    """PUT /containers/ID/archive with curl as `user`: (status, body)."""
    file = Path(f"/tmp/ds01-tar-{uuid.uuid4().hex}")
    file.write_bytes(tar)
    file.chmod(0o644)
    try:
        result = proxy.as_user(user, "curl", "-sS", "--unix-socket", str(proxy.socket), "-X", "PUT", "-w",
                               "\n%{http_code}", "-H", "Content-Type: application/x-tar", "--data-binary",
                               f"@{file}", f"http://docker/v1.41/containers/{container}/archive?path={path}")
    finally:
        file.unlink()
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def files_in(engine: docker.DockerClient, container: str, path: str) -> dict[str, tarfile.TarInfo]:
    """What the engine really holds at `path` in the container, read back directly (not through the proxy)."""
    stream, _ = engine.api.get_archive(container, path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
        return {member.name: member for member in archive.getmembers()}


def busybox_image(engine: docker.DockerClient, *, links: dict[str, str] | None = None,
                  dirs: dict[str, int] | None = None, changes: list[str] | None = None) -> str:
    """An image such as anyone could pull: busybox, plus the symlinks and directories (name -> mode) asked for."""
    image = f"ds01-test/crafted:{uuid.uuid4().hex[:8]}"
    rootfs = io.BytesIO()
    with tarfile.open(fileobj=rootfs, mode="w") as out:
        out.add("/bin/busybox", arcname="bin/busybox")
        applets = {f"bin/{applet}": "busybox" for applet in ("sh", "true", "ln", "mv", "pwd", "sleep")}
        for name, target in {**applets, **(links or {})}.items():
            member = tarfile.TarInfo(name)
            member.type, member.linkname = tarfile.SYMTYPE, target
            out.addfile(member)
        for name, mode in (dirs or {}).items():
            member = tarfile.TarInfo(name)
            member.type, member.mode = tarfile.DIRTYPE, mode
            out.addfile(member)
    engine.api.import_image_from_data(rootfs.getvalue(), repository=image, changes=changes or [])
    return image


# --- 1. identity: containers and execs run as the caller -----------------------------------------------------------

def test_containers_and_execs_run_as_the_caller(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    alice = account("alice")
    ran = docker_as(proxy, "alice", "run", "--rm", TEST_IMAGE, "sh", "-c", "id -u; id -g; echo $HOME $USER; "
                    "grep -E '^(NoNewPrivs|CapBnd)' /proc/self/status")
    assert ran.returncode == 0, ran.stderr
    uid, gid, env, bounding, no_new_privs = ran.stdout.split("\n")[:5]
    assert (uid, gid, env) == (str(alice.pw_uid), str(alice.pw_gid), "/tmp alice")
    assert no_new_privs.split() == ["NoNewPrivs:", "1"]
    chown_setuid_mknod = (1 << 0) | (1 << 7) | (1 << 27)
    assert int(bounding.split()[1], 16) & chown_setuid_mknod == 0  # CAP_CHOWN, CAP_SETUID and CAP_MKNOD are gone
    assert "runs as 1001:1001" in ran.stderr and "capabilities dropped" in ran.stderr  # the reply's notes

    assert docker_as(proxy, "alice", "run", "-d", "--name", "who", TEST_IMAGE, "sleep", "300").returncode == 0
    try:
        assert engine.containers.get("who").attrs["Config"]["User"] == f"{alice.pw_uid}:{alice.pw_gid}"
        execd = docker_as(proxy, "alice", "exec", "who", "id", "-u")
        assert execd.stdout.strip() == str(alice.pw_uid)
        for user in ("0", "root", "0:0", "bob", "1002", f"{alice.pw_uid}:0"):
            refused = docker_as(proxy, "alice", "exec", "-u", user, "who", "id", "-u")
            assert refused.returncode != 0 and refused.stdout == "", user
            assert "containers run as you" in refused.stderr
    finally:
        engine.containers.get("who").remove(force=True)


@pytest.mark.parametrize("args", [["--user", "0"], ["--user", "root"], ["--user", "0:0"], ["--user", "1002"],
                                  ["--group-add", "0"], ["--group-add", "docker"], ["--cap-add", "SETUID"],
                                  ["--security-opt", "no-new-privileges=false"]])
def test_root_and_other_identities_are_refused(proxy: ProxyHandle, engine: docker.DockerClient,
                                               args: list[str]) -> None:
    name = f"ident-{uuid.uuid4().hex[:8]}"
    result = docker_as(proxy, "alice", "run", "--name", name, *args, TEST_IMAGE, "id")
    assert result.returncode != 0 and "ds01:" in result.stderr
    assert "uid=" not in result.stdout  # nothing ran
    assert not engine.containers.list(all=True, filters={"name": name})  # and nothing was created


def test_own_groups_pass_and_a_gpu_container_gets_the_gpu_group(proxy: ProxyHandle) -> None:
    gpu_gid = str(subprocess.run(["getent", "group", "ds01-gpu"], capture_output=True, text=True,
                                 check=True).stdout.split(":")[2])
    gpu = docker_as(proxy, "alice", "run", "--rm", "--gpus", "1", TEST_IMAGE, "id", "-G")
    assert gpu.returncode == 0, gpu.stderr
    assert gpu_gid in gpu.stdout.split()
    plain = docker_as(proxy, "alice", "run", "--rm", "--group-add", str(account("alice").pw_gid), TEST_IMAGE,
                      "id", "-G")
    assert plain.returncode == 0 and gpu_gid not in plain.stdout.split()


# --- 2. setuid files, device nodes, file capabilities ---------------------------------------------------------------

def test_setuid_through_a_bind_mount_gives_no_root(proxy: ProxyHandle, scratch: Path, tmp_path: Path) -> None:
    source = tmp_path / "esc.c"
    source.write_text(ESCAPE_C)
    subprocess.run(["gcc", "-o", str(scratch / "esc"), str(source)], check=True)
    os.chown(scratch / "esc", account("alice").pw_uid, account("alice").pw_gid)
    attack = docker_as(proxy, "alice", "run", "--rm", "-v", f"{scratch}:/x", TEST_IMAGE, "sh", "-c",
                       "chown 0:0 /x/esc; chmod 4755 /x/esc; mknod /x/memdev c 1 1; chmod 666 /x/memdev; "
                       "mknod /x/disk b 8 0; true")
    assert attack.returncode == 0, attack.stderr
    assert "Operation not permitted" in attack.stderr
    no_privileged_files(scratch)
    ran = proxy.as_user("alice", str(scratch / "esc"))
    assert ran.stdout.strip() == f"uid={account('alice').pw_uid} euid={account('alice').pw_uid}"


SETCAP_C = r"""
#include <stdio.h>
#include <sys/xattr.h>
int main(int argc, char **argv) {
    unsigned int cap[5] = {0x02000001u, 1u << 7, 0, 0, 0};  /* revision 2: CAP_SETUID permitted, effective */
    if (setxattr(argv[1], "security.capability", cap, sizeof cap, 0) != 0) { perror("setxattr"); return 1; }
    return 0;
}
"""


def test_file_capabilities_cannot_be_set_through_a_bind_mount(proxy: ProxyHandle, scratch: Path,
                                                               tmp_path: Path) -> None:
    (tmp_path / "setcap.c").write_text(SETCAP_C)
    subprocess.run(["gcc", "-static", "-o", str(scratch / "setcap"), str(tmp_path / "setcap.c")], check=True)
    shutil.copy("/bin/busybox", scratch / "tool")
    for path in (scratch / "setcap", scratch / "tool"):
        os.chown(path, account("alice").pw_uid, account("alice").pw_gid)
    attack = docker_as(proxy, "alice", "run", "--rm", "-v", f"{scratch}:/x", TEST_IMAGE, "/x/setcap", "/x/tool")
    assert attack.returncode != 0 and "Operation not permitted" in attack.stderr
    with pytest.raises(OSError):  # no capability attribute on the host's file
        os.getxattr(scratch / "tool", "security.capability")
    no_privileged_files(scratch)


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


# --- 3. file permissions hold inside containers -------------------------------------------------------------------

def test_bobs_private_files_stay_private(proxy: ProxyHandle, scratch: Path) -> None:
    bob = account("bob")
    secret_in_home = scratch / "bobfile"
    secret_in_home.write_text(PRIVATE_TEXT)
    os.chown(secret_in_home, bob.pw_uid, bob.pw_gid)
    secret_in_home.chmod(0o600)
    assert proxy.as_user("alice", "cat", str(secret_in_home)).returncode != 0  # as over ssh
    read = docker_as(proxy, "alice", "run", "--rm", "-v", f"{scratch}:/s", TEST_IMAGE, "cat", "/s/bobfile")
    assert read.returncode != 0 and PRIVATE_TEXT not in read.stdout and "Permission denied" in read.stderr

    bobs_dir = owned_dir(proxy.data / f"bob-{uuid.uuid4().hex[:6]}", "bob", 0o700)
    (bobs_dir / "results.csv").write_text(PRIVATE_TEXT)
    os.chown(bobs_dir / "results.csv", bob.pw_uid, bob.pw_gid)
    read = docker_as(proxy, "alice", "run", "--rm", "-v", f"{proxy.data}:/d", TEST_IMAGE, "sh", "-c",
                     f"cat /d/{bobs_dir.name}/results.csv; rm -rf /d/{bobs_dir.name}")
    assert PRIVATE_TEXT not in read.stdout and "Permission denied" in read.stderr
    assert (bobs_dir / "results.csv").read_text() == PRIVATE_TEXT  # and not deleted either


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


def test_a_directory_behind_one_of_bobs_cannot_be_mounted(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    """bob's 0700 directory guards a world-readable one inside it: alice cannot reach it over ssh, nor by binding
    the inner directory directly (root's path lookup would pass where hers does not)."""
    bob = account("bob")
    guard = owned_dir(proxy.data / f"bob-{uuid.uuid4().hex[:6]}", "bob", 0o700)
    inner = owned_dir(guard / "public", "bob", 0o755)
    (inner / "notes").write_text(PRIVATE_TEXT)
    os.chown(inner / "notes", bob.pw_uid, bob.pw_gid)
    try:
        assert proxy.as_user("alice", "cat", str(inner / "notes")).returncode != 0  # as over ssh
        name = f"guard-{uuid.uuid4().hex[:6]}"
        result = docker_as(proxy, "alice", "run", "--name", name, "-v", f"{inner}:/p", TEST_IMAGE, "cat", "/p/notes")
        assert PRIVATE_TEXT not in result.stdout and f"lies inside {guard}, which you may not enter" in result.stderr
        assert not engine.containers.list(all=True, filters={"name": name})
    finally:
        shutil.rmtree(guard)


FLIP_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/fs.h>
int main(int argc, char **argv) {  /* swap two names as fast as possible, for the seconds asked */
    alarm(atoi(argv[3]));
    for (;;) syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE);
}
"""


def test_no_mount_point_is_made_inside_a_host_directory(proxy: ProxyHandle, engine: docker.DockerClient,
                                                         tmp_path: Path) -> None:
    """runc makes missing mount points and working directories as root inside what is mounted above them; with a
    symlink swapped in (CVE-2024-45310) anywhere on the host. Here bob's read-only directory and /etc stay clean."""
    bob = account("bob")
    bobs = owned_dir(proxy.data / f"bobshare-{uuid.uuid4().hex[:6]}", "bob", 0o755)
    mine = owned_dir(proxy.data / f"al-{uuid.uuid4().hex[:6]}", "alice")
    (mine / "f.txt").write_text("x")
    os.chown(mine / "f.txt", account("alice").pw_uid, account("alice").pw_gid)
    race = owned_dir(mine / "race", "alice")
    owned_dir(race / "a", "alice")
    assert proxy.as_user("alice", "ln", "-s", "/etc", str(race / "b")).returncode == 0
    (tmp_path / "flip.c").write_text(FLIP_C)
    flip = Path(f"/tmp/ds01-flip-{uuid.uuid4().hex[:6]}")
    subprocess.run(["gcc", "-O2", "-o", str(flip), str(tmp_path / "flip.c")], check=True)
    etc_before = sorted(os.listdir("/etc"))
    try:
        nested = [["-v", f"{bobs}:/v", "-v", f"{mine / 'f.txt'}:/v/newdir/newfile"],
                  ["-v", f"{bobs}:/v", "--tmpfs", "/v/tmpfsdir"],
                  ["-v", f"{bobs}:/v", "-w", "/v/wd/deep"],
                  ["-v", f"{bobs}:/v", "--mount", "type=volume,target=/v/vol"]]
        for args in nested:
            refused = docker_as(proxy, "alice", "run", "--rm", *args, TEST_IMAGE, "true")
            assert refused.returncode != 0 and "ds01:" in refused.stderr, args
        assert os.listdir(bobs) == [] and bobs.stat().st_uid == bob.pw_uid
        alice = account("alice")  # the swapper runs as alice herself, so that killing it stops the swaps
        swapping = subprocess.Popen([str(flip), str(race / "a"), str(race / "b"), "20"], user=alice.pw_uid,
                                    group=alice.pw_gid, extra_groups=[])
        try:
            for _ in range(5):
                docker_as(proxy, "alice", "run", "--rm", "-v", f"{race}:/w", "--tmpfs", "/w/a/pwned_dir",
                          TEST_IMAGE, "true")
                docker_as(proxy, "alice", "run", "--rm", "-v", f"{race}:/w", "-v", f"{mine / 'f.txt'}:/w/a/pwned",
                          TEST_IMAGE, "true")
        finally:
            swapping.kill()
            swapping.wait()
        assert sorted(os.listdir("/etc")) == etc_before
        made_by_root = [os.path.join(top, name) for top, dirs, files in os.walk(race) for name in dirs + files
                        if os.lstat(os.path.join(top, name)).st_uid == 0]
        assert made_by_root == []
    finally:
        flip.unlink()
        shutil.rmtree(bobs, ignore_errors=True)
        shutil.rmtree(mine, ignore_errors=True)


def test_a_symlink_in_the_image_cannot_lead_a_mount_point_into_a_host_directory(
        proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    """An image (anyone can pull one) with /x -> /w: a tmpfs at /x/t, or the working directory /x/deep, would be
    made by the runtime inside whatever host directory is mounted at /w."""
    image = f"ds01-test/symlinked:{uuid.uuid4().hex[:6]}"
    rootfs = io.BytesIO()
    with tarfile.open(fileobj=rootfs, mode="w") as out:
        out.add("/bin/busybox", arcname="bin/busybox")
        for link, target in (("bin/true", "busybox"), ("x", "/w")):
            member = tarfile.TarInfo(link)
            member.type, member.linkname = tarfile.SYMTYPE, target
            out.addfile(member)
    engine.api.import_image_from_data(rootfs.getvalue(), repository=image)
    bobs = owned_dir(proxy.data / f"bobshare-{uuid.uuid4().hex[:6]}", "bob", 0o755)
    try:
        for args in (["--tmpfs", "/x/t"], ["-w", "/x/deep"], ["-v", f"{proxy.data}:/x/y"]):
            name = f"sym-{uuid.uuid4().hex[:6]}"
            result = docker_as(proxy, "alice", "run", "--name", name, "-v", f"{bobs}:/w", *args, image, "true")
            assert result.returncode != 0 and "/x in " in result.stderr and "is a symlink (to /w)" in result.stderr
            assert engine.containers.get(name).status == "created"  # refused at start: it never ran
            engine.containers.get(name).remove(force=True)
        assert os.listdir(bobs) == []  # nothing made inside bob's directory
    finally:
        shutil.rmtree(bobs, ignore_errors=True)
        engine.images.remove(image, force=True)


def test_the_engines_own_mount_points_never_land_in_a_host_directory(proxy: ProxyHandle, engine: docker.DockerClient,
                                                                     scratch: Path) -> None:
    """The engine mounts /etc/hostname, /etc/hosts and /etc/resolv.conf; a bind at /etc would receive them as
    root-made files (and, with a symlink swapped in, put them anywhere on the host)."""
    etc = owned_dir(scratch / "etc", "alice")
    assert proxy.as_user("alice", "ln", "-s", "/etc", str(etc / "dl")).returncode == 0
    assert proxy.as_user("alice", "ln", "-s", "dl/ds01_pwned", str(etc / "hostname")).returncode == 0
    for target in ("/etc", "/", "/usr/lib", "/dev/shm"):
        name = f"sys-{uuid.uuid4().hex[:6]}"
        result = docker_as(proxy, "alice", "run", "--name", name, "-v", f"{etc}:{target}", TEST_IMAGE, "true")
        assert result.returncode != 0 and "where the engine and the GPU runtime put files" in result.stderr, target
        assert not engine.containers.list(all=True, filters={"name": name})
    assert sorted(p.name for p in etc.iterdir()) == ["dl", "hostname"] and not Path("/etc/ds01_pwned").exists()


def test_the_images_volumes_and_a_working_dir_in_a_volume_make_nothing_in_a_host_directory(
        proxy: ProxyHandle, engine: docker.DockerClient, scratch: Path) -> None:
    image = f"ds01-test/volumed:{uuid.uuid4().hex[:6]}"
    rootfs = io.BytesIO()
    with tarfile.open(fileobj=rootfs, mode="w") as out:
        out.add("/bin/busybox", arcname="bin/busybox")
        for applet in ("true", "ln", "pwd"):
            member = tarfile.TarInfo(f"bin/{applet}")
            member.type, member.linkname = tarfile.SYMTYPE, "busybox"
            out.addfile(member)
    engine.api.import_image_from_data(rootfs.getvalue(), repository=image, changes=["VOLUME /w/sub"])
    work = owned_dir(scratch / "w", "alice")
    volume = f"vol-{uuid.uuid4().hex[:6]}"
    try:
        declared = docker_as(proxy, "alice", "run", "--rm", "-v", f"{work}:/w", image, "true")
        assert declared.returncode != 0 and "/w/sub lies inside the bind mounted at /w" in declared.stderr
        assert docker_as(proxy, "alice", "volume", "create", volume).returncode == 0
        assert docker_as(proxy, "alice", "run", "--rm", "-v", f"{volume}:/tmp", TEST_IMAGE, "ln", "-s", "/w",
                         "/tmp/lnk").returncode == 0
        through = docker_as(proxy, "alice", "run", "--rm", "-v", f"{volume}:/tmp", "-v", f"{work}:/w", "-w",
                            "/tmp/lnk/newdir", TEST_IMAGE, "pwd")
        assert through.returncode != 0 and "lies below the volume mounted at /tmp" in through.stderr
        assert list(work.iterdir()) == []  # nothing made by root in alice's directory
    finally:
        engine.volumes.get(volume).remove(force=True)
        engine.images.remove(image, force=True)


def test_a_restart_checks_the_container_stopped(proxy: ProxyHandle, engine: docker.DockerClient,
                                               scratch: Path) -> None:
    """A process that turns /x/d into a symlink to /w when the engine stops it must not lead the restart's tmpfs
    mount point into alice's host directory (where the runtime would make it as root)."""
    image = busybox_image(engine, dirs={"x": 0o777})
    work = owned_dir(scratch / "w", "alice")
    swap_on_stop = ('if [ -L /x/d ]; then sleep 1000; fi; trap "mv /x/d /x/old && ln -s /w /x/d; exit 0" TERM; '
                    "while true; do sleep 0.2; done")
    try:
        started = docker_as(proxy, "alice", "run", "-d", "--name", "restart-swap", "--tmpfs", "/x/d/tt", "-v",
                            f"{work}:/w", image, "sh", "-c", swap_on_stop)
        assert started.returncode == 0, started.stderr
        restarted = docker_as(proxy, "alice", "restart", "restart-swap")
        assert restarted.returncode != 0 and "/x/d in restart-swap is a symlink (to /w)" in restarted.stderr
        assert list(work.iterdir()) == []  # no root-made tt in alice's directory
        assert engine.containers.get("restart-swap").status == "exited"
    finally:
        engine.containers.get("restart-swap").remove(force=True)
        engine.images.remove(image, force=True)


@pytest.mark.parametrize(("link", "target"), [("etc", "/w"), ("usr/lib64", "/w/lib"), ("run", "../w")])
def test_system_paths_that_lead_into_a_mount_are_refused(proxy: ProxyHandle, engine: docker.DockerClient,
                                                         scratch: Path, link: str, target: str) -> None:
    """The engine mounts /etc/hosts and friends, the GPU hook its libraries and sockets, following the image's
    symlinks: an image whose /usr/lib64 or /run points into a bind would have them made there as root. (The
    engine's own init layer makes /etc a directory again, so that one runs, and makes nothing in the bind.)"""
    image = busybox_image(engine, links={link: target}, dirs={"usr": 0o755})
    work = owned_dir(scratch / "w", "alice")
    try:
        result = docker_as(proxy, "alice", "run", "--rm", "--gpus", "1", "-v", f"{work}:/w", image, "true")
        if link == "etc":
            assert result.returncode == 0, result.stderr
        else:
            assert result.returncode != 0 and "inside the bind mounted at /w" in result.stderr
            assert not engine.containers.list(all=True, filters={"ancestor": image})  # --rm: removed, as refused
        assert list(work.iterdir()) == []
    finally:
        for container in engine.containers.list(all=True, filters={"ancestor": image}):
            container.remove(force=True)
        engine.images.remove(image, force=True)


def test_an_acl_that_shuts_alice_out_holds_in_containers(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    bob = account("bob")
    guarded = owned_dir(proxy.data / f"bobacl-{uuid.uuid4().hex[:6]}", "bob", 0o755)
    inner = owned_dir(guarded / "sub", "bob", 0o755)
    (inner / "s.txt").write_text(PRIVATE_TEXT)
    os.chown(inner / "s.txt", bob.pw_uid, bob.pw_gid)
    subprocess.run(["setfacl", "-m", f"u:{account('alice').pw_uid}:---", str(guarded)], check=True)
    try:
        assert proxy.as_user("alice", "cat", str(inner / "s.txt")).returncode != 0  # as over ssh
        read = docker_as(proxy, "alice", "run", "--rm", "-v", f"{inner}:/x", TEST_IMAGE, "cat", "/x/s.txt")
        assert PRIVATE_TEXT not in read.stdout and f"lies inside {guarded}, which you may not enter" in read.stderr
    finally:
        shutil.rmtree(guarded)


# --- 4. host mounts and bind sources ---------------------------------------------------------------------------------

def test_a_bind_from_a_mount_without_nosuid_is_refused(proxy: ProxyHandle, engine: docker.DockerClient,
                                                        scratch: Path) -> None:
    outside = Path(f"/var/tmp/ds01-unhardened-{uuid.uuid4().hex[:6]}")
    owned_dir(outside, "alice")
    target = owned_dir(scratch / "unhardened", "alice")
    subprocess.run(["mount", "--bind", str(outside), str(target)], check=True)
    try:
        name = f"nosuid-{uuid.uuid4().hex[:6]}"
        result = docker_as(proxy, "alice", "run", "--name", name, "-v", f"{target}:/x", TEST_IMAGE, "sh", "-c",
                           "cp /bin/busybox /x/esc && chmod 4755 /x/esc")
        assert result.returncode != 0 and "lacks nosuid and nodev" in result.stderr
        assert f"options of {target}" in result.stderr and "/etc/fstab" in result.stderr
        assert not engine.containers.list(all=True, filters={"name": name})
        assert list(outside.iterdir()) == []
    finally:
        subprocess.run(["umount", str(target)], check=True)
        shutil.rmtree(outside)


def test_a_symlink_swap_between_create_and_start_mounts_nothing_new(
        proxy: ProxyHandle, engine: docker.DockerClient, scratch: Path) -> None:
    checked = owned_dir(scratch / "project", "alice")
    (checked / "marker").write_text("mine")
    created = docker_as(proxy, "alice", "create", "--name", "swap", "-v", f"{checked}:/x", TEST_IMAGE,
                        "sh", "-c", "ls /x; touch /x/planted; sleep 300")
    assert created.returncode == 0, created.stderr
    try:
        mounted = engine.containers.get("swap").attrs["Mounts"][0]["Source"]
        assert os.stat(mounted).st_ino == checked.stat().st_ino  # the pin is the checked directory itself
        assert proxy.as_user("alice", "sh", "-c", f"mv {checked} {checked}.old && ln -s /etc {checked}").returncode == 0
        etc_before = sorted(os.listdir("/etc"))
        started = docker_as(proxy, "alice", "start", "swap")
        assert started.returncode != 0 and "(really /etc) is outside your home" in started.stderr
        assert engine.containers.get("swap").status == "created"
        copied = put_archive(proxy, "alice", "swap", "/x", crafted_tar(entry("ld.so.preload", data=b"/x/evil.so")))
        assert copied[0] == 403
        restarted = docker_as(proxy, "alice", "restart", "swap")
        assert restarted.returncode != 0 and "(really /etc) is outside your home" in restarted.stderr
        # Swapped for another directory of her own: the rule passes, but it is not what was checked.
        decoy = owned_dir(scratch / "decoy", "alice")
        assert proxy.as_user("alice", "sh", "-c", f"rm {checked} && mv {decoy} {checked}").returncode == 0
        swapped = docker_as(proxy, "alice", "start", "swap")
        assert swapped.returncode != 0 and "was moved or replaced" in swapped.stderr
        assert proxy.as_user("alice", "rmdir", str(checked)).returncode == 0
        assert proxy.as_user("alice", "ln", "-s", "/etc", str(checked)).returncode == 0
        assert sorted(os.listdir("/etc")) == etc_before and not Path("/etc/planted").exists()
        # Put back, it starts, and what it sees is the directory that was checked.
        assert proxy.as_user("alice", "sh", "-c", f"rm {checked} && mv {checked}.old {checked}").returncode == 0
        assert docker_as(proxy, "alice", "start", "swap").returncode == 0
        assert "marker" in engine.containers.get("swap").exec_run(["ls", "/x"]).output.decode()
    finally:
        engine.containers.get("swap").remove(force=True)
    binds = proxy.root / "state" / "binds"
    deadline = time.monotonic() + 10  # released by the proxy on the engine's destroy event
    while [key for key in os.listdir(binds) if (binds / key).is_dir()] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [key for key in os.listdir(binds) if (binds / key).is_dir()], "the pins outlive their container"


def test_homes_that_are_not_real_homes_give_no_binds(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    service = "ds01svc"
    if subprocess.run(["id", service], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/", service], check=True)
    name = f"svc-{uuid.uuid4().hex[:6]}"
    result = docker_as(proxy, service, "run", "--name", name, "-v", "/etc:/x", TEST_IMAGE, "cat", "/x/shadow")
    assert result.returncode != 0 and "is not below the home roots" in result.stderr
    assert not engine.containers.list(all=True, filters={"name": name})


def test_a_directory_only_user_binds_nothing(testbed: Testbed, engine: docker.DockerClient) -> None:
    """A private proxy with identity from the test bed's slapd; jane (uid 20001) is known only to LDAP."""
    handle = start_proxy(testbed, testbed.dir / "proxy-tests" / f"ldap{uuid.uuid4().hex[:6]}")
    ldap = (f"identity:\n  source: ldap\n  ldap:\n    uri: {testbed.env['DS01_TEST_LDAP_URI']}\n"
            f"    base_dn: {testbed.env['DS01_TEST_LDAP_BASE_DN']}\n")
    handle.config.write_text(handle.config.read_text().replace("identity:\n  source: nss\n", ldap))
    try:
        body = {"Image": TEST_IMAGE, "Cmd": ["cat", "/x/shadow"], "HostConfig": {"Binds": ["/etc:/x"]}}
        result = subprocess.run(
            ["setpriv", "--reuid", "20001", "--regid", "20000", "--clear-groups", "curl", "-sS", "--unix-socket",
             str(handle.socket), "-H", "Content-Type: application/json", "-d", json.dumps(body), "-w", "\n%{http_code}",
             "http://docker/v1.41/containers/create"], capture_output=True, text=True, check=False)
        answer, _, status = result.stdout.rpartition("\n")
        assert status == "403", result.stdout + result.stderr
        assert "no home directory on this host" in answer
        assert not engine.containers.list(all=True, filters={"label": f"{containers.UID}=20001"})
    finally:
        stop_proxy(handle, engine)


# --- 5. the ordinary path keeps working ------------------------------------------------------------------------------

def test_a_workspace_gets_the_callers_own_files(proxy: ProxyHandle) -> None:
    name = f"ws{uuid.uuid4().hex[:6]}"
    container = str(Path(sys.executable).parent / "container")
    created = proxy.as_user("alice", container, "create", name, "--cpu-only")
    assert created.returncode == 0, created.stderr
    workspace = Path(account("alice").pw_dir) / "workspace" / name
    try:
        # What `pip install --user` does: write under $HOME/.local, which is the workspace.
        installed = proxy.as_user("alice", container, "exec", name, "--", "sh", "-c",
                                  "mkdir -p $HOME/.local/lib/python3/site-packages && "
                                  "echo 'x = 1' > $HOME/.local/lib/python3/site-packages/pkg.py && id -u")
        assert installed.returncode == 0, installed.stderr
        assert installed.stdout.strip() == str(account("alice").pw_uid)
        package = workspace / ".local" / "lib" / "python3" / "site-packages" / "pkg.py"
        assert package.read_text() == "x = 1\n" and package.owner() == "alice"
        no_privileged_files(workspace)
    finally:
        proxy.as_user("alice", container, "remove", name, "-f")
        shutil.rmtree(workspace, ignore_errors=True)


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
