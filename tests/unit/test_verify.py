"""Verify against the in-memory secondary of test_resync: what it finds, what it repairs, and what it must not find.

The primary is a real directory; the secondary (`FakeSecondary`) applies every operation the moment it is
queued and answers list and checksum requests from its own tree, as a real one answers at that point of
the stream.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio
from test_resync import BLOCK, CHUNK, FULL, FakeSecondary, Harness, differences, local_sums

from mirrorcore.rfs.filters import Filter
from mirrorcore.rfs.linkstate import LinkState
from mirrorcore.rfs.throttle import Throttle
from mirrorcore.rfs.verify import Verify, verify_command


def make_tree(root: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "big").write_bytes(os.urandom(5 * CHUNK + 123))
    (root / "d" / "small").write_bytes(os.urandom(100))
    (root / "e").mkdir()
    (root / "e" / "x").write_bytes(os.urandom(3 * BLOCK))
    (root / "link").symlink_to("d/small")
    (root / "empty").write_bytes(b"")


async def mirrored(root: Path) -> FakeSecondary:
    """A secondary holding an exact copy of `root` (a full resync)."""
    make_tree(root)
    secondary = FakeSecondary()
    await Harness(root, secondary, FULL).run()
    assert differences(root, secondary) == []
    return secondary


async def verify(root: Path, secondary: FakeSecondary, *, repair: bool = False) -> dict[str, Any]:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        check = Verify(
            fd,
            secondary,
            Filter([], [], []),
            repair=repair,
            throttle=Throttle(None, burst=CHUNK),
            local_sums=local_sums,
            block=BLOCK,
            chunk=CHUNK,
        )
        return await check.run()
    finally:
        os.close(fd)


def found(result: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {(d["path"], d["what"]): d.get("ranges") for d in result["differences"]}


async def test_identical_copies_match_and_every_byte_is_compared(tmp_path: Path):
    secondary = await mirrored(tmp_path)
    sent_before = secondary.sent
    result = await verify(tmp_path, secondary)
    assert result["matched"] is True
    assert result["differences"] == []
    assert result["total"] == 0
    assert result["files_checked"] == 4
    assert result["bytes_checked"] == 5 * CHUNK + 123 + 100 + 3 * BLOCK
    assert secondary.sent == sent_before  # nothing was sent


async def test_every_kind_of_difference_is_named_and_nothing_is_changed_without_repair(tmp_path: Path):
    secondary = await mirrored(tmp_path)
    tree = secondary.tree
    tree[b"d/big"].data[3 * CHUNK + 5 * BLOCK + 17] ^= 0xFF  # one corrupted block, behind the mirror's back
    tree[b"d/big"].data[7] ^= 0xFF  # and another one, in the first chunk
    del tree[b"d/small"]
    tree[b"d/stray"] = type(tree[b"e"])("file", 0o644, bytearray(b"stray"))
    tree[b"e/x"].mode = 0o600
    tree[b"e/x"].uid = 4242
    tree[b"link"].target = b"elsewhere"
    del tree[b"empty"].data[:]
    tree[b"empty"].data.extend(b"longer")
    log_before = len(secondary.log)
    result = await verify(tmp_path, secondary)
    assert result["matched"] is False
    assert found(result) == {
        ("d/big", "data"): [[0, BLOCK], [3 * CHUNK + 5 * BLOCK, BLOCK]],
        ("d/small", "missing"): None,
        ("d/stray", "extra"): None,
        ("e/x", "mode"): None,
        ("e/x", "owner"): None,
        ("link", "target"): None,
        ("empty", "size"): None,
    }
    assert result["total"] == result["remaining"] == 7
    assert result["repaired"] is False
    kinds = {kind for kind, _ in secondary.log[log_before:]}
    assert kinds <= {"request_list", "request_sums"}  # only questions were asked


async def test_repair_sends_exactly_the_differing_blocks_and_leaves_identical_copies(tmp_path: Path):
    secondary = await mirrored(tmp_path)
    tree = secondary.tree
    tree[b"d/big"].data[3 * CHUNK + 5 * BLOCK + 17] ^= 0xFF
    del tree[b"d/small"]
    tree[b"d/stray"] = type(tree[b"e"])("file", 0o644, bytearray(b"stray"))
    tree[b"e/x"].mode = 0o600
    del tree[b"e/x"].data[BLOCK:]  # shorter on the secondary
    tree[b"e/x"].mtime_ns += 1
    sent_before = secondary.sent
    result = await verify(tmp_path, secondary, repair=True)
    assert result["matched"] is False
    assert result["repaired"] is True
    assert result["remaining"] == 0
    assert all(d["repaired"] for d in result["differences"])
    assert found(result)[("d/big", "data")] == [[3 * CHUNK + 5 * BLOCK, BLOCK]]
    assert found(result)[("e/x", "data")] == [[BLOCK, 2 * BLOCK]]
    # The corrupted block, the missing tail of e/x, and the recreated small file: nothing more.
    assert secondary.sent - sent_before == BLOCK + 2 * BLOCK + 100
    assert differences(tmp_path, secondary) == []
    again = await verify(tmp_path, secondary)
    assert again["matched"] is True


async def test_application_writes_during_the_verify_are_not_differences(tmp_path: Path):
    secondary = await mirrored(tmp_path)
    big = tmp_path / "d" / "big"
    writes: list[str] = []

    def app_write(path: Path, rel: bytes, offset: int, data: bytes) -> None:
        """A write through the mount: applied on the primary, then forwarded (in stream order)."""
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        secondary.write(rel, offset, data, mtime_ns=path.stat().st_mtime_ns)
        writes.append(rel.decode())

    def after_sums(rel: bytes) -> None:
        # Between one chunk's comparison and the next: the file grows, and a block already compared changes.
        if rel == b"d/big" and len(writes) < 3:
            app_write(big, rel, 5 * CHUNK + 123, os.urandom(2 * BLOCK))
            app_write(big, rel, 10, b"late")

    def after_list(rel_dir: bytes) -> None:
        # After the root was listed: a file not compared yet changes size and time.
        if rel_dir == b"" and not writes:
            app_write(tmp_path / "e" / "x", b"e/x", 3 * BLOCK, b"appended")

    secondary.on_request.append(after_sums)
    secondary.on_list.append(after_list)
    result = await verify(tmp_path, secondary)
    assert writes == ["e/x", "d/big", "d/big"]
    assert result["matched"] is True, result["differences"]
    assert differences(tmp_path, secondary) == []


async def test_a_missing_directory_is_named_once_without_repair_and_rebuilt_with_it(tmp_path: Path):
    secondary = await mirrored(tmp_path)
    for path in [p for p in secondary.tree if p == b"d" or p.startswith(b"d/")]:
        del secondary.tree[path]
    result = await verify(tmp_path, secondary)
    assert found(result) == {("d", "missing"): None}
    result = await verify(tmp_path, secondary, repair=True)
    assert (result["repaired"], result["remaining"]) == (True, 0)
    assert differences(tmp_path, secondary) == []


async def test_verify_is_refused_without_a_following_secondary_or_during_a_resync(tmp_path: Path):
    events: list[dict[str, Any]] = []
    link = LinkState()
    filter = Filter([], [], [])
    throttle = Throttle(None, burst=CHUNK)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        await verify_command(fd, filter, link, throttle, False, lambda **e: events.append(e))
        link.resyncing = True
        await verify_command(fd, filter, link, throttle, True, lambda **e: events.append(e))
    finally:
        os.close(fd)
    assert [e["matched"] for e in events] == [False, False]
    assert "no secondary is linked" in events[0]["error"]
    assert "a resync is running" in events[1]["error"]
    assert not link.verifying


async def test_a_verify_does_not_hold_the_application_back_between_its_steps(tmp_path: Path):
    """Other tasks (the FUSE handlers) run between the verify's steps."""
    secondary = await mirrored(tmp_path)
    ran: list[int] = []

    async def application() -> None:
        while True:
            ran.append(len(secondary.log))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(application)
        await verify(tmp_path, secondary)
        nursery.cancel_scope.cancel()
    assert len(set(ran)) > 5
