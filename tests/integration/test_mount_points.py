"""Bind sources and mount points as alice through the proxy: pinned sources, nosuid mounts, and no mount point or
working directory the runtime would make as root inside a host directory (nested mounts, image symlinks and
VOLUMEs, the engine's own mounts, restarts, races). Judged by what the host directories hold afterwards."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import docker
import pytest

from tests.conftest import TEST_IMAGE, ProxyHandle
from tests.integration.attacks import account, busybox_image, crafted_tar, docker_as, entry, owned_dir, put_archive


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
