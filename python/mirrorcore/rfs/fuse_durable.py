"""Durability points of `MirrorFS`: the replication barrier, waited for in a thread only when it must.

A durability point (fsync, fdatasync and fsyncdir; every write on an fd opened O_SYNC/O_DSYNC; every
mutation when `ackeach`) waits for the secondary. Its barrier is queued first (`Guard.post`, which
does not block), so the secondary applies and flushes while we flush locally. If its
acknowledgement has not arrived by then we wait for it inline, blocking the FUSE loop as the local
fsync did, for at most INLINE_WAIT, and only then in a thread. A barrier posted earlier, right after
a write the handle's history says an fsync will follow (`FileHandle.wrote`), is often acknowledged
before the fsync even arrives: then no wait at all.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio
from pyfuse3 import FUSEError

from mirrorcore.rfs.replicator import Guard

if TYPE_CHECKING:
    import outcome

__all__ = ["barrier", "durable"]

# How long a durability point waits for the secondary's acknowledgement inline, blocking the FUSE
# loop (as its local fsync does), before it waits in a thread instead. An acknowledgement usually
# comes within a few hundred microseconds; two thread hops on its way back cost about as much.
INLINE_WAIT = 0.001


async def _in_thread(fn: Callable[[], object]) -> None:
    """Runs `fn` in one of trio's cached threads and waits for it (its exception propagates).

    `trio.to_thread.run_sync` costs about twice as much per call (capacity limiter, context copy,
    cancellation plumbing); durability points wait this way, uncancellably, as to_thread would.
    """
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[object]) -> None:
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    trio.lowlevel.start_thread_soon(fn, deliver)
    await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)


async def _wait(guard: Guard, seq: int) -> None:
    """Waits until `seq` is covered: inline for up to INLINE_WAIT, then in a thread."""
    if not guard.covered(seq, INLINE_WAIT):
        await _in_thread(lambda: guard.wait(seq))


async def barrier(guard: Guard) -> None:
    """Waits for the replication barrier of everything forwarded so far."""
    await _wait(guard, guard.post())


async def durable(guard: Guard, fd: int, datasync: bool) -> None:
    """Local fsync and the replication barrier, in parallel.

    The barrier is queued before the local fsync, which runs inline: thread hops cost more than a
    fast fsync on this kind of machine, and other requests only wait for the length of one fsync.
    """
    seq = guard.post()
    try:
        (os.fdatasync if datasync else os.fsync)(fd)
    except OSError as e:
        failed: OSError | None = e
    else:
        failed = None
    await _wait(guard, seq)
    if failed is not None:
        raise FUSEError(failed.errno or errno.EIO) from failed
