"""The native replication link end to end on loopback: a Forwarder writes a tree, a Receiver rebuilds it.

The tests play the FUSE layer's part: perform each operation locally under the primary's root, then forward it
(except writes, which the Forwarder performs itself) followed, as rfs/fuse.py does, by the primary's resulting
mtimes of what it changed (`utimens(path, None, mtime_ns)`), and finally compare both trees byte for byte and
modification time for modification time.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from linkkit import KEY, Valve

from mirrorcore._native import Forwarder, Receiver

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2


class Primary:
    """Performs operations locally under `root` and forwards them, as rfs/fuse.py does.

    Each method returns the sequence number of the operation itself, not of the mtimes sent after it.
    """

    def __init__(self, root: Path, fwd: Forwarder):
        self.root = root
        self.fwd = fwd

    def p(self, rel: bytes) -> bytes:
        return os.fsencode(self.root) + b"/" + rel

    def stamped(self, seq: int, *rels: bytes, parents: tuple[bytes, ...] = ()) -> int:
        """Sends the primary's mtimes of `rels` and of the directories holding `parents` (not the root)."""
        for rel in dict.fromkeys([*rels, *(p.rpartition(b"/")[0] for p in parents)]):
            if rel:
                self.fwd.utimens(rel, None, os.lstat(self.p(rel)).st_mtime_ns)
        return seq

    def write(self, rel: bytes, offset: int, data: bytes) -> int:
        fd = os.open(self.p(rel), os.O_WRONLY)
        try:
            return self.fwd.write(fd, rel, offset, data)
        finally:
            os.close(fd)

    def create(self, rel: bytes, mode: int = 0o644) -> int:
        os.close(os.open(self.p(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
        os.chmod(self.p(rel), mode)
        return self.stamped(self.fwd.create(rel, stat.S_IFREG | mode, os.getuid(), os.getgid()), rel, parents=(rel,))

    def mkdir(self, rel: bytes, mode: int = 0o755) -> int:
        os.mkdir(self.p(rel))
        os.chmod(self.p(rel), mode)
        return self.stamped(self.fwd.mkdir(rel, stat.S_IFDIR | mode, os.getuid(), os.getgid()), rel, parents=(rel,))

    def mkfifo(self, rel: bytes, mode: int = 0o600) -> int:
        os.mkfifo(self.p(rel), mode)
        os.chmod(self.p(rel), mode)
        seq = self.fwd.mknod(rel, stat.S_IFIFO | mode, 0, os.getuid(), os.getgid())
        return self.stamped(seq, rel, parents=(rel,))

    def symlink(self, target: bytes, rel: bytes) -> int:
        os.symlink(target, self.p(rel))
        return self.stamped(self.fwd.symlink(target, rel, os.getuid(), os.getgid()), rel, parents=(rel,))

    def link(self, existing: bytes, new: bytes) -> int:
        os.link(self.p(existing), self.p(new), follow_symlinks=False)
        return self.stamped(self.fwd.link(existing, new), parents=(new,))

    def unlink(self, rel: bytes) -> int:
        os.unlink(self.p(rel))
        return self.stamped(self.fwd.unlink(rel), parents=(rel,))

    def rmdir(self, rel: bytes) -> int:
        os.rmdir(self.p(rel))
        return self.stamped(self.fwd.rmdir(rel), parents=(rel,))

    def rename(self, old: bytes, new: bytes, flags: int = 0) -> int:
        if flags == RENAME_EXCHANGE:
            tmp = self.p(b".exchange")
            os.rename(self.p(old), tmp)
            os.rename(self.p(new), self.p(old))
            os.rename(tmp, self.p(new))
        else:
            os.rename(self.p(old), self.p(new))
        return self.stamped(self.fwd.rename(old, new, flags), parents=(old, new))

    def truncate(self, rel: bytes, size: int) -> int:
        os.truncate(self.p(rel), size)
        return self.stamped(self.fwd.truncate(rel, size), rel)

    def chmod(self, rel: bytes, mode: int) -> int:
        os.chmod(self.p(rel), mode)
        return self.fwd.chmod(rel, mode)

    def chown(self, rel: bytes, uid: int, gid: int) -> int:
        os.chown(self.p(rel), uid, gid, follow_symlinks=False)
        return self.fwd.chown(rel, uid, gid)

    def utimens(self, rel: bytes, atime_ns: int, mtime_ns: int) -> int:
        os.utime(self.p(rel), ns=(atime_ns, mtime_ns), follow_symlinks=False)
        return self.fwd.utimens(rel, atime_ns, mtime_ns)

    def setxattr(self, rel: bytes, name: bytes, value: bytes) -> int:
        os.setxattr(self.p(rel), name, value)
        return self.fwd.setxattr(rel, name, value, 0)

    def removexattr(self, rel: bytes, name: bytes) -> int:
        os.removexattr(self.p(rel), name)
        return self.fwd.removexattr(rel, name)

    def punch_hole(self, rel: bytes, offset: int, length: int) -> int:
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        fd = os.open(self.p(rel), os.O_WRONLY)
        try:
            _fallocate(fd, mode, offset, length)
        finally:
            os.close(fd)
        return self.stamped(self.fwd.fallocate(rel, mode, offset, length), rel)


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything replication must carry, per path: type, mode, owner, size, content or target, xattrs, links."""
    tree: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {n: os.getxattr(full, n) for n in sorted(os.listxattr(full))}
            if stat.S_ISREG(st.st_mode):
                body: object = Path(full).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(full)
            else:
                body = None
            tree[os.path.relpath(full, root)] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_size if not stat.S_ISDIR(st.st_mode) else None,
                st.st_nlink if not stat.S_ISDIR(st.st_mode) else None,
                st.st_mtime_ns,
                body,
                xattrs,
            )
    return tree


def connect(rx: Receiver, mode: str = "second", **kwargs: float) -> Forwarder:
    return Forwarder("127.0.0.1", rx.port, KEY, mode=mode, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=["none", "second"])
def primary(request: pytest.FixtureRequest, roots: tuple[Path, Path], receiver: Receiver) -> Iterator[Primary]:
    fwd = connect(receiver, request.param)
    try:
        yield Primary(roots[0], fwd)
    finally:
        fwd.close()


def test_every_operation_is_replicated_exactly(primary: Primary, receiver: Receiver, roots: tuple[Path, Path]):
    prim = primary
    seqs = [prim.mkdir(b"d", 0o750), prim.create(b"d/f", 0o640)]
    assert prim.write(b"d/f", 0, b"hello world") == 11
    prim.write(b"d/f", 6, b"WORLD, again")
    prim.create(b"a")
    prim.write(b"a", 0, b"A" * 10000)
    prim.create(b"b")
    prim.write(b"b", 0, b"B")
    prim.fwd.barrier(10.0)
    prim.rename(b"a", b"b", RENAME_EXCHANGE)
    prim.rename(b"d/f", b"d/g")
    prim.symlink(b"../b", b"d/link-to-b")
    prim.symlink(b"/nowhere/at/all", b"dangling")
    prim.link(b"b", b"d/hard")
    prim.mkfifo(b"fifo")
    prim.create(b"gone")
    prim.unlink(b"gone")
    prim.mkdir(b"empty")
    prim.rmdir(b"empty")
    prim.create(b"holes")
    prim.write(b"holes", 0, os.urandom(256 << 10))
    prim.punch_hole(b"holes", 64 << 10, 64 << 10)
    prim.truncate(b"d/g", 5)
    prim.chmod(b"d/g", 0o4711)
    owner = (1234, 5678) if os.geteuid() == 0 else (os.getuid(), -1)
    prim.chown(b"b", *owner)
    prim.setxattr(b"b", b"user.keep", b"\x00value\xff")
    prim.setxattr(b"b", b"user.drop", b"x")
    prim.removexattr(b"b", b"user.drop")
    prim.setxattr(b"d", b"user.dir", b"on a directory")
    for i, rel in enumerate([b"a", b"b", b"d/g", b"holes", b"fifo", b"d/link-to-b", b"dangling"]):
        prim.utimens(rel, 1_000_000_000 + i, 1_600_000_000_123_456_789 + i)
    seqs.append(prim.fwd.last_seq)
    prim.fwd.barrier(10.0)
    assert seqs == sorted(seqs)
    assert prim.fwd.acked_seq >= seqs[-1]

    receiver.drain(10.0)
    assert receiver.last_error is None
    assert snapshot(roots[1]) == snapshot(roots[0])
    assert os.stat(roots[1] / "holes").st_blocks < os.stat(roots[1] / "holes").st_size // 512
    stats = receiver.stats()
    assert stats["applied_seq"] == stats["flushed_seq"] == stats["received_seq"] >= seqs[-1]
    assert stats["frames_rejected"] == stats["auth_failures"] == stats["apply_errors"] == 0


def test_the_secondary_ends_with_the_primary_s_modification_times(receiver: Receiver, roots: tuple[Path, Path]):
    valve = Valve(receiver.port)
    fwd = Forwarder("127.0.0.1", valve.port, KEY)
    try:
        prim = Primary(roots[0], fwd)
        prim.mkdir(b"d")
        prim.create(b"d/f")
        prim.create(b"d/big")
        prim.mkdir(b"e")
        fwd.barrier(10.0)
        valve.flowing.clear()
        # Everything below reaches the secondary only after the pause: on its own clock, every
        # time would be later than the primary's.
        prim.write(b"d/f", 0, b"first")
        prim.write(b"d/f", 100, b"sparse")
        prim.write(b"d/big", 0, os.urandom(3 << 20))  # three frames, each carrying the final mtime
        prim.truncate(b"d/big", 1 << 20)
        prim.create(b"d/g")
        prim.write(b"d/g", 0, b"g")
        prim.rename(b"d/g", b"e/g")
        prim.link(b"d/f", b"e/f")
        prim.symlink(b"f", b"e/s")
        prim.mkdir(b"e/sub")
        prim.create(b"e/sub/gone")
        prim.unlink(b"e/sub/gone")
        before = {p: os.lstat(roots[0] / p).st_mtime_ns for p in ["d", "d/f", "d/big", "e", "e/g", "e/s", "e/sub"]}
        time.sleep(0.05)
        valve.flowing.set()
        fwd.barrier(10.0)
        receiver.drain(10.0)
    finally:
        fwd.close()
        valve.close()
    assert receiver.last_error is None
    after = {p: os.lstat(roots[1] / p).st_mtime_ns for p in before}
    assert after == before
    assert snapshot(roots[1]) == snapshot(roots[0])
    # A full copy's data (`put`) carries no time: the copy's final utimens sets it. None leaves the atime alone.
    atime = os.lstat(roots[1] / "d/f").st_atime_ns
    fwd = connect(receiver)
    try:
        fwd.put(b"d/f", 0, b"FIRST")
        fwd.utimens(b"d/f", None, 1_234_567_890_123_456_789)
        with pytest.raises(ValueError, match="out of range"):
            fwd.utimens(b"d/f", -(1 << 63), 0)  # the wire's "no time"
        fwd.barrier(10.0)
        receiver.drain(10.0)
    finally:
        fwd.close()
    st = os.lstat(roots[1] / "d/f")
    assert (st.st_mtime_ns, st.st_atime_ns) == (1_234_567_890_123_456_789, atime)


@pytest.mark.parametrize("mode", ["none", "second"])
def test_a_durability_point_in_two_steps_post_then_wait(mode: str, receiver: Receiver, roots: tuple[Path, Path]):
    """What the FUSE layer does: post the barrier with the write, flush locally, then wait only if needed."""
    fwd = connect(receiver, mode)
    try:
        prim = Primary(roots[0], fwd)
        prim.create(b"f")
        (roots[0] / "f").write_bytes(b"")
        fd = os.open(roots[0] / "f", os.O_WRONLY)
        try:
            before = fwd.last_seq
            assert fwd.write(fd, b"f", 0, b"first", post=True) == 5
            posted = fwd.last_seq
            assert posted == before + 2, "the write, then its barrier"
            # The fsync that follows finds that barrier (0: already acknowledged), rather than a new one.
            assert fwd.post_barrier() in (posted, 0)
            assert fwd.last_seq == posted
            fwd.wait_barrier(posted, 10.0)
            assert fwd.is_covered(posted)
            assert fwd.post_barrier() == 0, "nothing left to wait for"
            covered = fwd.flushed_seq if mode == "none" else fwd.acked_seq
            assert covered >= posted
            if mode == "none":
                assert (roots[1] / "f").read_bytes() == b"first"
            # Without a posted barrier a durability point queues its own; is_covered waits up to `wait`.
            fwd.write(fd, b"f", 5, b" second")
            seq = fwd.post_barrier()
            assert seq == fwd.last_seq
            assert fwd.is_covered(seq, 10.0)
            if mode == "none":
                assert (roots[1] / "f").read_bytes() == b"first second"
        finally:
            os.close(fd)
    finally:
        fwd.close()
    # A closed link: the write still happens locally, and its durability point says the link is down.
    fd = os.open(roots[0] / "f", os.O_WRONLY)
    try:
        fwd.write(fd, b"f", 0, b"x", post=True)
    finally:
        os.close(fd)
    assert not fwd.is_covered(fwd.last_seq, 10.0), "returns at once: nothing can cover it any more"
    with pytest.raises(ConnectionError):
        fwd.post_barrier()


@pytest.mark.parametrize("mode", ["none", "second"])
def test_a_barrier_waits_for_the_mode_s_ack(mode: str, receiver: Receiver, roots: tuple[Path, Path]):
    fwd = connect(receiver, mode)
    try:
        prim = Primary(roots[0], fwd)
        prim.create(b"f")
        prim.write(b"f", 0, b"durable")
        fwd.barrier()
        if mode == "none":
            # Synchronous: applied and flushed on the secondary before the barrier returns.
            assert fwd.flushed_seq >= 2
            assert (roots[1] / "f").read_bytes() == b"durable"
        else:
            assert fwd.acked_seq >= 2
        fwd.barrier()  # nothing new: returns at once
    finally:
        fwd.close()


def test_a_wrong_key_gets_nothing_and_writes_nothing(receiver: Receiver, roots: tuple[Path, Path]):
    with pytest.raises(PermissionError):
        Forwarder("127.0.0.1", receiver.port, b"not the cluster key")
    time.sleep(0.1)
    assert receiver.stats()["auth_failures"] == 1
    assert receiver.stats()["received_seq"] == 0
    assert list(roots[1].iterdir()) == []
    # The right key still gets in afterwards.
    connect(receiver).close()


def test_paths_outside_the_root_are_refused(receiver: Receiver, roots: tuple[Path, Path], tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    fwd = connect(receiver)
    try:
        for bad in [b"../outside/x", b"/etc/passwd", b"a/../../x", b"", b"a//b"]:
            with pytest.raises(ValueError, match="invalid path"):
                fwd.unlink(bad)
        fd = os.open(roots[0] / "local", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with pytest.raises(ValueError, match="invalid path"):
                fwd.write(fd, b"../outside/x", 0, b"never")
        finally:
            os.close(fd)
        assert os.path.getsize(roots[0] / "local") == 0
        # A symlink on the secondary leading out of the root is not followed either: the copy diverged there,
        # the session halts at that operation (test_native_apply_errors.py) and applies nothing after it.
        os.symlink(outside, roots[1] / "escape")
        fwd.create(b"escape/owned", stat.S_IFREG | 0o644, os.getuid(), os.getgid())
        fwd.mkdir(b"escape/dir", stat.S_IFDIR | 0o755, os.getuid(), os.getgid())
        with pytest.raises(ConnectionError, match="escape/owned"):
            fwd.barrier(10.0)
        receiver.drain(10.0)
    finally:
        fwd.close()
    assert list(outside.iterdir()) == []
    assert receiver.stats()["apply_errors"] == 1
    assert "escape/owned" in (receiver.last_error or "")


def test_a_large_write_is_split_and_streamed(receiver: Receiver, roots: tuple[Path, Path]):
    fwd = connect(receiver, "none")
    try:
        prim = Primary(roots[0], fwd)
        prim.create(b"big")
        data = os.urandom(8 << 20)
        assert prim.write(b"big", 4096, data) == len(data)
        fwd.barrier(30.0)
        assert fwd.stats()["frames_sent"] >= 8
    finally:
        fwd.close()
    assert (roots[1] / "big").read_bytes() == (roots[0] / "big").read_bytes()


def test_ten_thousand_appends_arrive_in_order(receiver: Receiver, roots: tuple[Path, Path]):
    fwd = connect(receiver)
    try:
        prim = Primary(roots[0], fwd)
        prim.create(b"log")
        fd = os.open(roots[0] / "log", os.O_WRONLY)
        try:
            offset = 0
            for i in range(10_000):
                line = f"{i}:{'x' * (i % 17)}\n".encode()
                offset += fwd.write(fd, b"log", offset, line)
        finally:
            os.close(fd)
        fwd.barrier(30.0)
        receiver.drain(30.0)
    finally:
        fwd.close()
    assert (roots[1] / "log").read_bytes() == (roots[0] / "log").read_bytes()


def test_a_tiny_queue_applies_backpressure_and_still_completes(receiver: Receiver, roots: tuple[Path, Path]):
    fwd = connect(receiver, queue_bytes=4096)
    try:
        prim = Primary(roots[0], fwd)
        prim.create(b"f")
        for i in range(64):
            prim.write(b"f", i * 32768, os.urandom(32768))
            assert fwd.stats()["queue_bytes"] <= 32768 + 4096
        fwd.barrier(30.0)
        receiver.drain(30.0)
    finally:
        fwd.close()
    assert (roots[1] / "f").read_bytes() == (roots[0] / "f").read_bytes()


def test_losing_the_receiver_fails_barriers_but_not_local_writes(roots: tuple[Path, Path]):
    rx = Receiver(str(roots[1]), "127.0.0.1", 0, KEY)
    fwd = connect(rx, send_timeout=5.0)
    try:
        prim = Primary(roots[0], fwd)
        prim.create(b"f")
        prim.write(b"f", 0, b"before")
        fwd.barrier(10.0)
        rx.close()

        def keep_writing() -> None:
            for i in range(1000):
                prim.write(b"f", 6 + i, b"!")
                fwd.barrier(10.0)

        with pytest.raises((ConnectionError, TimeoutError)):
            keep_writing()
        deadline = time.monotonic() + 10
        while fwd.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not fwd.connected
        with pytest.raises(ConnectionError):
            fwd.barrier(1.0)
        # Local operations go on; they are numbered but not sent.
        before = fwd.last_seq
        assert prim.write(b"f", 0, b"AFTER!") == 6
        assert prim.mkdir(b"later") == before + 2
        assert (roots[0] / "f").read_bytes().startswith(b"AFTER!")
        assert fwd.stats()["unsent"] >= 2
    finally:
        fwd.close()
        rx.close()
    assert (roots[1] / "f").read_bytes().startswith(b"before")
    assert not (roots[1] / "later").exists()


def test_throughput_sanity(receiver: Receiver, roots: tuple[Path, Path], capsys: pytest.CaptureFixture[str]):
    """Not a benchmark (bench/ has those): a rough figure printed for the record, never asserted."""
    lines = []
    for mode in ["second", "none"]:
        fwd = connect(receiver, mode)
        try:
            prim = Primary(roots[0], fwd)
            name = f"tp-{mode}".encode()
            prim.create(name)
            chunk = os.urandom(128 << 10)
            fd = os.open(roots[0] / name.decode(), os.O_WRONLY)
            try:
                start = time.perf_counter()
                for i in range(256):
                    fwd.write(fd, name, i * len(chunk), chunk)
                fwd.barrier(60.0)
                big = time.perf_counter() - start
                start = time.perf_counter()
                for i in range(5000):
                    fwd.write(fd, name, i * 64, chunk[:64])
                fwd.barrier(60.0)
                small = time.perf_counter() - start
                start = time.perf_counter()
                for _ in range(200):
                    fwd.write(fd, name, 0, chunk[:4096])
                    fwd.barrier(60.0)
                synced = time.perf_counter() - start
            finally:
                os.close(fd)
            receiver.drain(60.0)
        finally:
            fwd.close()
        lines.append(
            f"mode={mode}: 32 MiB in 128 KiB writes {32 / big:.0f} MiB/s; "
            f"64 B writes {5000 / small:.0f}/s; 4 KiB write+barrier {200 / synced:.0f}/s"
        )
    with capsys.disabled():
        print("\nnative link throughput (loopback, one disk): " + " | ".join(lines))
