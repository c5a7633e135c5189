"""The daemon's handle on replication: FUSE workers on the primary, receivers on the secondary.

`StartMirror("primary")` starts one worker process per replicated directory (pyfuse3
allows one mount per process, and a busy file system must never delay heartbeats) and
waits until each has mounted. `StartMirror("secondary")` opens one native `Receiver`
per directory on the flow LAN. `StopMirror` stops the workers (they unmount) or closes
the receivers (which first apply everything they acknowledged: a secondary that takes
over starts the application on all the data the primary was told was safe).

Resync (rfs/resync.py) runs in the primary's workers; their progress events are kept per
directory (`status()["resync"]`) and logged at most every `PROGRESS_LOG_SECONDS`;
`resync_command` sends them pause/resume/boost on their stdin. On the secondary, each
receiver announces the copy id of `copy-<index>.json` (see rfs/copyids.py) and the record
follows every completion mark that arrives; `request_full` sets it to 0 so that the next
primary sends a full resync.

A node whose record says it diverged (it ran as primary since its peer last had everything)
returns as secondary naming its own changes: its receiver's needs are seeded with the paths of
its tracking map when that map is trusted, else with every file it modified since its sync time,
so that the new primary compares them (and its copy wins). `verify` asks every worker to compare
both copies (rfs/verify.py) and returns their results.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from mirrorcore import _native
from mirrorcore.config import ModuleConfig, Rfs
from mirrorcore.modlog import ModuleLog
from mirrorcore.paths import Paths
from mirrorcore.rfs.copyids import TIMESTAMP_MARGIN, CopyRecord, SyncRecord, announced_copy_id
from mirrorcore.rfs.worker import mounts_at, recover_stale_mount, replication_port, tracking_file
from mirrorcore.salvage import changes_from_map, changes_since

WORKER_READY_SECONDS = 20.0
WORKER_STOP_SECONDS = 10.0

#: The commands `resync_command` passes to the workers.
RESYNC_COMMANDS = ("pause", "resume", "boost", "unboost")

#: While a resync runs, a progress line goes to the module log at most this often (seconds). The
#: worker reports twice a second; that much would drown the log, and `state` shows it live anyway.
PROGRESS_LOG_SECONDS = 10.0


class _Starting:
    """A worker being started: `over` is set once it mounted (`mounted`) or closed its stdout."""

    def __init__(self) -> None:
        self.over = trio.Event()
        self.mounted = False

    def ready(self) -> None:
        self.mounted = True
        self.over.set()


class Mirror:
    """Replication of one module's directories on this node."""

    def __init__(
        self,
        paths: Paths,
        config: ModuleConfig,
        key: bytes,
        log: ModuleLog,
        on_change: Callable[[], None],
        on_worker_lost: Callable[[str, bool], None] | None = None,
    ) -> None:
        """`on_change`: streaming started or stopped; `on_worker_lost(why, mounted)`: a worker died,
        and its replacement mounted the directory again (the application must reopen its files) or not."""
        assert config.rfs is not None
        self.paths = paths
        self.config = config
        self.rfs = config.rfs
        self.key = key
        self.log = log
        self.role: str | None = None
        self._workers: list[trio.Process] = []
        self._receivers: list[_native.Receiver] = []
        self.events: dict[str, Any] = {}
        self.tracking: dict[str, dict[str, Any]] = {}  # primary: directory -> the worker's latest tracking stats
        self.resync: dict[str, dict[str, Any]] = {}  # primary: directory -> the worker's latest resync progress
        self._copy_ids: list[int] = []  # secondary: per receiver, the copy id last saved in copy-<index>.json
        self._on_change = on_change
        self._on_worker_lost = on_worker_lost
        self._nursery: trio.Nursery | None = None  # primary: where the workers' followers run
        self._last_words: dict[str, str] = {}  # primary: directory -> what ended its last worker (`failed`)
        self._streaming: dict[str, bool] = {}  # primary: directory -> the secondary has its copy and follows
        self._read_only: list[Path] = []  # secondary: directories overmounted read-only for applications
        self._epoch = 0  # bumped by every stop, so waits that began before it end
        self._verify_lock = trio.Lock()
        self._verify_id = 0  # the verify request the workers' answers must name
        self._ready_sessions: list[int] = []  # secondary: per receiver, the session whose mark made it ready
        self._verify_results: dict[str, dict[str, Any]] = {}  # primary: directory -> its worker's verify result
        self._verify_done = trio.Event()
        self._progress_logged: dict[str, float] = {}  # primary: directory -> when its last progress line was logged

    async def start_primary(self, nursery: trio.Nursery) -> list[str]:
        """Mounts every replicated directory; returns once all are served.

        Returns what went wrong for each directory that could not be mounted (empty: all are): the
        application must not start on an unreplicated copy.
        """
        await self.stop()
        self.role = "primary"
        self.tracking = {}
        self.resync = {}
        self._nursery = nursery
        failed = []
        for index, replicated in enumerate(self.rfs.dirs):
            proc, mounted = await self._start_worker(index, replicated.dir)
            if mounted:
                self._workers.append(proc)
                continue
            failed.append(f"{replicated.dir} could not be mounted ({self._worker_error(replicated.dir)})")
            if proc.returncode is None:  # too slow: not kept (nor followed as a worker that died)
                proc.kill()
                await proc.wait()
            await trio.to_thread.run_sync(recover_stale_mount, Path(replicated.dir))
        return failed

    async def _start_worker(self, index: int, dir: str) -> tuple[trio.Process, bool]:
        """Starts the worker of replicated directory `index` and waits (a while) until it has mounted.

        Returns the process and whether it mounted (False: it exited first, or took too long).
        """
        assert self._nursery is not None
        await trio.to_thread.run_sync(_prepare_dir, Path(dir))
        worker_log = self._worker_log()
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "mirrorcore.rfs.worker", "--module", self.config.name, "--index", str(index)],
                stdin=subprocess.PIPE,  # resync commands
                stdout=subprocess.PIPE,
                stderr=worker_log,
            )
        finally:
            os.close(worker_log)
        starting = _Starting()
        self._nursery.start_soon(self._follow_worker, proc, index, dir, starting)
        with trio.move_on_after(WORKER_READY_SECONDS):
            await starting.over.wait()
        if not starting.mounted:
            self.log.write(f"Replication of {dir} did not start; see worker.log", level="E", initiator="rfs")
        return proc, starting.mounted

    async def start_secondary(self) -> None:
        """Listens for the primary on the flow LAN, one receiver per replicated directory."""
        await self.stop()
        self.role = "secondary"
        self.tracking = {}
        self.resync = {}
        local_addr, _ = self.config.lan_addrs(self.config.heart.flow_lan)
        state_dir = self.paths.state_dir(self.config.name)
        for index, replicated in enumerate(self.rfs.dirs):
            await trio.to_thread.run_sync(_prepare_dir, Path(replicated.dir))
            port = replication_port(self.config.port, index)
            record = await trio.to_thread.run_sync(_follow_primary, state_dir, index)
            copy_id = announced_copy_id(record)
            seeds: list[bytes] = []
            if copy_id != record.copy_id:
                # Scanned before the receiver starts: nothing writes the directory but this node then.
                since = record.in_sync_at - self.rfs.syncdelta - TIMESTAMP_MARGIN
                source, seeds = await trio.to_thread.run_sync(
                    own_changes, state_dir, index, Path(replicated.dir), since
                )
                self.log.write(
                    f"This node may hold writes its peer never got: {len(seeds)} file(s) of {replicated.dir} "
                    f"named to the primary for comparison (from {source})",
                    initiator="rfs",
                )
            receiver = await trio.to_thread.run_sync(
                functools.partial(_start_receiver, replicated.dir, local_addr, port, self.key, copy_id, seeds)
            )
            self._receivers.append(receiver)
            self._copy_ids.append(copy_id)
            # A tracking map left by an earlier time as primary describes a copy this one no longer is
            # (seeds and salvage have read it): if it stayed, a later promotion would trust it for zones.
            await trio.to_thread.run_sync(functools.partial(tracking_file(state_dir, index).unlink, missing_ok=True))
            if replicated.read_only:
                # The receiver writes through the directory fd it opened before this overmount.
                await trio.to_thread.run_sync(_read_only_overmount, Path(replicated.dir))
                self._read_only.append(Path(replicated.dir))
            self.log.write(f"Receiving {replicated.dir} on {local_addr}:{port}", initiator="rfs")

    def sessions_done(self, *, after_break: bool) -> list[int]:
        """Per receiver, the last session that may not end a resync wait begun now.

        `after_break`: the primary stopped mirroring to a copy that was complete. Its old session may
        still look alive (a cut link is not seen at once), so only a later session's mark counts.
        """
        # The sessions whose marks last made this copy ready, recorded then: a later session that already
        # completed when the break is noticed (a tiny resync after a quick reconnect) still counts.
        if not after_break or len(self._ready_sessions) != len(self._receivers):
            return [-1] * len(self._receivers)
        return list(self._ready_sessions)

    async def wait_synced(self, sessions_done: list[int] | None = None) -> bool:
        """Waits until every receiver's current session delivered its resync's completion mark.

        The mark carries the copy id of that resync; it is saved in `copy-<index>.json` here.
        `sessions_done` (from `sessions_done`): sessions whose mark does not count.

        Returns:
            True once synced; False if replication stopped or restarted meanwhile (the wait is stale).
        """
        epoch = self._epoch
        floor = sessions_done or [-1] * len(self._receivers)
        while self._epoch == epoch:
            await self._save_copy_ids()
            newer = all(int(r.stats().get("sessions", 0)) > f for r, f in zip(self._receivers, floor, strict=False))
            if self._epoch == epoch and self.in_sync and newer:
                self._ready_sessions = [int(r.stats().get("sessions", 0)) for r in self._receivers]
                return True
            await trio.sleep(0.1)
        return False

    @property
    def in_sync(self) -> bool:
        """Secondary: every receiver's current session has delivered its completion mark.

        False while a primary that (re)connected is resyncing: the copy is not complete then.
        """
        return bool(self._receivers) and all(_session_synced(r) for r in self._receivers)

    @property
    def failures(self) -> list[str]:
        """Secondary: why applying the primary's operations failed here (the copy is inconsistent until repaired)."""
        return [f for r in self._receivers if (f := r.failure) is not None]

    @property
    def resync_under_way(self) -> bool:
        """Secondary: a primary is connected and its resync has not delivered its mark yet.

        Unlike `not in_sync`, False when the link merely dropped (a crashed primary): the copy is
        then as complete as the last mark plus what followed it, and the node may take over.
        """
        return any(_session_unsynced(r) for r in self._receivers)

    async def request_full(self) -> None:
        """Secondary: the next primary sends a full resync (`second fullsync`, primforce, split-brain loser).

        Call before `start_secondary` where possible: a primary that already connected chose its mode.
        """
        state_dir = self.paths.state_dir(self.config.name)
        for index in range(len(self.rfs.dirs)):
            await trio.to_thread.run_sync(CopyRecord(0, time.time()).save, state_dir, index)
        for index, receiver in enumerate(self._receivers):
            receiver.copy_id = 0
            self._copy_ids[index] = 0
        self.log.write("The next resync from the primary will be full (copy ids reset)", initiator="rfs")

    async def resync_command(self, command: str) -> int:
        """Primary: sends `command` (pause, resume, boost, unboost) to every worker's resync.

        Returns:
            How many workers it reached.

        Raises:
            ValueError: an unknown command.
        """
        if command not in RESYNC_COMMANDS:
            raise ValueError(f"unknown resync command {command!r}: use one of {', '.join(RESYNC_COMMANDS)}")
        line = (json.dumps({"cmd": command}) + "\n").encode()
        sent = 0
        for proc in self._workers:
            if proc.stdin is None or proc.returncode is not None:
                continue
            try:
                await proc.stdin.send_all(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue
            sent += 1
        self.log.write(f"Resync {command} sent to {sent} replication worker(s)", initiator="rfs")
        return sent

    async def verify(self, repair: bool, timeout: float) -> list[dict[str, Any]]:  # noqa: ASYNC109 (per-dir answers)
        """Primary: compares both copies of every replicated directory online (and repairs them).

        Each worker compares its directory at points of the replication stream while the
        application runs (rfs/verify.py). One result per replicated directory: `dir`, `matched`,
        `files_checked`, `bytes_checked`, `bytes_sent`, `differences` (at most `MAX_REPORTED`, each
        `{"path", "what", "ranges"?, "repaired"}`), `total`, `repaired` (a repair was made),
        `remaining` (differences a comparison after the repair still found), `seconds`; or `matched`
        False with `error` when it was refused (not the primary, no secondary linked, a resync
        running) or interrupted, or no answer came within `timeout` seconds.
        """
        dirs = [replicated.dir for replicated in self.rfs.dirs]
        if self.role != "primary" or len(self._workers) != len(dirs):
            return [{"dir": d, "matched": False, "error": "this node is not the primary"} for d in dirs]
        async with self._verify_lock:
            self._verify_results = {}
            self._verify_done = trio.Event()
            self._verify_id += 1
            line = (json.dumps({"cmd": "verify", "repair": repair, "id": self._verify_id}) + "\n").encode()
            for proc in self._workers:
                if proc.stdin is not None and proc.returncode is None:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await proc.stdin.send_all(line)
            with trio.move_on_after(timeout):
                while len(self._verify_results) < len(dirs):
                    await self._verify_done.wait()
                    self._verify_done = trio.Event()
            results = []
            for d in dirs:
                missing = {"matched": False, "error": f"no answer from the replication worker within {timeout:g} s"}
                results.append({"dir": d, **self._verify_results.get(d, missing)})
            return results

    async def _save_copy_ids(self) -> None:
        """Saves the copy id of every receiver whose mark changed it since the last save."""
        state_dir = self.paths.state_dir(self.config.name)
        for index, receiver in enumerate(self._receivers):
            copy_id = receiver.copy_id
            if copy_id != self._copy_ids[index]:
                await trio.to_thread.run_sync(CopyRecord(copy_id, time.time()).save, state_dir, index)
                self._copy_ids[index] = copy_id

    async def stop(self) -> None:
        """Stops replicating: workers unmount and exit; receivers apply what they hold and close."""
        self._epoch += 1
        self._streaming = {}
        workers, self._workers = self._workers, []
        for proc in workers:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(WORKER_STOP_SECONDS):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if workers:
            for replicated in self.rfs.dirs:
                await trio.to_thread.run_sync(recover_stale_mount, Path(replicated.dir))
        read_only, self._read_only = self._read_only, []
        for dir in read_only:
            await trio.to_thread.run_sync(_remove_overmount, dir)
        # The receivers apply what they hold as they close: a mark among it is saved after.
        for receiver in self._receivers:
            await trio.to_thread.run_sync(receiver.close)
        await self._save_copy_ids()
        self._receivers, self._copy_ids, self._ready_sessions = [], [], []
        self.role = None

    @property
    def mirroring(self) -> bool:
        """Primary: every replicated directory streams to the secondary, which has a complete copy."""
        return self.role == "primary" and len(self._streaming) == len(self.rfs.dirs) and all(self._streaming.values())

    def status(self) -> dict[str, Any]:
        """What `state --json` shows of replication."""
        out: dict[str, Any] = {
            "role": self.role,
            "async": self.rfs.async_mode,
            "mirroring": self.mirroring,
            **self.events,
        }
        if self._receivers:
            out["receivers"] = [{**r.stats(), "failure": r.failure} for r in self._receivers]
        if self.tracking:
            # What the secondary lacks, per directory (kept after a stop: what the saved map holds).
            out["tracking"] = dict(self.tracking)
        if self.resync:
            # The latest resync progress per directory (mode, files and bytes done/total, rate, ETA).
            out["resync"] = dict(self.resync)
        return out

    async def _follow_worker(self, proc: trio.Process, index: int, dir: str, starting: _Starting) -> None:
        assert proc.stdout is not None
        await self._read_events(proc, dir, starting.ready)
        starting.over.set()  # it closed its stdout: exiting
        await proc.wait()
        if proc in self._workers:  # `stop` takes the workers out of the list before stopping them
            await self._worker_died(proc, index, dir)

    async def _worker_died(self, proc: trio.Process, index: int, dir: str) -> None:
        """A worker exited on its own: its mount is dead, the application's files there unreachable.

        Mounts the directory again at once (a new worker: it removes the dead mount, and resyncs the
        secondary since its last sync time, the dead worker's map being lost), then tells the daemon
        (`on_worker_lost`), which restarts the application on the new mount, or stops the module when
        the directory could not be mounted again.
        """
        code = proc.returncode or 0  # it has exited: never None here
        how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        why = f"the replication worker of {dir} {how}"
        message = f"{why[0].upper()}{why[1:]}: its mount is dead; mounting it again (see worker.log)"
        self.log.write(message, level="E", initiator="rfs")
        self._streaming[dir] = False
        self._on_change()
        epoch = self._epoch
        new, mounted = await self._start_worker(index, dir)
        if epoch != self._epoch or proc not in self._workers:  # stopped meanwhile
            new.kill()
            await new.wait()
            await trio.to_thread.run_sync(recover_stale_mount, Path(dir))
            return
        if mounted:
            self._workers[self._workers.index(proc)] = new
        else:
            self._workers.remove(proc)
            why += f", and the directory could not be mounted again ({self._worker_error(dir)})"
            if new.returncode is None:
                new.kill()
                await new.wait()
            await trio.to_thread.run_sync(recover_stale_mount, Path(dir))
        if self._on_worker_lost is not None:
            self._on_worker_lost(why, mounted)

    async def _read_events(self, proc: trio.Process, dir: str, on_ready: Callable[[], None]) -> None:
        """Follows the events a worker prints on its stdout, until it closes it."""
        assert proc.stdout is not None
        buffer = b""
        async for chunk in proc.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                kind = event.pop("event", "?")
                event.pop("dir", None)
                if kind == "tracking":
                    self.tracking[dir] = event
                elif kind == "resync":
                    self.resync[dir] = event
                    self._log_progress(dir, event)
                elif kind == "failed":
                    self._last_words[dir] = str(event.get("detail", ""))
                    message = f"Replication worker of {dir} failed: {event.get('detail')}"
                    self.log.write(message, level="E", initiator="rfs")
                elif kind == "ready":
                    on_ready()
                    self.log.write(f"Replicated directory {dir} mounted", initiator="rfs")
                elif kind == "resync_complete":
                    # The mark is on the secondary's disk: the whole resync, queueing and applying, took this.
                    self.events.setdefault("last_resync", {})["complete_seconds"] = event.get("seconds")
                    seconds = event.get("seconds")
                    self.log.write(f"Resync of {dir} on the secondary's disk after {seconds} s", initiator="rfs")
                elif kind == "resync_command":
                    done = f"now {event.get('state')}" if event.get("ok") else f"refused: {event.get('detail')}"
                    running = self.resync.get(dir)
                    if event.get("ok") and running and running.get("phase") in ("namespace", "content"):
                        # A paused resync reports nothing until it moves again: show the new state now.
                        self.resync[dir] = {**running, "state": event.get("state")}
                    self.log.write(f"Resync of {dir}: {event.get('cmd', 'command')} {done}", initiator="rfs")
                elif kind == "verify":
                    if event.pop("id", None) == self._verify_id:  # else the answer to a verify that timed out
                        self._verify_results[dir] = event
                        self._verify_done.set()  # the daemon logs the results it returns
                elif kind == "resync_mode":
                    # The first progress line comes a full period after the start: a short resync logs
                    # only its start and its end.
                    self._progress_logged[dir] = time.monotonic()
                    self.log.write(f"Resync of {dir}: {event.get('mode')} ({event.get('detail')})", initiator="rfs")
                elif kind == "synced":
                    self.resync[dir] = event
                    self.events["last_resync"] = event
                    self._streaming[dir] = True
                    self._on_change()
                    self.log.write(_synced_line(dir, event), initiator="rfs")
                else:
                    if kind == "lost":
                        self._streaming[dir] = False
                        self._on_change()
                    level = "E" if kind in ("lost", "auth_failed") else "I"
                    self.log.write(f"Replication of {dir}: {kind}: {event.get('detail', '')}", level=level)

    def _log_progress(self, dir: str, event: dict[str, Any]) -> None:
        """Logs the progress of `dir`'s running resync when `PROGRESS_LOG_SECONDS` passed since the last line."""
        if event.get("phase") not in ("namespace", "content"):
            return  # its end is logged by the `synced` or `lost` event
        now = time.monotonic()
        if now - self._progress_logged.setdefault(dir, now) < PROGRESS_LOG_SECONDS:
            return
        self._progress_logged[dir] = now
        self.log.write(_progress_line(dir, event), initiator="rfs")

    def _worker_error(self, dir: str) -> str:
        """What ended `dir`'s worker (its `failed` event), and where to read more."""
        path = self.paths.log_dir(self.config.name) / "worker.log"
        last = self._last_words.pop(dir, None)
        return f"{last}; see {path}" if last else f"see {path}"

    def _worker_log(self) -> int:
        log_dir = self.paths.log_dir(self.config.name)
        log_dir.mkdir(parents=True, exist_ok=True)
        return os.open(log_dir / "worker.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def _synced_line(dir: str, event: dict[str, Any]) -> str:
    mib = 1 << 20
    return (
        f"Secondary joined: {event.get('mode')} resync of {dir} done in {event.get('seconds')} s: "
        f"{event.get('files_done')} files ({event.get('bytes_done', 0) / mib:.1f} MiB) compared, "
        f"{event.get('bytes_sent', 0) / mib:.1f} MiB sent; now mirroring"
    )


def _progress_line(dir: str, event: dict[str, Any]) -> str:
    mib = 1 << 20
    eta = event.get("eta")
    return (
        f"Resync of {dir} under way: {event.get('mode')} ({event.get('phase')}, {event.get('state')}), "
        f"files {event.get('files_done', 0)}/{event.get('files_total', 0)}, "
        f"{event.get('bytes_done', 0) / mib:.1f} of {event.get('bytes_total', 0) / mib:.1f} MiB compared, "
        f"{event.get('bytes_sent', 0) / mib:.1f} MiB sent, {event.get('rate', 0) / mib:.1f} MiB/s, "
        f"ETA {'?' if eta is None else f'{eta:.0f} s'}"
    )


def _follow_primary(state_dir: Path, index: int) -> CopyRecord:
    """This node becomes secondary: the copy record its receiver announces; its primary-side record is void."""
    SyncRecord.forget(state_dir, index)
    return CopyRecord.load(state_dir, index)


def own_changes(state_dir: Path, index: int, root: Path, since: float) -> tuple[str, list[bytes]]:
    """The files this node changed that its peer may lack: (where that came from, their paths).

    The tracking map's paths when the map is trusted (it stopped cleanly: it holds every operation
    the peer had not confirmed), else every file modified (content or inode) since `since`.
    """
    try:
        dirty = _native.DirtyMap.load(tracking_file(state_dir, index))
    except (OSError, ValueError):
        dirty = None
    if dirty is not None and dirty.clean:
        return "its tracking map", list(changes_from_map(dirty).changed)
    return "modification times", list(changes_since(root, since).changed)


def _start_receiver(
    dir: str, local_addr: str, port: int, key: bytes, copy_id: int, seeds: list[bytes]
) -> _native.Receiver:
    receiver = _native.Receiver(dir, local_addr, port, key, copy_id=copy_id)
    try:
        receiver.seed_needs(seeds)
    except ValueError:
        # One path the wire refuses must not lose the others.
        for path in seeds:
            with contextlib.suppress(ValueError):
                receiver.seed_needs([path])
    return receiver


def _session_synced(receiver: _native.Receiver) -> bool:
    """The receiver's current session delivered a completion mark (the copy id is that mark's).

    Never while an operation failed to apply here (`failed`): the copy is then inconsistent until a
    later resync's mark repairs it, whatever mark came before.
    """
    stats = receiver.stats()
    mark = stats.get("mark", 0)
    healthy = not stats.get("failed", 0)
    return healthy and bool(stats.get("connected", 0)) and mark != 0 and mark == receiver.copy_id


def _session_unsynced(receiver: _native.Receiver) -> bool:
    """The receiver's session (still connected, or the last one) has not delivered its mark."""
    stats = receiver.stats()
    if stats.get("connected", 0):
        return not _session_synced(receiver)
    # Its link is gone: a session that applied something but never its mark left a half-resynced copy.
    return bool(stats.get("received_seq", 0)) and stats.get("mark", 0) != receiver.copy_id


def missing_tocheck(rfs: Rfs) -> list[str]:
    """The `<tocheck>` paths that do not exist: starting as primary on such data would replicate a hole.

    Typically the disk holding the data is not mounted; the paths are reported absolute.
    """
    missing = []
    for replicated in rfs.dirs:
        for rel in replicated.tocheck:
            path = Path(replicated.dir) / rel
            if not os.path.lexists(path):
                missing.append(str(path))
    return missing


def _read_only_overmount(dir: Path) -> None:
    """Makes `dir` read-only to applications: a read-only bind mount of itself over itself."""
    subprocess.run(["mount", "--bind", str(dir), str(dir)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(dir)], check=True, capture_output=True)


def _remove_overmount(dir: Path) -> None:
    subprocess.run(["umount", "-l", str(dir)], check=False, capture_output=True)


def _prepare_dir(dir: Path) -> None:
    """The replicated directory exists and carries no mount a crashed worker or daemon left on it.

    A daemon killed while secondary leaves its read-only overmount: a receiver opening the
    directory through it could write nothing.
    """
    dir.mkdir(parents=True, exist_ok=True)
    recover_stale_mount(dir)
    while _stale_overmount(dir):
        subprocess.run(["umount", "-l", str(dir)], check=True, capture_output=True)


def _stale_overmount(dir: Path) -> bool:
    """The top mount on `dir` is a read-only bind of `dir` itself (as `_read_only_overmount` makes)."""
    mounts = mounts_at(dir)
    if not mounts or not mounts[-1].read_only or mounts[-1].fstype.startswith("fuse"):
        return False
    top = mounts[-1]
    if len(mounts) >= 2:  # `dir` is a mount point of its own: the bind repeats the mount below it
        below = mounts[-2]
        return (below.device, below.root) == (top.device, top.root)
    # A plain directory: the bind comes from the file system that holds its parent.
    return os.stat(dir).st_dev == os.stat(dir.parent).st_dev and top.root.endswith(b"/" + os.fsencode(dir.name))
