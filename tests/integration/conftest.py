"""Fixtures of the attack tests."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.attacks import account, owned_dir


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A fresh directory of alice's in her (nosuid,nodev) home."""
    path = owned_dir(Path(account("alice").pw_dir) / f"attack-{uuid.uuid4().hex[:8]}", "alice")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
