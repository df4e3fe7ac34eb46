"""Container ids from /proc/PID/cgroup in every driver layout, and process records from a fake /proc tree."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ds01.errors import Ds01Error
from ds01.procfs import ProcessInfo, container_id_from_cgroup, read_process, unified_cgroup

FIXTURE_PROC = Path(__file__).resolve().parents[1] / "fixtures" / "proc"
ID = "3f2a9c0e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f"  # the docker container in the fixture
DS01_ID = "9b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"  # the container under /ds01/alice
POD_UID = "5d1e0c4a-2b3f-4e6a-9c8d-7f1b2a3c4d5e"
POD_UNIT = POD_UID.replace("-", "_")  # systemd unit names spell the pod uid with underscores
HEX64 = re.compile(r"[0-9a-f]{64}")


def v1_file(path: str, unified: str = "/") -> str:
    """A whole cgroup v1 file as a container process sees it from the host: every hierarchy, then the unified line."""
    return (
        f"12:hugetlb:{path}\n11:memory:{path}\n10:pids:{path}\n9:cpuset:{path}\n8:devices:{path}\n"
        f"7:net_cls,net_prio:{path}\n6:blkio:{path}\n5:perf_event:{path}\n4:freezer:{path}\n3:rdma:/\n"
        f"2:cpu,cpuacct:{path}\n1:name=systemd:{path}\n0::{unified}\n"
    )


CONTAINER_CGROUPS = {
    "v1 docker cgroupfs": v1_file(f"/docker/{ID}"),
    "v1 docker systemd": v1_file(f"/system.slice/docker-{ID}.scope"),
    "v1 memory line alone": f"12:memory:/docker/{ID}\n",
    "v1 cpu,cpuacct line alone": f"4:cpu,cpuacct:/docker/{ID}\n",
    "v2 docker systemd": f"0::/system.slice/docker-{ID}.scope\n",
    "v2 docker cgroupfs": f"0::/docker/{ID}\n",
    "v2 no trailing newline": f"0::/docker/{ID}",
    "v2 containerd systemd": f"0::/system.slice/cri-containerd-{ID}.scope\n",
    "v2 containerd under its service": "0::/system.slice/containerd.service/"
    f"kubepods-burstable-pod{POD_UNIT}.slice:cri-containerd:{ID}\n",
    "v1 kubepods cgroupfs": v1_file(f"/kubepods/burstable/pod{POD_UID}/{ID}"),
    "v2 kubepods cgroupfs": f"0::/kubepods/besteffort/pod{POD_UID}/{ID}\n",
    "v2 kubepods systemd containerd": "0::/kubepods.slice/kubepods-burstable.slice/"
    f"kubepods-burstable-pod{POD_UNIT}.slice/cri-containerd-{ID}.scope\n",
    "v2 kubepods systemd cri-o": "0::/kubepods.slice/kubepods-besteffort.slice/"
    f"kubepods-besteffort-pod{POD_UNIT}.slice/crio-{ID}.scope\n",
    "v2 podman rootful": f"0::/machine.slice/libpod-{ID}.scope\n",
    "v2 podman rootless": f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope\n",
    "v2 podman inner cgroup": f"0::/machine.slice/libpod-{ID}.scope/container\n",
    "v1 ds01 cgroupfs parent": v1_file(f"/ds01/alice/{ID}"),
    "v1 ds01 memory line": f"4:memory:/ds01/alice/{ID}\n",
    "v2 ds01 cgroupfs parent": f"0::/ds01/alice/{ID}\n",
    "v2 ds01 systemd parent": f"0::/ds01.slice/ds01-alice.slice/docker-{ID}.scope\n",
    "hybrid: unified line names a host service": v1_file(f"/docker/{ID}", unified="/system.slice/containerd.service"),
    "hybrid: host-looking line first": f"0::/system.slice/containerd.service\n11:memory:/docker/{ID}\n",
    "hybrid: only the unified line knows": "1:name=systemd:/user.slice\n3:rdma:/\n"
    f"0::/system.slice/docker-{ID}.scope\n",
    "nested engine: the outer container wins": f"0::/system.slice/docker-{ID}.scope/docker/{DS01_ID}\n",
    "ecs-style parent": f"0::/ecs/0b1c2d3e4f5a4b7c8d9e0f1a2b3c4d5e/{ID}\n",
}

HOST_CGROUPS = {
    "login session": "0::/user.slice/user-1000.slice/session-3.scope\n",
    "root cgroup": "0::/\n",
    "init": "0::/init.scope\n",
    "docker daemon": "0::/system.slice/docker.service\n",
    "containerd daemon": "0::/system.slice/containerd.service\n",
    "user manager": "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n",
    "systemd-run scope": "0::/system.slice/run-r5c8f3543e204198b23b29dc69345f93.scope\n",
    "v1 host process": v1_file("/user.slice/user-1000.slice/session-3.scope", unified="/user.slice"),
    "v1 all root": v1_file("/"),
    "empty": "",
    "blank lines": "\n\n",
}

MALFORMED_CGROUPS = {
    "short docker id": "0::/docker/3f2a9c0e8b7d\n",
    "63 hex": f"0::/docker/{ID[:-1]}\n",
    "65 hex": f"0::/docker/{ID}a\n",
    "uppercase hex": f"0::/docker/{ID.upper()}\n",
    "id glued to a word": f"0::/docker/x{ID}\n",
    "id followed by text": f"0::/docker/{ID}.mount\n",
    "id in a suffix that is not .scope": f"0::/system.slice/docker-{ID}.scopeX\n",
    "podman conmon monitor": f"0::/machine.slice/libpod-conmon-{ID}.scope\n",
    "cri-o conmon monitor": f"0::/kubepods.slice/crio-conmon-{ID}.scope\n",
    "no path field": f"{ID}\n",
    "one colon": f"0:/docker/{ID}\n",
    "non-hex letters": "0::/docker/" + "g" * 64 + "\n",
}


@pytest.mark.parametrize("text", CONTAINER_CGROUPS.values(), ids=CONTAINER_CGROUPS.keys())
def test_container_processes_name_their_container(text: str) -> None:
    assert container_id_from_cgroup(text) == ID


@pytest.mark.parametrize("text", HOST_CGROUPS.values(), ids=HOST_CGROUPS.keys())
def test_host_processes_have_no_container(text: str) -> None:
    assert container_id_from_cgroup(text) is None


@pytest.mark.parametrize("text", MALFORMED_CGROUPS.values(), ids=MALFORMED_CGROUPS.keys())
def test_malformed_ids_are_not_ids(text: str) -> None:
    assert container_id_from_cgroup(text) is None


_FRAGMENTS = st.sampled_from(["/", ":", "-", ".scope", "\n", "0::", "docker", "conmon-", "libpod-", "A", "x", "0"])
_LOOKS_LIKE_CGROUP = st.lists(st.one_of(_FRAGMENTS, st.just(ID), st.just(ID.upper()), st.text(max_size=8)), max_size=20)


@given(st.one_of(st.text(), _LOOKS_LIKE_CGROUP.map("".join)))
def test_any_text_gives_none_or_an_id_from_it(text: str) -> None:
    found = container_id_from_cgroup(text)
    assert found is None or (HEX64.fullmatch(found) is not None and found in text)


def test_long_hostile_line_is_fast() -> None:
    text = "0::/" + ("a" * 63 + "-") * 2000 + "\n"
    assert container_id_from_cgroup(text * 20) is None


def test_fixture_tree() -> None:
    assert read_process(4242, FIXTURE_PROC) == ProcessInfo(4242, ID, 1001, "status")
    assert read_process(4300, FIXTURE_PROC) == ProcessInfo(4300, DS01_ID, 1002, "status")
    assert read_process(1500, FIXTURE_PROC) == ProcessInfo(1500, None, 1000, "loginuid")
    assert read_process(1600, FIXTURE_PROC) == ProcessInfo(1600, None, 0, "status")


def test_empty_cgroup_file_is_skipped() -> None:
    assert read_process(2, FIXTURE_PROC) is None


def test_missing_pid_is_skipped() -> None:
    assert read_process(999999, FIXTURE_PROC) is None


def test_only_vanished_processes_read_as_none() -> None:
    found = {pid: read_process(pid, FIXTURE_PROC) for pid in (4242, 2, 999999, 1500, 4300, 1600)}
    assert sorted(pid for pid, info in found.items() if info is not None) == [1500, 1600, 4242, 4300]
    assert found[4300] is not None and found[4300].container_id == DS01_ID


def _fake_process(root: Path, pid: int, files: dict[str, str]) -> Path:
    directory = root / str(pid)
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_real_uid_not_effective(tmp_path: Path) -> None:
    _fake_process(tmp_path, 7, {"cgroup": "0::/\n", "loginuid": "4294967295\n", "status": "Uid:\t1003\t0\t0\t0\n"})
    assert read_process(7, tmp_path) == ProcessInfo(7, None, 1003, "status")


def test_kernel_without_audit_falls_back_to_status(tmp_path: Path) -> None:
    _fake_process(tmp_path, 7, {"cgroup": "0::/\n", "status": "Name:\tx\nUid:\t1004\t1004\t1004\t1004\n"})
    assert read_process(7, tmp_path) == ProcessInfo(7, None, 1004, "status")


def test_vanished_before_status_is_skipped(tmp_path: Path) -> None:
    _fake_process(tmp_path, 7, {"cgroup": "0::/\n", "loginuid": "4294967295\n"})
    assert read_process(7, tmp_path) is None


def test_unreadable_file_raises_naming_it(tmp_path: Path) -> None:
    directory = _fake_process(tmp_path, 7, {"cgroup": "0::/\n", "loginuid": "4294967295\n"})
    (directory / "status").mkdir()  # reading it raises IsADirectoryError, an OSError that is not a vanished process
    with pytest.raises(Ds01Error, match=re.escape(str(directory / "status"))):
        read_process(7, tmp_path)


@pytest.mark.parametrize(
    ("name", "files"),
    [
        ("loginuid", {"cgroup": "0::/\n", "loginuid": "nobody\n"}),
        ("status", {"cgroup": "0::/\n", "loginuid": "4294967295\n", "status": "Name:\tx\n"}),
        ("status", {"cgroup": "0::/\n", "loginuid": "4294967295\n", "status": "Uid:\t-\n"}),
    ],
)
def test_garbled_file_raises_naming_it(tmp_path: Path, name: str, files: dict[str, str]) -> None:
    directory = _fake_process(tmp_path, 7, files)
    with pytest.raises(Ds01Error, match=re.escape(str(directory / name))):
        read_process(7, tmp_path)


def test_real_proc_own_pid() -> None:
    info = read_process(os.getpid())
    assert info is not None
    assert info.pid == os.getpid()
    assert info.container_id is None or HEX64.fullmatch(info.container_id)
    if info.uid_source == "status":
        assert info.uid == os.getuid()
    else:  # a login session survives sudo, so the login uid may differ from ours
        assert info.uid_source == "loginuid"
        assert info.uid == int(Path(f"/proc/{os.getpid()}/loginuid").read_text())


def test_the_unified_cgroup_of_a_process_is_its_0_line(tmp_path: Path) -> None:
    _fake_process(tmp_path, 7, {"cgroup": "4:memory:/x\n0::/system.slice/docker.service\n"})
    assert unified_cgroup(7, tmp_path) == "/system.slice/docker.service"
    _fake_process(tmp_path, 8, {"cgroup": "4:memory:/x\n1:name=systemd:/\n"})
    with pytest.raises(Ds01Error, match="no cgroup v2 hierarchy"):
        unified_cgroup(8, tmp_path)
    with pytest.raises(Ds01Error, match="has gone"):
        unified_cgroup(9, tmp_path)
