"""One replicated directory's FUSE worker: mount `MirrorFS` over the directory itself.

`serve` opens the directory BEFORE mounting (that fd keeps reaching the real files once the
mount covers the path), mounts over the same path and serves until cancelled, then unmounts
(lazily: applications may still hold files open). `recover_stale_mount` removes the dead mount a
crashed worker left behind ("Transport endpoint is not connected").

Run alone as `python -m mirrorcore.rfs.worker --dir DIR --passthrough` (no replication).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import functools
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from mirrorcore import _native
from mirrorcore.rfs.filters import Filter
from mirrorcore.rfs.fuse import MOUNT_OPTIONS, MirrorFS
from mirrorcore.rfs.replicator import Replicator

__all__ = ["Mount", "fuse_mounts", "last_words", "main", "mounts_at", "recover_stale_mount", "serve"]

log = logging.getLogger(__name__)

_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _mount_options(fd: int) -> set[str]:
    """Our fixed options plus the covered file system's suid/dev/exec/ro flags, so that
    applications see no difference (libfuse would otherwise add nosuid,nodev)."""
    flags = os.fstatvfs(fd).f_flag
    opts = set(MOUNT_OPTIONS)
    opts.add("nosuid" if flags & os.ST_NOSUID else "suid")
    opts.add("nodev" if flags & os.ST_NODEV else "dev")
    opts.add("noexec" if flags & os.ST_NOEXEC else "exec")
    if flags & os.ST_RDONLY:
        opts.add("ro")
    return opts


async def serve(
    dir: Path,
    replicator: Replicator | None,
    filter: Filter,
    *,
    ackeach: bool = False,
    task_status: trio.TaskStatus[MirrorFS] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mounts the replicated directory over itself and serves it until cancelled.

    Sets the process umask to 0 while serving: MirrorFS applies each caller's own umask.
    Only one mount per process (a pyfuse3 limit).

    Args:
        dir: the replicated directory, absolute (it is the mount point).
        replicator: the forwarder, or None for a plain passthrough.
        filter: what is replicated.
        ackeach: every mutation is a durability point.
        task_status: `started(ops)` once mounted and serving.

    Raises:
        OSError: the directory cannot be opened or mounted over.
    """
    if not dir.is_absolute():
        raise ValueError(f"the replicated directory must be an absolute path, not {dir}")
    recover_stale_mount(dir)
    fd = os.open(dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    old_umask = os.umask(0)
    try:
        ops = MirrorFS(fd, replicator, filter, ackeach=ackeach)
        _native.set_fallocate_handler(ops.fallocate)
        pyfuse3.init(ops, str(dir), _mount_options(fd))
        if not _native.fuse_shim_installed():
            # pyfuse3 was loaded before mirrorcore.rfs, or its libfuse does not call fuse_session_new.
            log.warning("fallocate(2) is not supported on %s: the native shim could not add its handler", dir)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pyfuse3.main)
                log.info("serving %s", dir)
                task_status.started(ops)
        finally:
            # libfuse unmounts lazily (MNT_DETACH) when root: open files do not keep us from stopping.
            pyfuse3.close(unmount=True)
            _native.set_fallocate_handler(None)
            log.info("unmounted %s", dir)
    finally:
        os.umask(old_umask)
        os.close(fd)


def fuse_mounts(dir: Path) -> list[str]:
    """The file system types of the FUSE mounts at `dir`, per /proc/self/mountinfo (bottom first)."""
    return [m.fstype for m in mounts_at(dir) if m.fstype.startswith("fuse")]


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    device: str  # major:minor
    root: bytes  # the path of the file system mounted here (a bind mount's source)
    options: str
    fstype: str

    @property
    def read_only(self) -> bool:
        return self.options.split(",")[0] == "ro"


def mounts_at(dir: Path) -> list[Mount]:
    """Every mount at `dir`, per /proc/self/mountinfo (bottom first)."""
    want = os.fsencode(dir.absolute())
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            sep = fields.index(b"-")
            if _unescape(fields[4]) == want:
                device, root, options = fields[2].decode(), _unescape(fields[3]), fields[5].decode()
                out.append(Mount(device, root, options, fields[sep + 1].decode()))
    return out


def _unescape(field: bytes) -> bytes:
    # mountinfo escapes space, tab, newline and backslash as \\ooo
    return field.replace(b"\\040", b" ").replace(b"\\011", b"\t").replace(b"\\012", b"\n").replace(b"\\134", b"\\")


def recover_stale_mount(dir: Path) -> bool:
    """Lazily unmounts the dead FUSE mount a crashed worker left on `dir`.

    A live mount (a worker still answers) is left alone. Safe to call before every mount.

    Returns:
        True if a dead mount was removed.

    Raises:
        OSError: the dead mount could not be removed.
    """
    removed = False
    while fuse_mounts(dir):
        try:
            os.statvfs(dir)  # not stat: the kernel may answer that from its attribute cache
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                raise
        else:
            break  # alive (or the dead one is gone and a live one is below)
        log.warning("removing the dead FUSE mount on %s left by a crashed worker", dir)
        if _libc.umount2(os.fsencode(dir), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            done = subprocess.run(["fusermount3", "-uz", str(dir)], capture_output=True, check=False)
            if done.returncode != 0:
                raise OSError(err, f"cannot unmount the dead FUSE mount on {dir}: {os.strerror(err)}")
        removed = True
    return removed


async def _run(dir: Path, replicator: Replicator | None, filter: Filter, ackeach: bool) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve, dir, replicator, filter, ackeach=ackeach))
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal %d: unmounting", signum)
                nursery.cancel_scope.cancel()
                break


async def _run_module(module: str, index: int) -> None:
    """Serves replicated directory `index` of `module` as its primary, replicating to the peer.

    Tracks what the secondary lacks in `<lib>/<module>/dirty-<index>.bin` (see rfs/primary.py):
    loaded at start if present, saved with the clean flag after a clean stop (SIGTERM/SIGINT).
    Marks this node diverged before mounting, and clears it at a clean stop that left the
    secondary with everything (rfs/linkstate.py). Resync and verify commands from the daemon
    arrive on stdin (see primary.read_commands).
    """
    from mirrorcore.config import load_module
    from mirrorcore.keys import load_key
    from mirrorcore.paths import Paths
    from mirrorcore.rfs.blocks import CHUNK
    from mirrorcore.rfs.linkstate import LinkState, mark_diverged, stop_cleanly
    from mirrorcore.rfs.primary import (
        LinkSettings,
        ResyncSettings,
        Tracking,
        keep_linked,
        read_commands,
        report,
        report_tracking,
    )
    from mirrorcore.rfs.throttle import Throttle
    from mirrorcore.rfs.verify import verify_command

    paths = Paths.from_env()
    config = load_module(paths, module)
    assert config.rfs is not None, "the daemon starts workers only for modules with <rfs>"
    replicated = config.rfs.dirs[index]
    local_addr, peer_addr = config.lan_addrs(config.heart.flow_lan)
    settings = LinkSettings(
        peer_addr=peer_addr,
        port=replication_port(config.port, index),
        key=load_key(paths.cluster_key),
        mode=config.rfs.async_mode,
        send_timeout=config.rfs.sendtimeout,
        bind_addr=local_addr,
    )
    filter = Filter.from_config(replicated)
    state_dir = paths.state_dir(module)
    tracking = Tracking(tracking_file(state_dir, index), config.rfs.ruzone_blocksize)
    resync = ResyncSettings(replicated.dir, state_dir, index, config.rfs.nbrei, config.rfs.syncdelta)
    if _promoted_from_secondary(state_dir, index, tracking.loaded):
        # Before the first application write: everything from here on is recorded.
        tracking.start_fresh()
        report("tracking_loaded", dir=replicated.dir, trusted=True, detail="tracking from the start (was secondary)")
    # Durably, before the first application write: a crash from here on leaves this node diverged.
    mark_diverged(state_dir, index)
    link = LinkState()
    if tracking.loaded:
        trust = "trusted (clean stop)" if tracking.dirty.clean else "distrusted (the previous run did not stop cleanly)"
        report("tracking_loaded", dir=replicated.dir, trusted=tracking.dirty.clean, detail=f"map {trust}")
    async with trio.open_nursery() as nursery:
        ops = await nursery.start(
            functools.partial(serve, Path(replicated.dir), tracking.tracker(), filter, ackeach=config.rfs.ackeach)
        )
        report("ready", dir=replicated.dir)
        throttle = Throttle(config.rfs.reiallowedbw, burst=CHUNK)
        nursery.start_soon(keep_linked, ops, filter, settings, tracking, resync, throttle, link)
        nursery.start_soon(report_tracking, tracking, replicated.dir)

        def verify(repair: bool, request: int) -> None:
            # The request's id comes back with the answer: a late answer is never taken for the next one's.
            emit = functools.partial(report, "verify", dir=replicated.dir, id=request)
            nursery.start_soon(verify_command, ops.root_fd, filter, link, throttle, repair, emit)

        async def follow_daemon() -> None:
            # The daemon's commands (pause, resume, boost; verify) come on stdin, one JSON line each.
            # The pipe closes only when the daemon dies: then stop cleanly (unmount, map saved) rather
            # than keep the application writing through a mount nobody watches, under which a
            # restarted daemon would mount a second worker.
            await read_commands(throttle, trio.lowlevel.FdStream(os.dup(0)), verify)
            log.warning("the daemon is gone (its pipe closed): unmounting")
            nursery.cancel_scope.cancel()

        if not os.isatty(0):
            nursery.start_soon(follow_daemon)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal %d: unmounting", signum)
                nursery.cancel_scope.cancel()
                break
    # Unmounted: no operation can come any more.
    tracking.save_clean()
    if stop_cleanly(link, state_dir, index):
        log.info("the secondary has every operation of %s: this node no longer diverges", replicated.dir)


def _promoted_from_secondary(state_dir: Path, index: int, map_loaded: bool) -> bool:
    """This node was the secondary, holds a complete copy, and now starts as primary: track from the start.

    Saves the primary-side record of that copy as complete (the map, started empty now, covers every
    later operation), so a peer that returns with the same copy is resynced by zones.
    """
    from mirrorcore.rfs.copyids import CopyRecord, SyncRecord

    if map_loaded or SyncRecord.file(state_dir, index).exists():
        return False  # an earlier run as primary: its records and map say what holds
    copy = CopyRecord.load(state_dir, index)
    if copy.copy_id == 0 or copy.diverged:
        return False
    SyncRecord(copy.copy_id, copy.in_sync_at, complete=True).save(state_dir, index)
    return True


def tracking_file(state_dir: Path, index: int) -> Path:
    """Where replicated directory `index` keeps its tracking map."""
    return state_dir / f"dirty-{index}.bin"


def replication_port(base_port: int, index: int) -> int:
    """The TCP port of replicated directory `index`: the module's port + 1 + index."""
    return base_port + 1 + index


def last_words(e: BaseException) -> str:
    """`Type: message` of what ended a worker (the first leaf of an exception group)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}"


def main(argv: list[str] | None = None) -> int:
    """`python -m mirrorcore.rfs.worker --dir DIR --passthrough`: serve one directory until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m mirrorcore.rfs.worker", description=__doc__)
    parser.add_argument("--dir", type=Path, help="the replicated directory (mounted over itself)")
    parser.add_argument("--module", help="serve a module's replicated directory as its primary (with --index)")
    parser.add_argument("--index", type=int, default=0, help="which <replicated> of the module (from 0)")
    parser.add_argument("--passthrough", action="store_true", help="replicate nothing (no forwarder)")
    parser.add_argument("--ackeach", action="store_true", help="every operation is a durability point")
    parser.add_argument("--notreplicated", action="append", default=[], help="relative path not replicated")
    parser.add_argument("--notreplicated-regex", action="append", default=[], help="regex of paths not replicated")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.module:
        try:
            trio.run(_run_module, args.module, args.index)
        except Exception as e:
            from mirrorcore.rfs.primary import report

            report("failed", detail=last_words(e))  # the daemon's reason for not starting names it
            raise
        return 0
    if args.dir is None or not args.passthrough:
        parser.error("pass --module NAME [--index I] to replicate, or --dir DIR --passthrough")
    only = [r[1:] for r in args.notreplicated_regex if r.startswith("!")]
    excludes = [r for r in args.notreplicated_regex if not r.startswith("!")]
    filter = Filter([os.fsencode(p) for p in args.notreplicated], excludes, only)
    trio.run(_run, args.dir.absolute(), None, filter, args.ackeach)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
