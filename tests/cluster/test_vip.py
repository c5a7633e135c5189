"""Virtual IPs on a real (namespaced) subnet: set, reachable, announced to neighbours, removed.

Two throwaway network namespaces joined by a veth pair stand for the primary (A) and a client (B).
The VipManager runs inside A through `ip netns exec`; the host's own network is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from mirrorcore.lab import VethPair, veth_pair

pytestmark = [pytest.mark.root, pytest.mark.cluster]

NET = "10.251.0"
VIP = f"{NET}.100"
NET6 = "fd00:251::"
VIP6 = f"{NET6}100"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


class Pair(VethPair):
    def in_a(self, code: str) -> subprocess.CompletedProcess[str]:
        """Runs Python code inside namespace A."""
        return self.python(self.a, code)

    def manager(self, call: str, *vips: tuple[str, str]) -> subprocess.CompletedProcess[str]:
        code = f"""
            import json
            from types import SimpleNamespace as N
            from mirrorcore.vip import VipManager
            vips = (N(addrs=tuple(N(addr=a, where=w, check=True) for a, w in {list(vips)!r})),)
            print(json.dumps(VipManager(vips).{call}()))
        """
        result = self.in_a(code)
        assert result.returncode == 0, result.stderr
        return result

    def addrs(self, ns: str) -> list[dict[str, object]]:
        out = run("ip", "-n", ns, "-j", "addr", "show", "dev", "eth0").stdout
        return list(json.loads(out)[0]["addr_info"])


@pytest.fixture
def pair() -> Iterator[Pair]:
    if os.geteuid() != 0:
        pytest.fail("needs root: it creates network namespaces (run the cluster tests as root, as CI does)")
    with veth_pair(f"mcvip{os.getpid()}", NET, net6=NET6, arp_accept=True) as p:
        yield Pair(p.a, p.b)


def test_a_vip_is_set_as_secondary_reachable_and_announced(pair: Pair):
    assert pair.manager("present", (VIP, "one_side_alias")).stdout.strip() == json.dumps({VIP: False})
    pair.manager("set", (VIP, "one_side_alias"))

    vip = [a for a in pair.addrs(pair.a) if a["local"] == VIP]
    assert len(vip) == 1
    assert vip[0]["prefixlen"] == 24
    assert vip[0].get("secondary") is True
    assert pair.manager("present", (VIP, "one_side_alias")).stdout.strip() == json.dumps({VIP: True})

    # B has never talked to the VIP, yet it knows A's MAC for it: the gratuitous ARP arrived.
    neigh = json.loads(run("ip", "-n", pair.b, "-j", "neigh", "show", VIP).stdout)
    assert [n.get("lladdr") for n in neigh] == [pair.mac(pair.a)]

    assert run("ip", "netns", "exec", pair.b, "ping", "-c", "1", "-W", "2", VIP, check=False).returncode == 0


def test_unset_removes_the_vip_and_may_be_repeated(pair: Pair):
    pair.manager("set", (VIP, "one_side_alias"))
    pair.manager("unset", (VIP, "one_side_alias"))
    assert VIP not in [a["local"] for a in pair.addrs(pair.a)]
    assert f"{NET}.1" in [a["local"] for a in pair.addrs(pair.a)]  # the node's own address stays
    pair.manager("unset", (VIP, "one_side_alias"))
    assert pair.manager("present", (VIP, "one_side_alias")).stdout.strip() == json.dumps({VIP: False})
    assert run("ip", "netns", "exec", pair.b, "ping", "-c", "1", "-W", "1", VIP, check=False).returncode != 0


def test_one_side_makes_the_vip_the_source_and_unset_restores_the_route(pair: Pair):
    pair.manager("set", (VIP, "one_side"))
    routes = json.loads(run("ip", "-n", pair.a, "-j", "route", "show", f"{NET}.0/24").stdout)
    assert [r.get("prefsrc") for r in routes] == [VIP]
    pair.manager("unset", (VIP, "one_side"))
    routes = json.loads(run("ip", "-n", pair.a, "-j", "route", "show", f"{NET}.0/24").stdout)
    assert [r.get("prefsrc") for r in routes] == [f"{NET}.1"]
    assert run("ip", "netns", "exec", pair.b, "ping", "-c", "1", "-W", "2", f"{NET}.1", check=False).returncode == 0


def test_an_ipv6_vip_is_set_reachable_and_removed(pair: Pair):
    pair.manager("set", (VIP6, "one_side_alias"))
    vip = [a for a in pair.addrs(pair.a) if a["local"] == VIP6]
    assert len(vip) == 1
    assert vip[0]["prefixlen"] == 64
    assert "tentative" not in vip[0]
    assert run("ip", "netns", "exec", pair.b, "ping", "-6", "-c", "1", "-W", "2", VIP6, check=False).returncode == 0
    pair.manager("unset", (VIP6, "one_side_alias"))
    pair.manager("unset", (VIP6, "one_side_alias"))
    assert VIP6 not in [a["local"] for a in pair.addrs(pair.a)]


def test_a_vip_outside_every_subnet_is_refused_with_the_fix(pair: Pair):
    result = pair.in_a(
        """
        from types import SimpleNamespace as N
        from mirrorcore.vip import VipManager
        VipManager((N(addrs=(N(addr="192.0.2.7", where="one_side_alias", check=True),)),)).set()
        """
    )
    assert result.returncode != 0
    assert "no interface on this node has an address in a subnet containing it" in result.stderr
    assert "Fix:" in result.stderr
