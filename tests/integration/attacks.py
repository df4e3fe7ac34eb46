"""Shared by the attack tests: alice's accounts and directories, crafted archives and images, and checks of what
the host ended up with."""

from __future__ import annotations

import io
import os
import pwd
import stat
import subprocess
import tarfile
import uuid
from pathlib import Path

import docker

from tests.conftest import ProxyHandle

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
