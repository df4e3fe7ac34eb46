"""ds01.jobs.joblog: a job's log goes into the user's own workspace only, as the user's file, never through a
symlink or a hard link the user planted, and cut at its cap with the cut noted. The proxy writes it as root, so
these run as root, as it does, with a workspace of another uid."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ds01.errors import Denied
from ds01.jobs.joblog import write_log

USER_UID, USER_GID = 43210, 43210

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="writes files of another uid, as the proxy (root) does")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    space = tmp_path / "ws"
    space.mkdir()
    os.chown(space, USER_UID, USER_GID)
    return space


def test_the_log_is_the_users_file_in_their_workspace(workspace: Path) -> None:
    written = write_log(str(workspace), "train", uid=USER_UID, gid=USER_GID, chunks=[b"hello\n", b"world\n"],
                        max_bytes=1 << 20)
    log = workspace / ".ds01" / "jobs" / "train.log"
    assert log.read_bytes() == b"hello\nworld\n" and written.path == str(log) and written.bytes_dropped == 0
    for path in (log, log.parent, log.parent.parent):
        assert (path.stat().st_uid, path.stat().st_gid) == (USER_UID, USER_GID)


def test_past_the_cap_the_rest_is_dropped_and_the_cut_noted(workspace: Path) -> None:
    written = write_log(str(workspace), "big", uid=USER_UID, gid=USER_GID, chunks=[b"a" * 70, b"b" * 70], max_bytes=100)
    text = (workspace / ".ds01" / "jobs" / "big.log").read_bytes()
    assert text.startswith(b"a" * 70 + b"b" * 30) and b"cut at 100 bytes" in text and b"40 more bytes" in text
    assert (written.bytes_kept, written.bytes_dropped) == (100, 40)


def test_a_planted_symlink_to_etc_is_refused_and_nothing_is_written_outside(workspace: Path, tmp_path: Path) -> None:
    outside = tmp_path / "etc"
    outside.mkdir()
    (workspace / ".ds01").symlink_to(outside)
    with pytest.raises(Denied, match="symlink"):
        write_log(str(workspace), "train", uid=USER_UID, gid=USER_GID, chunks=[b"x"], max_bytes=100)
    assert list(outside.iterdir()) == []


def test_a_symlinked_log_file_is_replaced_not_followed(workspace: Path, tmp_path: Path) -> None:
    target = tmp_path / "shadow"
    target.write_text("secret\n")
    jobs = workspace / ".ds01" / "jobs"
    jobs.mkdir(parents=True)
    for path in (jobs, jobs.parent):
        os.chown(path, USER_UID, USER_GID)
    (jobs / "train.log").symlink_to(target)
    write_log(str(workspace), "train", uid=USER_UID, gid=USER_GID, chunks=[b"mine\n"], max_bytes=100)
    assert target.read_text() == "secret\n" and not (jobs / "train.log").is_symlink()
    assert (jobs / "train.log").read_text() == "mine\n"


def test_a_hard_link_to_another_file_is_never_written_through(workspace: Path, tmp_path: Path) -> None:
    jobs = workspace / ".ds01" / "jobs"
    jobs.mkdir(parents=True)
    for path in (jobs, jobs.parent):
        os.chown(path, USER_UID, USER_GID)
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    os.link(victim, jobs / "train.log")
    write_log(str(workspace), "train", uid=USER_UID, gid=USER_GID, chunks=[b"mine\n"], max_bytes=100)
    assert victim.read_text() == "root's\n" and (jobs / "train.log").read_text() == "mine\n"


def test_a_directory_of_someone_else_is_refused(workspace: Path) -> None:
    (workspace / ".ds01").mkdir()  # root's, as if another user's
    with pytest.raises(Denied, match="belongs to uid 0"):
        write_log(str(workspace), "train", uid=USER_UID, gid=USER_GID, chunks=[b"x"], max_bytes=100)
    with pytest.raises(Denied, match="belongs to uid"):
        write_log(str(workspace.parent), "train", uid=USER_UID, gid=USER_GID, chunks=[b"x"], max_bytes=100)
