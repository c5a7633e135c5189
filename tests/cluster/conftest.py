"""Fixtures for cluster tests: a two-node lab in namespaces, always torn down."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrorcore.lab import Lab

_counter = itertools.count()


def _need_root_and_fuse() -> None:
    # CI runs as root with /dev/fuse: a skip there would hide breakage, so fail loudly instead.
    if os.geteuid() != 0:
        pytest.fail(
            "cluster tests need root (network and mount namespaces); run them as root, or deselect -m 'not root'"
        )
    if not Path("/dev/fuse").exists():
        pytest.fail("cluster tests need /dev/fuse (modprobe fuse, or pass --device /dev/fuse to the container)")


def _unique_name() -> str:
    return f"mct{os.getpid() % 10000}_{next(_counter)}"


@pytest.fixture
def fresh_lab() -> Iterator[Lab]:
    """A lab with a unique name that is not up yet; torn down after the test whatever happened."""
    _need_root_and_fuse()
    lab = Lab(_unique_name())
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def lab(fresh_lab: Lab) -> Lab:
    """A lab that is up: node1, node2 and client on LANs default and private."""
    fresh_lab.up()
    return fresh_lab
