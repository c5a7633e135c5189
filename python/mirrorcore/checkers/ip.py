"""The `ip` checker (`<virtual_addr check="on">`): `ip.<vip>` is up while the VIP is on our interface
and nobody else answers for it.

Down when the VIP was removed from the interface, or when another host claims it: an RFC 5227 ARP
probe (sender address 0.0.0.0, so no cache changes) answered from another MAC, or for IPv6 a
duplicate address detection that failed. Its default rule is `stopstart()`; once the VIP is set
again the owner announces it (gratuitous ARP) so clients follow.

The peer node answering too is not a duplicate but a split brain, which the heartbeats and the
witness settle: acting on it here would make both nodes stop and start in turn. Its MAC is known
from the neighbour table (heartbeats flow on that LAN) and remembered across a partition.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence

import trio

from mirrorcore.checkers import _net
from mirrorcore.checkers._loop import StateFn, log, probe_loop
from mirrorcore.checkers.resources import Resources

__all__ = ["IpChecker", "vip_status"]


def vip_status(vip: str, timeout: float, peer_macs: Collection[str] = ()) -> tuple[str, str]:
    """`("up" | "down", why)` for a VIP on this host (blocking: netlink and an ARP probe of `timeout` s).

    Args:
        vip: the virtual address.
        timeout: seconds to wait for other hosts' answers.
        peer_macs: the peer node's MAC addresses: its answer is a split brain, not a duplicate.
    """
    seen = _net.vip_here(vip)
    if seen is None:
        return "down", f"VIP {vip} is on no interface of this node"
    if seen.dad_failed:
        return "down", f"VIP {vip} on {seen.ifname}: duplicate address detection failed (another host has it)"
    if ipaddress.ip_address(vip).version == 4:
        try:
            claimers = _net.arp_claimers(seen.ifname, vip, seen.mac, timeout)
        except OSError as e:
            return "up", f"VIP {vip} on {seen.ifname} (duplicate not checked: {e})"
        others = [m for m in claimers if m not in peer_macs]
        if others:
            return "down", f"VIP {vip} is also answered by {others[0]} on {seen.ifname}: duplicate address"
        if claimers:
            return "up", f"VIP {vip} on {seen.ifname}, also answered by the peer node ({claimers[0]}): split brain"
    return "up", f"VIP {vip} on {seen.ifname}"


class IpChecker:
    """Checks a VIP on the primary (`when=prim`) every `interval` seconds."""

    def __init__(
        self,
        vip: str,
        state: StateFn,
        *,
        interval: float = 5.0,
        timeout: float = 1.0,
        when: str = "prim",
        peers: Sequence[str] = (),
    ) -> None:
        """Prepares the checker.

        Args:
            vip: the virtual address.
            state: the module state as checkers see it.
            interval: seconds between two checks; each sends one ARP probe on the subnet.
            timeout: seconds to wait for another host's answer to the probe.
            when: in which states the VIP should be here (default prim: ALONE and PRIM).
            peers: the peer node's addresses (its answers are not a duplicate).
        """
        self.vip = vip
        self.state = state
        self.interval = interval
        self.timeout = timeout
        self.when = when
        self.peers = list(peers)
        self.peer_macs: set[str] = set()
        self.resource = f"ip.{vip}"
        self.why = ""

    def _status(self) -> tuple[str, str]:
        if self.peers:
            self.peer_macs |= _net.neighbour_macs(self.peers)
        return vip_status(self.vip, self.timeout, self.peer_macs)

    async def probe(self) -> str:
        value, why = await trio.to_thread.run_sync(self._status)
        if why != self.why:
            log.info("checker %s: %s", self.resource, why)
        self.why = why
        return value

    async def run(self, resources: Resources, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probes until cancelled; started once the resource is declared."""
        await probe_loop(
            resources, self.resource, self.when, self.state, self.interval, self.probe, task_status=task_status
        )
