"""The daemon's handle on replication: FUSE workers on the primary, receivers on the secondary.

`StartMirror("primary")` starts one worker process per replicated directory (pyfuse3
allows one mount per process, and a busy file system must never delay heartbeats) and
waits until each has mounted. `StartMirror("secondary")` opens one native `Receiver`
per directory on the flow LAN. `StopMirror` stops the workers (they unmount) or closes
the receivers (which first apply everything they acknowledged: a secondary that takes
over starts the application on all the data the primary was told was safe).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from mirrorcore import _native
from mirrorcore.config import ModuleConfig, Rfs
from mirrorcore.modlog import ModuleLog
from mirrorcore.paths import Paths
from mirrorcore.rfs.fullsync import FULL_SYNC_MARK
from mirrorcore.rfs.worker import recover_stale_mount, replication_port

WORKER_READY_SECONDS = 20.0
WORKER_STOP_SECONDS = 10.0


class Mirror:
    """Replication of one module's directories on this node."""

    def __init__(
        self, paths: Paths, config: ModuleConfig, key: bytes, log: ModuleLog, on_change: Callable[[], None]
    ) -> None:
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
        self._on_change = on_change
        self._streaming: dict[str, bool] = {}  # primary: directory -> the secondary has its copy and follows
        self._read_only: list[Path] = []  # secondary: directories overmounted read-only for applications
        self._epoch = 0  # bumped by every stop, so waits that began before it end

    async def start_primary(self, nursery: trio.Nursery) -> None:
        """Mounts every replicated directory; returns once all are served."""
        await self.stop()
        self.role = "primary"
        self.tracking = {}
        for index, replicated in enumerate(self.rfs.dirs):
            await trio.to_thread.run_sync(_prepare_dir, Path(replicated.dir))
            worker_log = self._worker_log()
            try:
                proc = await trio.lowlevel.open_process(
                    [
                        sys.executable,
                        "-m",
                        "mirrorcore.rfs.worker",
                        "--module",
                        self.config.name,
                        "--index",
                        str(index),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=worker_log,
                )
            finally:
                os.close(worker_log)
            self._workers.append(proc)
            ready = trio.Event()
            nursery.start_soon(self._follow_worker, proc, replicated.dir, ready.set)
            with trio.move_on_after(WORKER_READY_SECONDS):
                await ready.wait()
            if not ready.is_set():
                self.log.write(f"Replication of {replicated.dir} did not start; see worker.log", level="E")

    async def start_secondary(self) -> None:
        """Listens for the primary on the flow LAN, one receiver per replicated directory."""
        await self.stop()
        self.role = "secondary"
        self.tracking = {}
        local_addr, _ = self.config.lan_addrs(self.config.heart.flow_lan)
        for index, replicated in enumerate(self.rfs.dirs):
            await trio.to_thread.run_sync(_prepare_dir, Path(replicated.dir))
            port = replication_port(self.config.port, index)
            receiver = await trio.to_thread.run_sync(_native.Receiver, replicated.dir, local_addr, port, self.key)
            self._receivers.append(receiver)
            if replicated.read_only:
                # The receiver writes through the directory fd it opened before this overmount.
                await trio.to_thread.run_sync(_read_only_overmount, Path(replicated.dir))
                self._read_only.append(Path(replicated.dir))
            self.log.write(f"Receiving {replicated.dir} on {local_addr}:{port}", initiator="rfs")

    async def wait_synced(self) -> bool:
        """Waits until every receiver holds a complete copy (the primary's full-sync mark arrived).

        Returns:
            True once synced; False if replication stopped or restarted meanwhile (the wait is stale).
        """
        epoch = self._epoch
        while self._epoch == epoch:
            if all(r.stats().get("mark", 0) >= FULL_SYNC_MARK for r in self._receivers):
                return True
            await trio.sleep(0.1)
        return False

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
        receivers, self._receivers = self._receivers, []
        for receiver in receivers:
            await trio.to_thread.run_sync(receiver.close)
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
            out["receivers"] = [r.stats() for r in self._receivers]
        if self.tracking:
            # What the secondary lacks, per directory (kept after a stop: what the saved map holds).
            out["tracking"] = dict(self.tracking)
        return out

    async def _follow_worker(self, proc: trio.Process, dir: str, on_ready: Callable[[], None]) -> None:
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
                if kind == "tracking":
                    event.pop("dir", None)
                    self.tracking[dir] = event
                elif kind == "ready":
                    on_ready()
                    self.log.write(f"Replicated directory {dir} mounted", initiator="rfs")
                elif kind == "synced":
                    self.events["last_full_sync"] = event
                    self._streaming[dir] = True
                    self._on_change()
                    self.log.write(
                        f"Secondary joined: full copy of {dir} sent ({event.get('files')} files, "
                        f"{event.get('bytes')} bytes in {event.get('seconds')} s); now mirroring",
                        initiator="rfs",
                    )
                else:
                    if kind == "lost":
                        self._streaming[dir] = False
                        self._on_change()
                    level = "E" if kind in ("lost", "auth_failed") else "I"
                    self.log.write(f"Replication of {dir}: {kind}: {event.get('detail', '')}", level=level)

    def _worker_log(self) -> int:
        log_dir = self.paths.log_dir(self.config.name)
        log_dir.mkdir(parents=True, exist_ok=True)
        return os.open(log_dir / "worker.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


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
    """The replicated directory exists and carries no dead mount from a crashed worker."""
    dir.mkdir(parents=True, exist_ok=True)
    recover_stale_mount(dir)
