"""The only door to iptables: a table's chains and rules as iptables-save prints them, and changes applied in one
transaction by iptables-restore --noflush. Argument lists only, never a shell. The binaries are the host's
`iptables` alternative (nft or legacy), the one the engine uses too. Rules belong to the network namespace of
the process that runs them, so the door also says what is in this one: an interface's address, and whether the
process at the other end of a socket shares it.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from ds01.errors import Ds01Error

SAVE = "iptables-save"
RESTORE = "iptables-restore"
TIMEOUT_SECONDS = 30.0
_UCRED = struct.Struct("3i")
SIOCGIFADDR = 0x8915  # an interface's IPv4 address, as the kernel answers for this process's network namespace
_IFREQ = struct.Struct("256s")  # room for struct ifreq: the name, then the address at bytes 20 to 24


class IptablesError(Ds01Error):
    """iptables is missing, refused a change, or could not be read."""


@dataclass(frozen=True)
class Table:
    """One table: each chain's rules in order, each written `-A CHAIN ...` as iptables-save prints it."""

    chains: Mapping[str, tuple[str, ...]]

    def rules(self, chain: str) -> tuple[str, ...] | None:
        """The chain's rules, or None when there is no such chain."""
        return self.chains.get(chain)


def parse_save(text: str) -> Table:
    """iptables-save's text for one table (comments, `*table` and COMMIT aside)."""
    chains: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith(":"):
            chains.setdefault(line[1:].split(" ", 1)[0], [])
        elif line.startswith("-A "):
            chains.setdefault(line.split(" ", 2)[1], []).append(line)
    return Table({name: tuple(rules) for name, rules in chains.items()})


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False,
                              timeout=TIMEOUT_SECONDS)
    except FileNotFoundError as exc:
        raise IptablesError(f"{argv[0]} is not installed (apt-get install iptables)") from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise IptablesError(f"{argv[0]} did not run: {exc}") from exc
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().replace("\n", "; ")[:500]
        raise IptablesError(f"{' '.join(argv)} failed (exit {done.returncode}): {said or 'no message'}")
    return done.stdout


def save(table: str = "filter") -> Table:
    """The table as it is now in this network namespace (root only)."""
    return parse_save(_run([SAVE, "-t", table]))


def restore(text: str) -> None:
    """Apply iptables-restore input in one transaction, leaving chains it does not declare as they are; a chain
    it declares is emptied first and holds exactly the rules given."""
    _run([RESTORE, "--noflush", "--wait"], stdin=text)


def peer_in_namespace(sock: socket.socket) -> tuple[int, bool]:
    """The pid of the process at the other end of a unix socket (the kernel's word), and whether it shares this
    process's network namespace, and so its iptables rules."""
    pid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[0]
    try:
        theirs = os.stat(f"/proc/{pid}/ns/net")
        ours = os.stat("/proc/self/ns/net")
    except OSError as exc:
        raise IptablesError(f"cannot read the network namespace of process {pid}: {exc.strerror}") from exc
    return pid, (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def interface_address(name: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address of interface `name` in this network namespace; None when it is not here or has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, _IFREQ.pack(name.encode()[:15]))
        except OSError:
            return None
    return ipaddress.IPv4Address(answer[20:24])
