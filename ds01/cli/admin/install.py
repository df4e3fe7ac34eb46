"""`ds01 install`: put ds01 in place on this host (or under --root), idempotently."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ds01.cli import Commands, add_command
from ds01.cli.context import Context
from ds01.errors import Ds01Error
from ds01.ops.install import Installer, default_source


def register(commands: Commands) -> None:
    command = add_command(
        commands, "install",
        "install ds01 on this host: venv, commands, docker wrapper, config (kept if present), systemd units, "
        "udev rules, driver options, profile.d snippet, group and directories; safe to run again",
        "ds01 install --dry-run", install)
    command.add_argument("--root", type=Path, default=Path("/"),
                         help="install under this directory instead of / (an image, a test); default /")
    command.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    command.add_argument("--with-venv", action="store_true",
                         help="build /opt/ds01/venv under --root too (always done when --root is /)")
    command.add_argument("--source", type=Path, default=None,
                         help="the ds01 checkout to install from (default: the one this ds01 runs from)")


def install(args: argparse.Namespace, context: Context) -> int:
    root: Path = args.root
    if root.resolve() == Path("/") and not args.dry_run and os.geteuid() != 0:
        raise Ds01Error("installing on this host needs root: sudo make install (or --dry-run to see the plan)")
    if not root.is_dir():
        raise Ds01Error(f"--root {root}: no such directory")
    installer = Installer(args.source or default_source(), root, dry_run=args.dry_run, with_venv=args.with_venv)
    steps = installer.install()
    changed = sum(step.status == "installed" for step in steps)
    if args.dry_run:
        print(f"dry run: {sum(step.status == 'would install' for step in steps)} to install, nothing changed")
    else:
        print(f"done: {changed} installed, {sum(step.status == 'unchanged' for step in steps)} unchanged")
    if root.resolve() == Path("/") and not args.dry_run:
        print("next: systemctl enable --now ds01-proxy ds01-exporter ds01-cleanup.timer, then take users out of "
              "the docker group (/usr/local/share/doc/ds01/installation.md)")
    return 0
