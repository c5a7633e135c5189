"""Which copy each node holds, per replicated directory, and how the next resync is chosen.

Every completed resync ends with a `mark(copy_id)`, a fresh random 63-bit id. Two records keep
track of it under `<lib>/<module>/`:

- `copy-<index>.json` `{"copy_id", "in_sync_at", "diverged"}`: the copy this node's data belongs
  to. The secondary writes it when a mark arrives (its receiver announces the id to every primary
  in the handshake); the primary writes it when its resync completes, so that after a failover the
  old primary, returning as secondary, still names the copy it shares with the new one. `copy_id`
  0 asks for a full copy (`Mirror.request_full`). `diverged`: this node may hold writes its peer
  never got — set durably when a worker starts as primary (a crash leaves it so), cleared at a
  clean stop that left the secondary with everything, and when a mark arrives here.
- `sync-<index>.json` `{"copy_id", "pending_id", "in_sync_at", "complete"}`: the primary's view.
  `complete` is cleared before a resync starts and set once its mark is on the secondary's disk;
  `pending_id` is the id of a mark queued but not yet confirmed (the secondary may hold either);
  `in_sync_at` is a wall-clock time before every operation the secondary may lack.

`choose_mode` turns them into full / zones / timestamp with the reason (SPEC §7).

A diverged node returning as secondary announces its copy id with `DIVERGED_BIT` set (see
`announced_copy_id`): the copy is the same, but the primary must compare whole every file the
secondary names in its needs (its own writes may lie anywhere in them, outside the primary's zones).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DIVERGED_BIT",
    "CopyRecord",
    "ModeChoice",
    "SyncRecord",
    "announced_copy_id",
    "choose_mode",
    "new_copy_id",
]

from mirrorcore.state import write_atomic

log = logging.getLogger(__name__)

#: Subtracted from `in_sync_at` on top of `<rfs syncdelta>`: a write stamped just before a clock read.
TIMESTAMP_MARGIN = 2.0

#: Copy ids are 63-bit; a secondary that may hold writes of its own announces its id with this bit set.
DIVERGED_BIT = 1 << 63


def new_copy_id() -> int:
    """A fresh id for the mark that ends a resync (never 0, which means "no copy")."""
    return secrets.randbits(63) or 1


@dataclass(frozen=True)
class CopyRecord:
    """`copy-<index>.json`: the copy this node's data belongs to (0: none, or a full copy is asked for).

    `in_sync_at`: a wall-clock time before every write of this node its peer may lack.
    `diverged`: this node may hold writes its peer never got (it ran as primary since).
    """

    copy_id: int = 0
    in_sync_at: float = 0.0
    diverged: bool = False

    @staticmethod
    def file(state_dir: Path, index: int) -> Path:
        return state_dir / f"copy-{index}.json"

    @classmethod
    def load(cls, state_dir: Path, index: int) -> CopyRecord:
        data = _read(cls.file(state_dir, index))
        if data is None:
            return cls()
        try:
            # "at" is what records written before the diverged flag called the sync time.
            at = float(data.get("in_sync_at", data.get("at", 0.0)))
            return cls(int(data.get("copy_id", 0)), at, bool(data.get("diverged", False)))
        except (TypeError, ValueError) as exc:
            log.warning("ignoring the unreadable copy record %s: %s", cls.file(state_dir, index), exc)
            return cls()

    def save(self, state_dir: Path, index: int) -> None:
        _write_atomic(self.file(state_dir, index), asdict(self))


@dataclass(frozen=True)
class SyncRecord:
    """`sync-<index>.json`: the primary's account of its last resync to the secondary."""

    copy_id: int
    in_sync_at: float
    complete: bool
    pending_id: int = 0

    @staticmethod
    def file(state_dir: Path, index: int) -> Path:
        return state_dir / f"sync-{index}.json"

    @classmethod
    def load(cls, state_dir: Path, index: int) -> SyncRecord | None:
        """The saved record; else one derived from `copy-<index>.json` (this node was the secondary)."""
        data = _read(cls.file(state_dir, index))
        if data is not None:
            try:
                return cls(
                    int(data["copy_id"]),
                    float(data["in_sync_at"]),
                    bool(data["complete"]),
                    int(data.get("pending_id", 0)),
                )
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("ignoring the unreadable resync record %s: %s", cls.file(state_dir, index), exc)
        copy = CopyRecord.load(state_dir, index)
        if copy.copy_id == 0:
            return None
        # A secondary that became primary: its data is that copy as of the mark plus what it received
        # since; no tracking map covers that time, so the next resync goes by timestamp from the mark.
        return cls(copy.copy_id, copy.in_sync_at, complete=False)

    def save(self, state_dir: Path, index: int) -> None:
        _write_atomic(self.file(state_dir, index), asdict(self))

    @staticmethod
    def forget(state_dir: Path, index: int) -> None:
        """This node is the secondary now: its primary-side record no longer describes its data."""
        SyncRecord.file(state_dir, index).unlink(missing_ok=True)


@dataclass(frozen=True)
class ModeChoice:
    """How the next resync runs, and why (logged and shown in `state`)."""

    mode: str  # "full" | "zones" | "timestamp"
    reason: str
    since: float | None = None  # timestamp mode: files modified from then on are checked whole
    peer_diverged: bool = False  # the secondary wrote on its own: the files it names are compared whole


def announced_copy_id(record: CopyRecord) -> int:
    """What a node starting as secondary announces: its copy id, with `DIVERGED_BIT` if it wrote on its own."""
    if record.copy_id == 0:
        return 0  # a full copy compares everything anyway
    return record.copy_id | DIVERGED_BIT if record.diverged else record.copy_id


def choose_mode(peer_copy_id: int, record: SyncRecord | None, map_trusted: bool, syncdelta: float) -> ModeChoice:
    """The resync mode for a secondary announcing `peer_copy_id` (SPEC §7).

    Args:
        peer_copy_id: the copy id the secondary's receiver announced (0: none, or a full copy asked for),
            with `DIVERGED_BIT` when the secondary may hold writes of its own.
        record: this primary's `sync-<index>.json`, None when there is none.
        map_trusted: the tracking map covers every operation since the last resync (active, loaded or
            started by a completed resync here, not distrusted).
        syncdelta: `<rfs syncdelta>` seconds, subtracted from the sync time in timestamp mode.
    """
    diverged = bool(peer_copy_id & DIVERGED_BIT)
    peer_copy_id &= ~DIVERGED_BIT
    if peer_copy_id == 0:
        return ModeChoice("full", "the secondary holds no copy, or was asked for a full one")
    if record is None:
        return ModeChoice("full", "this node has no record of a copy shared with the secondary")
    if peer_copy_id not in (record.copy_id, record.pending_id):
        return ModeChoice("full", "the secondary holds another copy than this node's (copy ids differ)")
    # The secondary's own writes come back as its needs (seeded by Mirror.start_secondary).
    theirs = "; the secondary wrote on its own since: the files it names are compared whole" if diverged else ""
    if record.complete and map_trusted:
        why = "same copy on both nodes and the tracking map is trusted: only what changed"
        return ModeChoice("zones", why + theirs, peer_diverged=diverged)
    since = record.in_sync_at - syncdelta - TIMESTAMP_MARGIN
    why = "the previous resync did not complete" if not record.complete else "the tracking map is not trusted"
    why = f"same copy on both nodes but {why}: files modified since the last sync{theirs}"
    return ModeChoice("timestamp", why, since, peer_diverged=diverged)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable record %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _write_atomic(path: Path, data: dict[str, object]) -> None:
    """After a crash, the old record or the new (state.write_atomic)."""
    write_atomic(path, json.dumps(data))
