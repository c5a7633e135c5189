"""Checkers, failover rules and the split-brain witness on two real nodes: real daemons, real killed
processes, real interfaces and ARP packets.

The demo module watches its app with errd (`proc.demoapp`, action restart) and a tcp checker on
port 8080 (`tcp.app`, action restart); its VIP and interface are checked (`ip.10.201.0.100`:
stopstart, `intf.10.201.0.0`: wait), and the lab's client 10.201.0.10 is the split-brain witness.
Heartbeats every 200 ms, lost after 2 s. Timings are printed, never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from mirrorcore.demoset import VIP, WITNESS, DemoCluster, DemoSettings
from mirrorcore.lab import Lab

pytestmark = [pytest.mark.cluster, pytest.mark.root]

APP_PID = "/run/mirrorcore/demoapp.pid"
INTF = "intf.10.201.0.0"


def started(lab: Lab, settings: DemoSettings | None = None) -> DemoCluster:
    cluster = DemoCluster(lab)
    cluster.install(settings)
    cluster.start_pair()
    return cluster


def until(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    """Polls `check` until it returns something true; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.1)


def app_pid(lab: Lab, node: str = "node1") -> int | None:
    path = lab.host_path(node, APP_PID)
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def restarted(cluster: DemoCluster, old: int) -> int:
    """Waits for a new app process and the primary green again; returns the new pid."""
    new = until("a new app process", lambda: (p := app_pid(cluster.lab)) not in (None, old) and p)
    cluster.wait_for("node1", "PRIM")
    return int(new)


def resource(cluster: DemoCluster, node: str, name: str) -> str:
    """The value `mirrorctl get -r NAME` prints on the node ('tcp.app up (set by ...)')."""
    result = cluster.ctl(node, "get", "-r", name)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[1]


def ip(lab: Lab, node: str, *args: str) -> None:
    subprocess.run(["ip", "-n", lab.netns(node), *args], check=True, capture_output=True)


def mac(lab: Lab, node: str) -> str:
    out = subprocess.run(["ip", "-n", lab.netns(node), "-j", "link", "show", "dev", "eth0"], capture_output=True)
    return str(json.loads(out.stdout)[0]["address"])


def served_by(cluster: DemoCluster, node: str) -> None:
    until(f"the client served by {node} on the VIP", lambda: cluster.client("get", "/")[:2] == (200, node))


# --- the application ------------------------------------------------------------------------------------


def test_a_killed_app_is_restarted_by_errd_until_maxloop_stops_the_module(lab: Lab) -> None:
    cluster = started(lab, DemoSettings(maxloop=2))
    # Only errd acts here: the tcp checker would notice the closed port too, and race it.
    cluster.ctl("node1", "checker", "off", check=True)
    assert "checkers off" in cluster.ctl("node1", "state").stdout
    pid = app_pid(lab)
    assert pid is not None
    for count in (1, 2):
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        pid = restarted(cluster, pid)
        print(f"\nERRD kill -> app restarted, PRIM green: {time.monotonic() - killed_at:.2f} s (polltimer 1 s)")
        status = cluster.state("node1")
        assert status["loop"] == {"count": count, "maxloop": 2}
        assert status["last_rule"]["rule"] == "proc_demoapp_down"
        assert status["last_rule"]["action"] == "restart"
    log = cluster.module_log("node1")
    assert "Rule proc_demoapp_down (proc.demoapp == down) held: proc.demoapp is down; action restart" in log
    assert "Rule tcp_app_down" not in log
    assert cluster.client("get", "/")[:2] == (200, "node1")
    # The third death in a row is one too many: the module stops and says how to reset.
    os.kill(pid, signal.SIGKILL)
    status = cluster.wait_for("node1", "STOP", "red", timeout=30)
    assert "maxloop reached: 3 actions" in status["reason"]
    assert "mirrorctl resetloop" in status["reason"]
    assert "module stopped: fix the cause, then `mirrorctl resetloop`" in cluster.module_log("node1")
    cluster.wait_for("node2", "ALONE", timeout=20)
    served_by(cluster, "node2")


def test_errd_off_stops_watching_and_on_resumes(lab: Lab) -> None:
    cluster = started(lab)
    until("errd counts the app", lambda: resource(cluster, "node1", "proc.demoapp") == "up")
    cluster.ctl("node1", "errd", "off", check=True)
    assert resource(cluster, "node1", "proc.demoapp") == "unknown"
    assert cluster.state("node1")["errd"] is False
    cluster.ctl("node1", "errd", "on", check=True)
    until("proc.demoapp up again", lambda: resource(cluster, "node1", "proc.demoapp") == "up")
    assert "Errd set off" in cluster.module_log("node1")


HANDLER = "/etc/mirrorcore/modules/demo/bin/on_demoapp_down"
HANDLER_MARKER = "/run/mirrorcore/handler.marker"
HANDLER_SCRIPT = f"""#!/bin/sh
# errd handler of proc.demoapp: PROC_NAME CURRENT_STATE; MODULE, NODE, RESOURCE, COUNT and the <var>s.
echo "$1 $2 $MODULE $NODE $RESOURCE $COUNT $APP_PORT" >> {HANDLER_MARKER}
exec mirrorctl restart -m "$MODULE" -i handler
"""


def test_an_errd_handler_runs_when_the_app_dies_and_restarts_it_itself(lab: Lab) -> None:
    settings = DemoSettings(errd_action=HANDLER, bin_files=(("on_demoapp_down", HANDLER_SCRIPT),))
    cluster = started(lab, settings)
    cluster.ctl("node1", "checker", "off", check=True)  # only errd acts: the tcp checker would restart too
    until("errd counts the app", lambda: resource(cluster, "node1", "proc.demoapp") == "up")
    pid = app_pid(lab)
    assert pid is not None
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    restarted(cluster, pid)
    print(f"\nERRD kill -> handler -> app restarted, PRIM green: {time.monotonic() - killed_at:.2f} s")
    marker = lab.host_path("node1", HANDLER_MARKER)
    assert marker.read_text().splitlines() == ["demoapp PRIM demo node1 proc.demoapp 0 8080"]
    until("the handler's exit logged", lambda: "Handler of proc.demoapp:" in cluster.module_log("node1"))
    log = cluster.module_log("node1")
    assert (
        f"[proc_demoapp_down] Rule proc_demoapp_down (proc.demoapp == down) held: proc.demoapp is down; "
        f"action {HANDLER}" in log
    )
    assert f"[proc_demoapp_down] Handler of proc.demoapp: {HANDLER} exited with code 0" in log
    assert "[handler] Action restart called" in log
    status = cluster.state("node1")
    # The handler's run is not counted against maxloop; the restart it asked for with -i is.
    assert status["loop"] == {"count": 1, "maxloop": 3}
    last = status["last_rule"]
    assert (last["rule"], last["action"], last["outcome"]) == (
        "proc_demoapp_down",
        HANDLER,
        "handler exited with code 0",
    )
    assert "on_demoapp_down demoapp PRIM" in lab.host_path("node1", "/var/log/mirrorcore/demo/script.log").read_text()
    assert cluster.client("get", "/")[:2] == (200, "node1")


def test_an_app_that_stops_answering_on_its_port_is_restarted(lab: Lab) -> None:
    cluster = started(lab)
    pid = app_pid(lab)
    assert pid is not None
    hung_at = time.monotonic()
    os.kill(pid, signal.SIGUSR1)  # the demo app closes its port but lives on
    restarted(cluster, pid)
    print(f"\nTCP port closed -> app restarted, PRIM green: {time.monotonic() - hung_at:.2f} s (interval 1 s)")
    log = cluster.module_log("node1")
    assert "Rule tcp_app_down (tcp.app == down) held: tcp.app is down; action restart" in log
    assert "Rule proc_demoapp_down" not in log  # the process was there all along
    assert cluster.state("node1")["last_rule"]["rule"] == "tcp_app_down"
    assert cluster.client("get", "/")[:2] == (200, "node1")
    # The HTTP API says the same, for a console or a monitoring system.
    got = lab.exec("client", [sys.executable, "-m", "mirrorcore.demoapp", "get", "http://10.201.0.1:9010/api/state"])
    api = json.loads(got.stdout.split(" ", 2)[2])
    assert api["last_rule"]["rule"] == "tcp_app_down"
    assert api["resources"]["local"]["tcp.app"]["value"] == "up"


def test_a_remote_rule_acts_on_the_peers_resource_set_by_mirrorctl_set(lab: Lab) -> None:
    # node2 (the secondary) vouches for something with a custom checker; node1 restarts its app
    # when node2 says it is down. `custom.maint != down` makes the rule replace the default one.
    # handle_time 5 s: a rule still holding after its restart fires again (and counts), so node2
    # takes its word back meanwhile.
    settings = DemoSettings(
        checks='<custom ident="maint" when="both" exec="/bin/sleep" arg="infinity"/>',
        rules="peer_says_restart: if (remote.custom.maint == down && custom.maint != down) then restart();",
        handle_time="5s",
    )
    cluster = started(lab, settings)
    refused = cluster.ctl("node2", "set", "-r", "custom.nope", "-v", "down")
    assert refused.returncode != 0
    assert "custom.maint" in refused.stderr  # the error lists the resources there are
    pid = app_pid(lab)
    assert pid is not None
    cluster.ctl("node2", "set", "-r", "custom.maint", "-v", "down", check=True)
    until("node1 sees node2's custom.maint down", lambda: resource(cluster, "node1", "remote.custom.maint") == "down")
    assert cluster.state("node2")["resources_down"] == ["custom.maint"]
    restarted(cluster, pid)
    cluster.ctl("node2", "set", "-r", "custom.maint", "-v", "up", check=True)
    log = cluster.module_log("node1")
    assert "Rule peer_says_restart (remote.custom.maint == down && custom.maint != down) held for 5s" in log
    status = cluster.state("node1")
    assert status["last_rule"]["rule"] == "peer_says_restart"
    assert status["loop"]["count"] == 1
    assert cluster.state("node2")["state"] == "SECOND"


# --- the network around the node -------------------------------------------------------------------------


def test_the_interface_going_down_makes_the_primary_wait_and_come_back_as_secondary(lab: Lab) -> None:
    cluster = started(lab)
    down_at = time.monotonic()
    lab.exec("node1", ["ip", "link", "set", "eth0", "down"])
    status = cluster.wait_for("node1", "WAIT", "red", timeout=30)
    print(f"\nINTF eth0 down -> WAIT red: {time.monotonic() - down_at:.2f} s (interval 2 s)")
    assert "rule interface_down (intf.? == down) held: intf.10.201.0.0 is down" in status["reason"]
    assert "starts again by itself" in status["reason"]
    assert INTF in status["resources_down"]
    cluster.wait_for("node2", "ALONE", timeout=20)  # node2 still hears node1 on LAN private: it takes over
    served_by(cluster, "node2")
    up_at = time.monotonic()
    lab.exec("node1", ["ip", "link", "set", "eth0", "up"])
    cluster.wait_for("node1", "SECOND", timeout=40)
    print(f"\nINTF eth0 up -> SECOND green: {time.monotonic() - up_at:.2f} s")
    cluster.wait_for("node2", "PRIM", timeout=20)
    assert "Rule interface_down (intf.? == down) no longer holds: intf.10.201.0.0 is up" in cluster.module_log("node1")


def test_a_vip_removed_by_hand_is_detected_and_restored_by_stopstart(lab: Lab) -> None:
    cluster = started(lab)
    ip(lab, "node1", "addr", "del", f"{VIP}/24", "dev", "eth0")
    until("node1's vip_down rule", lambda: "Rule vip_down" in cluster.module_log("node1"))
    assert f"ip.{VIP} set to down: VIP {VIP} is on no interface of this node" in cluster.module_log("node1")
    cluster.wait_for("node2", "PRIM", timeout=40)
    cluster.wait_for("node1", "SECOND", timeout=40)
    served_by(cluster, "node2")


def test_a_duplicate_vip_on_the_client_is_detected(lab: Lab) -> None:
    cluster = started(lab)
    ip(lab, "client", "addr", "add", f"{VIP}/24", "dev", "eth0")
    try:
        until("node1's vip_down rule", lambda: "Rule vip_down" in cluster.module_log("node1"))
    finally:
        ip(lab, "client", "addr", "del", f"{VIP}/24", "dev", "eth0")
    log = cluster.module_log("node1")
    assert f"VIP {VIP} is also answered by {mac(lab, 'client')} on eth0: duplicate address" in log
    assert (cluster.state("node1")["last_rule"] or {}).get("action") == "stopstart"
    cluster.wait_for("node2", "PRIM", timeout=40)
    cluster.wait_for("node1", "SECOND", timeout=40)
    served_by(cluster, "node2")


LISTEN_GARP = """
import socket, sys
vip, mac = socket.inet_aton(sys.argv[1]), bytes.fromhex(sys.argv[2].replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0x0806))
s.settimeout(30)
print("ready", flush=True)
while True:
    frame = s.recv(2048)
    # a gratuitous ARP: the VIP as sender and target address, from the owner's MAC
    if frame[22:28] == mac and frame[28:32] == vip and frame[38:42] == vip:
        print("announced", flush=True)
        break
"""


def test_after_a_short_duplicate_episode_the_owner_announces_the_vip_again(lab: Lab) -> None:
    # handle_time 60 s: the episode is shorter, so no rule acts (a flap triggers nothing).
    cluster = started(lab, DemoSettings(handle_time="60s"))
    ip(lab, "client", "addr", "add", f"{VIP}/24", "dev", "eth0")
    until("node1 sees the duplicate", lambda: resource(cluster, "node1", f"ip.{VIP}") == "down")
    argv = [sys.executable, "-c", LISTEN_GARP, VIP, mac(lab, "node1")]
    with lab.popen("client", argv, stdout=subprocess.PIPE) as listener:
        try:
            assert listener.stdout is not None
            assert listener.stdout.readline().strip() == "ready"
            ip(lab, "client", "addr", "del", f"{VIP}/24", "dev", "eth0")
            assert listener.stdout.readline().strip() == "announced"  # the real packet, seen on the client
        finally:
            listener.kill()
    until("the announce logged", lambda: "announced again (gratuitous ARP)" in cluster.module_log("node1"))
    assert resource(cluster, "node1", f"ip.{VIP}") == "up"
    assert "Rule vip_down" not in cluster.module_log("node1")
    status = cluster.state("node1")
    assert (status["state"], status["color"], status["last_rule"]) == ("PRIM", "green", None)
    served_by(cluster, "node1")


# --- the split-brain witness -----------------------------------------------------------------------------


def test_a_partition_is_decided_by_the_witness_and_the_loser_resyncs_after_heal(lab: Lab) -> None:
    cluster = started(lab)
    ip(lab, "node1", "route", "add", "blackhole", f"{WITNESS}/32")  # node1 cannot reach the witness
    cut_at = time.monotonic()
    lab.partition()
    status2 = cluster.wait_for("node2", "ALONE", timeout=30)
    alone_s = time.monotonic() - cut_at
    status1 = cluster.wait_for("node1", "WAIT", "red", timeout=30)
    print(f"\nWITNESS partition -> node2 ALONE green {alone_s:.2f} s, node1 WAIT red {time.monotonic() - cut_at:.2f} s")
    assert "split-brain witness answers from here" in status2["reason"]
    assert "the split-brain witness does not answer from here" in status1["reason"]
    assert "splitbrain.witness" in status1["resources_down"]
    served_by(cluster, "node2")
    ip(lab, "node1", "route", "del", "blackhole", f"{WITNESS}/32")
    healed_at = time.monotonic()
    lab.heal()
    cluster.wait_for("node1", "SECOND", timeout=40)
    print(f"\nWITNESS heal -> node1 SECOND green: {time.monotonic() - healed_at:.2f} s")
    cluster.wait_for("node2", "PRIM", timeout=20)
    served_by(cluster, "node2")


def test_both_nodes_cut_from_the_witness_wait_and_say_what_to_run(lab: Lab) -> None:
    cluster = started(lab)
    for node in ("node1", "node2"):
        ip(lab, node, "route", "add", "blackhole", f"{WITNESS}/32")
    lab.partition()
    one = cluster.wait_for("node1", "WAIT", "red", timeout=30)
    two = cluster.wait_for("node2", "WAIT", "red", timeout=30)
    assert cluster.client("get", "/")[0] == 0  # nobody serves: no split brain
    # The former primary may be behind if node2 took over: it needs primforce; node2 has the data.
    assert "If node2 is really down, run `mirrorctl primforce` here" in one["reason"]
    assert "If node1 is really down, run `mirrorctl prim` here" in two["reason"]
    assert "mirrorctl prim" in cluster.ctl("node2", "state").stdout
    # The operator decides node1 is gone and runs what node2 says.
    cluster.ctl("node2", "prim", check=True)
    cluster.wait_for("node2", "ALONE", timeout=30)
    for node in ("node1", "node2"):
        ip(lab, node, "route", "del", "blackhole", f"{WITNESS}/32")
    lab.heal()
    cluster.wait_for("node1", "SECOND", timeout=40)
    cluster.wait_for("node2", "PRIM", timeout=20)
