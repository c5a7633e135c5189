"""Tracking on two real nodes: while ALONE the primary records exactly the zones it changed (SPEC §6).

node1 mirrors /srv/demo to node2; node2 stops cleanly; writes through node1's mount at known offsets
must show up as exactly those zones in `mirrorctl state --json` (`rfs.tracking`) and, after a clean stop
of node1, in its saved map `dirty-0.bin` with the clean flag. A crash of node1 leaves the map unclean.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from mirrorcore._native import DirtyMap
from mirrorcore.demoset import DemoCluster, DemoSettings

pytestmark = [pytest.mark.cluster, pytest.mark.root]

DIR = "/srv/demo"
MAP = "/var/lib/mirrorcore/demo/dirty-0.bin"
ZONE = 128 << 10  # the default ruzone_blocksize

PREPARE = """
import os
fd = os.open("/srv/demo/track.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.pwrite(fd, b"\\0" * (1 << 20), 0)
os.fsync(fd)
os.close(fd)
"""

#: Writes at known offsets, then `repeat` more writes inside the same zones.
WRITES = f"""
import os, sys
repeat = int(sys.argv[1])
fd = os.open("/srv/demo/track.bin", os.O_WRONLY)
os.pwrite(fd, b"a" * 10, 0)                       # zone 0
os.pwrite(fd, b"b" * 100, 5 * {ZONE} + 3)         # zone 5
os.pwrite(fd, b"cd", 40 * {ZONE} - 1)             # zones 39 and 40 (extends the file)
for i in range(repeat):
    os.pwrite(fd, b"e" * 512, (i * 7919) % ({ZONE} - 512))  # zone 0 again and again
    os.pwrite(fd, b"f" * 512, 5 * {ZONE} + (i * 104729) % ({ZONE} - 512))
os.close(fd)
"""

EXPECTED = [(0, ZONE), (5 * ZONE, ZONE), (39 * ZONE, 2 * ZONE)]


def started(lab, mode: str) -> DemoCluster:
    cluster = DemoCluster(lab)
    cluster.install(DemoSettings(async_mode=mode))
    cluster.start_pair()
    return cluster


def tracking(cluster: DemoCluster, node: str = "node1") -> dict[str, Any]:
    return cluster.state(node)["rfs"].get("tracking", {}).get(DIR, {})


def wait_tracking(cluster: DemoCluster, what: str, cond, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        seen = tracking(cluster)
        if seen and cond(seen):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"rfs.tracking never showed {what}; last seen {seen}")


def stop(cluster: DemoCluster, node: str) -> None:
    """A clean stop, waited for (the daemon reaches STOP, or exits): the worker has unmounted and saved its map."""
    cluster.ctl(node, "stop", check=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = cluster.ctl(node, "state", "--json")
        if result.returncode != 0 or json.loads(result.stdout)["state"] == "STOP":
            return
        time.sleep(0.2)
    raise AssertionError(f"{node} did not stop")


def alone_and_tracking(lab, mode: str) -> DemoCluster:
    """The pair mirrors track.bin (1 MiB, flushed on node2), then node2 stops cleanly: node1 is ALONE."""
    cluster = started(lab, mode)
    lab.exec("node1", [sys.executable, "-c", PREPARE])
    # Mirroring: the map holds only what node2 has not flushed yet, so it empties.
    wait_tracking(cluster, "an active, empty map", lambda t: t["active"] and t["files"] == 0 and t["zones"] == 0)
    cluster.ctl("node2", "stop", check=True)
    cluster.wait_for("node1", "ALONE", timeout=15)
    return cluster


@pytest.mark.parametrize("mode", ["none", "second"])
def test_writes_while_alone_are_exactly_the_tracked_zones_and_survive_a_clean_stop(lab, mode):
    cluster = alone_and_tracking(lab, mode)
    lab.exec("node1", [sys.executable, "-c", WRITES, "3000"], timeout=120)
    seen = wait_tracking(cluster, "the four zones written", lambda t: t["zones"] == 4)
    assert seen["files"] == 1
    assert seen["bytes_tracked"] == 4 * ZONE
    assert seen["changelog_len"] == 0
    assert seen["zone_size"] == ZONE
    assert seen["trusted"] is True
    # 6,000 writes to the same zones cost no more than the first three.
    assert seen["runs"] <= 3
    assert seen["memory_bytes"] < 4096

    stop(cluster, "node1")
    saved = DirtyMap.load(lab.host_path("node1", MAP))
    assert saved.clean
    assert saved.paths() == [b"track.bin"]
    assert saved.zones(b"track.bin") == EXPECTED
    assert saved.changelog() == []


def test_namespace_changes_while_alone_are_in_the_changelog(lab):
    cluster = alone_and_tracking(lab, "second")
    script = "import os; os.mkdir('/srv/demo/newdir'); os.rename('/srv/demo/track.bin', '/srv/demo/newdir/t')"
    lab.exec("node1", [sys.executable, "-c", script])
    seen = wait_tracking(cluster, "the mkdir and the rename", lambda t: t["changelog_len"] >= 2)
    assert seen["files"] == 0  # renaming a file whose zones are all on node2 moves nothing
    stop(cluster, "node1")
    saved = DirtyMap.load(lab.host_path("node1", MAP))
    kinds = [(kind, path, path2) for _, kind, path, path2 in saved.changelog()]
    assert ("mkdir", b"newdir", None) in kinds
    assert ("rename", b"track.bin", b"newdir/t") in kinds


def test_a_crash_of_the_primary_while_tracking_leaves_a_map_that_is_not_trusted(lab):
    cluster = alone_and_tracking(lab, "second")
    lab.exec("node1", [sys.executable, "-c", WRITES, "10"])
    wait_tracking(cluster, "the four zones written", lambda t: t["zones"] == 4)
    lab.crash("node1")
    assert not DirtyMap.load(lab.host_path("node1", MAP)).clean


def test_a_returning_secondary_gets_the_tracked_zones_and_the_map_starts_over(lab):
    cluster = alone_and_tracking(lab, "second")
    lab.exec("node1", [sys.executable, "-c", WRITES, "10"])
    wait_tracking(cluster, "the four zones written", lambda t: t["zones"] == 4)
    cluster.ctl("node2", "start", check=True)
    cluster.wait_for("node2", "SECOND", timeout=30)
    cluster.wait_for("node1", "PRIM", timeout=15)
    resync = cluster.state("node1")["rfs"]["last_resync"]
    assert resync["mode"] == "zones", resync["reason"]
    assert resync["bytes_done"] <= 4 * ZONE  # the zones, not the file
    seen = wait_tracking(cluster, "an empty map", lambda t: t["zones"] == 0 and t["changelog_len"] == 0)
    assert seen["trusted"] is True
    primary = lab.host_path("node1", "/srv/demo/track.bin").read_bytes()
    assert lab.host_path("node2", "/srv/demo/track.bin").read_bytes() == primary
