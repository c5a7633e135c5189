"""What the primary's worker knows of its link to the secondary, and whether this node diverged.

`copy-<index>.json` says whether this node may hold writes its peer never got (`diverged`, see
copyids.py). The worker sets it before it mounts as primary (`mark_diverged`), so a crash leaves
it set; at a clean stop `stop_cleanly` clears it only when the link is up and the secondary has
flushed every operation (`flushed_seq == last_seq`). A node that returns as secondary with the
flag set names its own changes to the new primary (`Mirror.start_secondary`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from mirrorcore import _native
from mirrorcore.rfs.copyids import CopyRecord, SyncRecord

__all__ = ["LinkState", "Marked", "mark_diverged", "save_synced", "stop_cleanly"]

#: At a clean stop, how long the secondary may take to flush what it received (then: still diverged).
STOP_FLUSH_SECONDS = 3.0


@dataclass
class Marked:
    """A resync whose completion mark is queued."""

    copy_id: int
    seq: int
    started_at: float  # wall clock: every operation the secondary may lack afterwards came later
    confirmed: bool = False


@dataclass
class LinkState:
    """The worker's link to the secondary, as a verify and a clean stop see it."""

    forwarder: _native.Forwarder | None = None  # set once its resync is done: the secondary follows
    marked: Marked | None = None  # that resync's mark
    resyncing: bool = False
    verifying: bool = False

    def following(self, forwarder: _native.Forwarder | None, marked: Marked | None = None) -> None:
        self.forwarder, self.marked = forwarder, marked


def save_synced(state_dir: Path, index: int, copy_id: int, in_sync_at: float, diverged: bool) -> None:
    """The secondary holds copy `copy_id` and every operation before `in_sync_at` (the resync completed).

    `diverged`: this node runs on as primary, so it may hold writes the secondary will never get.
    """
    SyncRecord(copy_id, in_sync_at, complete=True).save(state_dir, index)
    CopyRecord(copy_id, in_sync_at, diverged).save(state_dir, index)


def mark_diverged(state_dir: Path, index: int) -> None:
    """Before the worker mounts as primary: from now on this node may hold writes its peer never gets."""
    record = CopyRecord.load(state_dir, index)
    if not record.diverged:
        replace(record, diverged=True).save(state_dir, index)


def stop_cleanly(link: LinkState, state_dir: Path, index: int, wait: float = STOP_FLUSH_SECONDS) -> bool:
    """At a clean stop (unmounted: no operation can come any more): clears `diverged` if the secondary has all.

    Waits up to `wait` seconds for the secondary to flush what it received. Blocking.

    Returns:
        True if the records now say the secondary holds every operation of this node.
    """
    forwarder, marked = link.forwarder, link.marked
    if forwarder is None or marked is None:
        return False
    deadline = time.monotonic() + wait
    while forwarder.connected and forwarder.flushed_seq < forwarder.last_seq and time.monotonic() < deadline:
        time.sleep(0.05)
    if not forwarder.connected or forwarder.flushed_seq != forwarder.last_seq:
        return False
    # Everything (the resync's mark included) is on the secondary's disk as of now.
    save_synced(state_dir, index, marked.copy_id, time.time(), diverged=False)
    return True
