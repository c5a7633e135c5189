"""The primary's side of one replicated directory: find the secondary, copy, then forward.

Runs in the FUSE worker. While no secondary listens, the file system is a plain
passthrough (the module is ALONE). When the secondary's receiver answers, the link
authenticates, the whole tree is streamed to it (`fullsync`), a mark tells it the copy
is complete, and from then on every operation is forwarded in order. When the link
drops, the worker goes back to local operation and keeps looking for the secondary.

Tracking (SPEC §6): once a complete copy was sent (or a map saved by an earlier run was
found), every operation is recorded in the directory's `DirtyMap` until the secondary
has it on its disk. While linked, the forwarder records each operation as it numbers it
and drops it when the secondary reports it flushed; while ALONE, a link-less
`Forwarder.tracker` stands in as the replicator, applies writes locally and records
everything. The map is saved with the clean flag at a clean stop; at the start of
tracking it is written once without it (the marker a crash of the primary leaves).
The next full copy clears it (the zone resync that would consume it is not done yet).

Progress is reported to the daemon as JSON lines on stdout (`{"event": ...}`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from mirrorcore import _native
from mirrorcore.rfs.filters import Filter
from mirrorcore.rfs.fullsync import full_sync
from mirrorcore.rfs.fuse import MirrorFS

log = logging.getLogger(__name__)

#: How often a primary without a secondary tries to reach it.
RETRY_SECONDS = 0.5

#: How often the tracking stats are looked at (reported when changed) ...
TRACKING_POLL_SECONDS = 0.5
#: ... and repeated anyway while something is recorded.
TRACKING_REPEAT_SECONDS = 2.0


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


class Tracking:
    """One replicated directory's `DirtyMap`, the file it is saved in, and whether it is active.

    Active once a complete copy was sent, or from the start when an earlier run left a map
    (which is then trusted only if that run stopped cleanly). Before that nothing is recorded:
    the secondary needs a full copy anyway.

    Args:
        file: where the map is saved (`<lib>/<module>/dirty-<index>.bin`).
        zone_size: bytes per zone (`<rfs ruzone_blocksize>`) of a new map.
    """

    def __init__(self, file: Path, zone_size: int) -> None:
        self.file = file
        self.loaded = False
        self._mark_seq = 0  # the forwarder's seq of the full copy's completion mark
        try:
            self.dirty = _native.DirtyMap.load(file)
            self.loaded = True
        except FileNotFoundError:
            self.dirty = _native.DirtyMap(zone_size)
        except (OSError, ValueError) as exc:
            log.warning("distrusting the unreadable tracking map %s: %s", file, exc)
            self.dirty = _native.DirtyMap(zone_size)
            self.dirty.distrust()
            self.loaded = True
        self.active = self.loaded
        if self.active:
            self._begin()

    def tracker(self) -> _native.Forwarder | None:
        """The replicator while ALONE: records into the map; None while tracking is not active."""
        return _native.Forwarder.tracker(self.dirty) if self.active else None

    def synced(self, forwarder: _native.Forwarder) -> None:
        """A complete copy was just queued on `forwarder`: the map starts over and follows it.

        Call with no `await` since the copy began: no operation may fall between copy and attach.
        """
        self._mark_seq = forwarder.last_seq
        self.dirty.clear()
        forwarder.track(self.dirty)
        if not self.active:
            self.active = True
            self._begin()

    def lost(self, forwarder: _native.Forwarder) -> None:
        """The link of `forwarder` dropped: stop its recording; later operations go to a tracker.

        If the secondary did not have the full copy on its disk yet, the map (which does not
        hold the copy) cannot say what it lacks: it is distrusted.
        """
        forwarder.track(None)
        if forwarder.flushed_seq < self._mark_seq:
            self.dirty.distrust()
        # Nothing above this is confirmed one by one any more: neighbouring zones merge.
        self.dirty.set_horizon(self.dirty.last_seq)

    def save_clean(self) -> None:
        """At a clean stop (no operation can come any more): the map with the clean flag."""
        if self.active:
            self.dirty.save(self.file, clean=True)

    def stats(self) -> dict[str, Any]:
        """What the worker reports (`{"event": "tracking", ...}`) and `state --json` shows."""
        return {
            **self.dirty.stats(),
            "zone_size": self.dirty.zone_size,
            "trusted": self.dirty.clean,
            "active": self.active,
        }

    def _begin(self) -> None:
        # The marker: a crash of the primary from now on leaves a map the next resync distrusts.
        self.file.parent.mkdir(parents=True, exist_ok=True)
        if self.dirty.horizon is None:
            self.dirty.set_horizon(self.dirty.last_seq)  # a loaded map: nothing is confirmed before a new copy
        try:
            self.dirty.save(self.file, clean=False)
        except OSError as exc:
            # Without the marker a crash would leave an older clean map looking trustworthy: remove it.
            log.error("cannot write the tracking marker %s: %s", self.file, exc)
            self.file.unlink(missing_ok=True)


async def report_tracking(tracking: Tracking, dir: str) -> None:
    """Forever: reports the tracking stats when they change, and every couple of seconds while non-empty."""
    last: dict[str, Any] | None = None
    last_at = 0.0
    while True:
        now = time.monotonic()
        stats = tracking.stats()
        recorded = stats["files"] or stats["changelog_len"]
        if stats != last or (recorded and now - last_at >= TRACKING_REPEAT_SECONDS):
            report("tracking", dir=dir, **stats)
            last, last_at = stats, now
        await trio.sleep(TRACKING_POLL_SECONDS)


async def keep_linked(ops: MirrorFS, root_fd: int, filter: Filter, settings: LinkSettings, tracking: Tracking) -> None:
    """Forever: connect to the secondary, bring it up to date, forward until the link drops."""
    while True:
        forwarder = await trio.to_thread.run_sync(_connect, settings)
        if forwarder is None:
            await trio.sleep(RETRY_SECONDS)
            continue
        started = time.monotonic()
        # No await from here to the switch: the copy is a snapshot, and every operation after it is
        # forwarded (and recorded until the secondary has flushed it).
        stats = full_sync(root_fd, forwarder, filter)
        tracking.synced(forwarder)
        ops.guard.replicator = forwarder
        report(
            "synced",
            entries=stats.entries,
            files=stats.files,
            bytes=stats.bytes,
            seconds=round(time.monotonic() - started, 3),
        )
        await _until_disconnected(forwarder)
        # Operations between the drop and here were recorded by the forwarder itself.
        tracking.lost(forwarder)
        ops.guard.replicator = tracking.tracker()
        report("lost", detail="the secondary stopped answering; recording changes until it returns")
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
