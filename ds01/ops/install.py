"""`ds01 install`: put ds01 in place on a host, idempotently, from a checkout.

Every target path is relative to `root` ("/" for the running host; another directory to build an image or
to test). Files are written atomically (temp file, fsync, rename) with explicit modes; an existing
resource-limits.yaml is never overwritten. Each step reports one line: "installed", "unchanged",
"kept (exists)", "skipped" (with why) or, under --dry-run, "would install".

The venv is built only for the running host (root "/"), or with `with_venv`; commands go through an
injectable runner so tests can check what would run without running pip.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ds01.config import load_config
from ds01.errors import ConfigError, Ds01Error
from ds01.identity import nss
from ds01.paths import DEFAULTS

VENV = "/opt/ds01/venv"
LINKS = {"/usr/local/bin/ds01": f"{VENV}/bin/ds01", "/usr/local/bin/container": f"{VENV}/bin/container"}
WRAPPER = "/usr/local/lib/ds01/bin/docker"
CONFIG = "/etc/ds01/resource-limits.yaml"
UNIT_DIR = "/etc/systemd/system"
UNITS = ("ds01-proxy.service", "ds01-exporter.service", "ds01-cleanup.service", "ds01-cleanup.timer")
UDEV_RULES = "/etc/udev/rules.d/70-ds01-nvidia.rules"
MODPROBE = "/etc/modprobe.d/ds01-nvidia.conf"
PROFILE = "/etc/profile.d/ds01.sh"
DOC_DIR = "/usr/local/share/doc/ds01"
STATE_DIR = DEFAULTS["DS01_STATE_DIR"]
LOG_DIR = DEFAULTS["DS01_LOG_DIR"]
RUN_DIR = DEFAULTS["DS01_RUN_DIR"]
GID_PLACEHOLDER = "@DS01_GPU_GID@"
SHIPPED_GROUP = "ds01-gpu"  # what udev/70-ds01-nvidia.rules names
STAMP = ".ds01-source-sha256"  # in the venv: the digest of the checkout it was built from

# Files taken from the checkout, relative to it.
SOURCE_FILES = {
    "config": "config/resource-limits.yaml",
    "wrapper": "wrappers/docker",
    "profile": "config/profile.d/ds01.sh",
    "udev": "udev/70-ds01-nvidia.rules",
    "modprobe": "udev/ds01-nvidia.conf",
    **{unit: f"config/systemd/{unit}" for unit in UNITS},
}

# What pip needs to build the package (pyproject.toml names README.md as the long description).
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE")

Runner = Callable[[Sequence[str]], None]


def run_command(argv: Sequence[str]) -> None:
    """Run a command, its output going to ours; a failure is a Ds01Error naming the command."""
    try:
        done = subprocess.run(list(argv), check=False)
    except FileNotFoundError as exc:
        raise Ds01Error(f"cannot run {argv[0]}: not installed") from exc
    if done.returncode != 0:
        raise Ds01Error(f"{shlex.join(argv)} failed with exit status {done.returncode}")


def default_source() -> Path:
    """The checkout this package was imported from (an editable install), if it is one."""
    return Path(__file__).resolve().parents[2]


def substitute_socket(wrapper: str, run_dir: str) -> str:
    """The docker shim with its DS01_SOCKET line pointing at RUN_DIR/docker.sock."""
    socket = shlex.quote(f"{run_dir.rstrip('/')}/docker.sock")
    text, count = re.subn(r"^DS01_SOCKET=\S+", lambda _: f"DS01_SOCKET={socket}", wrapper, flags=re.MULTILINE)
    if count != 1:
        raise ConfigError(f"the docker wrapper has {count} DS01_SOCKET= lines, expected exactly 1")
    return text


def substitute_docker_host(profile: str, run_dir: str) -> str:
    socket = shlex.quote(f"unix://{run_dir.rstrip('/')}/docker.sock")
    text, count = re.subn(r"^export DOCKER_HOST=\S+", lambda _: f"export DOCKER_HOST={socket}", profile,
                          flags=re.MULTILINE)
    if count != 1:
        raise ConfigError(f"the profile.d snippet has {count} 'export DOCKER_HOST=' lines, expected exactly 1")
    return text


def substitute_gid(modprobe: str, gid: int) -> str:
    setting = f"NVreg_DeviceFileGID={GID_PLACEHOLDER}"
    if modprobe.count(setting) != 1:
        raise ConfigError(f"the modprobe template should have {setting} exactly once")
    return modprobe.replace(setting, f"NVreg_DeviceFileGID={gid}")


def substitute_group(rules: str, group: str) -> str:
    return rules.replace(f'GROUP="{SHIPPED_GROUP}"', f'GROUP="{group}"')


def source_digest(source: Path) -> str:
    """What the venv is built from: pyproject.toml, README.md and the package's files, by path and content."""
    digest = hashlib.sha256()
    files = [*(source / name for name in PACKAGE_FILES if (source / name).is_file()),
             *sorted(p for p in (source / "ds01").rglob("*") if p.is_file() and "__pycache__" not in p.parts)]
    for path in files:
        digest.update(str(path.relative_to(source)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class Step:
    status: str  # installed, unchanged, kept (exists), skipped, would install, reloaded
    target: str
    note: str = ""

    def line(self) -> str:
        return f"{self.status:<15} {self.target}" + (f"  ({self.note})" if self.note else "")


class Installer:
    def __init__(self, source: Path, root: Path = Path("/"), *, dry_run: bool = False, with_venv: bool = False,
                 run: Runner = run_command, report: Callable[[str], None] = print,
                 python: str | None = None, run_dir: str = RUN_DIR) -> None:
        self.source = source.resolve()
        self.root = root.resolve()
        self.real_root = self.root == Path("/")
        self.dry_run = dry_run
        self.with_venv = with_venv or self.real_root
        self.run = run
        self.report = report
        fallback: str = getattr(sys, "_base_executable", None) or sys.executable
        self.python = python or ("/usr/bin/python3" if Path("/usr/bin/python3").exists() else fallback)
        self.run_dir = run_dir
        self.steps: list[Step] = []
        missing = [rel for rel in (*SOURCE_FILES.values(), "pyproject.toml", "ds01/__init__.py")
                   if not (self.source / rel).is_file()]
        if missing:
            raise ConfigError(f"{self.source} is not a ds01 checkout (missing {', '.join(missing)}): run from "
                              "the checkout (make install) or pass --source")

    # --- helpers ---------------------------------------------------------------------------------------------

    def target(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def _step(self, status: str, path: Path | str, note: str = "") -> None:
        step = Step(status, str(path), note)
        self.steps.append(step)
        self.report(step.line())

    def _read(self, key: str) -> bytes:
        return (self.source / SOURCE_FILES[key]).read_bytes()

    def _parents(self, path: Path) -> None:
        missing = []
        for parent in path.parents:
            if parent.exists():
                break
            missing.append(parent)
        for parent in reversed(missing):
            parent.mkdir()
            parent.chmod(0o755)

    def put_file(self, path: str, data: bytes, mode: int, *, keep_existing: bool = False, note: str = "") -> None:
        target = self.target(path)
        if keep_existing and (target.exists() or target.is_symlink()):
            self._step("kept (exists)", target, "an existing file is never overwritten; compare it with "
                       f"{self.source / SOURCE_FILES['config']}")
            return
        if target.is_file() and not target.is_symlink():
            current = target.stat()
            if target.read_bytes() == data:
                self._settle_mode(target, stat.S_IMODE(current.st_mode), mode, note)
                return
        if self.dry_run:
            self._step("would install", target, note)
            return
        self._parents(target)
        temp = target.with_name(f".{target.name}.ds01-tmp")
        temp.unlink(missing_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, mode)  # explicit, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(temp, target)
        self._step("installed", target, note)

    def put_link(self, path: str, points_to: str) -> None:
        target = self.target(path)
        if target.is_symlink() and os.readlink(target) == points_to:
            self._step("unchanged", target, f"-> {points_to}")
            return
        if target.is_dir() and not target.is_symlink():
            raise Ds01Error(f"{target} is a directory; move it away, then install again")
        if self.dry_run:
            self._step("would install", target, f"-> {points_to}")
            return
        self._parents(target)
        temp = target.with_name(f".{target.name}.ds01-tmp")
        temp.unlink(missing_ok=True)
        temp.symlink_to(points_to)
        os.replace(temp, target)
        self._step("installed", target, f"-> {points_to}")

    def _settle_mode(self, target: Path, current: int, mode: int, note: str = "") -> None:
        """An existing item with the right content: unchanged, or only its mode corrected."""
        if current == mode:
            self._step("unchanged", target, note)
            return
        if not self.dry_run:
            target.chmod(mode)
        self._step("would install" if self.dry_run else "installed", target, f"mode set to {mode:04o}")

    def put_dir(self, path: str, mode: int) -> None:
        target = self.target(path)
        if target.is_dir():
            self._settle_mode(target, stat.S_IMODE(target.stat().st_mode), mode)
            return
        if self.dry_run:
            self._step("would install", target, f"directory, mode {mode:04o}")
            return
        self._parents(target)
        target.mkdir()
        target.chmod(mode)
        self._step("installed", target, f"directory, mode {mode:04o}")

    # --- the steps -------------------------------------------------------------------------------------------

    def group_name(self) -> str:
        """bare_metal.group from the installed config if there is one, else from the shipped one."""
        installed = self.target(CONFIG)
        return load_config(installed if installed.exists() else self.source / SOURCE_FILES["config"]).bare_metal.group

    def group_gid(self, group: str) -> int | None:
        """The gid: from ROOT/etc/group when installing elsewhere and it has one, else from this host."""
        group_file = self.target("/etc/group")
        if not self.real_root and group_file.is_file():
            for line in group_file.read_text(encoding="utf-8").splitlines():
                fields = line.split(":")
                if len(fields) >= 3 and fields[0] == group and fields[2].isdigit():
                    return int(fields[2])
        return nss.group_id(group)

    def install_group(self, group: str) -> None:
        where = f"group {group}"
        if not self.real_root:
            self._step("skipped", where, "groups are created only when --root is /")
            return
        if self.group_gid(group) is not None:
            self._step("unchanged", where)
        elif self.dry_run:
            self._step("would install", where, "groupadd --system")
        else:
            self.run(["groupadd", "--system", group])
            self._step("installed", where, f"gid {self.group_gid(group)}")

    def install_venv(self) -> None:
        venv = self.target(VENV)
        if not self.with_venv:
            self._step("skipped", venv, "built only when --root is /; add --with-venv to build it here")
            return
        digest = source_digest(self.source)
        stamp = venv / STAMP
        python = venv / "bin" / "python"
        if python.exists() and stamp.is_file() and stamp.read_text().strip() == digest:
            self._step("unchanged", venv, f"built from {self.source}")
            return
        if self.dry_run:
            self._step("would install", venv, f"pip install {self.source}")
            return
        if not python.exists():
            self._parents(venv)
            self.run([self.python, "-m", "venv", str(venv)])
        # From a copy, so the build leaves nothing in the checkout; an absolute path, so pip never takes it
        # for a package name. A local directory is reinstalled even at the same version; dependencies are
        # upgraded only if needed.
        with tempfile.TemporaryDirectory(prefix="ds01-install-") as staging:
            copy = Path(staging) / "ds01-source"
            copy.mkdir()
            for name in PACKAGE_FILES:
                if (self.source / name).is_file():
                    shutil.copy2(self.source / name, copy / name)
            shutil.copytree(self.source / "ds01", copy / "ds01", ignore=shutil.ignore_patterns("__pycache__"))
            self.run([str(venv / "bin" / "pip"), "install", "--quiet", "--upgrade", str(copy)])
        self.put_stamp(stamp, digest)
        self._step("installed", venv, f"pip install {self.source}")

    def put_stamp(self, stamp: Path, digest: str) -> None:
        temp = stamp.with_name(f".{stamp.name}.ds01-tmp")
        temp.write_text(digest + "\n")
        temp.chmod(0o644)
        os.replace(temp, stamp)

    def install_files(self, group: str, gid: int | None) -> None:
        for link, points_to in LINKS.items():
            self.put_link(link, points_to)
        wrapper = substitute_socket(self._read("wrapper").decode(), self.run_dir)
        self.put_file(WRAPPER, wrapper.encode(), 0o755, note=f"socket {self.run_dir}/docker.sock")
        self.put_file(CONFIG, self._read("config"), 0o644, keep_existing=True)
        for unit in UNITS:
            self.put_file(f"{UNIT_DIR}/{unit}", self._read(unit), 0o644)
        rules = substitute_group(self._read("udev").decode(), group)
        self.put_file(UDEV_RULES, rules.encode(), 0o644, note=f"group {group}")
        if gid is None and self.real_root and self.dry_run:
            self._step("would install", self.target(MODPROBE), f"with the gid groupadd gives {group}")
        elif gid is None:
            self._step("skipped", self.target(MODPROBE), f"group {group} does not exist here, so its gid is unknown: "
                       "install with --root / to create it, or list it in ROOT/etc/group")
        else:
            modprobe = substitute_gid(self._read("modprobe").decode(), gid)
            self.put_file(MODPROBE, modprobe.encode(), 0o644, note=f"gid {gid} of {group}")
        profile = substitute_docker_host(self._read("profile").decode(), self.run_dir)
        self.put_file(PROFILE, profile.encode(), 0o644)
        self.put_dir(STATE_DIR, 0o750)
        self.put_dir(LOG_DIR, 0o750)
        # One flat directory, so the pages' relative links keep working; the units link README.md and
        # security-model.md there. docs-admin's own index becomes index.md, beside the project's README.md.
        docs = {"README.md": self.source / "README.md"}
        for page in sorted((self.source / "docs-admin").glob("*.md")):
            docs["index.md" if page.name == "README.md" else page.name] = page
        for page in sorted((self.source / "docs-user").glob("*.md")):
            docs[f"users/{page.name}"] = page  # for the users, beside the admins' pages
        for name, page in docs.items():
            if page.is_file():
                self.put_file(f"{DOC_DIR}/{name}", page.read_bytes(), 0o644)

    def reload(self) -> None:
        """Tell systemd and udev about new units and rules, where they run; never fails for their absence."""
        if not self.real_root:
            return
        if self.dry_run:
            self._step("skipped", "systemctl daemon-reload, udevadm control --reload", "dry run")
            return
        checks = (("systemd", "systemctl", Path("/run/systemd/system"), ["systemctl", "daemon-reload"]),
                  ("udev", "udevadm", Path("/run/udev/control"), ["udevadm", "control", "--reload"]))
        for name, tool, running, argv in checks:
            if shutil.which(tool) is None:
                self._step("skipped", shlex.join(argv), f"{tool} is not installed")
            elif not running.exists():
                self._step("skipped", shlex.join(argv), f"{name} not running")
            else:
                try:
                    self.run(argv)
                except Ds01Error as exc:
                    self._step("skipped", shlex.join(argv), f"failed: {exc}")
                else:
                    self._step("reloaded", shlex.join(argv))

    def install(self) -> list[Step]:
        group = self.group_name()
        previous = os.umask(0o022)  # what pip and venv create is readable by the users who run `container`
        try:
            self.install_group(group)
            self.install_venv()
            self.install_files(group, self.group_gid(group))
            self.reload()
        finally:
            os.umask(previous)
        return self.steps
