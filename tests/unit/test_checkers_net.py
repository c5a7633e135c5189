"""Network checkers inside throwaway network namespaces: ping of a silent address, a duplicate VIP
answered by another host, an interface brought down. The host's own network is never touched."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from mirrorcore.lab import VethPair, veth_pair

pytestmark = pytest.mark.root

NET = "10.252.0"
VIP = f"{NET}.100"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


class Pair(VethPair):
    def run_json(self, ns: str, code: str) -> Any:
        """Runs Python code in namespace `ns` and returns the JSON it prints last."""
        result = self.python(ns, code)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def pair() -> Iterator[Pair]:
    if os.geteuid() != 0:
        pytest.fail("needs root: it creates network namespaces (CI runs as root; deselect with -m 'not root')")
    with veth_pair(f"mcchk{os.getpid()}", NET) as p:
        yield Pair(p.a, p.b)


def test_ping_is_down_for_an_address_nobody_answers_and_up_for_the_peer(pair: Pair) -> None:
    got = pair.run_json(
        pair.a,
        f"""
        import json, trio
        from mirrorcore.checkers import reachable
        async def main():
            start = trio.current_time()
            silent = await reachable(["{NET}.77"], 1.0)
            took = trio.current_time() - start
            peer = await reachable(["{NET}.77", "{NET}.2"], 3.0)
            print(json.dumps([silent, took, peer]))
        trio.run(main)
        """,
    )
    silent, took, peer = got
    assert silent is False
    assert 0.9 <= took < 2
    assert peer is True


def vip_status(pair: Pair) -> list[str]:
    got = pair.run_json(
        pair.a,
        f"""
        import json
        from mirrorcore.checkers import vip_status
        print(json.dumps(vip_status("{VIP}", 1.0)))
        """,
    )
    assert isinstance(got, list)
    return got


def test_ip_checker_sees_the_vip_then_a_duplicate_then_its_removal(pair: Pair) -> None:
    assert vip_status(pair)[0] == "down"  # not set yet
    run("ip", "-n", pair.a, "addr", "add", f"{VIP}/24", "dev", "eth0")
    assert vip_status(pair) == ["up", f"VIP {VIP} on eth0"]

    run("ip", "-n", pair.b, "addr", "add", f"{VIP}/24", "dev", "eth0")  # another host takes it too
    value, why = vip_status(pair)
    assert value == "down"
    assert f"answered by {pair.mac(pair.b)}" in why
    assert "duplicate" in why

    run("ip", "-n", pair.b, "addr", "del", f"{VIP}/24", "dev", "eth0")
    assert vip_status(pair)[0] == "up"
    # the probe left no trace in the neighbour's cache: its sender address was 0.0.0.0
    neigh = json.loads(run("ip", "-n", pair.b, "-j", "neigh", "show", VIP).stdout)
    assert neigh == []

    run("ip", "-n", pair.a, "addr", "del", f"{VIP}/24", "dev", "eth0")
    assert vip_status(pair) == ["down", f"VIP {VIP} is on no interface of this node"]


def test_the_peer_node_answering_for_the_vip_is_a_split_brain_not_a_duplicate(pair: Pair) -> None:
    for ns in (pair.a, pair.b):
        run("ip", "-n", ns, "addr", "add", f"{VIP}/24", "dev", "eth0")
    got = pair.run_json(
        pair.a,
        f"""
        import json, trio
        from mirrorcore.checkers import IpChecker, reachable
        trio.run(reachable, ["{NET}.2"], 2.0)  # traffic with the peer, as heartbeats make
        checker = IpChecker("{VIP}", lambda: "PRIM", timeout=0.5, peers=["{NET}.2"])
        stranger = IpChecker("{VIP}", lambda: "PRIM", timeout=0.5)
        print(json.dumps([checker._status(), sorted(checker.peer_macs), stranger._status()]))
        """,
    )
    (value, why), macs, (other_value, _) = got
    assert macs == [pair.mac(pair.b)]
    assert (value, other_value) == ("up", "down")
    assert "answered by the peer node" in why
    assert "split brain" in why


def test_ip_and_intf_checkers_run_as_tasks_and_follow_the_interface(pair: Pair) -> None:
    run("ip", "-n", pair.a, "addr", "add", f"{VIP}/24", "dev", "eth0")
    code = f"""
        import json, subprocess, trio
        from mirrorcore.checkers import IntfChecker, IpChecker, Resources

        async def until(res, name, value):
            with trio.fail_after(10):
                while res.get(name) is None or res.get(name).value != value:
                    await res.changed(res.version)

        async def main():
            res = Resources()
            seen = []
            async with trio.open_nursery() as n:
                intf = IntfChecker("{VIP}", lambda: "WAIT", interval=0.1)
                ip = IpChecker("{VIP}", lambda: "PRIM", interval=0.2, timeout=0.3)
                await n.start(intf.run, res)
                await n.start(ip.run, res)
                await until(res, intf.resource, "up")
                await until(res, "ip.{VIP}", "up")
                seen.append(intf.resource)
                subprocess.run(["ip", "link", "set", "eth0", "down"], check=True)
                await until(res, intf.resource, "down")
                subprocess.run(["ip", "link", "set", "eth0", "up"], check=True)
                await until(res, intf.resource, "up")
                subprocess.run(["ip", "addr", "del", "{VIP}/24", "dev", "eth0"], check=True)
                await until(res, "ip.{VIP}", "down")
                seen.append(res.snapshot())
                n.cancel_scope.cancel()
            print(json.dumps(seen))

        trio.run(main)
    """
    resource, snapshot = pair.run_json(pair.a, code)
    assert resource == f"intf.{NET}.0"
    assert snapshot == {f"intf.{NET}.0": "up", f"ip.{VIP}": "down"}
