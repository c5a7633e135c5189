"""The resync engine against an in-memory secondary: what it sends, and what the application does meanwhile.

`FakeSecondary` applies every operation the moment it is queued (as a secondary applies them in
stream order), answers checksum requests from its own bytes and reports its quick-check needs.
The primary is a real directory; its checksums are computed here in Python (same 16-byte shape as
the native `local_sums`), so these tests exercise the engine's logic only.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from mirrorcore.rfs.copyids import ModeChoice
from mirrorcore.rfs.filters import Filter
from mirrorcore.rfs.pending import NamespaceObserver
from mirrorcore.rfs.progress import Progress
from mirrorcore.rfs.resync import Resync, ZonesPlan
from mirrorcore.rfs.throttle import Throttle

BLOCK = 4096
CHUNK = 4 * BLOCK


def block_sums(data: bytes, offset: int, length: int) -> bytes:
    end = min(offset + length, len(data))
    return b"".join(
        hashlib.blake2b(data[o : min(o + BLOCK, end)], digest_size=16).digest() for o in range(offset, end, BLOCK)
    )


def local_sums(root_fd: int, path: bytes, offset: int, length: int, block: int) -> tuple[int, bytes]:
    assert block == BLOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=root_fd)
    except OSError:
        return -1, b""
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    return len(data), block_sums(data, offset, length)


@dataclass
class Entry:
    kind: str
    mode: int = 0
    data: bytearray = field(default_factory=bytearray)
    mtime_ns: int = 0
    target: bytes = b""
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    uid: int = 0
    gid: int = 0

    @property
    def st_mode(self) -> int:
        if self.kind == "node":
            return self.mode
        kinds = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}
        return kinds[self.kind] | stat.S_IMODE(self.mode)


class FakeSecondary:
    """The secondary's tree as a dict of relative path -> Entry; every operation is logged."""

    def __init__(self) -> None:
        self.tree: dict[bytes, Entry] = {}
        self.needs: list[tuple[bool, bytes]] = []
        self.replies: dict[int, object] = {}
        self.log: list[tuple[str, bytes]] = []
        self.sent = 0
        self.on_request: list[object] = []  # callbacks run after a sums request (as the application would, later)
        self.on_list: list[object] = []  # the same after a list request

    def _op(self, kind: str, path: bytes) -> int:
        self.log.append((kind, path))
        return len(self.log)

    # ---- NamespaceTarget
    def prune(self, dir: bytes, keep: list[bytes]) -> int:
        prefix = dir + b"/" if dir else b""
        for path in list(self.tree):
            rest = path[len(prefix) :] if path.startswith(prefix) else None
            if rest is not None and rest.split(b"/")[0] not in keep:
                del self.tree[path]
        return self._op("prune", dir)

    def ensure(self, path, kind, mode, uid, gid, *, rdev=0, target=b"", size=0, mtime_ns=0, xattrs=None) -> int:
        entry = self.tree.get(path)
        created = entry is None or entry.kind != kind or (kind == "symlink" and entry.target != target)
        if created:
            entry = self.tree[path] = Entry(kind, target=target)
        assert entry is not None
        entry.mode = mode
        entry.uid, entry.gid = uid, gid
        if xattrs is not None:
            entry.xattrs = list(xattrs)
        if kind == "file":
            if created or len(entry.data) != size or entry.mtime_ns != mtime_ns:
                self.needs.append((created, path))
        elif mtime_ns:
            entry.mtime_ns = mtime_ns
        return self._op("ensure", path)

    def ensure_link(self, existing: bytes, new: bytes) -> int:
        self.tree[new] = self.tree[existing]
        return self._op("ensure_link", new)

    def utimens(self, path: bytes, atime_ns: int | None, mtime_ns: int | None) -> int:
        if mtime_ns is not None:
            self.tree[path].mtime_ns = mtime_ns
        return self._op("utimens", path)

    # ---- ResyncTarget
    def copy_range(self, root_fd: int, path: bytes, offset: int, length: int) -> int:
        fd = os.open(path, os.O_RDONLY, dir_fd=root_fd)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        self.write(path, offset, data)
        self.sent += len(data)
        self._op("copy_range", path)
        return len(data)

    def truncate(self, path: bytes, size: int) -> int:
        entry = self.tree[path]
        del entry.data[size:]
        entry.data.extend(bytes(size - len(entry.data)))
        return self._op("truncate", path)

    def request_sums(self, path: bytes, offset: int, length: int, block: int) -> int:
        data = bytes(self.tree[path].data)
        seq = self._op("request_sums", path)
        self.replies[seq] = (len(data), block_sums(data, offset, length))
        for callback in self.on_request:
            callback(path)  # type: ignore[operator]
        return seq

    def take_sums(self, seq: int, timeout: float | None = None) -> tuple[int, bytes]:
        return self.replies.pop(seq)  # type: ignore[return-value]

    def request_needs(self) -> int:
        seq = self._op("request_needs", b"")
        self.replies[seq], self.needs = self.needs, []
        return seq

    def take_needs(self, seq: int, timeout: float | None = None) -> list[tuple[bool, bytes]]:
        return self.replies.pop(seq)  # type: ignore[return-value]

    # ---- VerifyTarget
    def request_list(self, dir: bytes) -> int:
        prefix = dir + b"/" if dir else b""
        listing = []
        for path, e in sorted(self.tree.items()):
            if path.startswith(prefix) and b"/" not in path[len(prefix) :]:
                name = path[len(prefix) :]
                listing.append((name, e.kind, e.st_mode, e.uid, e.gid, len(e.data), e.mtime_ns, e.target))
        seq = self._op("request_list", dir)
        self.replies[seq] = listing
        for callback in self.on_list:
            callback(dir)  # type: ignore[operator]
        return seq

    def take_list(
        self, seq: int, timeout: float | None = None
    ) -> list[tuple[bytes, str, int, int, int, int, int, bytes]]:
        return self.replies.pop(seq)  # type: ignore[return-value]

    # ---- what the FUSE layer forwards for the application
    def write(self, path: bytes, offset: int, data: bytes, mtime_ns: int | None = None) -> None:
        entry = self.tree[path]
        buf = entry.data
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset : offset + len(data)] = data
        if mtime_ns is not None:
            entry.mtime_ns = mtime_ns  # the forwarded write carries the primary's mtime

    def rename(self, old: bytes, new: bytes) -> None:
        self.tree[new] = self.tree.pop(old)
        self._op("rename", new)


def differences(root: Path, secondary: FakeSecondary) -> list[str]:
    """What the fake secondary holds differently from the primary directory (files and symlinks)."""
    out = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = bytes(path.relative_to(root))
            seen.add(rel)
            st = path.lstat()
            entry = secondary.tree.get(rel)
            if entry is None:
                out.append(f"missing {rel!r}")
            elif stat.S_ISREG(st.st_mode) and (
                bytes(entry.data) != path.read_bytes() or entry.mtime_ns != st.st_mtime_ns
            ):
                out.append(f"differs {rel!r}")
            elif stat.S_ISLNK(st.st_mode) and entry.target != os.readlink(path).encode():
                out.append(f"wrong target {rel!r}")
    out += [f"extra {p!r}" for p in secondary.tree.keys() - seen]
    return out


def make_tree(root: Path, files: int = 12) -> None:
    for i in range(files):
        sub = root / f"d{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i}").write_bytes(os.urandom(i * 3000 + 1))
    (root / "link").symlink_to("d0/f0")
    (root / "empty").write_bytes(b"")


class Harness:
    """A resync of `root` to `secondary`; records what `attach`/`observe` received."""

    def __init__(
        self, root: Path, secondary: FakeSecondary, choice: ModeChoice, zones: ZonesPlan | None = None
    ) -> None:
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self.secondary = secondary
        self.observer: NamespaceObserver | None = None
        self.attached_at: int | None = None
        self.events: list[dict[str, object]] = []
        self.choice = choice
        self.zones = zones

    def attach(self) -> None:
        self.attached_at = len(self.secondary.log)

    def observe(self, observer: NamespaceObserver | None) -> None:
        self.observer = observer

    async def run(self, workers: int = 1, rate: int | None = None) -> Progress:
        try:
            resync = Resync(
                self.fd,
                self.secondary,
                Filter([], [], []),
                self.choice,
                attach=self.attach,
                observe=self.observe,
                zones=(lambda: self.zones or {}),
                throttle=Throttle(rate, burst=CHUNK),
                emit=self.events.append,
                workers=workers,
                local_sums=local_sums,
                block=BLOCK,
                chunk=CHUNK,
            )
            return await resync.run()
        finally:
            os.close(self.fd)


FULL = ModeChoice("full", "test")


async def test_a_full_resync_to_an_empty_secondary_copies_everything(tmp_path: Path):
    make_tree(tmp_path)
    secondary = FakeSecondary()
    progress = await Harness(tmp_path, secondary, FULL).run(workers=3)
    assert differences(tmp_path, secondary) == []
    total = sum(i * 3000 + 1 for i in range(12))  # make_tree's file sizes
    assert progress.bytes_sent == total
    assert (progress.files_done, progress.files_total, progress.phase) == (13, 13, "done")


async def test_a_full_resync_to_an_identical_secondary_sends_no_data(tmp_path: Path):
    make_tree(tmp_path)
    secondary = FakeSecondary()
    await Harness(tmp_path, secondary, FULL).run()
    again = await Harness(tmp_path, secondary, FULL).run()
    assert differences(tmp_path, secondary) == []
    assert again.bytes_sent == 0
    assert again.bytes_done == again.bytes_total > 0


async def test_only_the_differing_block_is_sent_and_a_longer_secondary_is_cut(tmp_path: Path):
    data = os.urandom(10 * BLOCK)
    (tmp_path / "f").write_bytes(data)
    secondary = FakeSecondary()
    await Harness(tmp_path, secondary, FULL).run()
    changed = bytearray(data)
    changed[5 * BLOCK + 7] ^= 0xFF
    (tmp_path / "f").write_bytes(bytes(changed[: 9 * BLOCK + 10]))
    progress = await Harness(tmp_path, secondary, FULL).run()
    assert differences(tmp_path, secondary) == []
    assert progress.bytes_sent == BLOCK + 10  # the changed block and the new short last block


async def test_the_namespace_step_is_one_step_attached_before_the_walk(tmp_path: Path):
    """No application step can run between the first namespace operation and the needs request."""
    make_tree(tmp_path)
    secondary = FakeSecondary()
    harness = Harness(tmp_path, secondary, FULL)
    seen_by_app: list[int] = []

    async def application() -> None:
        while True:
            seen_by_app.append(len(secondary.log))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(application)
        await trio.lowlevel.checkpoint()
        await harness.run()
        nursery.cancel_scope.cancel()
    kinds = [kind for kind, _ in secondary.log]
    first, needs = kinds.index("prune"), kinds.index("request_needs")
    assert harness.attached_at == first  # attached in the step, before its first operation
    assert not any(first < n <= needs for n in seen_by_app)
    assert harness.observer is None  # the observer is detached at the end


async def test_a_file_the_application_renames_mid_resync_is_followed_to_its_new_name(tmp_path: Path):
    (tmp_path / "big").write_bytes(os.urandom(6 * CHUNK))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "other").write_bytes(os.urandom(CHUNK))
    secondary = FakeSecondary()
    await Harness(tmp_path, secondary, FULL).run()
    (tmp_path / "big").write_bytes(os.urandom(6 * CHUNK))  # changed while the secondary was away
    harness = Harness(tmp_path, secondary, FULL)
    renamed = []

    def application(path: bytes) -> None:
        """After the first comparison of `big`: the app renames it, then writes to its new name."""
        if path == b"big" and not renamed:
            renamed.append(path)
            os.rename(tmp_path / "big", tmp_path / "d" / "moved")
            secondary.rename(b"big", b"d/moved")  # forwarded ...
            assert harness.observer is not None
            harness.observer.renamed(b"big", b"d/moved")  # ... and told to the resync
            fd = os.open(tmp_path / "d" / "moved", os.O_WRONLY)
            os.pwrite(fd, b"late write", 3 * CHUNK)
            os.close(fd)
            secondary.write(b"d/moved", 3 * CHUNK, b"late write")

    secondary.on_request.append(application)
    progress = await harness.run()
    assert renamed
    assert differences(tmp_path, secondary) == []
    assert progress.files_done == 2


async def test_a_file_removed_mid_resync_is_skipped(tmp_path: Path):
    (tmp_path / "a").write_bytes(os.urandom(3 * CHUNK))
    secondary = FakeSecondary()
    await Harness(tmp_path, secondary, FULL).run()
    (tmp_path / "a").write_bytes(os.urandom(3 * CHUNK))
    harness = Harness(tmp_path, secondary, FULL)
    removed = []

    def application(path: bytes) -> None:
        if not removed:
            removed.append(path)
            os.unlink(tmp_path / "a")
            del secondary.tree[b"a"]
            assert harness.observer is not None
            harness.observer.removed(b"a")

    secondary.on_request.append(application)
    progress = await harness.run()
    assert removed
    assert differences(tmp_path, secondary) == []
    assert progress.bytes_sent == 0  # nothing was read from a file that no longer exists


async def test_zones_mode_compares_only_the_zones_and_the_secondarys_needs(tmp_path: Path):
    for name in (b"quiet", b"zoned", b"touched"):
        (tmp_path / name.decode()).write_bytes(os.urandom(4 * BLOCK))
    secondary = FakeSecondary()
    await Harness(tmp_path, secondary, FULL).run()
    # Behind everyone's back, a change the map does not know and the quick check cannot see.
    st = (tmp_path / "quiet").stat()
    secondary.tree[b"quiet"].data[0] ^= 1
    # A change in the map's zone 1, and one the quick check sees (mtime).
    before = (tmp_path / "zoned").stat()
    fd = os.open(tmp_path / "zoned", os.O_WRONLY)
    os.pwrite(fd, b"z", BLOCK + 1)
    os.close(fd)
    os.utime(tmp_path / "zoned", ns=(before.st_atime_ns, before.st_mtime_ns))  # only the map knows
    os.utime(tmp_path / "touched", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    zones = {b"zoned": [(BLOCK, BLOCK)]}
    progress = await Harness(tmp_path, secondary, ModeChoice("zones", "test"), zones).run()
    assert differences(tmp_path, secondary) == [f"differs {b'quiet'!r}"]  # zones trust the map, by design
    assert progress.files_total == 2  # zoned (its zone) and touched (needs: its mtime differs)
    assert progress.bytes_done == BLOCK + 4 * BLOCK
    assert progress.bytes_sent == BLOCK


async def test_timestamp_mode_compares_the_files_modified_since(tmp_path: Path):
    for name in ("old", "new"):
        (tmp_path / name).write_bytes(os.urandom(BLOCK))
    os.utime(tmp_path / "old", ns=(10**18, 10**18))
    secondary = FakeSecondary()
    await Harness(tmp_path, secondary, FULL).run()
    since = (tmp_path / "new").stat().st_mtime_ns / 1e9 - 1
    progress = await Harness(tmp_path, secondary, ModeChoice("timestamp", "test", since)).run()
    assert progress.files_total == 1
    assert progress.bytes_sent == 0


async def test_progress_events_are_reported_with_an_end(tmp_path: Path):
    make_tree(tmp_path)
    harness = Harness(tmp_path, FakeSecondary(), FULL)
    await harness.run()
    phases = [e["phase"] for e in harness.events]
    assert phases[0] == "namespace"
    assert phases[-1] == "done"
    assert harness.events[-1]["files_done"] == harness.events[-1]["files_total"] == 13


async def test_a_lost_link_interrupts_the_resync_with_connection_error(tmp_path: Path):
    (tmp_path / "f").write_bytes(os.urandom(3 * CHUNK))
    secondary = FakeSecondary()
    await Harness(tmp_path, secondary, FULL).run()

    def drop(seq: int, timeout: float | None = None) -> tuple[int, bytes]:
        raise ConnectionError("link dropped")

    secondary.take_sums = drop  # type: ignore[method-assign]
    harness = Harness(tmp_path, secondary, FULL)
    with pytest.raises(ConnectionError):
        await harness.run(workers=2)
    assert harness.events[-1]["phase"] == "interrupted"
    assert harness.observer is None
