"""Replication costs: the same workloads on the raw disk, a FUSE passthrough, and the mirror in both modes.

One lab for the whole session. On node1: a plain directory (/srv/raw, no FUSE), a directory served
by `python -m mirrorcore.rfs.worker --passthrough` (/srv/pass: the same FUSE code, replication off),
and the demo module's replicated directory (/srv/demo), mirrored to node2 in sync (`async="none"`)
then semi-sync (`async="second"`) mode. Each workload (bench/workloads.py) runs inside node1 and
times itself; that figure goes to `benchmark.extra_info` and to the session's table (conftest.py).

`make bench` measures the real sizes. With `--benchmark-disable` (CI) the sizes are tiny and the
tests only check that each workload completed and that the mirrored files reached node2 intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mirrorcore.demoset import DemoCluster, DemoSettings
from mirrorcore.lab import Lab, LabError
from report import TARGETS, Row

pytestmark = [pytest.mark.cluster, pytest.mark.root]

WORKLOADS_PY = Path(__file__).with_name("workloads.py")
MIB = 1 << 20
PASS_MOUNT = "/srv/pass"
ROOTS = {"raw": "/srv/raw/bench", "passthrough": f"{PASS_MOUNT}/bench", "sync": "/srv/demo/bench"}
ROOTS["semisync"] = ROOTS["sync"]
MODES = {"sync": "none", "semisync": "second"}
COPY_TIMEOUT = 120.0  # seconds for node2's copy to catch up (semi-sync writes to disk after acknowledging)


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    name: str  # the workload of workloads.py
    full: tuple[int, ...]  # its arguments under `make bench`
    short: tuple[int, ...]  # and in CI
    unit: str
    kept: tuple[str, ...]  # files it leaves behind, compared between the nodes


WORKLOADS = (
    Workload(
        "seq",
        "sequential 1 MiB writes, 1 GiB, fsync at the end",
        "seq",
        (1024 * MIB,),
        (8 * MIB,),
        "MiB/s",
        ("seq.dat",),
    ),
    Workload(
        "randsync",
        "random 4 KiB writes, fsync after each (3,000 in 256 MiB)",
        "randsync",
        (256 * MIB, 3000),
        (16 * MIB, 200),
        "IOPS",
        ("randsync.dat",),
    ),
    Workload(
        "randbuf1",
        "random 4 KiB buffered writes, 1 writer (100,000 in 256 MiB, fsync at the end)",
        "randbuf",
        (256 * MIB, 100_000, 1),
        (16 * MIB, 2000, 1),
        "IOPS",
        ("randbuf.0.dat",),
    ),
    Workload(
        "randbuf4",
        "random 4 KiB buffered writes, 4 writers (100,000 in all, 4 files of 64 MiB)",
        "randbuf",
        (256 * MIB, 100_000, 4),
        (16 * MIB, 2000, 4),
        "IOPS",
        tuple(f"randbuf.{i}.dat" for i in range(4)),
    ),
    Workload("files", "create (4 KiB) then delete 10,000 files", "files", (10_000,), (200,), "files/s", ()),
)
# Target-major order: the mirror switches from sync to semi-sync once.
CASES = [(target, workload) for target in TARGETS for workload in WORKLOADS]


def _need_root_and_fuse() -> None:
    # CI runs as root with /dev/fuse: a skip there would hide breakage, so fail loudly instead.
    if os.geteuid() != 0:
        pytest.fail("the replication benchmark needs root (namespaces, mounts); deselect it with -m 'not root'")
    if not Path("/dev/fuse").exists():
        pytest.fail("the replication benchmark needs /dev/fuse")


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Rig:
    """The session's lab and which target is ready on it."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.cluster = DemoCluster(lab)
        self.passthrough: subprocess.Popen[str] | None = None
        self.mode: str | None = None  # async mode the pair runs in, None when stopped

    # -- targets -------------------------------------------------------------------------------

    def use(self, target: str) -> None:
        """Makes `target` ready on node1, stopping what another target left running."""
        if target != "passthrough":
            self._stop_passthrough()
        if target == "passthrough" and self.passthrough is None:
            self._start_passthrough()
        if target in MODES and self.mode != MODES[target]:
            self._start_pair(MODES[target])

    def close(self) -> None:
        self._stop_passthrough()

    def _fuse_mounted(self, point: str) -> bool:
        with open(f"/proc/{self.lab.holder('node1')}/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if left.split(" ")[4] == point and right.startswith("fuse"):
                    return True
        return False

    def _start_passthrough(self) -> None:
        self.lab.exec("node1", ["mkdir", "-p", PASS_MOUNT])
        log = self.lab.host_path("node1", "/var/log/mirrorcore/passthrough.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "mirrorcore.rfs.worker", "--dir", PASS_MOUNT, "--passthrough"]
        with log.open("ab") as out:
            self.passthrough = self.lab.popen(
                "node1", argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while not self._fuse_mounted(PASS_MOUNT):
            if self.passthrough.poll() is not None or time.monotonic() > deadline:
                self._stop_passthrough()
                pytest.fail(f"the passthrough worker did not mount {PASS_MOUNT}:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)

    def _stop_passthrough(self) -> None:
        proc, self.passthrough = self.passthrough, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _start_pair(self, mode: str) -> None:
        if self.mode is not None:
            # Secondary first: the primary goes ALONE, then stops with up-to-date data.
            for node in ("node2", "node1"):
                self.cluster.ctl(node, "stop", check=True)
                self._wait_daemon_gone(node)
            self.mode = None
        self.cluster.install(DemoSettings(async_mode=mode))
        self.cluster.start_pair()
        self.mode = mode

    def _wait_daemon_gone(self, node: str, timeout: float = 60) -> None:
        """The daemon holds a flock on its pid file while it runs."""
        pidfile = self.lab.host_path(node, "/run/mirrorcore/demo.pid")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(pidfile, os.O_RDONLY)
            except FileNotFoundError:
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the daemon on {node} did not exit within {timeout:.0f}s") from None
            finally:
                os.close(fd)
            time.sleep(0.1)

    # -- running and checking ------------------------------------------------------------------

    def run(self, target: str, workload: Workload, args: tuple[int, ...]) -> dict[str, float]:
        argv = [sys.executable, str(WORKLOADS_PY), workload.name, ROOTS[target], *map(str, args)]
        result = self.lab.exec("node1", argv, timeout=1500)
        out: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
        return out

    def rss(self, target: str) -> dict[str, float]:
        """Resident memory of the processes that carry replication for `target`, in MiB."""
        pids: dict[str, int] = {}
        if target == "passthrough" and self.passthrough is not None:
            pids["FUSE worker (node1)"] = self.passthrough.pid
        elif target in MODES:
            mnt = os.stat(f"/proc/{self.lab.holder('node1')}/ns/mnt").st_ino
            for entry in os.listdir("/proc"):
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                    worker = b"mirrorcore.rfs.worker" in cmd and b"--module" in cmd
                    if worker and os.stat(f"/proc/{entry}/ns/mnt").st_ino == mnt:
                        pids["FUSE worker (node1)"] = int(entry)
            with contextlib.suppress(OSError, ValueError):
                pidfile = self.lab.host_path("node2", "/run/mirrorcore/demo.pid")
                pids["daemon + receiver (node2)"] = int(pidfile.read_text().split()[0])
        return {name: rss for name, pid in pids.items() if (rss := _rss_mib(pid)) is not None}

    def check_copy(self, target: str, workload: Workload) -> None:
        """Node2 holds what node1 holds, within COPY_TIMEOUT (semi-sync reaches node2's disk shortly after)."""
        root = ROOTS[target]
        deadline = time.monotonic() + COPY_TIMEOUT
        for name in workload.kept:
            mine = self.lab.host_path("node1", f"{root}/{name}")
            theirs = self.lab.host_path("node2", f"{root}/{name}")
            want = _sha256(mine)
            while True:
                if theirs.exists() and theirs.stat().st_size == mine.stat().st_size and _sha256(theirs) == want:
                    break
                assert time.monotonic() < deadline, f"{name} on node2 differs from node1 after {COPY_TIMEOUT:.0f}s"
                time.sleep(0.2)
        gone = self.lab.host_path("node2", f"{root}/files")  # the files workload removes its directory
        while gone.exists():
            assert time.monotonic() < deadline, f"{root}/files still exists on node2 after {COPY_TIMEOUT:.0f}s"
            time.sleep(0.2)
        receiver = self._receiver_stats()
        assert receiver.get("frames_rejected", 0) == 0, receiver
        assert receiver.get("apply_errors", 0) == 0, receiver

    def _receiver_stats(self) -> dict[str, int]:
        """Node2's receiver counters; retried while mirrorcore._native is being rebuilt (a developer's tree)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                stats: dict[str, int] = self.cluster.state("node2")["rfs"]["receivers"][0]
                return stats
            except LabError as e:
                if "mirrorcore._native" not in str(e) or time.monotonic() > deadline:
                    raise
            time.sleep(2)

    def clean(self, target: str) -> None:
        """Removes the workload's files through the target (replicated too), and waits for node2 to follow."""
        root = ROOTS[target]
        self.lab.exec("node1", ["rm", "-rf", root], timeout=300)
        if target in MODES:
            copy = self.lab.host_path("node2", root)
            deadline = time.monotonic() + COPY_TIMEOUT
            while copy.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{root} still exists on node2 {COPY_TIMEOUT:.0f}s after its removal")
                time.sleep(0.2)
        os.sync()  # nothing of this workload is left to write back during the next one


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    """One lab for the whole session, torn down whatever happened."""
    _need_root_and_fuse()
    lab = Lab(f"mcb{os.getpid() % 100000}")
    rig = Rig(lab)
    try:
        lab.up()
        yield rig
    finally:
        try:
            rig.close()
        finally:
            lab.down()


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("target", "workload"), CASES, ids=[f"{t}-{w.key}" for t, w in CASES])
def test_replication(rig, benchmark, bench_rows, target, workload):
    short = benchmark.disabled
    args = workload.short if short else workload.full
    rig.use(target)
    try:
        os.sync()
        result = benchmark.pedantic(rig.run, args=(target, workload, args), rounds=1, iterations=1)
        assert result["ops"] > 0
        assert result["seconds"] > 0
        if workload.unit == "MiB/s":
            value = result["bytes"] / MIB / result["seconds"]
        else:
            value = result["ops"] / result["seconds"]
        rss = rig.rss(target)
        benchmark.extra_info.update(
            {"target": target, workload.unit: round(value, 1), **result, "rss_mib": rss, "args": list(args)}
        )
        bench_rows.append(Row(workload.key, workload.title, target, value, workload.unit, result["seconds"], rss))
        if target in MODES:
            rig.check_copy(target, workload)
    except BaseException:
        with contextlib.suppress(LabError, TimeoutError, subprocess.TimeoutExpired):
            rig.clean(target)  # best effort: the next workload starts clean; the failure is what counts
        raise
    rig.clean(target)
