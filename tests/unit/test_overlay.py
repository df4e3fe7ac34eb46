"""ds01.overlay: symlinks in a container's merged filesystem, read from layer directories built here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ds01.overlay import OPAQUE, Layers, OverlayError, Symlink, first_symlink, layers_of, resolve


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    upper, middle, base = (tmp_path / name for name in ("upper", "middle", "base"))
    for layer in (upper, middle, base):
        layer.mkdir()
    (base / "x").symlink_to("/w")  # the image's symlink
    (base / "data").mkdir()
    (base / "data" / "link").symlink_to("/w/sub")
    (middle / "data").mkdir()
    (base / "usr").mkdir()
    (upper / "tmp").mkdir()
    (upper / "tmp" / "made").symlink_to("/w")  # left by the container's own processes
    return Layers((upper, middle, base))


def test_a_symlink_in_any_layer_is_found_on_the_way(layers: Layers) -> None:
    assert first_symlink(layers, "/x/t") == Symlink("/x", "/w")
    assert first_symlink(layers, "/x") == Symlink("/x", "/w")
    assert first_symlink(layers, "/data/link/deeper") == Symlink("/data/link", "/w/sub")  # through a merged dir
    assert first_symlink(layers, "/tmp/made/t") == Symlink("/tmp/made", "/w")


def test_plain_or_missing_paths_have_none(layers: Layers) -> None:
    for path in ("/", "/usr/lib/t", "/workspace", "/data/other/t", "/tmp/new/dir"):
        assert first_symlink(layers, path) is None, path


def test_an_upper_directory_shadows_a_lower_symlink(layers: Layers) -> None:
    (layers.dirs[0] / "x").mkdir()
    assert first_symlink(layers, "/x/t") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and trusted.* xattrs need root (CI runs as root)")
def test_whiteouts_and_opaque_directories_hide_lower_symlinks(layers: Layers) -> None:
    upper = layers.dirs[0]
    os.mknod(upper / "x", 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout: /x was deleted in the container
    assert first_symlink(layers, "/x/t") is None
    (upper / "data").mkdir()
    os.setxattr(upper / "data", OPAQUE, b"y")  # the container replaced /data with a new, empty directory
    assert first_symlink(layers, "/data/link/deeper") is None


def test_only_overlay2_has_layers() -> None:
    inspected = {"GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": "/u", "LowerDir": "/a:/b"}}}
    assert layers_of(inspected) == Layers((Path("/u"), Path("/a"), Path("/b")))
    assert layers_of({"GraphDriver": {"Name": "vfs", "Data": {}}}) is None
    assert layers_of({}) is None


def test_resolve_follows_every_symlink_on_the_way(layers: Layers) -> None:
    assert resolve(layers, "/x/t") == "/w/t"
    assert resolve(layers, "/data/link/deeper") == "/w/sub/deeper"
    assert resolve(layers, "/usr/lib") == "/usr/lib"
    (layers.dirs[0] / "rel").symlink_to("../usr")  # relative, and past / stays at /
    assert resolve(layers, "/rel/bin") == "/usr/bin"
    (layers.dirs[0] / "loop").symlink_to("/loop")
    with pytest.raises(OverlayError):
        resolve(layers, "/loop/x")
