"""A secondary that cannot apply an operation stops acknowledging, names the failure and ends the session.

A real Forwarder→Receiver pair on loopback, in both modes. Applying is made to fail on the secondary by a file where
the primary has a directory (the copies diverged) or by a tiny tmpfs (ENOSPC; needs root to mount). The primary's
barrier must raise, no flushed ack may cover the failed operation, and the next primary must be told the same copy
id and get the failed path among the needs (so its resync repairs exactly it).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from linkkit import KEY

from mirrorcore._native import Forwarder, Receiver

MODES = ["none", "second"]
COPY_ID = 12345


def _wait_down(fwd: Forwarder) -> None:
    deadline = time.monotonic() + 10.0
    while fwd.connected:
        assert time.monotonic() < deadline, "the link stayed up"
        time.sleep(0.01)


def _create(fwd: Forwarder, root: Path, rel: str) -> int:
    (root / rel).touch()
    return fwd.create(rel.encode(), stat.S_IFREG | 0o644, os.getuid(), os.getgid())


def _next_session_needs(receiver: Receiver) -> tuple[int, list[tuple[bool, bytes]]]:
    fwd = Forwarder("127.0.0.1", receiver.port, KEY)
    try:
        return fwd.peer_copy_id, fwd.take_needs(fwd.request_needs(), timeout=30.0)
    finally:
        fwd.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_diverged_copy_halts_the_session_and_the_barrier_raises(
    mode: str, receiver: Receiver, roots: tuple[Path, Path]
) -> None:
    receiver.copy_id = COPY_ID
    fwd = Forwarder("127.0.0.1", receiver.port, KEY, mode=mode)
    try:
        _create(fwd, roots[0], "before")
        fwd.barrier(10.0)
        # Someone wrote on the secondary: "d" is a file there, the primary makes it a directory.
        (roots[1] / "d").write_bytes(b"not the primary's")
        (roots[0] / "d").mkdir()
        failed = fwd.mkdir(b"d", stat.S_IFDIR | 0o755, os.getuid(), os.getgid())
        _create(fwd, roots[0], "d/f")
        _create(fwd, roots[0], "after")
        with pytest.raises(ConnectionError, match=r"stopped at seq .*mkdir d.*ENOTDIR"):
            fwd.barrier(10.0)
        _wait_down(fwd)
        assert fwd.flushed_seq < failed
        assert fwd.acked_seq < failed
        # Nothing from the failed operation on is applied; the session is over, the reason named.
        receiver.drain(10.0)
        assert not (roots[1] / "after").exists()
        assert (roots[1] / "before").exists()
        stats = receiver.stats()
        assert (stats["failed"], stats["connected"], stats["apply_errors"]) == (1, 0, 1)
        assert stats["applied_seq"] == failed - 1
        failure = receiver.failure or ""
        assert f"applying seq {failed} (mkdir d)" in failure
        assert "differs from the primary's at d" in failure
        assert receiver.last_error == failure
        # Later operations still work locally (the Python side goes on alone).
        assert not fwd.connected
    finally:
        fwd.close()
    # The next primary is told the same copy id and gets the failed path among the needs.
    assert _next_session_needs(receiver) == (COPY_ID, [(False, b"d")])
    assert receiver.failure is not None, "inconsistent until a resync's mark"


def test_a_mark_after_the_repair_ends_the_failure(receiver: Receiver, roots: tuple[Path, Path]) -> None:
    (roots[1] / "d").write_bytes(b"x")
    fwd = Forwarder("127.0.0.1", receiver.port, KEY, mode="none")
    try:
        fwd.mkdir(b"d", stat.S_IFDIR | 0o755, os.getuid(), os.getgid())
        with pytest.raises(ConnectionError):
            fwd.barrier(10.0)
    finally:
        fwd.close()
    fwd = Forwarder("127.0.0.1", receiver.port, KEY, mode="none")
    try:
        assert fwd.take_needs(fwd.request_needs(), timeout=30.0) == [(False, b"d")]
        fwd.ensure(b"d", "dir", stat.S_IFDIR | 0o755, os.getuid(), os.getgid())  # the resync's repair
        fwd.mark(99)
        fwd.barrier(10.0)
    finally:
        fwd.close()
    assert receiver.failure is None
    assert (receiver.copy_id, receiver.stats()["failed"]) == (99, 0)
    assert (roots[1] / "d").is_dir()


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs; fails (CI runs as root) rather than skips where it cannot be mounted."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root: run as root (as CI does), or deselect with -m 'not root'")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.root
@pytest.mark.parametrize("mode", MODES)
def test_a_full_disk_halts_the_session_with_the_fix(mode: str, roots: tuple[Path, Path], tiny: Path) -> None:
    receiver = Receiver(str(tiny), "127.0.0.1", 0, KEY, copy_id=COPY_ID)
    try:
        fwd = Forwarder("127.0.0.1", receiver.port, KEY, mode=mode)
        try:
            _create(fwd, roots[0], "big")
            fwd.barrier(10.0)
            fd = os.open(roots[0] / "big", os.O_WRONLY)
            try:
                fwd.write(fd, b"big", 0, os.urandom(3 << 20))  # three frames, the disk holds one
                last = fwd.last_seq
            finally:
                os.close(fd)
            with pytest.raises(ConnectionError, match="ENOSPC"):
                fwd.barrier(10.0)
            _wait_down(fwd)
            assert fwd.flushed_seq < last
        finally:
            fwd.close()
        failure = receiver.failure or ""
        assert "write big" in failure
        assert "(ENOSPC, errno 28)" in failure
        assert f"the secondary's disk is full: free space on {os.uname().nodename} under {tiny}" in failure
        assert "its next resync repairs big" in failure
        assert receiver.stats()["failed"] == 1
        assert _next_session_needs(receiver) == (COPY_ID, [(False, b"big")])
    finally:
        receiver.close()


@pytest.mark.root
@pytest.mark.parametrize("mode", MODES)
def test_a_full_disk_on_the_primary_forwards_exactly_what_was_written(
    mode: str, receiver: Receiver, roots: tuple[Path, Path], tiny: Path
) -> None:
    fwd = Forwarder("127.0.0.1", receiver.port, KEY, mode=mode)
    try:
        _create(fwd, tiny, "big")
        fd = os.open(tiny / "big", os.O_WRONLY)
        try:
            # 2 MiB do not fit in the 1 MiB tmpfs: a short write, as pwrite itself would return.
            written = fwd.write(fd, b"big", 0, os.urandom(2 << 20))
            assert 0 < written < 2 << 20
            with pytest.raises(OSError, match="No space left on device") as full:
                fwd.write(fd, b"big", written, b"more")
            assert full.value.errno == errno.ENOSPC
        finally:
            os.close(fd)
        fwd.barrier(10.0)
        receiver.drain(10.0)
    finally:
        fwd.close()
    # The secondary has exactly the bytes the primary's disk took, nothing more or less.
    assert (roots[1] / "big").read_bytes() == (tiny / "big").read_bytes()
    assert (tiny / "big").stat().st_size == written
    assert receiver.failure is None
