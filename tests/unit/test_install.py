"""`ds01 install --root TMP`: what lands where, with which mode, and that a second run changes nothing."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from ds01.cli import new_parser, run
from ds01.cli.admin import install as install_cmd
from ds01.errors import ConfigError
from ds01.ops.install import GID_PLACEHOLDER, STAMP, Installer, substitute_socket
from tests.conftest import REPO

GID = 4242
FILES = {  # installed path -> (mode, file in the checkout it equals byte for byte, or None)
    "usr/local/lib/ds01/bin/docker": (0o755, None),
    "etc/ds01/resource-limits.yaml": (0o644, "config/resource-limits.yaml"),
    "etc/systemd/system/ds01-proxy.service": (0o644, "config/systemd/ds01-proxy.service"),
    "etc/systemd/system/ds01-exporter.service": (0o644, "config/systemd/ds01-exporter.service"),
    "etc/systemd/system/ds01-cleanup.service": (0o644, "config/systemd/ds01-cleanup.service"),
    "etc/systemd/system/ds01-cleanup.timer": (0o644, "config/systemd/ds01-cleanup.timer"),
    "etc/udev/rules.d/70-ds01-nvidia.rules": (0o644, "udev/70-ds01-nvidia.rules"),
    "etc/modprobe.d/ds01-nvidia.conf": (0o644, None),
    "etc/profile.d/ds01.sh": (0o644, "config/profile.d/ds01.sh"),
    "usr/local/share/doc/ds01/README.md": (0o644, "README.md"),
    "usr/local/share/doc/ds01/docker-group.md": (0o644, "docs-admin/docker-group.md"),
    "usr/local/share/doc/ds01/users/containers.md": (0o644, "docs-user/containers.md"),
}
DIRS = {"var/lib/ds01": 0o750, "var/log/ds01": 0o750}
LINKS = {"usr/local/bin/ds01": "/opt/ds01/venv/bin/ds01", "usr/local/bin/container": "/opt/ds01/venv/bin/container"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty target whose /etc/group names ds01-gpu, so the modprobe file gets a known gid."""
    target = tmp_path / "root"
    (target / "etc").mkdir(parents=True)
    (target / "etc" / "group").write_text(f"root:x:0:\nds01-gpu:x:{GID}:\n")
    return target


def install(capsys: pytest.CaptureFixture[str], root: Path, *flags: str) -> tuple[int, list[str]]:
    parser = new_parser("ds01", "test", "ds01 install")
    install_cmd.register(parser.add_subparsers())
    code = run(parser, ["install", "--root", str(root), *flags])
    captured = capsys.readouterr()
    assert captured.err == "", captured.err
    return code, captured.out.splitlines()


def status_of(lines: Sequence[str], path: str) -> str:
    """The status word(s) of the line about `path` (which ends the target column)."""
    found = [line for line in lines if line.split("  (")[0].rstrip().endswith(path)]
    assert len(found) == 1, (path, lines)
    return found[0][:15].strip()


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | str]]:
    """Every path under root: mode, mtime and content (or link target)."""
    seen: dict[str, tuple[int, int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            content: bytes | str = os.readlink(path)
        elif path.is_file():
            content = path.read_bytes()
        else:
            content = "<dir>"
        seen[str(path.relative_to(root))] = (info.st_mode, info.st_mtime_ns, content)
    return seen


def test_every_file_lands_with_its_mode(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    code, lines = install(capsys, root)
    assert code == 0
    for relative, (mode, shipped) in FILES.items():
        path = root / relative
        assert path.is_file() and not path.is_symlink(), relative
        assert stat.S_IMODE(path.stat().st_mode) == mode, relative
        if shipped is not None:
            assert path.read_bytes() == (REPO / shipped).read_bytes(), relative
        assert status_of(lines, relative) == "installed"
    for relative, mode in DIRS.items():
        assert (root / relative).is_dir()
        assert stat.S_IMODE((root / relative).stat().st_mode) == mode, relative
    for relative, target in LINKS.items():
        assert (root / relative).is_symlink()
        assert os.readlink(root / relative) == target  # the path on the installed system, not under --root
    # The group and the venv belong to the real host only.
    assert status_of(lines, "group ds01-gpu") == "skipped"
    assert status_of(lines, "opt/ds01/venv") == "skipped"
    assert not (root / "opt").exists()
    assert not list(root.rglob("*.ds01-tmp"))


def test_the_modprobe_file_gets_the_gid(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    install(capsys, root)
    text = (root / "etc/modprobe.d/ds01-nvidia.conf").read_text()
    assert f"options nvidia NVreg_DeviceFileUID=0 NVreg_DeviceFileGID={GID} NVreg_DeviceFileMode=0660\n" in text
    assert f"NVreg_DeviceFileGID={GID_PLACEHOLDER}" not in text


def test_the_wrapper_points_at_the_proxy_socket(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    install(capsys, root)
    installed = (root / "usr/local/lib/ds01/bin/docker").read_text().splitlines()
    shipped = (REPO / "wrappers/docker").read_text().splitlines()
    differing = [(a, b) for a, b in zip(installed, shipped, strict=True) if a != b]
    socket_line = [line for line in installed if line.startswith("DS01_SOCKET=")]
    assert socket_line == ["DS01_SOCKET=/run/ds01/docker.sock  # `make install` writes the configured socket here"]
    assert len(differing) <= 1
    assert subprocess.run(["bash", "-n", str(root / "usr/local/lib/ds01/bin/docker")], check=False).returncode == 0


def test_another_run_dir_is_substituted(root: Path) -> None:
    text = substitute_socket((REPO / "wrappers/docker").read_text(), "/srv/ds01 run")
    assert "DS01_SOCKET='/srv/ds01 run/docker.sock'  #" in text
    lines: list[str] = []
    Installer(REPO, root, run_dir="/srv/ds01", report=lines.append).install()
    assert "DS01_SOCKET=/srv/ds01/docker.sock" in (root / "usr/local/lib/ds01/bin/docker").read_text()
    assert "export DOCKER_HOST=unix:///srv/ds01/docker.sock\n" in (root / "etc/profile.d/ds01.sh").read_text()


def test_the_configured_group_goes_into_the_rules(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    config = root / "etc/ds01/resource-limits.yaml"
    config.parent.mkdir(parents=True)
    config.write_text((REPO / "config/resource-limits.yaml").read_text().replace("group: ds01-gpu", "group: gpu-lab"))
    (root / "etc/group").write_text("gpu-lab:x:777:\n")
    code, _ = install(capsys, root)
    assert code == 0
    rules = (root / "etc/udev/rules.d/70-ds01-nvidia.rules").read_text()
    assert 'GROUP="gpu-lab"' in rules and 'GROUP="ds01-gpu"' not in rules
    assert "NVreg_DeviceFileGID=777 " in (root / "etc/modprobe.d/ds01-nvidia.conf").read_text()


def test_an_unknown_gid_skips_the_modprobe_file(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    config = root / "etc/ds01/resource-limits.yaml"
    config.parent.mkdir(parents=True)
    config.write_text((REPO / "config/resource-limits.yaml").read_text().replace(
        "group: ds01-gpu", "group: ds01-nosuchgroup"))
    code, lines = install(capsys, root)
    assert code == 0
    assert status_of(lines, "etc/modprobe.d/ds01-nvidia.conf") == "skipped"
    assert not (root / "etc/modprobe.d/ds01-nvidia.conf").exists()


def test_an_existing_config_is_kept_byte_for_byte(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    config = root / "etc/ds01/resource-limits.yaml"
    config.parent.mkdir(parents=True)
    mine = (REPO / "config/resource-limits.yaml").read_bytes() + b"# edited by the admin\n"
    config.write_bytes(mine)
    config.chmod(0o600)
    before = config.stat().st_mtime_ns
    code, lines = install(capsys, root)
    assert code == 0
    assert config.read_bytes() == mine
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert config.stat().st_mtime_ns == before
    line = next(line for line in lines if "resource-limits.yaml" in line)
    assert line.startswith("kept (exists)") and "never overwritten" in line


def test_a_second_run_changes_nothing(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    install(capsys, root)
    before = snapshot(root)
    code, lines = install(capsys, root)
    assert code == 0
    assert snapshot(root) == before
    statuses = {line[:15].strip() for line in lines[:-1]}
    assert statuses <= {"unchanged", "kept (exists)", "skipped"}, lines
    for relative in [*FILES, *DIRS, *LINKS]:
        expected = "kept (exists)" if relative.endswith("resource-limits.yaml") else "unchanged"
        assert status_of(lines, relative) == expected
    assert lines[-1].startswith("done: 0 installed")


def test_a_changed_file_and_a_wrong_mode_are_repaired(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    install(capsys, root)
    unit = root / "etc/systemd/system/ds01-proxy.service"
    unit.write_text("tampered\n")
    rules = root / "etc/udev/rules.d/70-ds01-nvidia.rules"
    rules.chmod(0o600)
    (root / "var/log/ds01").chmod(0o777)
    (root / "usr/local/bin/ds01").unlink()
    (root / "usr/local/bin/ds01").symlink_to("/somewhere/else")
    code, lines = install(capsys, root)
    assert code == 0
    assert unit.read_bytes() == (REPO / "config/systemd/ds01-proxy.service").read_bytes()
    assert stat.S_IMODE(rules.stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "var/log/ds01").stat().st_mode) == 0o750
    assert os.readlink(root / "usr/local/bin/ds01") == "/opt/ds01/venv/bin/ds01"
    for relative in ("etc/systemd/system/ds01-proxy.service", "etc/udev/rules.d/70-ds01-nvidia.rules",
                     "var/log/ds01", "usr/local/bin/ds01"):
        assert status_of(lines, relative) == "installed"
    assert status_of(lines, "etc/systemd/system/ds01-exporter.service") == "unchanged"


def test_dry_run_writes_nothing(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    before = snapshot(root)
    code, lines = install(capsys, root, "--dry-run")
    assert code == 0
    assert snapshot(root) == before
    assert status_of(lines, "etc/systemd/system/ds01-cleanup.timer") == "would install"
    assert status_of(lines, "var/lib/ds01") == "would install"
    assert lines[-1].startswith("dry run:") and "nothing changed" in lines[-1]
    # After a real install, a dry run names only what differs, and still changes nothing.
    install(capsys, root)
    (root / "etc/profile.d/ds01.sh").write_text("# changed\n")
    before = snapshot(root)
    code, lines = install(capsys, root, "--dry-run")
    assert snapshot(root) == before
    assert status_of(lines, "etc/profile.d/ds01.sh") == "would install"
    assert status_of(lines, "etc/systemd/system/ds01-cleanup.timer") == "unchanged"


class Recorder:
    """Stands in for the command runner: records argv, and makes `python -m venv` leave a python behind."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> None:
        self.commands.append(list(argv))
        if argv[1:3] == ["-m", "venv"]:
            python = Path(argv[3]) / "bin" / "python"
            python.parent.mkdir(parents=True)
            python.write_text("")
        if Path(argv[0]).name == "pip":
            staged = Path(argv[-1])
            assert staged.is_absolute() and (staged / "pyproject.toml").is_file() and (staged / "ds01").is_dir()


def copy_of_checkout(destination: Path) -> Path:
    keep = ("pyproject.toml", "README.md", "ds01", "config", "udev", "wrappers", "docs-admin", "docs-user")
    for name in keep:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            destination.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def test_the_venv_is_built_once_per_source(tmp_path: Path, root: Path) -> None:
    source = copy_of_checkout(tmp_path / "checkout")
    recorder = Recorder()
    lines: list[str] = []
    Installer(source, root, with_venv=True, run=recorder, report=lines.append, python="/usr/bin/python3").install()
    venv = root / "opt/ds01/venv"
    assert recorder.commands[0] == ["/usr/bin/python3", "-m", "venv", str(venv)]
    assert recorder.commands[1][:4] == [str(venv / "bin/pip"), "install", "--quiet", "--upgrade"]
    assert len(recorder.commands) == 2
    assert (venv / STAMP).is_file()
    assert status_of(lines, "opt/ds01/venv") == "installed"

    recorder, lines = Recorder(), []
    Installer(source, root, with_venv=True, run=recorder, report=lines.append).install()
    assert recorder.commands == []
    assert status_of(lines, "opt/ds01/venv") == "unchanged"

    with (source / "ds01" / "units.py").open("a") as changed:
        changed.write("# a new version\n")
    recorder, lines = Recorder(), []
    Installer(source, root, with_venv=True, run=recorder, report=lines.append).install()
    assert [argv[1] for argv in recorder.commands] == ["install"]  # the venv exists: only pip runs
    assert status_of(lines, "opt/ds01/venv") == "installed"


def test_a_directory_that_is_not_a_checkout_is_refused(tmp_path: Path, root: Path) -> None:
    with pytest.raises(ConfigError, match="not a ds01 checkout"):
        Installer(tmp_path, root)
