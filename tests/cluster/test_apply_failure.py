"""An operation the secondary cannot apply halts replication there, says why, and the next resync repairs it."""

from __future__ import annotations

import time

import pytest
from trees import wait_identical

from mirrorcore.demoset import DemoCluster, DemoSettings
from mirrorcore.lab import Lab

pytestmark = [pytest.mark.cluster, pytest.mark.root]


def test_a_copy_that_cannot_apply_an_operation_is_not_uptodate_until_the_resync_repairs_it(lab: Lab) -> None:
    cluster = DemoCluster(lab)
    cluster.install(DemoSettings())
    cluster.start_pair()
    # Behind the mirror's back, node2's copy gets a file where node1 will make a directory.
    lab.host_path("node2", "/srv/demo/d").write_text("not the primary's")
    lab.exec("node1", ["mkdir", "/srv/demo/d"], check=True)
    lab.exec("node1", ["sh", "-c", "echo inside > /srv/demo/d/f && sync /srv/demo/d/f"], check=True)

    # node1 says why node2 stopped (the halt names the operation and the error), keeps the change recorded,
    # reconnects, and its resync replaces the file by the directory: node2 is a usable copy again.
    deadline = time.monotonic() + 30
    while "stopped at seq" not in cluster.module_log("node1") and time.monotonic() < deadline:
        time.sleep(0.2)
    log = cluster.module_log("node1")
    assert "stopped at seq" in log
    assert "mkdir d" in log
    status = cluster.wait_for("node2", "SECOND", timeout=60)
    assert status["uptodate"]
    assert not wait_identical(lab)
    assert (lab.host_path("node2", "/srv/demo/d/f")).read_text() == "inside\n"
    # Meanwhile node2 did not claim a usable copy.
    assert "not uptodate until its new copy arrives" in cluster.module_log("node2")
