"""The pure parts of a resync: mode choice, copy-id records, throttle, progress, the zones plan, block runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from mirrorcore._native import DirtyMap
from mirrorcore.rfs.blocks import BLOCK, TO_END, differing_runs
from mirrorcore.rfs.copyids import TIMESTAMP_MARGIN, CopyRecord, SyncRecord, choose_mode, new_copy_id
from mirrorcore.rfs.progress import Progress
from mirrorcore.rfs.resync import zones_plan
from mirrorcore.rfs.throttle import Throttle

# ---- mode choice ---------------------------------------------------------------------------------

DONE = SyncRecord(copy_id=7, in_sync_at=1000.0, complete=True)


@pytest.mark.parametrize(
    ("peer", "record", "trusted", "mode", "why"),
    [
        (0, DONE, True, "full", "holds no copy"),
        (7, None, True, "full", "no record"),
        (8, DONE, True, "full", "copy ids differ"),
        (7, DONE, True, "zones", "tracking map is trusted"),
        (7, DONE, False, "timestamp", "map is not trusted"),
        (7, SyncRecord(7, 1000.0, complete=False), True, "timestamp", "did not complete"),
        # An interrupted resync had queued its mark (id 9): the secondary holds either copy.
        (9, SyncRecord(7, 1000.0, complete=False, pending_id=9), True, "timestamp", "did not complete"),
        (9, SyncRecord(7, 1000.0, complete=True, pending_id=0), True, "full", "copy ids differ"),
    ],
)
def test_the_mode_follows_the_copy_ids_the_record_and_the_map(peer, record, trusted, mode, why):
    choice = choose_mode(peer, record, trusted, syncdelta=60.0)
    assert choice.mode == mode
    assert why in choice.reason
    if mode == "timestamp":
        assert choice.since == 1000.0 - 60.0 - TIMESTAMP_MARGIN
    else:
        assert choice.since is None


def test_records_round_trip_and_a_former_secondary_resyncs_by_timestamp_from_its_mark(tmp_path: Path):
    assert SyncRecord.load(tmp_path, 0) is None
    assert CopyRecord.load(tmp_path, 0) == CopyRecord(0, 0.0)
    # Secondary: the mark of copy 5 arrived at t=50. Became primary: no sync record of its own.
    CopyRecord(5, 50.0).save(tmp_path, 0)
    assert SyncRecord.load(tmp_path, 0) == SyncRecord(5, 50.0, complete=False)
    # Its own resync completed later: that record wins.
    SyncRecord(6, 80.0, complete=True).save(tmp_path, 0)
    assert SyncRecord.load(tmp_path, 0) == SyncRecord(6, 80.0, complete=True)
    SyncRecord.forget(tmp_path, 0)
    assert SyncRecord.load(tmp_path, 0) == SyncRecord(5, 50.0, complete=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy-0.json"]  # no temporary left


def test_an_unreadable_record_counts_as_none(tmp_path: Path):
    SyncRecord.file(tmp_path, 1).write_text("{not json")
    assert SyncRecord.load(tmp_path, 1) is None


def test_copy_ids_are_fresh_and_never_zero():
    ids = {new_copy_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(0 < i < 1 << 63 for i in ids)


# ---- throttle --------------------------------------------------------------------------------------


async def test_the_throttle_lets_a_second_of_data_through_then_holds_to_the_rate(autojump_clock):
    throttle = Throttle(1000, burst=500)
    start = trio.current_time()
    await throttle.take(1000)  # the bucket starts full: one second's worth
    assert trio.current_time() == start
    await throttle.take(500)
    assert trio.current_time() - start == pytest.approx(0.5)
    await throttle.take(2000)  # more than the bucket holds: waits for a full bucket, then owes the rest
    await throttle.take(1)
    assert trio.current_time() - start == pytest.approx(2.501)


async def test_unlimited_and_boosted_throttles_never_wait(autojump_clock):
    free = Throttle(None, burst=100)
    start = trio.current_time()
    for _ in range(10):
        await free.take(1 << 30)
    limited = Throttle(10, burst=10)
    limited.command("boost")
    await limited.take(1 << 30)
    assert trio.current_time() == start
    assert (free.state, limited.state) == ("running", "boosted")


async def test_a_boost_ends_a_wait_for_tokens(autojump_clock):
    throttle = Throttle(10, burst=10)
    await throttle.take(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(throttle.take, 10)  # would wait one second
        await trio.sleep(0.1)
        throttle.command("boost")
    assert trio.current_time() == pytest.approx(0.1)


async def test_a_paused_throttle_holds_until_resumed(autojump_clock):
    throttle = Throttle(None, burst=1)
    throttle.command("pause")
    assert throttle.state == "paused"
    done: list[float] = []

    async def worker() -> None:
        await throttle.take(1)
        done.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await trio.sleep(30)
        assert done == []
        throttle.command("resume")
    assert done == [pytest.approx(30)]
    with pytest.raises(ValueError, match="unknown resync command"):
        throttle.command("faster")


# ---- progress ----------------------------------------------------------------------------------------


def test_progress_rate_eta_and_reports_at_most_twice_a_second():
    progress = Progress("full", "why", started=100.0)
    progress.files_total, progress.bytes_total = 4, 4000
    progress.begin_content(101.0)
    assert progress.eta(101.0) is None  # nothing done yet: unknown
    progress.bytes_done, progress.files_done, progress.bytes_sent = 1000, 1, 10
    snap = progress.snapshot(103.0)
    assert (snap["rate"], snap["eta"], snap["seconds"]) == (500, 6.0, 3.0)
    assert (snap["files_done"], snap["files_total"], snap["bytes_sent"], snap["mode"]) == (1, 4, 10, "full")
    seen: list[dict[str, object]] = []
    assert progress.maybe_report(103.0, seen.append)
    assert not progress.maybe_report(103.4, seen.append)
    assert progress.maybe_report(103.5, seen.append)
    assert progress.maybe_report(103.6, seen.append, force=True)
    progress.end(105.0)
    assert progress.snapshot(200.0)["eta"] == 0.0
    assert progress.snapshot(200.0)["seconds"] == 5.0
    assert len(seen) == 3


# ---- zones plan and block runs -----------------------------------------------------------------------


def test_the_zones_plan_covers_zones_everything_after_a_cut_and_linked_names_whole():
    dirty = DirtyMap(128 << 10)
    dirty.mark_write(b"a", 10, 5, 1)  # zone 0
    dirty.mark_write(b"a", 5 * (128 << 10), 1, 2)  # zone 5
    dirty.mark_truncate(b"b", 300_000, 3)
    dirty.mark_write(b"b", 0, 1, 4)
    dirty.mark_namespace("link", b"c", b"d", 5)
    plan = zones_plan(dirty, block=BLOCK)
    zone = 128 << 10
    assert plan[b"a"] == [(0, zone), (5 * zone, zone)]
    cut = 300_000 - 300_000 % BLOCK
    assert plan[b"b"] == [(0, zone), (cut, TO_END - cut)]
    assert plan[b"c"] is None
    assert plan[b"d"] is None


def sums(*blocks: bytes) -> bytes:
    return b"".join(b.ljust(16, b"\0") for b in blocks)


def test_differing_runs_join_neighbours_and_stop_at_the_primarys_size():
    local = sums(b"a", b"b", b"c", b"d", b"e")
    remote = sums(b"a", b"x", b"y", b"d")  # the secondary lacks the last block
    runs = differing_runs(local, remote, offset=BLOCK * 10, block=BLOCK, size=BLOCK * 14 + 100)
    assert runs == [(BLOCK * 11, 2 * BLOCK), (BLOCK * 14, 100)]
    assert differing_runs(local, local, 0, BLOCK, 5 * BLOCK) == []
    assert differing_runs(sums(b"a"), b"", 0, BLOCK, 7) == [(0, 7)]
