"""Fixtures of the native link tests: two roots and a Receiver on loopback (see linkkit.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from linkkit import KEY

from mirrorcore._native import Receiver


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """The primary's and the secondary's replicated directories."""
    primary, secondary = tmp_path / "primary", tmp_path / "secondary"
    primary.mkdir()
    secondary.mkdir()
    return primary, secondary


@pytest.fixture
def receiver(roots: tuple[Path, Path]) -> Iterator[Receiver]:
    """A Receiver applying under the secondary root, on a free loopback port."""
    rx = Receiver(str(roots[1]), "127.0.0.1", 0, KEY)
    try:
        yield rx
    finally:
        rx.close()
