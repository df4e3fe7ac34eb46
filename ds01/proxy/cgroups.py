"""Per-user cgroup parents: every container of a user runs under one parent that caps their CPUs and memory.

On hosts where the engine uses the systemd cgroup driver the parent is a slice, `ds01-USER.slice`, capped
through systemctl; on cgroupfs hosts (the test bed) it is the directory `/ds01/USER` in the cgroup tree.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from ds01.errors import Ds01Error
from ds01.proxy.resources import CPU_PERIOD_US


class CgroupParents:
    def __init__(self, driver: str, version: str, root: Path = Path("/sys/fs/cgroup")) -> None:
        if driver not in ("cgroupfs", "systemd"):
            raise Ds01Error(f"the engine reports cgroup driver {driver!r}; ds01 supports cgroupfs and systemd")
        self.driver = driver
        self.version = version
        self.root = root
        self._lock = threading.Lock()

    def name(self, user: str) -> str:
        return f"ds01-{user}.slice" if self.driver == "systemd" else f"/ds01/{user}"

    def ensure(self, user: str, cpus: float, memory_bytes: int) -> str:
        """Create (or update) the user's parent with their aggregate caps; returns the name for CgroupParent."""
        quota = int(cpus * CPU_PERIOD_US)
        with self._lock:
            try:
                if self.driver == "systemd":
                    self._systemd(user, cpus, memory_bytes)
                elif self.version == "2":
                    self._unified(user, quota, memory_bytes)
                else:
                    self._legacy(user, quota, memory_bytes)
            except (OSError, subprocess.CalledProcessError) as exc:
                raise Ds01Error(f"cannot set up the cgroup parent for {user}: {exc}") from exc
        return self.name(user)

    def _systemd(self, user: str, cpus: float, memory_bytes: int) -> None:
        subprocess.run(["systemctl", "set-property", "--runtime", self.name(user),
                        f"CPUQuota={int(cpus * 100)}%", f"MemoryMax={memory_bytes}"],
                       check=True, capture_output=True, timeout=30)

    def _legacy(self, user: str, quota: int, memory_bytes: int) -> None:
        cpu = self.root / "cpu" / "ds01" / user
        memory = self.root / "memory" / "ds01" / user
        for directory in (cpu, memory):
            directory.mkdir(parents=True, exist_ok=True)
        (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(str(quota))
        (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))

    def _unified(self, user: str, quota: int, memory_bytes: int) -> None:
        parent = self.root / "ds01"
        parent.mkdir(exist_ok=True)
        for directory in (self.root, parent):
            (directory / "cgroup.subtree_control").write_text("+cpu +memory +pids")
        mine = parent / user
        mine.mkdir(exist_ok=True)
        (mine / "cgroup.subtree_control").write_text("+cpu +memory +pids")
        (mine / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
        (mine / "memory.max").write_text(str(memory_bytes))
