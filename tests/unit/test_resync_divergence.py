"""A node that may hold writes its peer never got: its records, what it names on return, how the primary compares it."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from test_resync import BLOCK, FULL, FakeSecondary, Harness, differences

from mirrorcore._native import DirtyMap
from mirrorcore.rfs.copyids import DIVERGED_BIT, CopyRecord, ModeChoice, SyncRecord, announced_copy_id, choose_mode
from mirrorcore.rfs.linkstate import LinkState, Marked, mark_diverged, stop_cleanly
from mirrorcore.rfs.mirror import own_changes
from mirrorcore.rfs.worker import tracking_file

DONE = SyncRecord(copy_id=7, in_sync_at=1000.0, complete=True)

# ---- records and the announced copy id ---------------------------------------------------------------


def test_a_diverged_node_announces_its_copy_with_the_diverged_bit():
    assert announced_copy_id(CopyRecord(7, 1.0, diverged=False)) == 7
    assert announced_copy_id(CopyRecord(7, 1.0, diverged=True)) == 7 | DIVERGED_BIT
    assert announced_copy_id(CopyRecord(0, 1.0, diverged=True)) == 0  # a full copy compares everything anyway


def test_the_primary_keeps_its_mode_for_a_diverged_secondary_but_says_so():
    zones = choose_mode(7 | DIVERGED_BIT, DONE, map_trusted=True, syncdelta=0.0)
    assert (zones.mode, zones.peer_diverged) == ("zones", True)
    assert "wrote on its own" in zones.reason
    stamp = choose_mode(7 | DIVERGED_BIT, DONE, map_trusted=False, syncdelta=0.0)
    assert (stamp.mode, stamp.peer_diverged) == ("timestamp", True)
    assert choose_mode(8 | DIVERGED_BIT, DONE, map_trusted=True, syncdelta=0.0).mode == "full"
    assert choose_mode(7, DONE, map_trusted=True, syncdelta=0.0).peer_diverged is False


def test_copy_records_carry_the_flag_and_older_records_still_load(tmp_path: Path):
    CopyRecord(5, 50.0, diverged=True).save(tmp_path, 0)
    assert json.loads(CopyRecord.file(tmp_path, 0).read_text()) == {"copy_id": 5, "in_sync_at": 50.0, "diverged": True}
    CopyRecord.file(tmp_path, 1).write_text('{"copy_id": 6, "at": 60.0}')  # written before the flag existed
    assert CopyRecord.load(tmp_path, 1) == CopyRecord(6, 60.0, diverged=False)


# ---- the worker's start and clean stop -----------------------------------------------------------------


@dataclass
class FakeLink:
    connected: bool = True
    flushed_seq: int = 10
    last_seq: int = 10


def test_a_worker_start_marks_the_node_diverged_and_only_a_fully_flushed_clean_stop_clears_it(tmp_path: Path):
    CopyRecord(5, 50.0).save(tmp_path, 0)
    mark_diverged(tmp_path, 0)
    assert CopyRecord.load(tmp_path, 0) == CopyRecord(5, 50.0, diverged=True)  # what a crash leaves
    link = LinkState()
    assert not stop_cleanly(link, tmp_path, 0, wait=0)  # never linked (ALONE all along)
    forwarder = FakeLink(flushed_seq=9)
    link.following(forwarder, Marked(copy_id=6, seq=3, started_at=70.0))  # type: ignore[arg-type]
    assert not stop_cleanly(link, tmp_path, 0, wait=0)  # one operation not on the secondary's disk
    assert CopyRecord.load(tmp_path, 0).diverged
    forwarder.connected = False
    forwarder.flushed_seq = 10
    assert not stop_cleanly(link, tmp_path, 0, wait=0)  # the link is down: cannot know
    forwarder.connected = True
    before = time.time()
    assert stop_cleanly(link, tmp_path, 0, wait=0)
    record = CopyRecord.load(tmp_path, 0)
    assert (record.copy_id, record.diverged) == (6, False)
    assert record.in_sync_at >= before
    assert SyncRecord.load(tmp_path, 0) == SyncRecord(6, record.in_sync_at, complete=True)


# ---- what a returning node names ----------------------------------------------------------------------


def test_a_trusted_map_names_the_changes_else_modification_times_do(tmp_path: Path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    for name in ("old", "sub/new", "sub/touched"):
        (root / name).write_bytes(b"x")
    long_ago = 10**9 * 10**9
    os.utime(root / "old", ns=(long_ago, long_ago))
    since = time.time() - 60
    os.utime(root / "sub/touched", ns=(long_ago, long_ago))  # an old mtime, but the inode changed now (ctime)
    state = tmp_path / "state"
    state.mkdir()
    source, seeds = own_changes(state, 0, root, since)
    assert source == "modification times"
    assert sorted(seeds) == [b"old", b"sub/new", b"sub/touched"]  # ctime: every file was written just now
    dirty = DirtyMap(4096)
    dirty.mark_write(b"sub/new", 0, 1, 1)
    dirty.mark_namespace("rename", b"a", b"b", 2)
    dirty.save(tracking_file(state, 0), clean=False)  # what a crash leaves: distrusted
    assert own_changes(state, 0, root, since)[0] == "modification times"
    dirty.save(tracking_file(state, 0), clean=True)
    source, seeds = own_changes(state, 0, root, since)
    assert source == "its tracking map"
    assert sorted(seeds) == [b"b", b"sub/new"]


# ---- the primary compares what the diverged secondary names, whole -----------------------------------


async def test_in_zones_mode_a_file_the_secondary_names_is_compared_whole_when_it_diverged(tmp_path: Path):
    (tmp_path / "f").write_bytes(os.urandom(8 * BLOCK))
    for diverged in (False, True):
        secondary = FakeSecondary()
        await Harness(tmp_path, secondary, FULL).run()
        # The secondary wrote block 6 itself (as primary, before it crashed); the new primary wrote block 1.
        secondary.tree[b"f"].data[6 * BLOCK] ^= 1
        fd = os.open(tmp_path / "f", os.O_WRONLY)
        os.pwrite(fd, os.urandom(16), BLOCK)
        os.close(fd)
        secondary.needs.append((False, b"f"))  # named by the secondary (seeded), as the quick check would too
        choice = ModeChoice("zones", "test", peer_diverged=diverged)
        progress = await Harness(tmp_path, secondary, choice, {b"f": [(BLOCK, BLOCK)]}).run()
        if diverged:
            assert differences(tmp_path, secondary) == []
            assert progress.bytes_sent == 2 * BLOCK
        else:
            # Without the flag the trusted zones are all that is compared: block 6 stays (why the flag exists).
            assert differences(tmp_path, secondary) == [f"differs {b'f'!r}"]
