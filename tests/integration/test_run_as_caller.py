"""No user gains host powers through containers: who their processes are, and what file access they keep. Each
attack as alice, through the proxy, judged by what the host, the engine or bob ended up with, never by the refusal
alone. Copies and mount points have modules of their own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest

from ds01 import labels
from tests.conftest import TEST_IMAGE, ProxyHandle, Testbed, start_proxy, stop_proxy
from tests.integration.attacks import PRIVATE_TEXT, account, docker_as, no_privileged_files, owned_dir

ESCAPE_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { setuid(0); setgid(0); printf("uid=%d euid=%d\n", (int)getuid(), (int)geteuid()); return 0; }
"""

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
        assert not engine.containers.list(all=True, filters={"label": f"{labels.UID}=20001"})
    finally:
        stop_proxy(handle, engine)

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
