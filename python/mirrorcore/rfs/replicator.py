"""The Replicator protocol rfs/fuse.py forwards to, and the one place that handles its failures.

`_native.Forwarder` implements `Replicator`; None means plain passthrough. Paths are bytes,
relative to the replicated root. Every namespace/metadata method is called right after the
local operation succeeded and returns the operation's sequence number; only `write` performs
the local operation itself (pwrite + queue in one native call).

Failure policy (here and nowhere else): losing the secondary must never fail the application's
call. A `ConnectionError` or `TimeoutError` from the replicator is logged (the first, then every
10000th; all are counted) and swallowed; the daemon notices the dead link through its own
channels and goes ALONE. Any other exception is a bug and propagates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Protocol, TypeVar

__all__ = ["Guard", "Replicator"]

log = logging.getLogger(__name__)

T = TypeVar("T")

LOST = (ConnectionError, TimeoutError)


class Replicator(Protocol):
    """What the FUSE layer calls; see /tmp/contracts3.md (implemented by `_native.Forwarder`)."""

    def write(self, fd: int, path: bytes | None, offset: int, data: bytes, *, post: bool = False) -> int: ...
    def create(self, path: bytes, mode: int, uid: int, gid: int) -> int: ...
    def mknod(self, path: bytes, mode: int, rdev: int, uid: int, gid: int) -> int: ...
    def mkdir(self, path: bytes, mode: int, uid: int, gid: int) -> int: ...
    def symlink(self, target: bytes, path: bytes, uid: int, gid: int) -> int: ...
    def link(self, existing: bytes, new: bytes) -> int: ...
    def unlink(self, path: bytes) -> int: ...
    def rmdir(self, path: bytes) -> int: ...
    def rename(self, old: bytes, new: bytes, flags: int) -> int: ...
    def truncate(self, path: bytes, size: int) -> int: ...
    def chmod(self, path: bytes, mode: int) -> int: ...
    def chown(self, path: bytes, uid: int, gid: int) -> int: ...
    def utimens(self, path: bytes, atime_ns: int | None, mtime_ns: int | None) -> int: ...  # None: leave it
    def setxattr(self, path: bytes, name: bytes, value: bytes, flags: int) -> int: ...
    def removexattr(self, path: bytes, name: bytes) -> int: ...
    def fallocate(self, path: bytes, mode: int, offset: int, length: int) -> int: ...
    def barrier(self, timeout: float | None = None) -> None: ...
    def post_barrier(self) -> int: ...
    def is_covered(self, seq: int, wait: float = 0.0) -> bool: ...
    def wait_barrier(self, seq: int, timeout: float | None = None) -> None: ...
    @property
    def last_seq(self) -> int: ...


class Guard:
    """Calls the replicator and applies the failure policy of this module.

    Args:
        replicator: the forwarder, or None for a plain passthrough (every call is then a no-op,
            and `write` is a local pwrite).
        on_lost: called with the exception when the replicator reports the peer lost; the
            daemon may use it to go ALONE sooner. Must not block.
    """

    def __init__(self, replicator: Replicator | None, on_lost: Callable[[BaseException], None] | None = None) -> None:
        self.replicator = replicator
        self._on_lost = on_lost
        self.failures = 0

    def call(self, op: Callable[[Replicator], object]) -> None:
        """Forwards one namespace/metadata operation (the local one already succeeded)."""
        if self.replicator is None:
            return
        try:
            op(self.replicator)
        except LOST as e:
            self._lost(e)

    def write(self, fd: int, path: bytes | None, offset: int, data: bytes, *, post: bool = False) -> int:
        """Local pwrite + forward; a local failure raises OSError, a lost peer does not.

        With `post`, a barrier is queued right behind the write (see `post`): a durability point is
        expected to follow. If the forwarder reports the peer lost we cannot tell whether its
        pwrite happened, so we redo it: pwrite of the same bytes at the same offset is idempotent.
        """
        if self.replicator is None:
            return os.pwrite(fd, data, offset)
        try:
            return self.replicator.write(fd, path, offset, data, post=post)
        except LOST as e:
            self._lost(e)
            return os.pwrite(fd, data, offset)

    def post(self) -> int:
        """Queues a barrier behind everything forwarded so far, without waiting.

        Returns the sequence number `wait` waits for, 0 when there is nothing to wait for (no
        replicator, everything already acknowledged, or the peer lost).
        """
        if self.replicator is None:
            return 0
        try:
            return self.replicator.post_barrier()
        except LOST as e:
            self._lost(e)
            return 0

    def covered(self, seq: int, wait: float = 0.0) -> bool:
        """Whether the secondary acknowledged everything up to `seq` (a `post` result) as the mode requires.

        Waits up to `wait` seconds for it (blocking); False when the link is down (`wait` then says why).
        """
        return seq == 0 or self.replicator is None or self.replicator.is_covered(seq, wait)

    def wait(self, seq: int) -> None:
        """Waits (blocking) until `seq` is covered; returns at once when the peer is lost."""
        if seq == 0 or self.replicator is None:
            return
        try:
            self.replicator.wait_barrier(seq)
        except LOST as e:
            self._lost(e)

    def _lost(self, e: BaseException) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 10000 == 0:
            log.warning(
                "replication failed (%s: %s), carrying on locally; %d failures so far",
                type(e).__name__,
                e,
                self.failures,
            )
        if self._on_lost is not None:
            self._on_lost(e)
