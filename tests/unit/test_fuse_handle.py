"""When the FUSE layer posts a write's barrier early: a handle predicts an fsync from its own history."""

from __future__ import annotations

import stat

from mirrorcore.rfs.fuse_core import FileHandle
from mirrorcore.rfs.inodes import Node


def handle() -> FileHandle:
    return FileHandle(Node(ino=2, key=(1, 1), kind=stat.S_IFREG), sync=False)


def test_no_fsync_seen_no_early_barrier() -> None:
    h = handle()
    assert not any(h.wrote() for _ in range(1000)), "buffered writers never pay for a barrier"


def test_write_then_fsync_posts_with_every_write_after_the_first_fsync() -> None:
    h = handle()
    assert not h.wrote()
    h.synced()
    for _ in range(5):
        assert h.wrote(), "a database's write + fsync: the barrier travels with the write"
        h.synced()


def test_the_write_predicted_last_before_the_fsync_posts() -> None:
    h = handle()
    for _ in range(3):
        h.wrote()
    h.synced()  # three writes per fsync
    assert [h.wrote(), h.wrote(), h.wrote(), h.wrote()] == [False, False, True, True]
    h.synced()  # four this time: the next period expects four
    assert [h.wrote() for _ in range(4)] == [False, False, False, True]


def test_an_fsync_without_writes_keeps_the_prediction() -> None:
    h = handle()
    h.wrote()
    h.synced()
    h.synced()  # e.g. fsync twice in a row
    assert h.wrote()
