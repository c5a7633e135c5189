"""The native DirtyMap: what the secondary lacks, per file zone and namespace change, until it confirms them on disk."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from mirrorcore._native import DirtyMap

ZS = 4096


def zone_numbers(ranges: list[tuple[int, int]], zone_size: int) -> set[int]:
    out: set[int] = set()
    for off, length in ranges:
        assert off % zone_size == 0
        assert length % zone_size == 0
        assert length > 0
        out.update(range(off // zone_size, (off + length) // zone_size))
    return out


def test_writes_are_tracked_as_whole_zones() -> None:
    m = DirtyMap(ZS)
    assert m.is_empty()
    m.mark_write(b"dir/f", 10, 1, 1)
    m.mark_write(b"dir/f", 2 * ZS - 1, 2, 2)
    m.mark_write(b"dir/f", 100 * ZS, ZS, 3)
    assert m.zones(b"dir/f") == [(0, 3 * ZS), (100 * ZS, ZS)]
    assert m.runs(b"dir/f") == [(0, ZS, 1), (ZS, 2 * ZS, 2), (100 * ZS, ZS, 3)]
    assert m.zones(b"elsewhere") == []
    assert m.paths() == [b"dir/f"]
    stats = m.stats()
    assert stats["files"] == 1
    assert stats["zones"] == 4
    assert stats["bytes_tracked"] == 4 * ZS
    assert stats["changelog_len"] == 0
    assert 0 < stats["memory_bytes"] < 4096
    assert m.last_seq == 3
    assert repr(m) == "DirtyMap(zone_size=4096, files=1, zones=4, changelog=0, clean=True)"


def test_the_changelog_keeps_namespace_changes_in_order() -> None:
    m = DirtyMap(ZS)
    m.mark_write(b"d/a", 0, 1, 1)
    m.mark_namespace("mkdir", b"d", None, 2)
    m.mark_namespace("rename", b"d", b"e", 3)
    m.mark_namespace("symlink", b"l", b"/outside/target", 4)
    m.mark_namespace("unlink", b"gone", None, 5)
    assert m.changelog() == [
        (2, "mkdir", b"d", None),
        (3, "rename", b"d", b"e"),
        (4, "symlink", b"l", b"/outside/target"),
        (5, "unlink", b"gone", None),
    ]
    assert m.paths() == [b"e/a"], "the rename moved the zones of everything below d"
    m.mark_namespace("unlink", b"e/a", None, 6)
    assert m.paths() == []
    assert m.changelog()[-1] == (6, "unlink", b"e/a", None)


def test_a_zone_written_again_stays_until_its_latest_write_is_confirmed() -> None:
    m = DirtyMap(ZS)
    m.mark_write(b"f", 0, ZS, 1)
    m.mark_write(b"f", ZS, ZS, 2)
    m.mark_write(b"f", 0, 1, 3)
    m.mark_truncate(b"g", 5, 4)
    assert m.confirm(2) == 1
    assert m.zones(b"f") == [(0, ZS)]
    assert m.truncate_to(b"g") == 5
    assert m.confirm(4) == 2
    assert m.is_empty()
    assert m.paths() == []


def test_clear_forgets_everything_but_the_seq() -> None:
    m = DirtyMap(ZS)
    m.mark_write(b"f", 0, 1, 7)
    m.mark_namespace("chmod", b"f", None, 8)
    m.clear()
    assert m.is_empty()
    assert m.last_seq == 8
    assert m.clean


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: DirtyMap(3000), "power of two"),
        (lambda: DirtyMap(ZS).mark_write(b"/abs", 0, 1, 1), "invalid path"),
        (lambda: DirtyMap(ZS).mark_write(b"a/../b", 0, 1, 1), "invalid path"),
        (lambda: DirtyMap(ZS).mark_write(b"f", 2**64 - 1, 2, 1), r"beyond 2\^64"),
        (lambda: DirtyMap(ZS).mark_namespace("write", b"f", None, 1), "unknown namespace operation"),
        (lambda: DirtyMap(ZS).mark_namespace("rename", b"f", None, 1), "needs a second path"),
        (lambda: DirtyMap(ZS).mark_namespace("chmod", b"f", b"g", 1), "takes one path"),
    ],
)
def test_bad_arguments_are_value_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_save_and_load_round_trip_with_the_clean_flag(tmp_path: Path) -> None:
    m = DirtyMap(ZS)
    m.mark_write(b"f", 3 * ZS, 10, 1)
    m.mark_truncate(b"f", 3 * ZS + 10, 2)
    m.mark_namespace("link", b"f", b"g", 3)
    m.set_horizon(3)
    file = tmp_path / "dirty"
    m.save(file)
    tracking = DirtyMap.load(file)
    assert not tracking.clean, "a map saved without clean=True is the tracking marker: distrusted"
    assert tracking.zones(b"f") == m.zones(b"f")
    assert tracking.truncate_to(b"f") == 3 * ZS + 10
    assert tracking.changelog() == m.changelog()
    assert (tracking.last_seq, tracking.horizon, tracking.zone_size) == (3, 3, ZS)
    assert tracking.stats() == m.stats()
    m.save(os.fsencode(file).decode(), clean=True)
    assert DirtyMap.load(file).clean
    tracking.save(file, clean=True)
    assert not DirtyMap.load(file).clean, "saving cannot launder a distrusted map"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dirty"]


def test_a_corrupt_file_is_refused_naming_it(tmp_path: Path) -> None:
    file = tmp_path / "dirty"
    m = DirtyMap(ZS)
    m.mark_write(b"f", 0, 1, 1)
    m.save(file, clean=True)
    data = bytearray(file.read_bytes())
    data[30] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"^{file}: corrupt dirty map: checksum mismatch"):
        DirtyMap.load(file)
    file.write_bytes(bytes(data[:20]))
    with pytest.raises(ValueError, match="corrupt dirty map"):
        DirtyMap.load(file)
    with pytest.raises(FileNotFoundError):
        DirtyMap.load(tmp_path / "missing")


writes = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 64 * 512), st.integers(2**40, 2**40 + 4 * 512), st.integers(2**63, 2**64 - 2048)),
        st.integers(0, 3 * 512),
    ),
    max_size=30,
)


@given(writes)
def test_zones_cover_every_written_byte_and_nothing_beyond_its_zones(ws: list[tuple[int, int]]) -> None:
    zone_size = 512
    m = DirtyMap(zone_size)
    expected: set[int] = set()
    for seq, (off, length) in enumerate(ws, 1):
        m.mark_write(b"f", off, length, seq)
        if length:
            expected.update(range(off // zone_size, (off + length - 1) // zone_size + 1))
    assert zone_numbers(m.zones(b"f"), zone_size) == expected
    assert m.stats()["zones"] == len(expected)


FILES = [b"a", b"b", b"d/x", b"d/y", b"e/x"]
METADATA = {"chmod", "chown", "utimens", "setxattr", "removexattr"}


class Tracking(RuleBasedStateMachine):
    """The map against a plain model: per path, zone -> latest seq and pending cuts; the changelog as a list."""

    def __init__(self) -> None:
        super().__init__()
        self.map = DirtyMap(512)
        self.seq = 0
        self.zones: dict[bytes, dict[int, int]] = {}
        self.cuts: dict[bytes, list[tuple[int, int]]] = {}
        self.log: list[tuple[int, str, bytes, bytes | None]] = []

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def cut(self, path: bytes, size: int, seq: int) -> None:
        first_gone = -(-size // 512)
        self.zones[path] = {z: s for z, s in self.zones.get(path, {}).items() if z < first_gone}
        self.cuts[path] = [c for c in self.cuts.get(path, []) if c[0] < size] + [(size, seq)]

    def move(self, src: bytes, dst: bytes) -> None:
        def under(p: bytes, root: bytes) -> bool:
            return p == root or p.startswith(root + b"/")

        for table in (self.zones, self.cuts):
            for p in [p for p in table if under(p, dst)]:
                del table[p]
            for p in [p for p in table if under(p, src)]:
                table[dst + p[len(src) :]] = table.pop(p)  # type: ignore[assignment]

    def log_append(self, rec: tuple[int, str, bytes, bytes | None]) -> None:
        if rec[1] in METADATA:
            for i in range(len(self.log) - 1, max(len(self.log) - 17, -1), -1):
                if self.log[i][1] not in METADATA:
                    break
                if self.log[i][1:3] == rec[1:3]:
                    del self.log[i]
                    break
        self.log.append(rec)

    @rule(path=st.sampled_from(FILES), off=st.integers(0, 40 * 512), length=st.integers(0, 3 * 512))
    def write(self, path: bytes, off: int, length: int) -> None:
        seq = self.next_seq()
        self.map.mark_write(path, off, length, seq)
        if length:
            for z in range(off // 512, (off + length - 1) // 512 + 1):
                self.zones.setdefault(path, {})[z] = seq

    @rule(path=st.sampled_from(FILES), size=st.integers(0, 40 * 512))
    def truncate(self, path: bytes, size: int) -> None:
        seq = self.next_seq()
        self.map.mark_truncate(path, size, seq)
        self.cut(path, size, seq)

    @rule(path=st.sampled_from(FILES), kind=st.sampled_from(["create", "unlink", "chmod", "utimens"]))
    def one_path_change(self, path: bytes, kind: str) -> None:
        seq = self.next_seq()
        self.map.mark_namespace(kind, path, None, seq)
        if kind == "create":
            self.cut(path, 0, seq)
        elif kind == "unlink":
            self.zones.pop(path, None)
            self.cuts.pop(path, None)
        self.log_append((seq, kind, path, None))

    @rule(forward=st.booleans())
    def rename_directory(self, forward: bool) -> None:
        src, dst = (b"d", b"e") if forward else (b"e", b"d")
        seq = self.next_seq()
        self.map.mark_namespace("rename", src, dst, seq)
        self.move(src, dst)
        self.log_append((seq, "rename", src, dst))

    @rule(back=st.integers(0, 20))
    def confirm(self, back: int) -> None:
        flushed = max(self.seq - back, 0)
        self.map.confirm(flushed)
        for zones in self.zones.values():
            for z in [z for z, s in zones.items() if s <= flushed]:
                del zones[z]
        for path, cuts in self.cuts.items():
            self.cuts[path] = [c for c in cuts if c[1] > flushed]
        self.log = [r for r in self.log if r[0] > flushed]

    @invariant()
    def matches_the_model(self) -> None:
        for path in {*FILES, *self.zones, *self.cuts}:
            got = {z: seq for off, length, seq in self.map.runs(path) for z in range(off // 512, (off + length) // 512)}
            assert got == self.zones.get(path, {}), path
            cuts = self.cuts.get(path)
            assert self.map.truncate_to(path) == (cuts[0][0] if cuts else None), path
        tracked = {p for p in {*self.zones, *self.cuts} if self.zones.get(p) or self.cuts.get(p)}
        assert set(self.map.paths()) == tracked
        assert self.map.changelog() == self.log


Tracking.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestTracking = Tracking.TestCase
