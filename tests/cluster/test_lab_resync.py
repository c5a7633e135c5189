"""Online resynchronization on two real nodes: the application writes through the mount all along.

Trees of a few thousand files are written straight to the nodes' disks before the module starts
(the data a node holds), then the demo module resyncs them; both trees are compared byte by byte
(`trees.differences`) and by `mirrorctl verify` on node1 (the product's own block comparison,
which must agree). The mode and the bytes sent come from node1's `state --json`
(`rfs.last_resync`, the worker's event when the completion mark was queued).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from trees import differences, make_tree, wait_identical

from mirrorcore.demoset import DemoCluster, DemoSettings
from mirrorcore.lab import Lab

pytestmark = [pytest.mark.cluster, pytest.mark.root]

DIR = "/srv/demo"
WORKLOAD = Path(__file__).with_name("workload.py")
FILES = 2500
STOP = "/run/mirrorcore/churn.stop"
COUNT = "/run/mirrorcore/churn.count"


def installed(lab: Lab, *, throttle: str | None = None) -> DemoCluster:
    cluster = DemoCluster(lab)
    cluster.install(DemoSettings())
    if throttle is not None:
        for node in ("node1", "node2"):
            conf = lab.host_path(node, "/etc/mirrorcore/modules/demo/conf/userconfig.xml")
            conf.write_text(conf.read_text().replace("<rfs ", f'<rfs reiallowedbw="{throttle}" nbrei="2" ', 1))
    return cluster


def last_resync(cluster: DemoCluster) -> dict[str, Any]:
    resync: dict[str, Any] = cluster.state("node1")["rfs"]["last_resync"]
    return resync


def progress(cluster: DemoCluster) -> dict[str, Any]:
    """node1's latest resync progress for the replicated directory ({} before the first)."""
    seen: dict[str, Any] = cluster.state("node1")["rfs"].get("resync", {}).get(DIR, {})
    return seen


def wait_progress(
    cluster: DemoCluster, what: str, cond: Callable[[dict[str, Any]], bool], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        seen = progress(cluster)
        if seen and cond(seen):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"the resync never showed {what}; last seen {seen}")


def verified(cluster: DemoCluster) -> dict[str, Any]:
    """`mirrorctl verify --json` on node1 exits 0 (both copies match block by block); its one result."""
    done = cluster.ctl("node1", "verify", "--json", timeout=300)
    assert done.stdout.strip(), done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    assert done.returncode == 0, results
    [result] = results
    assert result["matched"] is True
    return result


def same_tree_on_both(lab: Lab) -> int:
    """The same tree (times included) on both nodes' disks; returns its bytes."""
    node1 = lab.host_path("node1", DIR)
    node1.mkdir(parents=True, exist_ok=True)
    total = make_tree(node1, FILES, seed=1)
    node2 = lab.host_path("node2", DIR)
    node2.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", f"{node1}/.", str(node2)], check=True)
    return total


def churn(lab: Lab, seed: int) -> subprocess.Popen[str]:
    return lab.popen("node1", [sys.executable, str(WORKLOAD), "--churn", DIR, str(seed), STOP, COUNT])


def churn_count(lab: Lab) -> int:
    path = lab.host_path("node1", COUNT)
    return int(path.read_text()) if path.exists() else 0


def stop_churn(lab: Lab, proc: subprocess.Popen[str]) -> None:
    lab.host_path("node1", STOP).touch()
    assert proc.wait(timeout=120) == 0


def rejoined_under_churn(lab: Lab, cluster: DemoCluster, app: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
    """Waits, the application writing, until node2 is SECOND green (the resync's mark is on its disk).

    Then stops the application. Returns how many operations it made meanwhile, and node1's last resync.
    """
    try:
        before = churn_count(lab)
        cluster.wait_for("node2", "SECOND", timeout=120)
        during = churn_count(lab) - before
    finally:
        stop_churn(lab, app)
    cluster.wait_for("node1", "PRIM")
    return during, last_resync(cluster)


def stop_cleanly(cluster: DemoCluster, node: str) -> None:
    cluster.ctl(node, "stop", check=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = cluster.ctl(node, "state", "--json")
        if result.returncode != 0 or '"state": "STOP"' in result.stdout:
            return
        time.sleep(0.2)
    raise AssertionError(f"{node} did not stop")


def change_through_the_mount(lab: Lab, count: int, size: int) -> None:
    """Rewrites `size` bytes in each of `count` files through node1's mount (the app while node2 is away)."""
    script = f"""
import os, random
rng = random.Random(7)
paths = sorted(os.path.join(d, n) for d, _, ns in os.walk("{DIR}") for n in ns if n.startswith("f"))
for path in rng.sample(paths, {count}):
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, rng.randbytes({size}), rng.randrange(0, 40000))
    os.fsync(fd)
    os.close(fd)
big = os.open("{DIR}/big1", os.O_WRONLY)
os.pwrite(big, rng.randbytes({size}), 3 << 20)
os.close(big)
"""
    lab.exec("node1", [sys.executable, "-c", script], timeout=120)


def test_a_full_resync_to_an_empty_secondary_while_the_application_writes_ends_identical(lab: Lab) -> None:
    total = make_tree(lab.host_path("node1", DIR), FILES, seed=1)
    cluster = installed(lab)
    cluster.ctl("node1", "prim", check=True)
    cluster.wait_for("node1", "ALONE")
    app = churn(lab, seed=11)
    try:
        while churn_count(lab) < 20:  # the application is under way before node2 arrives
            time.sleep(0.1)
        before = churn_count(lab)
        cluster.ctl("node2", "second", check=True)
        cluster.wait_for("node2", "SECOND", timeout=120)
        during = churn_count(lab) - before
    finally:
        stop_churn(lab, app)
    cluster.wait_for("node1", "PRIM")
    assert during > 0  # operations through the mount while node2 was resyncing
    assert wait_identical(lab, timeout=60) == []
    done = last_resync(cluster)
    assert done["mode"] == "full"
    assert done["files_done"] == done["files_total"] >= FILES
    assert done["bytes_sent"] >= total * 0.9  # an empty secondary gets (about) everything
    assert cluster.state("node2")["rfs"]["receivers"][0]["apply_errors"] == 0
    assert verified(cluster)["files_checked"] >= FILES


def test_a_full_resync_to_an_identical_secondary_sends_almost_nothing(lab: Lab) -> None:
    total = same_tree_on_both(lab)
    cluster = installed(lab)
    cluster.start_pair()  # neither node has a copy id: a full resync, block by block
    done = last_resync(cluster)
    assert done["mode"] == "full"
    assert done["bytes_done"] == total
    assert done["bytes_sent"] < total * 0.02
    assert wait_identical(lab) == []
    verified(cluster)


def test_after_a_clean_stop_of_the_secondary_only_the_changed_zones_are_resynced(lab: Lab) -> None:
    total = same_tree_on_both(lab)
    cluster = installed(lab)
    cluster.start_pair()
    stop_cleanly(cluster, "node2")
    cluster.wait_for("node1", "ALONE")
    change_through_the_mount(lab, count=50, size=3000)
    cluster.ctl("node2", "start", check=True)
    cluster.wait_for("node2", "SECOND", timeout=60)
    done = last_resync(cluster)
    assert done["mode"] == "zones", done["reason"]
    assert done["files_total"] == 51
    assert done["bytes_done"] < total * 0.05
    assert 0 < done["bytes_sent"] <= 51 * 2 * (64 << 10)  # at most the blocks the writes touched
    assert wait_identical(lab) == []
    verified(cluster)


def throttled_zone_resync(lab: Lab, throttle: str = "4M/s") -> DemoCluster:
    """A pair that mirrored the tree, node2 stopped, 40 MiB changed; node2 back and resyncing at `throttle`."""
    same_tree_on_both(lab)
    cluster = installed(lab, throttle=throttle)
    cluster.start_pair()
    stop_cleanly(cluster, "node2")
    cluster.wait_for("node1", "ALONE")
    script = f"""
import os
for i in range(4):
    fd = os.open("{DIR}/big%d" % i, os.O_WRONLY)
    os.pwrite(fd, os.urandom(5 << 20), 0)
    os.close(fd)
for i in range(20):
    with open("{DIR}/new%d" % i, "wb") as f:
        f.write(os.urandom(1 << 20))
"""
    lab.exec("node1", [sys.executable, "-c", script], timeout=120)
    cluster.ctl("node2", "start", check=True)
    seen = wait_progress(cluster, "data being sent", lambda p: p["phase"] == "content" and p["bytes_sent"] > 0)
    assert seen["mode"] == "zones"
    assert seen["state"] == "throttled"
    assert seen["bytes_total"] > seen["bytes_done"]
    return cluster


def test_a_secondary_crashed_mid_resync_resumes_by_timestamp_not_full(lab: Lab) -> None:
    """The application rewrites the tree's files from the zones resync's content phase to the end of the next one."""
    cluster = throttled_zone_resync(lab)
    app = churn(lab, seed=12)
    try:
        lab.crash("node2")
        cluster.ctl("node2", "start", check=True)
    except BaseException:
        stop_churn(lab, app)
        raise
    during, done = rejoined_under_churn(lab, cluster, app)
    assert during > 0  # operations through the mount while node2 was resyncing by timestamp
    assert done["mode"] == "timestamp", done["reason"]
    assert "did not complete" in done["reason"]
    assert wait_identical(lab, timeout=60) == []
    verified(cluster)


def test_a_primary_crashed_mid_resync_leaves_the_secondary_waiting_not_uptodate(lab: Lab) -> None:
    cluster = throttled_zone_resync(lab)
    lab.crash("node1")
    seen = cluster.wait_for("node2", "WAIT", "red", timeout=30)
    assert "not uptodate" in seen["reason"]
    assert seen["uptodate"] is False
    # The half-synced copy never serves the application.
    assert cluster.client("get", "/kv/x", timeout=1.0)[0] == 0
    assert differences(lab.host_path("node1", DIR), lab.host_path("node2", DIR)) != []


def test_a_returning_primary_loses_the_writes_its_peer_never_got(lab: Lab) -> None:
    """node1 writes while the flow LAN is cut, crashes; node2 runs alone; node1 returns with node2's copy.

    One of node1's lost writes keeps its file's size and mtime (an application restoring the time, as
    `touch -r` or `rsync -t` do): neither the quick check nor node2's timestamp scan can see it, only
    node1 naming its own changes when it returns (ctime since its sync time: the map died with it).
    """
    cluster = installed(lab)
    cluster.start_pair()
    old = 1_500_000_000
    lab.exec(
        "node1",
        [
            sys.executable,
            "-c",
            f"""
import os
os.makedirs("{DIR}/div", exist_ok=True)
for name in ("rewritten", "grown"):
    with open("{DIR}/div/" + name, "wb") as f:
        f.write(b"A" * 100000)
    os.utime("{DIR}/div/" + name, ({old}, {old}))
""",
        ],
    )
    assert wait_identical(lab) == []
    lab.partition("private")  # the flow LAN: node1 queues, node2 receives nothing; heartbeats go on
    lab.exec(
        "node1",
        [
            sys.executable,
            "-c",
            f"""
import os
with open("{DIR}/div/rewritten", "r+b") as f:
    f.write(b"B" * 5000)
os.utime("{DIR}/div/rewritten", ({old}, {old}))
with open("{DIR}/div/grown", "ab") as f:
    f.write(b"C" * 10)
with open("{DIR}/div/only_on_node1", "wb") as f:
    f.write(b"D")
""",
        ],
    )
    lab.crash("node1")
    cluster.wait_for("node2", "ALONE", timeout=30)
    lab.heal()  # after node2 closed its receiver: nothing node1's kernel still had to send can land now
    node2_file = lab.host_path("node2", f"{DIR}/div/rewritten")
    assert node2_file.read_bytes() == b"A" * 100000  # the lost write really is on node1 only
    assert cluster.client("put", "/kv/while_alone", "2")[:2] == (201, "node2")
    cluster.ctl("node1", "start", check=True)
    cluster.wait_for("node1", "SECOND", timeout=60)
    assert wait_identical(lab) == []
    assert lab.host_path("node1", f"{DIR}/div/rewritten").read_bytes() == b"A" * 100000
    assert not lab.host_path("node1", f"{DIR}/div/only_on_node1").exists()
    assert lab.host_path("node1", f"{DIR}/data/while_alone").read_text() == "2"
    assert "may hold writes its peer never got" in cluster.module_log("node1")
    resync = cluster.state("node2")["rfs"]["last_resync"]
    assert "wrote on its own" in resync["reason"]
