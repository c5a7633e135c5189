"""Durability points of `MirrorFS`: the replication barrier, in a thread only when it may block.

A durability point (fsync, fdatasync and fsyncdir; every write on an fd opened O_SYNC/O_DSYNC; every
mutation when `ackeach`) waits for the secondary. No thread at all when the barrier cannot block: no
replicator, or no live link.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio
from pyfuse3 import FUSEError

from mirrorcore.rfs.replicator import Guard

if TYPE_CHECKING:
    import outcome

__all__ = ["barrier", "durable"]


def _start_in_thread(fn: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    """Starts `fn` in one of trio's cached threads; returns what awaits its end (call it exactly once).

    `trio.to_thread.run_sync` costs about twice as much per call (capacity limiter, context copy,
    cancellation plumbing); durability points wait this way, uncancellably, as to_thread would.
    """
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[object]) -> None:
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    trio.lowlevel.start_thread_soon(fn, deliver)

    async def wait() -> None:
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    return wait


async def _in_thread(fn: Callable[[], object]) -> None:
    """Runs `fn` in a thread and waits for it (its exception propagates)."""
    await _start_in_thread(fn)()


async def barrier(guard: Guard) -> None:
    """Waits for the replication barrier: in a thread, unless it cannot block."""
    if guard.may_block():
        await _in_thread(guard.barrier)
    else:
        guard.barrier()


async def durable(guard: Guard, fd: int, datasync: bool) -> None:
    """Local fsync and the replication barrier, in parallel.

    The barrier waits in a thread (if it may block at all) while the local fsync runs inline:
    one thread hop at most. Thread hops cost more than a fast fsync on this kind of machine,
    and other requests only wait for the length of one fsync.
    """
    wait = _start_in_thread(guard.barrier) if guard.may_block() else None
    try:
        (os.fdatasync if datasync else os.fsync)(fd)
    except OSError as e:
        failed: OSError | None = e
    else:
        failed = None
    if wait is not None:
        await wait()
    else:
        guard.barrier()  # a no-op, or returns at once (no link to wait for)
    if failed is not None:
        raise FUSEError(failed.errno or errno.EIO) from failed
