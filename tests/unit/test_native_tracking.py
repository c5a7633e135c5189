"""Tracking what the secondary lacks: the Forwarder records into a DirtyMap, flushed acks confirm.

A Forwarder talks to a Receiver on loopback, as in test_native_link.py: while the link is up the map
holds what the secondary has not flushed to its disk yet; once the link is lost it holds every later
operation. `Forwarder.tracker` is the link-less replicator the worker uses while ALONE. The worker's
`Tracking` (rfs/primary.py) owns the map's file: marker at the start of tracking, clean flag at a clean stop.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from linkkit import KEY, Valve

from mirrorcore._native import DirtyMap, Forwarder, Receiver
from mirrorcore.rfs.primary import Tracking

ZS = 4096


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.01)


def create(root: Path, fwd: Forwarder, rel: bytes) -> None:
    os.close(os.open(os.fsencode(root) + b"/" + rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    fwd.create(rel, stat.S_IFREG | 0o644, os.getuid(), os.getgid())


def write(root: Path, fwd: Forwarder, rel: bytes, offset: int, data: bytes, *, post: bool = False) -> int:
    fd = os.open(os.fsencode(root) + b"/" + rel, os.O_WRONLY)
    try:
        return fwd.write(fd, rel, offset, data, post=post)
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", ["none", "second"])
def test_writes_the_secondary_never_got_appear_as_zones(mode: str, roots: tuple[Path, Path]) -> None:
    rx = Receiver(str(roots[1]), "127.0.0.1", 0, KEY)
    fwd = Forwarder("127.0.0.1", rx.port, KEY, mode=mode, send_timeout=5.0)
    dirty = DirtyMap(ZS)
    try:
        create(roots[0], fwd, b"f")
        fwd.barrier(10.0)
        fwd.track(dirty)  # as the worker does right after a full copy
        assert fwd.tracking
        write(roots[0], fwd, b"f", 0, b"flushed before the loss")
        fwd.barrier(10.0)
        wait_for("the flushed ack confirms the write", dirty.is_empty)

        rx.close()
        wait_for("the link drops", lambda: not fwd.connected)
        write(roots[0], fwd, b"f", 3 * ZS + 10, b"x" * 100)
        write(roots[0], fwd, b"f", 10 * ZS - 1, b"yz")  # straddles zones 9 and 10
        create(roots[0], fwd, b"g")
        write(roots[0], fwd, b"g", 0, b"new file")
        assert dirty.paths() == [b"f", b"g"]
        assert dirty.zones(b"f") == [(3 * ZS, ZS), (9 * ZS, 2 * ZS)]
        assert dirty.zones(b"g") == [(0, ZS)]
        assert [(kind, path) for _, kind, path, _ in dirty.changelog()] == [("create", b"g")]
        stats = dirty.stats()
        assert (stats["files"], stats["zones"], stats["bytes_tracked"]) == (2, 4, 4 * ZS)
        assert fwd.stats()["unsent"] >= 4
        # Nothing of it reached the secondary.
        assert (roots[1] / "f").read_bytes() == b"flushed before the loss"
        assert not (roots[1] / "g").exists()
    finally:
        fwd.close()
        rx.close()


def test_in_semi_sync_zones_stay_until_the_secondary_has_flushed_them(
    receiver: Receiver, roots: tuple[Path, Path]
) -> None:
    valve = Valve(receiver.port)
    fwd = Forwarder("127.0.0.1", valve.port, KEY, mode="second", send_timeout=30.0)
    dirty = DirtyMap(ZS)
    try:
        create(roots[0], fwd, b"f")
        fwd.barrier(10.0)
        fwd.track(dirty)
        valve.flowing.clear()  # the secondary gets nothing for now: nothing can be confirmed
        for i in range(8):
            write(roots[0], fwd, b"f", i * 2 * ZS, b"a" * 10)
        time.sleep(0.3)  # several of the secondary's flush intervals
        assert dirty.zones(b"f") == [(i * 2 * ZS, ZS) for i in range(8)]
        assert fwd.flushed_seq < fwd.last_seq
        valve.flowing.set()
        wait_for("the secondary flushes and confirms", dirty.is_empty)
        assert fwd.flushed_seq == fwd.last_seq
        assert dirty.stats()["zones"] == 0
    finally:
        fwd.close()
        valve.close()


def test_a_tracker_applies_writes_locally_records_them_and_never_blocks(tmp_path: Path) -> None:
    dirty = DirtyMap(ZS)
    dirty.mark_write(b"earlier", 0, 1, 100)
    tracker = Forwarder.tracker(dirty)
    assert not tracker.connected
    assert tracker.tracking
    (tmp_path / "f").write_bytes(b"")
    assert write(tmp_path, tracker, b"f", ZS, b"hello") == 5
    assert (tmp_path / "f").read_bytes() == b"\0" * ZS + b"hello"
    tracker.rename(b"f", b"h", 0)
    tracker.barrier(0.0)  # ALONE: durability is local
    assert tracker.post_barrier() == 0
    assert tracker.is_covered(tracker.last_seq)
    (tmp_path / "g").write_bytes(b"")
    assert write(tmp_path, tracker, b"g", 0, b"x", post=True) == 1
    assert tracker.last_seq == 3, "a tracker queues no barrier"
    assert dirty.zones(b"h") == [(ZS, ZS)]
    assert dirty.runs(b"h") == [(ZS, ZS, 101)]  # continues after the map's last seq
    assert [(seq, kind) for seq, kind, _, _ in dirty.changelog()] == [(102, "rename")]


def test_memory_follows_what_changed_not_how_often(tmp_path: Path) -> None:
    dirty = DirtyMap(ZS)
    dirty.set_horizon(dirty.last_seq)  # as after a lost link: nothing above is confirmed one by one
    tracker = Forwarder.tracker(dirty)
    (tmp_path / "f").write_bytes(b"")
    fd = os.open(tmp_path / "f", os.O_WRONLY)
    try:
        for i in range(20_000):
            tracker.write(fd, b"f", (i * 7919 % 256) * 512, b"z" * 512)  # 128 KiB: 32 zones, over and over
    finally:
        os.close(fd)
    stats = dirty.stats()
    assert (stats["files"], stats["zones"], stats["runs"]) == (1, 32, 1)
    assert stats["memory_bytes"] < 4096


def test_tracking_starts_with_the_first_resync_and_saves_its_state(
    receiver: Receiver, roots: tuple[Path, Path], tmp_path: Path
) -> None:
    file = tmp_path / "state" / "dirty-0.bin"
    tracking = Tracking(file, ZS)
    assert not tracking.active
    assert tracking.tracker() is None  # before any complete copy: nothing to track
    assert not file.exists()

    fwd = Forwarder("127.0.0.1", receiver.port, KEY, send_timeout=5.0)
    try:
        tracking.begin_resync(fwd)  # a resync's namespace step: the map follows the link from here
        assert tracking.active
        assert not DirtyMap.load(file).clean  # the marker: a crash from now on leaves it distrusted
        create(roots[0], fwd, b"f")
        tracking.marked(fwd.mark(1))
        fwd.barrier(10.0)
        wait_for("the copy is flushed", lambda: fwd.flushed_seq >= fwd.last_seq)
        receiver.close()
        wait_for("the link drops", lambda: not fwd.connected)
        write(roots[0], fwd, b"f", 5 * ZS, b"after the loss")
        tracking.lost(fwd)
        tracker = tracking.tracker()
        assert tracker is not None
        write(roots[0], tracker, b"f", 6 * ZS, b"while alone")
        tracking.save_clean()
    finally:
        fwd.close()
    assert tracking.stats()["trusted"]

    loaded = DirtyMap.load(file)
    assert loaded.clean
    assert loaded.zones(b"f") == [(5 * ZS, 2 * ZS)]
    again = Tracking(file, 1 << 17)  # the next run continues the saved map, marking it as in use
    assert again.active
    assert again.loaded
    assert again.dirty.clean
    assert again.dirty.zone_size == ZS
    assert not DirtyMap.load(file).clean


def test_losing_the_secondary_before_it_flushed_the_resync_mark_distrusts_the_map(
    receiver: Receiver, roots: tuple[Path, Path], tmp_path: Path
) -> None:
    valve = Valve(receiver.port)
    fwd = Forwarder("127.0.0.1", valve.port, KEY, send_timeout=5.0)
    tracking = Tracking(tmp_path / "dirty-0.bin", ZS)
    try:
        valve.flowing.clear()
        tracking.begin_resync(fwd)
        create(roots[0], fwd, b"f")
        tracking.marked(fwd.mark(1))
        valve.close()
        wait_for("the link drops", lambda: not fwd.connected)
        tracking.lost(fwd)
        assert not tracking.stats()["trusted"]
        tracking.save_clean()
    finally:
        fwd.close()
        valve.close()
    assert not DirtyMap.load(tmp_path / "dirty-0.bin").clean


def test_an_unreadable_map_is_distrusted(tmp_path: Path) -> None:
    file = tmp_path / "dirty-0.bin"
    file.write_bytes(b"MCDIRTY\ngarbage")
    tracking = Tracking(file, ZS)
    assert tracking.active
    assert not tracking.dirty.clean
    assert not DirtyMap.load(file).clean


def test_a_clean_stop_before_the_resync_mark_is_flushed_leaves_the_map_distrusted(
    receiver: Receiver, tmp_path: Path
) -> None:
    valve = Valve(receiver.port)
    fwd = Forwarder("127.0.0.1", valve.port, KEY, send_timeout=5.0)
    tracking = Tracking(tmp_path / "dirty-0.bin", ZS)
    try:
        valve.flowing.clear()  # nothing reaches the secondary: the mark cannot be flushed
        tracking.begin_resync(fwd)
        tracking.marked(fwd.mark(1))
        tracking.save_clean()
    finally:
        fwd.close()
        valve.close()
    assert not DirtyMap.load(tmp_path / "dirty-0.bin").clean


def test_a_link_lost_before_any_resync_attached_the_map_leaves_it_as_it_was(receiver: Receiver, tmp_path: Path) -> None:
    file = tmp_path / "dirty-0.bin"
    DirtyMap(ZS).save(file, clean=True)  # a clean stop of the previous run
    tracking = Tracking(file, ZS)
    fwd = Forwarder("127.0.0.1", receiver.port, KEY, send_timeout=5.0)
    try:
        receiver.close()
        wait_for("the link drops", lambda: not fwd.connected)
        tracking.lost(fwd)  # the resync never began on this link
    finally:
        fwd.close()
    assert tracking.trusted
