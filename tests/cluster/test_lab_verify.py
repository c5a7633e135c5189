"""`mirrorctl verify [--repair]` on two real nodes: both copies compared online by block checksums.

A block of node2's copy is corrupted behind the mirror's back (written straight to node2's disk,
its mtime restored: only the data differs); verify on node1 names that file and that block, and
`--repair` sends exactly it. An application rewriting files all through a verify causes no
difference: every comparison is taken at one point of the replication stream on both nodes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from trees import make_tree, wait_identical

from mirrorcore.demoset import DemoCluster, DemoSettings
from mirrorcore.lab import Lab

pytestmark = [pytest.mark.cluster, pytest.mark.root]

DIR = "/srv/demo"
WORKLOAD = Path(__file__).with_name("workload.py")
STOP = "/run/mirrorcore/churn.stop"
COUNT = "/run/mirrorcore/churn.count"
BLOCK = 64 << 10


def mirrored(lab: Lab) -> DemoCluster:
    make_tree(lab.host_path("node1", DIR), 400, seed=5)
    cluster = DemoCluster(lab)
    cluster.install(DemoSettings())
    cluster.start_pair()
    assert wait_identical(lab) == []
    return cluster


def verify(cluster: DemoCluster, *args: str) -> tuple[int, list[dict[str, Any]]]:
    """`mirrorctl verify --json ARGS` on node1: (exit status, one result per replicated directory)."""
    done = cluster.ctl("node1", "verify", "--json", *args, timeout=300)
    assert done.stdout.strip(), done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return done.returncode, results


def corrupt(lab: Lab, rel: str, offset: int) -> None:
    """Flips one byte of node2's copy on its disk, keeping the file's times (the mirror never hears of it)."""
    path = lab.host_path("node2", f"{DIR}/{rel}")
    st = path.stat()
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 0xFF]), offset)
    finally:
        os.close(fd)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_verify_names_a_block_corrupted_on_the_secondary_and_repair_sends_exactly_it(lab):
    cluster = mirrored(lab)
    status, results = verify(cluster)
    assert status == 0, results
    assert results[0]["matched"] is True
    assert results[0]["files_checked"] >= 400
    corrupt(lab, "big2", 3 * (1 << 20) + 10)
    status, results = verify(cluster)
    assert status == 1
    [result] = results
    assert result["matched"] is False
    assert result["differences"] == [{"path": "big2", "what": "data", "ranges": [[3 << 20, BLOCK]], "repaired": False}]
    assert lab.host_path("node1", f"{DIR}/big2").read_bytes() != lab.host_path("node2", f"{DIR}/big2").read_bytes()
    status, results = verify(cluster, "--repair")
    assert status == 0, results
    [result] = results
    assert (result["repaired"], result["remaining"]) == (True, 0)
    assert result["bytes_sent"] == BLOCK  # that block and nothing else
    assert wait_identical(lab) == []
    assert verify(cluster)[0] == 0


def test_an_application_writing_during_verify_causes_no_difference(lab):
    cluster = mirrored(lab)
    app = lab.popen("node1", [sys.executable, str(WORKLOAD), "--churn", DIR, "21", STOP, COUNT])
    try:
        count = lab.host_path("node1", COUNT)
        while not count.exists() or int(count.read_text() or 0) < 20:
            time.sleep(0.1)
        before = int(count.read_text())
        status, results = verify(cluster)
        during = int(count.read_text()) - before
    finally:
        lab.host_path("node1", STOP).touch()
        assert app.wait(timeout=120) == 0
    assert during > 0  # the application wrote while the verify ran
    assert status == 0, results
    assert results[0]["matched"] is True
    assert wait_identical(lab) == []


def test_verify_is_refused_on_the_secondary_and_without_one(lab):
    cluster = mirrored(lab)
    done = cluster.ctl("node2", "verify")
    assert done.returncode != 0
    assert "on the primary" in done.stderr
    lab.crash("node2")
    cluster.wait_for("node1", "ALONE", timeout=30)
    status, results = verify(cluster)
    assert status == 1
    assert "no secondary is linked" in results[0]["error"]
    # The copies still match once node2 is back.
    cluster.ctl("node2", "start", check=True)
    cluster.wait_for("node2", "SECOND", timeout=60)
    cluster.wait_for("node1", "PRIM", timeout=30)
    assert verify(cluster)[0] == 0
