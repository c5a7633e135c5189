"""The native half of online resync, end to end on loopback: block sums, requests and their replies, the namespace
ops (prune/ensure/ensure_link) with the needs list, `copy_range`, and the copy id announced in the handshake.

Every comparison of the two copies is taken at one point of the ordered stream: a reply reflects exactly the
operations queued before its request, in both modes.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from linkkit import KEY, Valve

from mirrorcore._native import DirtyMap, Forwarder, Receiver, local_sums

BLOCK = 4096


@pytest.fixture(params=["none", "second"])
def fwd(request: pytest.FixtureRequest, receiver: Receiver) -> Iterator[Forwarder]:
    """A Forwarder linked to the `receiver` fixture, in sync (`none`) and semi-sync (`second`) mode."""
    f = Forwarder("127.0.0.1", receiver.port, KEY, mode=request.param)
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def root_fds(roots: tuple[Path, Path]) -> Iterator[tuple[int, int]]:
    """Directory fds of the primary's and the secondary's roots."""
    fds = (os.open(roots[0], os.O_RDONLY | os.O_DIRECTORY), os.open(roots[1], os.O_RDONLY | os.O_DIRECTORY))
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def write(fwd: Forwarder, root: Path, rel: str, offset: int, data: bytes) -> None:
    """An application write on the primary: local pwrite plus its frame, as the FUSE layer does."""
    fd = os.open(root / rel, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fwd.write(fd, rel.encode(), offset, data)
    finally:
        os.close(fd)


def create(fwd: Forwarder, root: Path, rel: str) -> None:
    os.close(os.open(root / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    fwd.create(rel.encode(), stat.S_IFREG | 0o644, os.getuid(), os.getgid())


def settle(fwd: Forwarder, rx: Receiver) -> None:
    fwd.barrier(30.0)
    rx.drain(30.0)


def test_a_sums_reply_reflects_exactly_the_writes_queued_before_its_request(
    fwd: Forwarder, receiver: Receiver, roots: tuple[Path, Path], root_fds: tuple[int, int]
) -> None:
    create(fwd, roots[0], "f")
    write(fwd, roots[0], "f", 0, os.urandom(5 * BLOCK + 100))
    write(fwd, roots[0], "f", BLOCK, b"before the request")
    # One step, as the resync does it: the primary's sums and the request at the same stream position.
    expected = local_sums(root_fds[0], b"f", 0, 1 << 20, BLOCK)
    seq = fwd.request_sums(b"f", 0, 1 << 20, BLOCK)
    for i in range(50):
        write(fwd, roots[0], "f", BLOCK, b"after the request %d" % i)
    size, sums = fwd.take_sums(seq, timeout=30.0)
    assert (size, sums) == expected
    assert size == 5 * BLOCK + 100
    assert len(sums) == 6 * 16
    now = local_sums(root_fds[0], b"f", 0, 1 << 20, BLOCK)
    assert now[1][16:32] != sums[16:32]
    assert now[1][:16] == sums[:16]
    settle(fwd, receiver)
    # The reply is what the secondary's own file sums to at that point; now both are equal again.
    assert local_sums(root_fds[1], b"f", 0, 1 << 20, BLOCK) == now


def test_sums_of_a_missing_file_and_of_a_directory_have_no_size(fwd: Forwarder, roots: tuple[Path, Path]) -> None:
    fwd.mkdir(b"d", stat.S_IFDIR | 0o755, os.getuid(), os.getgid())
    seqs = [fwd.request_sums(b"missing", 0, 100, BLOCK), fwd.request_sums(b"d", 0, 100, BLOCK)]
    assert [fwd.take_sums(s, timeout=30.0) for s in seqs] == [(-1, b""), (-1, b"")]
    with pytest.raises(ValueError, match="not a request"):
        fwd.take_sums(seqs[0], timeout=1.0)


def test_a_request_the_secondary_cannot_answer_raises_its_error(
    fwd: Forwarder, receiver: Receiver, roots: tuple[Path, Path]
) -> None:
    create(fwd, roots[0], "f")
    seq = fwd.request_sums(b"f", 0, 1, 1 << 30)  # a block beyond what anyone reads at once
    with pytest.raises(OSError, match="Invalid argument") as caught:
        fwd.take_sums(seq, timeout=30.0)
    assert caught.value.errno == errno.EINVAL
    assert "answering seq" in (receiver.last_error or "")
    assert fwd.take_sums(fwd.request_sums(b"f", 0, 1, BLOCK), timeout=30.0) == (0, b"")  # the link is fine


def test_copy_range_makes_the_secondary_s_file_identical(
    fwd: Forwarder, receiver: Receiver, roots: tuple[Path, Path], root_fds: tuple[int, int]
) -> None:
    data = os.urandom(3 * (1 << 20) + 12345)
    (roots[0] / "f").write_bytes(data)
    with open(roots[0] / "f", "r+b") as f:
        f.truncate(len(data) + 5 * BLOCK)  # ends in a hole
    # The secondary holds other bytes, longer, where the primary has a hole too.
    (roots[1] / "f").write_bytes(os.urandom(len(data) + 9 * BLOCK))
    fwd.copy_range(root_fds[0], b"f", 0, 1 << 30)  # clipped at the end of the file
    fwd.truncate(b"f", len(data) + 5 * BLOCK)
    settle(fwd, receiver)
    assert (roots[1] / "f").read_bytes() == (roots[0] / "f").read_bytes()
    # A range inside the file: exactly its bytes.
    write_at = 1 << 20
    with open(roots[0] / "f", "r+b") as f:
        f.seek(write_at)
        f.write(b"changed behind the mirror")
    assert fwd.copy_range(root_fds[0], b"f", write_at, BLOCK) == BLOCK
    settle(fwd, receiver)
    assert (roots[1] / "f").read_bytes() == (roots[0] / "f").read_bytes()
    with pytest.raises(FileNotFoundError):
        fwd.copy_range(root_fds[0], b"missing", 0, 1)


def test_ensure_fills_the_needs_list_and_replaces_other_kinds(
    fwd: Forwarder, receiver: Receiver, roots: tuple[Path, Path]
) -> None:
    prim, sec = roots
    uid, gid = os.getuid(), os.getgid()
    (prim / "same").write_bytes(b"x" * 10)
    (sec / "same").write_bytes(b"y" * 10)
    os.utime(sec / "same", ns=(0, os.stat(prim / "same").st_mtime_ns))
    (prim / "longer").write_bytes(b"x" * 20)
    (sec / "longer").write_bytes(b"x" * 10)
    (sec / "was_dir").mkdir()
    (sec / "was_dir" / "inner").write_bytes(b"gone")
    os.symlink("old", sec / "link")
    (sec / "xattrs").write_bytes(b"")
    os.setxattr(sec / "xattrs", b"user.stale", b"1")
    os.setxattr(sec / "xattrs", b"user.keep", b"old")

    def ensure_file(name: str, **kw: object) -> None:
        st = os.stat(prim / name) if (prim / name).exists() else None
        size, mtime = (st.st_size, st.st_mtime_ns) if st else (0, 0)
        fwd.ensure(name.encode(), "file", 0o100640, uid, gid, size=size, mtime_ns=mtime, **kw)  # type: ignore[arg-type]

    ensure_file("same")
    ensure_file("longer")
    ensure_file("new")
    ensure_file("was_dir")
    ensure_file("xattrs", xattrs=[(b"user.keep", b"new"), (b"user.added", b"")])
    fwd.ensure(b"link", "symlink", 0o120777, uid, gid, target=b"new-target", mtime_ns=1_500_000_000_123_456_789)
    fwd.ensure(b"d", "dir", 0o40700, uid, gid, mtime_ns=1_600_000_000_000_000_001)
    fwd.ensure(b"fifo", "node", stat.S_IFIFO | 0o600, uid, gid)
    seq = fwd.request_needs()
    needs = fwd.take_needs(seq, timeout=30.0)
    assert sorted(needs) == [(False, b"longer"), (False, b"xattrs"), (True, b"new"), (True, b"was_dir")]
    assert fwd.take_needs(fwd.request_needs(), timeout=30.0) == []  # handed back once
    settle(fwd, receiver)
    assert (sec / "same").read_bytes() == b"y" * 10  # contents untouched: the sums find it
    assert stat.S_IMODE(os.stat(sec / "same").st_mode) == 0o640
    assert (sec / "was_dir").is_file()
    assert os.readlink(sec / "link") == "new-target"
    assert os.lstat(sec / "link").st_mtime_ns == 1_500_000_000_123_456_789
    assert os.stat(sec / "d").st_mtime_ns == 1_600_000_000_000_000_001
    assert stat.S_ISFIFO(os.lstat(sec / "fifo").st_mode)
    assert sorted(os.listxattr(sec / "xattrs")) == ["user.added", "user.keep"]
    assert os.getxattr(sec / "xattrs", "user.keep") == b"new"


def test_seeded_needs_come_back_as_changed_with_the_quick_check_failures(
    fwd: Forwarder, receiver: Receiver, roots: tuple[Path, Path]
) -> None:
    prim, sec = roots
    (prim / "longer").write_bytes(b"x" * 20)
    (sec / "longer").write_bytes(b"x" * 10)
    (sec / "mine").write_bytes(b"changed here while this node was primary")
    # During the session, before and after the ensures: each path comes back once.
    receiver.seed_needs([b"mine", b"new"])
    for name in ("longer", "new"):
        fwd.ensure(name.encode(), "file", 0o100644, -1, -1, size=20, mtime_ns=os.stat(prim / "longer").st_mtime_ns)
    receiver.seed_needs([b"longer", b"d/deep", b"mine"])
    needs = fwd.take_needs(fwd.request_needs(), timeout=30.0)
    assert sorted(needs) == [(False, b"d/deep"), (False, b"longer"), (False, b"mine"), (True, b"new")]
    assert len(needs) == 4
    assert fwd.take_needs(fwd.request_needs(), timeout=30.0) == []  # handed back once
    for bad in (b"", b"/etc/passwd", b"../out", b"a/./b"):
        with pytest.raises(ValueError, match="invalid path"):
            receiver.seed_needs([b"fine", bad])
    assert receiver.stats()["seeds_pending"] == 0  # a call with a bad path seeds nothing
    assert fwd.take_needs(fwd.request_needs(), timeout=30.0) == []


@pytest.mark.parametrize("mode", ["none", "second"])
def test_a_seed_before_the_session_is_kept_until_a_resync_completes(receiver: Receiver, mode: str) -> None:
    receiver.seed_needs([b"a/changed", b"b"])
    Forwarder("127.0.0.1", receiver.port, KEY, mode=mode).close()  # a session that asks nothing
    fwd = Forwarder("127.0.0.1", receiver.port, KEY, mode=mode)
    try:
        assert sorted(fwd.take_needs(fwd.request_needs(), timeout=30.0)) == [(False, b"a/changed"), (False, b"b")]
        assert (receiver.stats()["seeds_pending"], receiver.stats()["seeds_handed"]) == (0, 2)
    finally:
        fwd.close()  # before its mark: the resync did not complete
    fwd = Forwarder("127.0.0.1", receiver.port, KEY, mode=mode)
    try:
        assert sorted(fwd.take_needs(fwd.request_needs(), timeout=30.0)) == [(False, b"a/changed"), (False, b"b")]
        fwd.mark(12345)
        settle(fwd, receiver)
        assert (receiver.stats()["seeds_pending"], receiver.stats()["seeds_handed"]) == (0, 0)
    finally:
        fwd.close()
    fwd = Forwarder("127.0.0.1", receiver.port, KEY, mode=mode)
    try:
        assert fwd.take_needs(fwd.request_needs(), timeout=30.0) == []
    finally:
        fwd.close()


def test_prune_and_ensure_link_shape_the_tree(fwd: Forwarder, receiver: Receiver, roots: tuple[Path, Path]) -> None:
    sec = roots[1]
    (sec / "keep").write_bytes(b"k")
    (sec / "extra").write_bytes(b"e")
    (sec / "tree" / "deep").mkdir(parents=True)
    (sec / "tree" / "deep" / "f").write_bytes(b"f")
    os.symlink(roots[0], sec / "tree" / "out")  # pruned, never followed
    (roots[0] / "outside-marker").write_bytes(b"stays")
    (sec / "other").write_bytes(b"not a link yet")
    fwd.prune(b"", [b"keep", b"other", b"tree"])
    fwd.prune(b"tree", [])
    fwd.prune(b"missing", [])
    fwd.ensure_link(b"keep", b"other")
    fwd.ensure_link(b"keep", b"other")  # already: nothing
    settle(fwd, receiver)
    assert sorted(p.name for p in sec.iterdir()) == ["keep", "other", "tree"]
    assert list((sec / "tree").iterdir()) == []
    assert os.stat(sec / "keep").st_ino == os.stat(sec / "other").st_ino
    assert (roots[0] / "outside-marker").read_bytes() == b"stays"
    assert receiver.stats()["apply_errors"] == 0


def test_a_list_reply_is_the_secondary_s_view_of_a_directory(
    fwd: Forwarder, roots: tuple[Path, Path], receiver: Receiver
) -> None:
    sec = roots[1]
    (sec / "b").write_bytes(b"12345")
    (sec / "a").mkdir()
    os.symlink("b", sec / "c")
    entries = fwd.take_list(fwd.request_list(b""), timeout=30.0)
    assert [e[:2] for e in entries] == [(b"a", "dir"), (b"b", "file"), (b"c", "symlink")]
    _, _, mode, uid, gid, size, mtime_ns, target = entries[1]
    st = os.lstat(sec / "b")
    assert (mode, uid, gid, size, mtime_ns, target) == (st.st_mode, st.st_uid, st.st_gid, 5, st.st_mtime_ns, b"")
    assert entries[2][7] == b"b"
    assert fwd.take_list(fwd.request_list(b"missing"), timeout=30.0) == []
    assert fwd.take_list(fwd.request_list(b"a"), timeout=30.0) == []


def test_a_cut_link_fails_every_pending_take_promptly(roots: tuple[Path, Path], receiver: Receiver) -> None:
    valve = Valve(receiver.port)
    fwd = Forwarder("127.0.0.1", valve.port, KEY)
    try:
        valve.flowing.clear()  # the requests never reach the secondary
        seqs = [fwd.request_sums(b"f", 0, 1, BLOCK), fwd.request_needs(), fwd.request_list(b"")]
        with pytest.raises(TimeoutError):
            fwd.take_needs(seqs[1], timeout=0.2)
        start = time.monotonic()
        valve.close()
        with pytest.raises(ConnectionError):
            fwd.take_sums(seqs[0])
        with pytest.raises(ConnectionError):
            fwd.take_needs(seqs[1])
        with pytest.raises(ConnectionError):
            fwd.take_list(seqs[2], timeout=30.0)
        assert time.monotonic() - start < 10
    finally:
        fwd.close()
        valve.close()


@pytest.mark.parametrize("take", ["sums", "needs", "list"])
def test_a_take_without_timeout_fails_the_link_when_the_secondary_stalls(
    roots: tuple[Path, Path], receiver: Receiver, take: str
) -> None:
    valve = Valve(receiver.port)
    fwd = Forwarder("127.0.0.1", valve.port, KEY, send_timeout=0.5)
    try:
        assert fwd.take_needs(fwd.request_needs()) == []  # the link works
        valve.flowing.clear()  # from now on nothing reaches the secondary: no flush, no reply
        seqs = {
            "sums": fwd.request_sums(b"f", 0, 1, BLOCK),
            "needs": fwd.request_needs(),
            "list": fwd.request_list(b""),
        }
        takers: dict[str, Callable[..., object]] = {
            "sums": fwd.take_sums,
            "needs": fwd.take_needs,
            "list": fwd.take_list,
        }
        start = time.monotonic()
        with pytest.raises(ConnectionError, match="no progress"):
            takers[take](seqs[take])
        assert 0.5 <= time.monotonic() - start < 10
        assert not fwd.connected
        for other in seqs.keys() - {take}:  # every other request fails too
            with pytest.raises(ConnectionError):
                takers[other](seqs[other], timeout=30.0)
    finally:
        fwd.close()
        valve.close()


def test_a_tracker_records_resync_ops_and_fails_takes_at_once(
    roots: tuple[Path, Path], root_fds: tuple[int, int]
) -> None:
    (roots[0] / "f").write_bytes(os.urandom(3 * BLOCK))
    dirty = DirtyMap(BLOCK)
    tracker = Forwarder.tracker(dirty)
    assert tracker.peer_copy_id == 0
    assert tracker.copy_range(root_fds[0], b"f", BLOCK, BLOCK) == BLOCK
    tracker.ensure(b"d", "dir", 0o40755, -1, -1)
    tracker.ensure_link(b"f", b"g")
    tracker.prune(b"d", [])
    seq = tracker.request_sums(b"f", 0, BLOCK, BLOCK)
    start = time.monotonic()
    with pytest.raises(ConnectionError):
        tracker.take_sums(seq)
    assert time.monotonic() - start < 1
    assert dirty.zones(b"f") == [(BLOCK, BLOCK)]
    assert [(kind, path, path2) for _, kind, path, path2 in dirty.changelog()] == [
        ("ensure", b"d", None),
        ("link", b"f", b"g"),
        ("prune", b"d", None),
    ]


def test_the_copy_id_is_announced_and_a_mark_replaces_it(roots: tuple[Path, Path]) -> None:
    rx = Receiver(str(roots[1]), "127.0.0.1", 0, KEY, copy_id=77)
    try:
        assert rx.copy_id == 77
        fwd = Forwarder("127.0.0.1", rx.port, KEY)
        assert fwd.peer_copy_id == 77
        fwd.mark((1 << 63) - 5)
        settle(fwd, rx)
        fwd.close()
        assert rx.copy_id == (1 << 63) - 5
        fwd = Forwarder("127.0.0.1", rx.port, KEY)
        assert fwd.peer_copy_id == (1 << 63) - 5
        fwd.close()
        rx.copy_id = 0  # e.g. `second fullsync`
        fwd = Forwarder("127.0.0.1", rx.port, KEY)
        assert fwd.peer_copy_id == 0
        fwd.close()
    finally:
        rx.close()
