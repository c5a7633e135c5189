"""The daemon's side of replication beyond start and stop (SPEC §7, §8).

- Becoming secondary: a split-brain loser first saves what it wrote alone (`salvage.py`); a
  full copy is asked for before the receivers start, so the primary that connects first
  already sees it. A salvage that could not be written blocks the resync (nothing is replaced
  before it is saved) and is retried at the next attempt: the pending reason is on disk.
- Commands: `resync pause|resume|boost|unboost` and `verify [--repair]` go to the primary's
  workers through `Mirror`.
- While running: a ready secondary whose copy became incomplete (the primary reconnected and
  resyncs) says so to the state machine, and the sync timestamp follows while both copies match.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from mirrorcore import _native, control, fsm
from mirrorcore.config import ModuleConfig
from mirrorcore.modlog import ModuleLog
from mirrorcore.paths import Paths
from mirrorcore.rfs.copyids import TIMESTAMP_MARGIN, CopyRecord
from mirrorcore.rfs.mirror import Mirror
from mirrorcore.rfs.worker import tracking_file
from mirrorcore.salvage import Changes, changes_from_map, changes_since, salvage
from mirrorcore.state import write_atomic

__all__ = ["COMMANDS", "RfsControl", "status_lines"]

#: Control commands answered here.
COMMANDS = ("resync", "verify")

#: How long `verify` may take before the daemon gives up waiting (a whole tree is read on both nodes).
VERIFY_TIMEOUT = 3600.0

#: How often the copy's completeness is looked at, and the sync timestamp saved while it holds.
POLL_SECONDS = 0.5
SYNC_TIMESTAMP_EVERY = 30.0

PENDING_FILE = "salvage-pending.json"


class RfsControl:
    """Salvage, resync control and verify for one module's daemon."""

    def __init__(self, mirror: Mirror | None, config: ModuleConfig, paths: Paths, log: ModuleLog) -> None:
        self.mirror = mirror
        self.config = config
        self.state_dir = paths.state_dir(config.name)
        self.salvage_dir = self.state_dir / "salvage"
        self.log = log

    # ---- becoming secondary ----------------------------------------------------------------

    async def start_secondary(self, action: fsm.StartMirror) -> str | None:
        """Salvage (when asked, or left pending), ask for a full copy (when asked), start the receivers.

        Returns:
            None, or why the resync must not run (the salvage could not be written).
        """
        assert self.mirror is not None
        pending = self.state_dir / PENDING_FILE
        if action.salvage:
            await self.owe_salvage(action.salvage)
        reason = await trio.to_thread.run_sync(_read_pending, pending)
        if reason is not None:
            try:
                folder = await trio.to_thread.run_sync(self._salvage, reason)
            except (OSError, ValueError) as exc:
                why = (
                    f"split-brain salvage could not be written under {self.salvage_dir} "
                    f"({type(exc).__name__}: {exc}); nothing was replaced: fix that (a full disk: free "
                    f"space there), then run `mirrorctl second`"
                )
                self.log.write(why, level="E", initiator="rfs")
                return why
            pending.unlink(missing_ok=True)
            if folder is None:
                self.log.write("Split-brain salvage: this node changed nothing while alone", initiator="rfs")
            else:
                self.log.write(
                    f"Split-brain salvage: what this node wrote alone is saved in {folder} "
                    f"(REPORT.txt lists it; `mirrorctl splitbrain list`)",
                    initiator="rfs",
                )
        if action.full or reason is not None:
            await self.mirror.request_full()
        await self.mirror.start_secondary()
        return None

    async def owe_salvage(self, reason: str) -> None:
        """Persists that this copy's own changes are saved before any resync (done by `start_secondary`)."""
        await trio.to_thread.run_sync(_write_pending, self.state_dir / PENDING_FILE, reason)
        self.log.write(f"Split-brain salvage owed before any resync: {reason}", initiator="rfs")

    def _salvage(self, reason: str) -> Path | None:
        assert self.config.rfs is not None
        found: list[tuple[Path, Changes]] = []
        for index, replicated in enumerate(self.config.rfs.dirs):
            found.append((Path(replicated.dir), self._changes(index, Path(replicated.dir))))
        return salvage(self.salvage_dir, found, reason)

    def _changes(self, index: int, root: Path) -> Changes:
        """From this node's tracking map when it is trusted, else by modification time since the last sync."""
        try:
            dirty = _native.DirtyMap.load(tracking_file(self.state_dir, index))
            if dirty.clean:
                return changes_from_map(dirty)
        except (OSError, ValueError):
            pass
        assert self.config.rfs is not None
        since = CopyRecord.load(self.state_dir, index).in_sync_at - self.config.rfs.syncdelta - TIMESTAMP_MARGIN
        return changes_since(root, max(0.0, since))

    # ---- commands ------------------------------------------------------------------------------

    async def handle(self, request: control.Request) -> control.Reply:
        """`resync ACTION` and `verify [repair]`."""
        mirror = self.mirror
        if mirror is None:
            return control.Reply(ok=False, message=f"module {self.config.name} replicates no directory (no <rfs>)")
        if mirror.role != "primary":
            where = "this node is the secondary" if mirror.role == "secondary" else "replication is not running"
            return control.Reply(
                ok=False, message=f"{request.cmd} runs on the primary ({where}): run it on {self.config.peer}"
            )
        if request.cmd == "resync":
            return await self._resync(mirror, str(request.args.get("action", "")), request.initiator)
        return await self._verify(mirror, bool(request.args.get("repair", False)), request.initiator)

    async def _resync(self, mirror: Mirror, action: str, initiator: str | None) -> control.Reply:
        try:
            reached = await mirror.resync_command(action)
        except ValueError as exc:
            return control.Reply(ok=False, message=str(exc))
        self.log.write(f"Resync {action} asked", initiator=initiator)
        if reached == 0:
            return control.Reply(ok=False, message="no replication worker is running on this node")
        return control.Reply(ok=True, message=f"resync {action}: sent to {reached} replicated directories")

    async def _verify(self, mirror: Mirror, repair: bool, initiator: str | None) -> control.Reply:
        words = "verify --repair" if repair else "verify"
        self.log.write(f"Action {words} called", initiator=initiator)
        results: list[dict[str, Any]] = await mirror.verify(repair=repair, timeout=VERIFY_TIMEOUT)
        matched = bool(results) and all(_matched_now(r) for r in results)
        summary = "; ".join(_verify_line(r) for r in results) or "nothing verified"
        self.log.write(f"Verify: {summary}", level="I" if matched else "E", initiator="rfs")
        return control.Reply(ok=matched, message=summary, status={"verify": results})

    # ---- while running ---------------------------------------------------------------------------

    async def run(
        self,
        node: Callable[[], fsm.Node],
        submit: Callable[[fsm.Event], Awaitable[fsm.Step]],
        save_sync_timestamp: Callable[[float], Awaitable[None]],
    ) -> None:
        """Forever: report an incomplete copy on a ready secondary; keep the sync timestamp while in sync."""
        mirror = self.mirror
        if mirror is None:
            return
        last_saved = 0.0
        reported: list[str] = []
        while True:
            await trio.sleep(POLL_SECONDS)
            n = node()
            ready_second = n.state is fsm.State.SECOND and n.color is fsm.Color.GREEN and not n.resyncing
            # Only a primary that is connected and resyncing makes the copy incomplete: a link that just
            # dropped (a crashed primary) leaves it complete up to what was applied, fit to take over.
            failures = mirror.failures if mirror.role == "secondary" else []
            if failures != reported:
                for failure in failures:
                    self.log.write(f"Replication halted: {failure}", level="E", initiator="rfs")
                reported = failures
            if ready_second and mirror.role == "secondary" and (mirror.resync_under_way or failures):
                # An operation that could not be applied here makes the copy inconsistent until the
                # primary's next resync repairs it: not fit to take over meanwhile.
                detail = failures[0] if failures else "the primary began a new resync"
                await submit(fsm.CopyIncomplete(detail=detail, now=time.time()))
                continue
            in_sync = n.color is fsm.Color.GREEN and (
                (n.state is fsm.State.PRIM and mirror.mirroring) or (ready_second and mirror.in_sync)
            )
            now = time.time()
            if in_sync and now - last_saved >= SYNC_TIMESTAMP_EVERY:
                await save_sync_timestamp(now)
                last_saved = now


def status_lines(status: dict[str, Any]) -> list[str]:
    """What `mirrorctl state` says about resyncs: the one under way per directory, else the last one."""
    rfs = status.get("rfs") or {}
    lines: list[str] = []
    for dir, p in sorted((rfs.get("resync") or {}).items()):
        if p.get("phase") in ("done", "interrupted"):
            continue
        eta = p.get("eta")
        lines.append(
            f"resync {dir}: {p.get('mode')} ({p.get('phase')}, {p.get('state')}), files "
            f"{p.get('files_done', 0)}/{p.get('files_total', 0)}, {_size(p.get('bytes_done', 0))} of "
            f"{_size(p.get('bytes_total', 0))} compared, {_size(p.get('bytes_sent', 0))} sent, "
            f"{_size(p.get('rate', 0))}/s, ETA {'?' if eta is None else f'{eta:.0f} s'}"
        )
    last = rfs.get("last_resync")
    if not lines and isinstance(last, dict) and last.get("mode"):
        lines.append(f"last resync: {last.get('mode')} ({last.get('reason', '')})")
    return lines


def _matched_now(result: dict[str, Any]) -> bool:
    return bool(result.get("matched")) or (bool(result.get("repaired")) and not result.get("remaining"))


def _verify_line(result: dict[str, Any]) -> str:
    dir = result.get("dir", "?")
    if result.get("error"):
        return f"{dir}: not verified: {result['error']}"
    checked = f"{result.get('files_checked', 0)} files, {_size(result.get('bytes_checked', 0))} checked"
    if result.get("matched"):
        return f"{dir}: copies match ({checked})"
    count = result.get("total", len(result.get("differences") or []))
    repaired = " — repaired" if result.get("repaired") else ""
    return f"{dir}: {count} differences ({checked}){repaired}"


def _size(n: object) -> str:
    value = float(n) if isinstance(n, int | float) else 0.0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _write_pending(path: Path, reason: str) -> None:
    write_atomic(path, json.dumps({"reason": reason}))


def _read_pending(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text())["reason"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError):
        return f"a split-brain salvage was pending ({path} unreadable)"
