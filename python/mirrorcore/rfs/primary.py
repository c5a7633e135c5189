"""The primary's side of one replicated directory: find the secondary, copy, then forward.

Runs in the FUSE worker. While no secondary listens, the file system is a plain
passthrough (the module is ALONE). When the secondary's receiver answers, the link
authenticates, the whole tree is streamed to it (`fullsync`), a mark tells it the copy
is complete, and from then on every operation is forwarded in order. When the link
drops, the worker goes back to passthrough and keeps looking for the secondary.

Progress is reported to the daemon as JSON lines on stdout (`{"event": ...}`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass

import trio

from mirrorcore import _native
from mirrorcore.rfs.filters import Filter
from mirrorcore.rfs.fullsync import full_sync
from mirrorcore.rfs.fuse import MirrorFS

log = logging.getLogger(__name__)

#: How often a primary without a secondary tries to reach it.
RETRY_SECONDS = 0.5


@dataclass(frozen=True)
class LinkSettings:
    """Where the secondary's receiver listens for this directory, and how to talk to it."""

    peer_addr: str
    port: int
    key: bytes
    mode: str
    send_timeout: float
    bind_addr: str | None


def report(event: str, **fields: object) -> None:
    """One progress line for the daemon."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def keep_linked(ops: MirrorFS, root_fd: int, filter: Filter, settings: LinkSettings) -> None:
    """Forever: connect to the secondary, bring it up to date, forward until the link drops."""
    while True:
        forwarder = await trio.to_thread.run_sync(_connect, settings)
        if forwarder is None:
            await trio.sleep(RETRY_SECONDS)
            continue
        started = time.monotonic()
        # No await from here to the switch: the copy is a snapshot, and every operation after it is forwarded.
        stats = full_sync(root_fd, forwarder, filter)
        ops.guard.replicator = forwarder
        report(
            "synced",
            entries=stats.entries,
            files=stats.files,
            bytes=stats.bytes,
            seconds=round(time.monotonic() - started, 3),
        )
        await _until_disconnected(forwarder)
        ops.guard.replicator = None
        report("lost", detail="the secondary stopped answering; replicating nothing until it returns")
        await trio.to_thread.run_sync(forwarder.close)


async def _until_disconnected(forwarder: _native.Forwarder) -> None:
    # The native link has no way to wake a trio task; a poll every 200 ms costs nothing.
    while True:
        if not forwarder.connected:
            return
        await trio.sleep(0.2)


def _connect(settings: LinkSettings) -> _native.Forwarder | None:
    try:
        return _native.Forwarder(
            settings.peer_addr,
            settings.port,
            settings.key,
            mode=settings.mode,
            send_timeout=settings.send_timeout,
            connect_timeout=2.0,
            bind_addr=settings.bind_addr,
        )
    except PermissionError as exc:
        report("auth_failed", detail=str(exc))
        return None
    except OSError:
        return None  # nobody listens yet: the secondary is not started
