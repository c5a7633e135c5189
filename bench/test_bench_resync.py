"""Catching up: time and bytes of each resync mode on one tree, beside rsync of the same data (issue 4).

One lab for the module; the tests run in file order, each from where the previous left the copies:

1. rsync -a of the tree to an empty directory, then rsync (delta transfer) of a change to it — both on
   node1's disk, before the module runs;
2. full resync to an empty secondary (node2's directory is empty);
3. full resync to an identical secondary (`second fullsync` on node2);
4. zones: node2 stopped cleanly, the change made through node1's mount, node2 started again;
5. since timestamp: node2 stopped, another change of the same size, node1 crashed (its tracking map
   is then distrusted) and restarted alone, node2 started again.

The page cache is dropped before each step, so every step reads from the disk. After each mirror step
both trees are compared (`tests/cluster/trees.py`). With `--benchmark-disable` (CI) the tree is tiny.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirrorcore.demoset import DemoCluster, DemoSettings
from mirrorcore.lab import Lab
from resync_report import ResyncResults, ResyncRow

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "cluster"))
from trees import differences

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.timeout(3600)]

TREEGEN = Path(__file__).with_name("treegen.py")
DIR = "/srv/demo"
RSYNC_SRC, RSYNC_COPY = "/srv/rsync-src", "/srv/rsync-copy"
MIB = 1 << 20
# (files, smallest, largest) under `make bench`, and in CI.
FULL_TREE = (2000, 64 << 10, 4 * MIB)
SHORT_TREE = (100, 4 << 10, 64 << 10)
CHANGE = (5, 1)  # percent of files, percent of bytes
RESYNC_TIMEOUT = 1800.0


def _drop_caches() -> None:
    # Both nodes share this machine's page cache: without this, the second reader of a file reads memory.
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


class ResyncRig:
    """The module's lab, the tree's size and what the steps found."""

    def __init__(self, lab: Lab, tree: tuple[int, int, int], results: ResyncResults) -> None:
        self.lab = lab
        self.tree = tree
        self.results = results
        self.tree_bytes = 0
        self.cluster = DemoCluster(lab)
        self.cluster.install(DemoSettings())

    def node1(self, *argv: str, timeout: float = 1800) -> str:
        return self.lab.exec("node1", list(argv), check=True, timeout=timeout).stdout

    def treegen(self, *args: object) -> dict[str, int]:
        out = self.node1(sys.executable, str(TREEGEN), *map(str, args))
        result: dict[str, int] = json.loads(out.strip().splitlines()[-1])
        return result

    def rsync(self, src: str, dst: str, *extra: str) -> tuple[float, int]:
        _drop_caches()
        started = time.monotonic()
        out = self.node1("rsync", "-a", "--stats", *extra, f"{src}/", f"{dst}/")
        seconds = time.monotonic() - started
        match = re.search(r"Total bytes sent: ([\d,.]+)", out)
        assert match, out
        return seconds, int(re.sub(r"[,.]", "", match.group(1)))

    def resync(self, *command: str) -> tuple[float, dict[str, Any], int]:
        """`mirrorctl COMMAND` on node2, until node2 is SECOND green: (seconds, node1's last_resync, wire bytes)."""
        _drop_caches()
        started = time.monotonic()
        self.cluster.ctl("node2", *command, check=True)
        self.cluster.wait_for("node2", "SECOND", timeout=RESYNC_TIMEOUT)
        seconds = time.monotonic() - started
        self.cluster.wait_for("node1", "PRIM", timeout=60)
        last: dict[str, Any] = self.cluster.state("node1")["rfs"]["last_resync"]
        receivers = self.cluster.state("node2")["rfs"].get("receivers") or [{}]
        wire = sum(int(r.get("bytes_received", 0)) for r in receivers)
        diff = differences(self.lab.host_path("node1", DIR), self.lab.host_path("node2", DIR))
        assert not diff, f"after `{' '.join(command)}` the copies differ: {diff[:5]}"
        return seconds, last, wire

    def measure(self, benchmark: Any, key: str, title: str, *command: str) -> dict[str, Any]:
        seconds, last, wire = benchmark.pedantic(self.resync, args=command, rounds=1, iterations=1)
        self.results.rows.append(ResyncRow(key, title, seconds, int(last["bytes_sent"]), wire, str(last["mode"])))
        benchmark.extra_info.update({"seconds": seconds, "bytes_sent": last["bytes_sent"], "mode": last["mode"]})
        return last

    def stop_node2(self) -> None:
        self.cluster.ctl("node2", "stop", check=True)
        self.cluster.wait_for("node1", "ALONE", timeout=60)


@pytest.fixture(scope="module")
def rig(request: pytest.FixtureRequest, resync_results: ResyncResults) -> Iterator[ResyncRig]:
    if os.geteuid() != 0 or not Path("/dev/fuse").exists():
        pytest.fail("the resync benchmark needs root and /dev/fuse; deselect it with -m 'not root'")
    lab = Lab(f"mcrs{os.getpid() % 10000}")
    try:
        lab.up()
        short = request.config.getoption("benchmark_disable")
        yield ResyncRig(lab, SHORT_TREE if short else FULL_TREE, resync_results)
    finally:
        lab.down()


def test_rsync_of_the_tree_and_of_a_change(rig: ResyncRig, benchmark: Any) -> None:
    files, low, high = rig.tree
    rig.tree_bytes = rig.treegen("make", DIR, files, low, high, 1)["bytes"]
    rig.results.tree = f"{files:,} files of {low >> 10} KiB to {high >> 10} KiB, {rig.tree_bytes / MIB:,.0f} MiB"
    seconds, sent = benchmark.pedantic(rig.rsync, args=(DIR, RSYNC_COPY), rounds=1, iterations=1)
    rig.results.rows.append(ResyncRow("rsync-full", "`rsync -a` to an empty directory", seconds, sent, None, "rsync"))
    rig.node1("cp", "-a", RSYNC_COPY, RSYNC_SRC)
    changed = rig.treegen("change", RSYNC_SRC, *CHANGE, 2)
    rig.results.change = (
        f"{changed['bytes'] / MIB:,.1f} MiB rewritten in {changed['files']} files "
        f"({CHANGE[1]}% of the bytes in {CHANGE[0]}% of the files)"
    )
    seconds, sent = rig.rsync(RSYNC_SRC, RSYNC_COPY, "--no-whole-file")
    title = "`rsync -a --no-whole-file` of the change"
    rig.results.rows.append(ResyncRow("rsync-change", title, seconds, sent, None, "rsync"))
    rig.node1("rm", "-rf", RSYNC_SRC, RSYNC_COPY)
    assert sent < changed["bytes"] * 4, "rsync's delta transfer sent far more than the change"


def test_full_resync_to_an_empty_secondary(rig: ResyncRig, benchmark: Any) -> None:
    rig.cluster.ctl("node1", "prim", check=True)
    rig.cluster.wait_for("node1", "ALONE", timeout=60)
    last = rig.measure(benchmark, "full-empty", "full, to an empty secondary", "second")
    assert last["mode"] == "full"


def test_full_resync_to_an_identical_secondary_sends_almost_nothing(rig: ResyncRig, benchmark: Any) -> None:
    rig.stop_node2()
    last = rig.measure(benchmark, "full-same", "full, to an identical secondary", "second", "fullsync")
    assert last["mode"] == "full"
    assert last["bytes_sent"] < rig.tree_bytes // 50, "an identical secondary was sent more than 2% of the tree"


def test_zones_after_a_clean_stop_of_the_secondary(rig: ResyncRig, benchmark: Any) -> None:
    rig.stop_node2()
    rig.treegen("change", DIR, *CHANGE, 2)
    last = rig.measure(benchmark, "zones", "zones, after a clean stop of the secondary", "start")
    assert last["mode"] == "zones"


def test_since_timestamp_after_a_crash_of_the_primary(rig: ResyncRig, benchmark: Any) -> None:
    rig.stop_node2()
    rig.treegen("change", DIR, *CHANGE, 3)
    rig.lab.crash("node1")
    rig.cluster.ctl("node1", "prim", check=True)
    rig.cluster.wait_for("node1", "ALONE", timeout=60)
    last = rig.measure(benchmark, "timestamp", "since timestamp, after a crash of the primary", "start")
    assert last["mode"] == "timestamp"
