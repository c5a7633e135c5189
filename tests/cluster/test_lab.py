"""The two-node lab: real namespaces, real pings, real processes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from mirrorcore.lab import STATE_DIR, Lab, LabError

pytestmark = [pytest.mark.cluster, pytest.mark.root]


def _reaches(lab: Lab, src: str, dst: str, lan: str = "default") -> bool:
    proc = lab.exec(src, ["ping", "-c1", "-W1", lab.addr(dst, lan)], check=False, timeout=10)
    return proc.returncode == 0


def _alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (init reaps killed holders lazily)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _host_view() -> tuple[str, str, str, list[str]]:
    def ip(*args: str) -> str:
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout

    # `ip netns add` mounts under /run/netns on the host by design; every other host mount must stay as it was.
    mounts = [line.split(" - ")[0].split(" ", 4)[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return ip("-o", "link"), ip("-o", "addr"), ip("route"), sorted(m for m in mounts if "/run/netns" not in m)


def test_nodes_reach_each_other_on_both_lans_and_the_client_reaches_the_nodes(lab: Lab):
    assert _reaches(lab, "node1", "node2", "default")
    assert _reaches(lab, "node1", "node2", "private")
    assert _reaches(lab, "client", "node1")
    assert _reaches(lab, "client", "node2")
    assert lab.exec("client", ["ls", "/sys/class/net"]).stdout.split() == ["eth0", "lo"]
    assert lab.exec("node2", ["ls", "/sys/class/net"]).stdout.split() == ["eth0", "eth1", "lo"]


def test_each_node_sees_only_its_own_files(lab: Lab):
    lab.exec("node1", ["sh", "-c", "echo hello > /etc/mirrorcore/marker && mkdir -p /srv/demo && echo x > /srv/demo/f"])
    assert lab.exec("node1", ["cat", "/etc/mirrorcore/marker"]).stdout == "hello\n"
    assert lab.host_path("node1", "/etc/mirrorcore/marker").read_text() == "hello\n"
    assert lab.host_path("node1", "/srv/demo/f").read_text() == "x\n"
    assert lab.exec("node2", ["test", "-e", "/etc/mirrorcore/marker"], check=False).returncode == 1
    assert not Path("/etc/mirrorcore/marker").exists()
    assert not lab.host_path("node2", "/etc/mirrorcore/marker").exists()


def test_exec_keeps_cwd_and_adds_env_and_reports_failures(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    out = lab.exec("node2", ["sh", "-c", 'echo "$PWD $GREETING"'], env={"GREETING": "hi"}).stdout
    assert out == f"{tmp_path} hi\n"
    with pytest.raises(LabError, match=r"exit 3.*oops"):
        lab.exec("node1", ["sh", "-c", "echo oops >&2; exit 3"])
    with pytest.raises(LabError, match="not node-private"):
        lab.host_path("node1", "/etc/passwd")


def test_partition_cuts_only_node1_node2_on_that_lan_and_heal_restores(lab: Lab):
    lab.partition("default")
    assert not _reaches(lab, "node1", "node2", "default")
    assert _reaches(lab, "node1", "node2", "private")
    assert _reaches(lab, "client", "node1")
    assert _reaches(lab, "client", "node2")
    lab.partition()
    assert not _reaches(lab, "node2", "node1", "private")
    lab.heal()
    assert _reaches(lab, "node1", "node2", "default")
    assert _reaches(lab, "node1", "node2", "private")


def test_crash_kills_every_process_of_that_node_only(lab: Lab):
    # A process that daemonizes (reparents away from us) must die too: crash goes by namespace, not by parentage.
    lab.exec("node1", ["sh", "-c", "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > /run/mirrorcore/pid"])
    orphan = int(lab.host_path("node1", "/run/mirrorcore/pid").read_text())
    in1 = lab.popen("node1", ["sleep", "1000"])
    in2 = lab.popen("node2", ["sleep", "1000"])
    try:
        lab.crash("node1")
        assert in1.wait(timeout=5) == -9
        assert not _alive(orphan)
        assert in2.poll() is None
        assert _reaches(lab, "node1", "node2"), "the crashed node must stay usable"
    finally:
        in2.kill()
        in2.wait()


def test_up_leaves_the_host_alone_is_idempotent_and_down_leaves_nothing(fresh_lab: Lab):
    before = _host_view()
    fresh_lab.up()
    assert _host_view() == before
    holders = {n: fresh_lab.holder(n) for n in Lab.ALL}
    fresh_lab.up()
    assert {n: fresh_lab.holder(n) for n in Lab.ALL} == holders

    other = Lab.existing(fresh_lab.name)
    assert other.base == fresh_lab.base
    assert other.exec("node2", ["cat", "/sys/class/net/eth1/address"]).stdout.strip()
    sleeper = fresh_lab.popen("node2", ["sleep", "1000"])

    fresh_lab.down()
    assert sleeper.wait(timeout=5) == -9
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert fresh_lab.name not in listed
    assert not any(_alive(pid) for pid in holders.values())
    assert not fresh_lab.base.exists()
    assert not (STATE_DIR / f"{fresh_lab.name}.json").exists()
    assert _host_view() == before
    fresh_lab.down()
    with pytest.raises(LabError, match="no lab"):
        Lab.existing(fresh_lab.name)


def test_up_rebuilds_a_half_made_lab(fresh_lab: Lab):
    fresh_lab.up()
    old = fresh_lab.holder("node1")
    os.kill(old, 9)
    deadline = time.monotonic() + 5
    while _alive(old) and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(LabError, match="broken"):
        Lab.existing(fresh_lab.name)
    fresh_lab.up()
    assert fresh_lab.holder("node1") != old
    assert _reaches(fresh_lab, "node1", "node2")
    # A lab whose state file vanished still leaves nothing behind.
    Lab(fresh_lab.name).up()
    (STATE_DIR / f"{fresh_lab.name}.json").unlink()
    Lab(fresh_lab.name).down()
    assert fresh_lab.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_down_never_wipes_a_base_the_lab_did_not_make(tmp_path: Path):
    (tmp_path / "precious").write_text("keep")
    Lab("mctnever", base=tmp_path).down()
    assert (tmp_path / "precious").read_text() == "keep"
