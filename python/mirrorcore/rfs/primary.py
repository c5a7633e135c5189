"""The primary's side of one replicated directory: find the secondary, resync it online, then forward.

Runs in the FUSE worker. While no secondary listens, the file system is a plain
passthrough (the module is ALONE). When the secondary's receiver answers, the link
authenticates and a resync (`resync.Resync`) brings the secondary up to date while the
application keeps running: its mode is chosen from the copy ids and the tracking map
(`copyids.choose_mode`), and it ends with a `mark` carrying a fresh copy id. From its
namespace step on, every operation is forwarded in order. When the link drops, the worker goes
back to local operation and keeps looking for the secondary.

Tracking (SPEC §6): once a resync began (or a map saved by an earlier run was found), every
operation is recorded in the directory's `DirtyMap` until the secondary has it on its disk.
While linked, the forwarder records each operation as it numbers it and drops it when the
secondary reports it flushed; while ALONE, a link-less `Forwarder.tracker` stands in as the
replicator, applies writes locally and records everything. The map is saved with the clean flag
at a clean stop; at the start of tracking it is written once without it (the marker a crash of
the primary leaves). A resync clears it in its namespace step (it compares everything the map
held); until its mark is on the secondary's disk the map does not hold what the secondary lacks,
so a link lost or a stop before that leaves it distrusted, and `sync-<index>.json` says the
resync is incomplete: the next resync goes by timestamp.

Progress is reported to the daemon as JSON lines on stdout (`{"event": ...}`); the daemon's
commands (pause, resume, boost; verify) arrive as JSON lines on stdin.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from mirrorcore import _native
from mirrorcore.rfs.copyids import SyncRecord, choose_mode, new_copy_id
from mirrorcore.rfs.filters import Filter
from mirrorcore.rfs.fuse import MirrorFS
from mirrorcore.rfs.linkstate import LinkState, Marked, save_synced
from mirrorcore.rfs.pending import NamespaceObserver
from mirrorcore.rfs.resync import Resync, ResyncTarget, zones_plan
from mirrorcore.rfs.throttle import Throttle

log = logging.getLogger(__name__)

#: How often a primary without a secondary tries to reach it.
RETRY_SECONDS = 0.5

#: How often the tracking stats are looked at (reported when changed) ...
TRACKING_POLL_SECONDS = 0.5
#: ... and repeated anyway while something is recorded.
TRACKING_REPEAT_SECONDS = 2.0

#: While mirroring, how often the sync time (the start of what the secondary may lack) moves on.
IN_SYNC_EVERY_SECONDS = 30.0

#: After a resync failed for another reason than the link (a bug, a local error): wait before the next try.
RESYNC_FAILED_RETRY_SECONDS = 10.0

LOST = (ConnectionError, TimeoutError)


@dataclass(frozen=True)
class LinkSettings:
    """Where the secondary's receiver listens for this directory, and how to talk to it."""

    peer_addr: str
    port: int
    key: bytes
    mode: str
    send_timeout: float
    bind_addr: str | None


@dataclass(frozen=True)
class ResyncSettings:
    """How this directory resyncs: where its records live, `nbrei` workers, `syncdelta`."""

    dir: str
    state_dir: Path
    index: int
    workers: int = 1
    syncdelta: float = 0.0


def report(event: str, **fields: object) -> None:
    """One progress line for the daemon."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class Tracking:
    """One replicated directory's `DirtyMap`, the file it is saved in, and whether it is active.

    Active once a resync began, or from the start when an earlier run left a map (which is then
    trusted only if that run stopped cleanly). Before that nothing is recorded: the secondary
    needs a full resync anyway.

    Args:
        file: where the map is saved (`<lib>/<module>/dirty-<index>.bin`).
        zone_size: bytes per zone (`<rfs ruzone_blocksize>`) of a new map.
    """

    #: `_mark_seq` while a resync runs: no flushed seq reaches it, so a link lost then distrusts the map.
    _UNMARKED = 1 << 64

    def __init__(self, file: Path, zone_size: int) -> None:
        self.file = file
        self.loaded = False
        self._mark_seq = 0  # the forwarder's seq of the last resync's completion mark
        self._linked: _native.Forwarder | None = None  # the forwarder the map follows
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

    def start_fresh(self) -> None:
        """Track from now on with an empty map: this node's data is a complete copy its peer holds too.

        For a secondary promoted to primary (its copy is the primary's as of the last mark, plus what it
        applied since): every later operation is recorded, so a peer returning with that copy needs
        only the zones (SPEC §7: zones after a clean stop of either node).
        """
        if not self.active:
            self.active = True
            self._begin()

    @property
    def trusted(self) -> bool:
        """The map holds every operation the secondary may lack since the last resync (zones mode)."""
        return self.active and self.dirty.clean

    def tracker(self) -> _native.Forwarder | None:
        """The replicator while ALONE: records into the map; None while tracking is not active."""
        return _native.Forwarder.tracker(self.dirty) if self.active else None

    def begin_resync(self, forwarder: _native.Forwarder) -> None:
        """A resync's namespace step: the map starts over and follows `forwarder`.

        Call inside that step (no `await`), after the resync read the zones it compares.
        """
        self._mark_seq = self._UNMARKED
        self._linked = forwarder
        self.dirty.clear()
        forwarder.track(self.dirty)
        if not self.active:
            self.active = True
            self._begin()

    def marked(self, seq: int) -> None:
        """The resync's completion mark was queued as `seq`: once flushed, the map is exact again."""
        self._mark_seq = seq

    def lost(self, forwarder: _native.Forwarder) -> None:
        """The link of `forwarder` dropped: stop its recording; later operations go to a tracker.

        If the secondary did not have the resync's mark on its disk yet, the map (cleared when the
        resync began) cannot say what it lacks: it is distrusted.
        """
        if forwarder is not self._linked:
            return  # the link dropped before a resync attached the map to it
        self._linked = None
        forwarder.track(None)
        if forwarder.flushed_seq < self._mark_seq:
            self.dirty.distrust()
        # Nothing above this is confirmed one by one any more: neighbouring zones merge.
        self.dirty.set_horizon(self.dirty.last_seq)

    def save_clean(self) -> None:
        """At a clean stop (no operation can come any more): the map with the clean flag.

        A resync whose mark is not on the secondary's disk yet leaves it distrusted.
        """
        if self._linked is not None and self._linked.flushed_seq < self._mark_seq:
            self.dirty.distrust()
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


async def read_commands(
    throttle: Throttle, stream: trio.abc.ReceiveStream, verify: Callable[[bool, int], None] | None = None
) -> None:
    """The daemon's commands, one JSON line each, until the stream ends.

    `{"cmd": "pause"}` (resume, boost, unboost) go to the resync's throttle; `{"cmd": "verify",
    "repair": bool}` calls `verify(repair)`, which answers with a `verify` event.
    """
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                command = json.loads(line)
                name = command["cmd"]
                if name == "verify" and verify is not None:
                    verify(bool(command.get("repair", False)), int(command.get("id", 0)))
                    continue
                state = throttle.command(str(name))
            except (ValueError, KeyError, TypeError) as exc:
                report("resync_command", ok=False, detail=str(exc))
            else:
                report("resync_command", ok=True, cmd=name, state=state)


async def keep_linked(
    ops: MirrorFS,
    filter: Filter,
    settings: LinkSettings,
    tracking: Tracking,
    resync: ResyncSettings,
    throttle: Throttle,
    link: LinkState | None = None,
) -> None:
    """Forever: connect to the secondary, resync it online, forward until the link drops."""
    link = link or LinkState()
    while True:
        forwarder = await trio.to_thread.run_sync(_connect, settings)
        if forwarder is None:
            await trio.sleep(RETRY_SECONDS)
            continue
        try:
            link.resyncing = True
            try:
                marked = await _resync(ops, forwarder, filter, tracking, resync, throttle)
            finally:
                link.resyncing = False
                if throttle.boosted:
                    throttle.command("unboost")  # a boost is for the resync under way, not every later one
            link.following(forwarder, marked)
            await _follow(forwarder, resync, marked)
            why = forwarder.last_error or "the secondary stopped answering"
            detail = f"{why}; recording changes until it returns"
        except LOST as exc:
            detail = f"the link dropped during the resync ({exc}); recording changes until the secondary returns"
        except Exception as exc:
            # A bug or a local failure: the mount must stay up for the application; retry later.
            log.exception("resync of %s failed", resync.dir)
            detail = f"the resync failed ({type(exc).__name__}: {exc}); retrying in {RESYNC_FAILED_RETRY_SECONDS:.0f} s"
            link.following(None)
            await _give_up(ops, forwarder, tracking, detail)
            await trio.sleep(RESYNC_FAILED_RETRY_SECONDS)
            continue
        link.following(None)
        await _give_up(ops, forwarder, tracking, detail)


async def _give_up(ops: MirrorFS, forwarder: _native.Forwarder, tracking: Tracking, detail: str) -> None:
    """Back to local operation: later operations are recorded by a tracker; the link is closed."""
    # Operations between the drop and here were recorded by the forwarder itself.
    tracking.lost(forwarder)
    ops.guard.replicator = tracking.tracker()
    ops.observer = None
    await trio.to_thread.run_sync(forwarder.close)
    # Reported once the link is closed: the secondary then sees the session end before it learns
    # (from our heartbeat) that we no longer mirror, and waits for a new mark.
    report("lost", detail=detail)


async def _resync(
    ops: MirrorFS,
    forwarder: _native.Forwarder,
    filter: Filter,
    tracking: Tracking,
    settings: ResyncSettings,
    throttle: Throttle,
) -> Marked:
    """Runs one resync over a fresh link and queues its completion mark."""
    record = await trio.to_thread.run_sync(SyncRecord.load, settings.state_dir, settings.index)
    peer_copy_id = forwarder.peer_copy_id
    choice = choose_mode(peer_copy_id, record, tracking.trusted, settings.syncdelta)
    log.info("resync of %s: %s (%s)", settings.dir, choice.mode, choice.reason)
    report("resync_mode", dir=settings.dir, mode=choice.mode, detail=choice.reason)
    started_at = time.time()
    if record is not None and record.complete:
        # Until this resync's mark is on the secondary's disk, the map no longer says what it lacks.
        record = replace(record, complete=False)
        await trio.to_thread.run_sync(record.save, settings.state_dir, settings.index)

    def attach() -> None:
        tracking.begin_resync(forwarder)
        ops.guard.replicator = forwarder

    def observe(observer: NamespaceObserver | None) -> None:
        ops.observer = observer

    target: ResyncTarget = forwarder
    progress = await Resync(
        ops.root_fd,
        target,
        filter,
        choice,
        attach=attach,
        observe=observe,
        zones=lambda: zones_plan(tracking.dirty),
        throttle=throttle,
        emit=lambda snapshot: report("resync", dir=settings.dir, **snapshot),
        workers=settings.workers,
    ).run()
    copy_id = new_copy_id()
    # The secondary may hold the new id as soon as the mark is applied: name it durably first.
    base = record or SyncRecord(0, started_at, complete=False)
    pending = replace(base, complete=False, pending_id=copy_id)
    await trio.to_thread.run_sync(pending.save, settings.state_dir, settings.index)
    seq = forwarder.mark(copy_id)
    tracking.marked(seq)
    report("synced", dir=settings.dir, **progress.snapshot(trio.current_time()))
    return Marked(copy_id, seq, started_at)


async def _follow(forwarder: _native.Forwarder, settings: ResyncSettings, marked: Marked) -> None:
    """Forwards (the FUSE layer does) until the link drops; keeps the sync record up to date.

    Once the mark is on the secondary's disk the resync is complete; after that, the sync time
    moves on every `IN_SYNC_EVERY_SECONDS` to a moment before every operation not yet flushed.
    """
    checkpoint: tuple[float, int] | None = None
    while forwarder.connected:
        flushed = forwarder.flushed_seq
        if not marked.confirmed and flushed >= marked.seq:
            marked.confirmed = True
            await _save_complete(settings, marked.copy_id, marked.started_at)
            seconds = round(time.time() - marked.started_at, 3)
            report("resync_complete", dir=settings.dir, copy_id=marked.copy_id, seconds=seconds)
            checkpoint = (time.time(), forwarder.last_seq)
        elif marked.confirmed and checkpoint is not None and flushed >= checkpoint[1]:
            at, _ = checkpoint
            if time.time() - at >= IN_SYNC_EVERY_SECONDS:
                await _save_complete(settings, marked.copy_id, at)
                checkpoint = (time.time(), forwarder.last_seq)
        # The native link has no way to wake a trio task; a poll every 200 ms costs nothing.
        await trio.sleep(0.2)


async def _save_complete(settings: ResyncSettings, copy_id: int, in_sync_at: float) -> None:
    await trio.to_thread.run_sync(save_synced, settings.state_dir, settings.index, copy_id, in_sync_at, True)


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
