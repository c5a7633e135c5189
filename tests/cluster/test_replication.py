"""Real-time replication on two real nodes: FUSE on the primary, the native link, real bytes compared.

Each test runs the demo module (replicated directory /srv/demo) in its own lab, in
synchronous (`async="none"`) and semi-synchronous (`async="second"`) mode.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trees import wait_identical

from mirrorcore.demoset import DemoCluster, DemoSettings

pytestmark = [pytest.mark.cluster, pytest.mark.root]

WORKLOAD = Path(__file__).with_name("workload.py")
PREFIX = Path(__file__).with_name("prefix.py")
MODES = ["none", "second"]


def started(lab, mode: str) -> DemoCluster:
    cluster = DemoCluster(lab)
    cluster.install(DemoSettings(async_mode=mode))
    cluster.start_pair()
    return cluster


@pytest.mark.parametrize("mode", MODES)
def test_concurrent_writers_leave_identical_trees(lab, mode):
    cluster = started(lab, mode)
    writers = [lab.popen("node1", [sys.executable, str(WORKLOAD), "/srv/demo", str(seed), "300"]) for seed in (1, 2, 3)]
    for proc in writers:
        assert proc.wait(timeout=120) == 0
    assert wait_identical(lab) == []
    status = cluster.state("node2")
    receiver = status["rfs"]["receivers"][0]
    assert receiver["frames_rejected"] == 0
    assert receiver["apply_errors"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_the_secondary_only_ever_holds_a_prefix_of_the_primarys_operations(lab, mode, tmp_path):
    started(lab, mode)
    stop = tmp_path / "stop"  # /tmp is shared by the lab's nodes
    watch = [sys.executable, str(PREFIX), "watch", "/srv/demo/order", str(stop)]
    watcher = lab.popen("node2", watch, stdout=subprocess.PIPE)
    try:
        lab.exec("node1", [sys.executable, str(PREFIX), "write", "/srv/demo/order", "3000"], timeout=120)
        assert wait_identical(lab) == []
    finally:
        stop.touch()
    out, _ = watcher.communicate(timeout=60)
    seen = json.loads(out)
    assert seen["violations"] == []
    assert seen["states"] > 10  # it saw the history at many points while it was being made


FALLOCATE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
fd = os.open("/srv/demo/fa", os.O_CREAT | os.O_RDWR, 0o644)
os.pwrite(fd, b"x" * 65536, 0)
for mode, offset, length in [(0, 0, 1 << 20), (1, 0, 4 << 20), (3, 4096, 8192), (16, 32768, 4096)]:
    assert libc.fallocate(fd, mode, offset, length) == 0, os.strerror(ctypes.get_errno())
os.fsync(fd)
"""
HOLE = (
    "import os; fd = os.open('/srv/demo/fa', os.O_RDONLY); print(os.lseek(fd, 0, os.SEEK_HOLE), os.fstat(fd).st_size)"
)


def test_fallocate_is_replicated_holes_included(lab):
    started(lab, "none")
    lab.exec("node1", [sys.executable, "-c", FALLOCATE])
    assert wait_identical(lab) == []
    # Extended to 1 MiB, then the punched range is a hole on the secondary too (not written zeros).
    assert lab.exec("node2", [sys.executable, "-c", HOLE]).stdout.split() == ["4096", str(1 << 20)]


@pytest.mark.parametrize("mode", MODES)
def test_acknowledged_writes_survive_a_crash_of_the_primary(lab, mode):
    cluster = started(lab, mode)
    for i in range(40):
        assert cluster.client("put", f"/kv/k{i}", f"value {i}")[:2] == (201, "node1")
    # Each PUT returned after the app's fsync: from here on they must survive anything on node1.
    lab.crash("node1")
    cluster.wait_for("node2", "ALONE", timeout=15)
    for i in range(40):
        assert cluster.client("get", f"/kv/k{i}")[:3] == (200, "node2", f"value {i}")


def _worker_pids() -> list[int]:
    """The demo module's FUSE workers (the lab's nodes share /proc; only a primary has one)."""
    found = subprocess.run(["pgrep", "-f", "mirrorcore.rfs.worker --module demo "], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_a_killed_replication_worker_is_replaced_and_the_app_restarted_on_the_new_mount(lab):
    cluster = started(lab, "none")
    assert cluster.client("put", "/kv/before", "1")[:2] == (201, "node1")
    [worker] = _worker_pids()
    app = lab.host_path("node1", "/run/mirrorcore/demoapp.pid").read_text()
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (status := cluster.state("node1"))["loop"]["count"] < 1 or status["state"] != "PRIM":
        log = cluster.module_log("node1")[-3000:]
        assert time.monotonic() < deadline, f"no restart after the worker was killed: {status['reason']}\n{log}"
        time.sleep(0.2)
    cluster.wait_for("node1", "PRIM", timeout=30)
    assert lab.host_path("node1", "/run/mirrorcore/demoapp.pid").read_text() != app  # the app was restarted
    assert [p for p in _worker_pids() if p != worker]  # by a new worker, on a new mount
    cluster.wait_for("node2", "SECOND", timeout=60)  # resynced: mirroring again
    assert cluster.client("put", "/kv/after", "2")[:2] == (201, "node1")
    assert cluster.client("get", "/kv/before")[:3] == (200, "node1", "1")
    assert wait_identical(lab) == []
    log = cluster.module_log("node1")
    assert "The replication worker of /srv/demo was killed by signal SIGKILL: its mount is dead" in log
    assert cluster.state("node1")["loop"]["count"] == 1  # counted against maxloop, once


def test_a_worker_does_not_outlive_its_daemon(lab):
    started(lab, "second")
    [worker] = _worker_pids()
    daemon = int(lab.host_path("node1", "/run/mirrorcore/demo.pid").read_text())
    os.kill(daemon, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while worker in _worker_pids():
        assert time.monotonic() < deadline, "the worker outlived its daemon"
        time.sleep(0.1)
    # It stopped cleanly: unmounted, and its map saved for the next start.
    assert "fuse" not in lab.exec("node1", ["cat", "/proc/self/mountinfo"]).stdout
    assert lab.host_path("node1", "/var/lib/mirrorcore/demo/dirty-0.bin").exists()


def test_a_directory_that_cannot_be_mounted_keeps_the_application_from_starting(lab):
    cluster = DemoCluster(lab)
    cluster.install(DemoSettings(async_mode="none"))
    lab.exec("node1", ["mount", "--bind", "/dev/null", "/dev/fuse"])  # as if FUSE were missing on node1
    cluster.ctl("node1", "prim")
    status = cluster.wait_for("node1", "STOP", "red", timeout=60)
    assert (
        "start_prim failed: not run: replicated directory /srv/demo could not be mounted"
        " (RuntimeError: fuse_session_mount failed; see /var/log/mirrorcore/demo/worker.log)"
    ) in status["reason"]
    assert not lab.host_path("node1", "/run/mirrorcore/demoapp.pid").exists()  # the application never ran
    assert "Script start_prim" not in cluster.module_log("node1")


def test_a_returning_old_primary_is_resynced_by_zones_and_mirrors_again(lab):
    cluster = started(lab, "second")
    cluster.client("put", "/kv/before", "1")
    lab.crash("node1")
    cluster.wait_for("node2", "ALONE", timeout=15)
    cluster.client("put", "/kv/while_alone", "2")
    stale = lab.host_path("node1", "/srv/demo/data/stale")
    stale.write_text("only on node1")  # must not survive the resync
    cluster.ctl("node1", "start", check=True)
    cluster.wait_for("node1", "SECOND", timeout=30)
    cluster.wait_for("node2", "PRIM", timeout=10)
    # Both hold the copy of node1's last resync, and node2 tracked everything since it took over: by
    # zones; node1's own writes after that copy (it crashed: it names them) are compared whole.
    resync = cluster.state("node2")["rfs"]["last_resync"]
    assert resync["mode"] == "zones", resync["reason"]
    assert "wrote on its own" in resync["reason"]
    cluster.client("put", "/kv/after", "3")
    assert wait_identical(lab) == []
    assert not stale.exists()
    assert lab.host_path("node1", "/srv/demo/data/while_alone").read_text() == "2"


def test_after_a_swap_the_old_primary_returns_by_zones_with_nothing_of_its_own(lab):
    cluster = started(lab, "second")
    cluster.client("put", "/kv/before", "1")
    cluster.ctl("node1", "stop", check=True)  # clean: node1 leaves only once node2 has everything
    cluster.wait_for("node2", "ALONE", timeout=15)
    cluster.client("put", "/kv/while_alone", "2")
    cluster.ctl("node1", "start", check=True)
    cluster.wait_for("node1", "SECOND", timeout=30)
    cluster.wait_for("node2", "PRIM", timeout=10)
    resync = cluster.state("node2")["rfs"]["last_resync"]
    assert resync["mode"] == "zones", resync["reason"]
    assert "wrote on its own" not in resync["reason"]
    assert wait_identical(lab) == []
    assert lab.host_path("node1", "/srv/demo/data/while_alone").read_text() == "2"


def test_a_frozen_secondary_is_dropped_after_sendtimeout_and_catches_up_later(lab):
    cluster = started(lab, "second")
    node2_daemon = cluster.state("node2")["pid"]
    os.kill(node2_daemon, signal.SIGSTOP)
    try:
        began = time.monotonic()
        # The app's fsync waits for the frozen secondary at most sendtimeout (5 s), then goes on alone.
        assert cluster.client("put", "/kv/during", "frozen", timeout=20)[:2] == (201, "node1")
        assert time.monotonic() - began < 12
        cluster.wait_for("node1", "ALONE", timeout=15)
        for i in range(5):
            assert cluster.client("put", f"/kv/alone{i}", "x")[:2] == (201, "node1")
    finally:
        os.kill(node2_daemon, signal.SIGCONT)
    # Back, node2 learns it missed writes, gets a new copy and mirrors again.
    cluster.wait_for("node2", "SECOND", timeout=30)
    cluster.wait_for("node1", "PRIM", timeout=15)
    assert wait_identical(lab) == []
    assert lab.host_path("node2", "/srv/demo/data/during").read_text() == "frozen"


def test_the_secondary_copy_is_read_only_to_applications(lab):
    cluster = started(lab, "second")
    refused = lab.exec("node2", ["sh", "-c", "echo x > /srv/demo/intruder"], check=False)
    assert refused.returncode != 0
    assert "Read-only file system" in refused.stderr
    assert cluster.client("put", "/kv/k", "v")[:2] == (201, "node1")
    assert wait_identical(lab) == []
    # After a failover the new primary's directory is writable again (and replicated from there).
    lab.crash("node1")
    cluster.wait_for("node2", "ALONE", timeout=15)
    assert lab.exec("node2", ["sh", "-c", "echo y > /srv/demo/allowed"], check=False).returncode == 0
