"""rfs FUSE layer: POSIX behaviour through the mount, the backing dir, forwarding order, recovery.

The passthrough tests run the worker as a separate process (`python -m mirrorcore.rfs.worker
--passthrough`) and reach the covered directory through an fd opened before mounting
(/proc/self/fd/N/... is a magic link to it). The forwarding test serves in-process with a
recording replicator and makes the client syscalls from threads.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from unittest.mock import ANY

import pytest
import trio

from mirrorcore.rfs.filters import Filter
from mirrorcore.rfs.worker import fuse_mounts, recover_stale_mount, serve

pytestmark = pytest.mark.root

NOBODY = 65534
GIB = 1 << 30
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)


def _renameat2(old: str, new: str, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old)


AT_FDCWD = -100
KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE = 0x01, 0x02, 0x10  # fallocate modes
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _need_root_and_fuse() -> None:
    # CI runs as root with /dev/fuse: a skip would hide breakage, so fail loudly instead.
    if os.geteuid() != 0:
        pytest.fail("FUSE tests need root; run them as root, or deselect -m 'not root'")
    if not Path("/dev/fuse").exists():
        pytest.fail("FUSE tests need /dev/fuse (modprobe fuse, or pass --device /dev/fuse to the container)")


@dataclass
class Mount:
    dir: Path
    backing_fd: int  # the covered directory, opened before mounting
    proc: subprocess.Popen[bytes]

    def p(self, rel: str) -> str:
        """A path through the mount."""
        return str(self.dir / rel)

    def b(self, rel: str) -> str:
        """The same path in the covered (backing) directory."""
        return f"/proc/self/fd/{self.backing_fd}/{rel}"


def _wait_mounted(dir: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while not fuse_mounts(dir):
        if proc.poll() is not None:
            pytest.fail(
                f"the worker exited with {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{dir} was not mounted within 15 s")
        time.sleep(0.02)


def _unmount(dir: Path, proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if fuse_mounts(dir):  # the worker died without unmounting: never leave a mount behind
        subprocess.run(["umount", "-l", str(dir)], check=False)


@pytest.fixture
def mount() -> Iterator[Mount]:
    _need_root_and_fuse()
    # Not under pytest's tmp_path: that is 0700, and some tests act as an unprivileged user.
    base = Path(tempfile.mkdtemp(prefix="mct-fuse-"))
    base.chmod(0o755)
    dir = base / "data"
    dir.mkdir()
    (dir / "tmp").mkdir()  # notreplicated
    (dir / "old.txt").write_bytes(b"before mount")
    fd = os.open(dir, os.O_RDONLY | os.O_DIRECTORY)
    cmd = [sys.executable, "-m", "mirrorcore.rfs.worker", "--dir", str(dir), "--passthrough", "--notreplicated", "tmp"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    try:
        _wait_mounted(dir, proc)
        yield Mount(dir, fd, proc)
    finally:
        _unmount(dir, proc)
        os.close(fd)
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(base, ignore_errors=True)


def _as_nobody(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", "-ec", script], user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, text=True
    )


def _errno(fn: object, *args: object) -> int:
    assert callable(fn)
    try:
        fn(*args)
    except OSError as e:
        return e.errno or 0
    pytest.fail(f"{fn} did not fail")


def test_existing_content_is_served_and_new_content_lands_in_the_backing_dir(mount: Mount) -> None:
    assert Path(mount.p("old.txt")).read_bytes() == b"before mount"
    Path(mount.p("new.txt")).write_bytes(b"written through the mount")
    os.mkdir(mount.p("sub"))
    Path(mount.p("sub/deep")).write_bytes(b"deep")
    assert Path(mount.b("new.txt")).read_bytes() == b"written through the mount"
    assert Path(mount.b("sub/deep")).read_bytes() == b"deep"
    assert sorted(os.listdir(mount.p(""))) == sorted(os.listdir(mount.b(""))) == ["new.txt", "old.txt", "sub", "tmp"]


def test_errors_reach_the_application(mount: Mount) -> None:
    assert _errno(open, mount.p("missing")) == errno.ENOENT
    assert _errno(os.mkdir, mount.p("tmp")) == errno.EEXIST
    Path(mount.p("tmp/x")).write_bytes(b"")
    assert _errno(os.rmdir, mount.p("tmp")) == errno.ENOTEMPTY
    assert _errno(os.open, mount.p("old.txt"), os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert _errno(os.unlink, mount.p("tmp")) == errno.EISDIR
    assert _errno(os.rename, mount.p("old.txt"), mount.p("tmp/old.txt")) == errno.EXDEV  # notreplicated boundary
    assert _errno(os.link, mount.p("old.txt"), mount.p("tmp/old.txt")) == errno.EXDEV
    assert _errno(os.rename, mount.p("tmp/x"), mount.p("x")) == errno.EXDEV
    os.rename(mount.p("tmp/x"), mount.p("tmp/y"))  # inside the notreplicated part: fine
    assert os.path.exists(mount.b("tmp/y"))
    assert _errno(os.getxattr, mount.p("old.txt"), "user.none") == errno.ENODATA


def test_a_full_disk_reaches_the_application_as_on_the_disk(tmp_path: Path) -> None:
    _need_root_and_fuse()
    dir = tmp_path / "tiny"
    dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(dir)], check=True)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mirrorcore.rfs.worker", "--dir", str(dir), "--passthrough"])
        try:
            _wait_mounted(dir, proc)
            assert _errno((dir / "f").write_bytes, os.urandom(2 << 20)) == errno.ENOSPC  # a short write, then ENOSPC
            assert os.stat(dir / "f").st_size == len((dir / "f").read_bytes()) > 0  # what fitted is there
        finally:
            _unmount(dir, proc)
    finally:
        subprocess.run(["umount", "-l", str(dir)], check=False)


def test_permissions_are_checked_for_an_unprivileged_user(mount: Mount) -> None:
    Path(mount.p("secret")).write_bytes(b"s")
    os.chmod(mount.p("secret"), 0o600)
    os.mkdir(mount.p("home"))
    os.chown(mount.p("home"), NOBODY, NOBODY)
    # /bin/sh, not this venv's python: nobody may not be able to reach it.
    script = f"""
cat {mount.p("secret")} 2>/dev/null || echo EACCES
mkdir {mount.p("nope")} 2>/dev/null || echo EACCES
umask 027
echo mine > {mount.p("home/mine")}
mkdir {mount.p("home/d")}
umask 022
mkdir {mount.p("home/d2")}
"""
    done = _as_nobody(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["EACCES", "EACCES"]
    assert not os.path.exists(mount.b("nope"))
    st = os.lstat(mount.b("home/mine"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o640)
    st = os.lstat(mount.b("home/d"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o750)
    assert stat.S_IMODE(os.lstat(mount.b("home/d2")).st_mode) == 0o755


def test_modes_owners_times_xattrs_symlinks_and_hard_links(mount: Mount) -> None:
    f = mount.p("f")
    Path(f).write_bytes(b"data")
    os.chmod(f, 0o4750)
    os.chown(f, 1234, 5678)
    assert (os.lstat(mount.b("f")).st_uid, os.lstat(mount.b("f")).st_gid) == (1234, 5678)
    os.chmod(f, 0o4750)
    assert stat.S_IMODE(os.lstat(mount.b("f")).st_mode) == 0o4750
    os.utime(f, ns=(1_000_000_005, 2_000_000_007))
    st = os.lstat(mount.b("f"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_005, 2_000_000_007)
    before = time.time_ns()
    os.utime(f)  # UTIME_NOW
    assert os.lstat(mount.b("f")).st_mtime_ns >= before - 10_000_000

    os.setxattr(f, "user.k", b"v1")
    with pytest.raises(FileExistsError):
        os.setxattr(f, "user.k", b"v2", os.XATTR_CREATE)
    assert os.getxattr(mount.b("f"), "user.k") == b"v1"
    assert "user.k" in os.listxattr(f)
    os.removexattr(f, "user.k")
    assert "user.k" not in os.listxattr(mount.b("f"))

    os.symlink("f", mount.p("link"))
    os.chown(mount.p("link"), 42, 43, follow_symlinks=False)
    assert os.readlink(mount.p("link")) == os.readlink(mount.b("link")) == "f"
    assert os.lstat(mount.b("link")).st_uid == 42
    assert os.lstat(mount.b("f")).st_uid == 1234  # the target was not touched
    assert Path(mount.p("link")).read_bytes() == b"data"

    os.link(f, mount.p("hard"))
    a, b = os.lstat(f), os.lstat(mount.p("hard"))
    assert a.st_ino == b.st_ino
    assert b.st_nlink == 2
    assert os.lstat(mount.b("hard")).st_ino == os.lstat(mount.b("f")).st_ino
    os.unlink(f)
    assert os.lstat(mount.p("hard")).st_nlink == 1
    assert Path(mount.b("hard")).read_bytes() == b"data"


def test_sparse_files_append_truncate_and_large_offsets(mount: Mount) -> None:
    with open(mount.p("sparse"), "wb") as f:
        f.seek(GIB)
        f.write(b"x")
    st = os.lstat(mount.b("sparse"))
    assert st.st_size == GIB + 1
    assert st.st_blocks * 512 < 1 << 20
    assert os.lstat(mount.p("sparse")).st_blocks == st.st_blocks
    fd = os.open(mount.b("sparse"), os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 0
    finally:
        os.close(fd)

    fd = os.open(mount.p("big"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        assert os.pwrite(fd, b"end", 5 * GIB) == 3
        assert os.pread(fd, 3, 5 * GIB) == b"end"
    finally:
        os.close(fd)
    assert os.lstat(mount.b("big")).st_size == 5 * GIB + 3
    with open(mount.b("big"), "rb") as f:
        f.seek(5 * GIB)
        assert f.read() == b"end"

    Path(mount.p("app")).write_bytes(b"a")
    fd = os.open(mount.p("app"), os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"b")
        os.write(fd, b"c")
    finally:
        os.close(fd)
    assert Path(mount.b("app")).read_bytes() == b"abc"

    fd = os.open(mount.p("app"), os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert Path(mount.b("app")).read_bytes() == b""
    os.truncate(mount.p("app"), 10)
    assert Path(mount.b("app")).read_bytes() == b"\0" * 10

    fd = os.open(mount.p("sync"), os.O_CREAT | os.O_WRONLY | os.O_SYNC, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(mount.p(""), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert Path(mount.b("sync")).read_bytes() == b"durable"
    assert os.statvfs(mount.p("")).f_blocks == os.statvfs(mount.b("")).f_blocks


def test_fallocate_allocates_punches_and_zeroes_as_on_the_backing_file_system(mount: Mount) -> None:
    fd = os.open(mount.p("fa"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"x" * 65536, 0)
        _fallocate(fd, 0, 0, 1 << 20)  # extends the file
        assert os.fstat(fd).st_size == 1 << 20  # the kernel's cached size follows
        _fallocate(fd, KEEP_SIZE, 0, 4 << 20)  # allocates past the end, size kept
        _fallocate(fd, PUNCH_HOLE | KEEP_SIZE, 4096, 8192)
        _fallocate(fd, ZERO_RANGE, 32768, 4096)
        assert os.fstat(fd).st_size == 1 << 20
        # The backing file system's own error comes back (16 EiB is past ext4's largest file).
        backing = os.open(mount.b("fa"), os.O_RDWR)
        try:
            assert _errno(_fallocate, fd, KEEP_SIZE, 0, 1 << 60) == _errno(_fallocate, backing, KEEP_SIZE, 0, 1 << 60)
            assert os.lseek(backing, 0, os.SEEK_HOLE) == 4096  # punched: a hole, not written zeros
        finally:
            os.close(backing)
    finally:
        os.close(fd)
    data = Path(mount.b("fa")).read_bytes()
    x, z = b"x", b"\0"
    assert data == x * 4096 + z * 8192 + x * 20480 + z * 4096 + x * 28672 + z * ((1 << 20) - 65536)
    assert os.lstat(mount.b("fa")).st_blocks * 512 >= (4 << 20) - 8192  # KEEP_SIZE allocated past the end


def test_mmap_writes_reach_the_backing_file(mount: Mount) -> None:
    Path(mount.p("m")).write_bytes(b"\0" * 8192)
    fd = os.open(mount.p("m"), os.O_RDWR)
    try:
        with mmap.mmap(fd, 8192) as m:
            m[0:5] = b"hello"
            m[4096:4101] = b"world"
            m.flush()
            assert os.pread(os.open(mount.b("m"), os.O_RDONLY), 5, 4096) == b"world"
    finally:
        os.close(fd)
    data = Path(mount.b("m")).read_bytes()
    assert (data[:5], data[4096:4101], len(data)) == (b"hello", b"world", 8192)


def test_open_then_unlinked_and_renamed_over_files_keep_working(mount: Mount) -> None:
    fd = os.open(mount.p("gone"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"one")
        os.unlink(mount.p("gone"))
        os.write(fd, b"two")
        os.fchmod(fd, 0o600)
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 6, 0) == b"onetwo"
        assert not os.path.exists(mount.b("gone"))
    finally:
        os.close(fd)

    Path(mount.p("target")).write_bytes(b"old")
    Path(mount.p("new")).write_bytes(b"new")
    fd = os.open(mount.p("target"), os.O_RDWR)
    try:
        os.rename(mount.p("new"), mount.p("target"))
        os.pwrite(fd, b"OLD", 0)  # goes to the replaced, now nameless file
        assert os.pread(fd, 3, 0) == b"OLD"
    finally:
        os.close(fd)
    assert Path(mount.p("target")).read_bytes() == Path(mount.b("target")).read_bytes() == b"new"
    assert not os.path.exists(mount.b("new"))

    Path(mount.p("x")).write_bytes(b"x")
    os.mkdir(mount.p("d"))
    _renameat2(mount.p("x"), mount.p("d"), RENAME_EXCHANGE)
    for side in (mount.b, mount.p):
        assert os.path.isdir(side("x"))
        assert Path(side("d")).read_bytes() == b"x"
    with pytest.raises(FileExistsError):
        _renameat2(mount.p("old.txt"), mount.p("target"), RENAME_NOREPLACE)
    assert Path(mount.b("target")).read_bytes() == b"new"
    _renameat2(mount.p("old.txt"), mount.p("fresh"), RENAME_NOREPLACE)
    assert Path(mount.b("fresh")).read_bytes() == b"before mount"
    assert _errno(_renameat2, mount.p("fresh"), mount.p("tmp"), RENAME_EXCHANGE) == errno.EXDEV  # across the boundary


def test_directory_listing_is_complete_and_stable(mount: Mount) -> None:
    os.mkdir(mount.p("many"))
    names = {f"f{i:04d}" for i in range(700)}
    for n in names:
        Path(mount.p(f"many/{n}")).write_bytes(b"")
    assert sorted(os.listdir(mount.p("many"))) == sorted(names)
    # Removing entries while listing must neither repeat nor skip the ones that stay.
    seen = []
    with os.scandir(mount.p("many")) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i == 10:
                for n in sorted(names)[:100]:
                    os.unlink(mount.p(f"many/{n}"))
    assert len(seen) == len(set(seen))
    assert set(sorted(names)[100:]) <= set(seen)
    os.rename(mount.p("many"), mount.p("renamed"))
    assert len(os.listdir(mount.b("renamed"))) == 600
    shutil.rmtree(mount.p("renamed"))
    assert not os.path.exists(mount.b("renamed"))


def test_a_killed_worker_leaves_a_dead_mount_that_recover_removes(mount: Mount) -> None:
    Path(mount.p("kept")).write_bytes(b"kept")
    os.stat(mount.dir)  # the kernel caches the root's attributes: a stat alone cannot tell the mount is dead
    mount.proc.send_signal(signal.SIGKILL)
    mount.proc.wait(10)
    assert _errno(os.listdir, mount.dir) == errno.ENOTCONN
    assert recover_stale_mount(mount.dir)
    assert not fuse_mounts(mount.dir)
    assert Path(mount.p("kept")).read_bytes() == b"kept"
    assert not recover_stale_mount(mount.dir)


# ----- forwarding, in-process ----------------------------------------------------------------


class Recorder:
    """A Replicator that records what it is asked to forward (and does the pwrite of `write`)."""

    def __init__(self) -> None:
        self.ops: list[tuple[object, ...]] = []
        self.last_seq = 0

    def write(self, fd: int, path: bytes | None, offset: int, data: bytes, *, post: bool = False) -> int:
        n = os.pwrite(fd, data, offset)
        if path is not None:
            self._rec("write", path, offset, data)
            if post:
                self.post_barrier()
        return n

    def post_barrier(self) -> int:
        return self._rec("barrier")

    def is_covered(self, seq: int, wait: float = 0.0) -> bool:
        return True

    def wait_barrier(self, seq: int, timeout: float | None = None) -> None:
        raise AssertionError("is_covered said it was covered")

    def _rec(self, *op: object) -> int:
        self.ops.append(op)
        self.last_seq += 1
        return self.last_seq

    def __getattr__(self, name: str) -> object:
        return lambda *args: self._rec(name, *args)


def _script(dir: Path) -> None:
    fd = os.open(dir / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"hello")
    os.rename(dir / "f", dir / "g")
    os.fsync(fd)
    os.close(fd)
    os.chmod(dir / "g", 0o600)
    os.mkdir(dir / "d", 0o755)
    os.symlink("g", dir / "d/s")
    os.truncate(dir / "g", 2)
    fd = os.open(dir / "g", os.O_WRONLY | os.O_DSYNC)
    os.pwrite(fd, b"s", 1)  # a durability point by itself
    _fallocate(fd, 0, 0, 8192)  # on this handle, one too
    os.close(fd)
    os.unlink(dir / "g")
    # Nothing of this is forwarded: tmp is notreplicated.
    Path(dir / "tmp/x").write_bytes(b"local only")
    os.rename(dir / "tmp/x", dir / "tmp/y")
    os.chmod(dir / "tmp/y", 0o600)
    os.unlink(dir / "tmp/y")


async def test_forwarded_operations_follow_the_local_order(tmp_path: Path) -> None:
    _need_root_and_fuse()
    dir = tmp_path / "data"
    (dir / "tmp").mkdir(parents=True)
    rec = Recorder()
    old_umask = os.umask(0o022)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, dir, rec, Filter([b"tmp"])))
            try:
                await trio.to_thread.run_sync(_script, dir)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        os.umask(old_umask)
    assert not fuse_mounts(dir)
    # The kernel itself also sends an fsync after an O_SYNC/O_DSYNC write: a barrier may repeat.
    ops = [op for i, op in enumerate(rec.ops) if not (op == ("barrier",) and rec.ops[i - 1] == op)]
    # After each operation that changes mtimes (writes carry theirs natively), the primary's resulting mtimes
    # follow as utimens leaving the atime alone: of the entry, and of its parent unless that is the root.
    assert ops == [
        ("create", b"f", 0o644, 0, 0),
        ("utimens", b"f", None, ANY),
        ("write", b"f", 0, b"hello"),
        ("rename", b"f", b"g", 0),
        ("barrier",),
        ("chmod", b"g", 0o600),
        ("mkdir", b"d", 0o755, 0, 0),
        ("utimens", b"d", None, ANY),
        ("symlink", b"g", b"d/s", 0, 0),
        ("utimens", b"d/s", None, ANY),
        ("utimens", b"d", None, ANY),
        ("truncate", b"g", 2),
        ("utimens", b"g", None, ANY),
        ("write", b"g", 1, b"s"),
        ("barrier",),
        ("fallocate", b"g", 0, 0, 8192),
        ("utimens", b"g", None, ANY),
        ("barrier",),
        ("unlink", b"g"),
    ]
    # The last time sent for what still exists is the one it has.
    stamps = {op[1]: op[3] for op in ops if op[0] == "utimens"}
    assert stamps[b"d"] == os.lstat(dir / "d").st_mtime_ns
    assert stamps[b"d/s"] == os.lstat(dir / "d/s").st_mtime_ns


class Unreachable(Recorder):
    """A replicator whose peer is gone: everything but the local pwrite fails."""

    def write(self, fd: int, path: bytes | None, offset: int, data: bytes, *, post: bool = False) -> int:
        raise ConnectionError("peer gone")

    def post_barrier(self) -> int:
        raise TimeoutError("no ack")

    def __getattr__(self, name: str) -> object:
        def fail(*args: object) -> int:
            raise ConnectionResetError("peer gone")

        return fail


def _app(dir: Path) -> bytes:
    fd = os.open(dir / "f", os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, b"still works")
    os.fsync(fd)
    os.close(fd)
    os.chmod(dir / "f", 0o600)
    os.rename(dir / "f", dir / "g")
    return (dir / "g").read_bytes()


async def test_losing_the_secondary_never_fails_the_application(tmp_path: Path) -> None:
    _need_root_and_fuse()
    dir = tmp_path / "data"
    dir.mkdir()
    async with trio.open_nursery() as nursery:
        ops = await nursery.start(partial(serve, dir, Unreachable(), Filter()))
        try:
            assert await trio.to_thread.run_sync(_app, dir) == b"still works"
        finally:
            nursery.cancel_scope.cancel()
    assert (dir / "g").read_bytes() == b"still works"
    assert ops.guard.failures >= 5
