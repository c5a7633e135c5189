"""The `ip` checker (`<virtual_addr check="on">`): `ip.<vip>` is up while the VIP is on our interface
and nobody else answers for it.

Down when the VIP was removed from the interface, or when another host claims it: an RFC 5227 ARP
probe (sender address 0.0.0.0, so no cache changes) answered from another MAC, or for IPv6 a
duplicate address detection that failed. Its default rule is `stopstart()`; once the VIP is set
again the owner announces it (gratuitous ARP) so clients follow.
"""

from __future__ import annotations

import functools
import ipaddress

import trio

from mirrorcore.checkers import _net
from mirrorcore.checkers._loop import StateFn, log, probe_loop
from mirrorcore.checkers.resources import Resources

__all__ = ["IpChecker", "vip_status"]


def vip_status(vip: str, timeout: float) -> tuple[str, str]:
    """`("up" | "down", why)` for a VIP on this host (blocking: netlink and an ARP probe of `timeout` s)."""
    seen = _net.vip_here(vip)
    if seen is None:
        return "down", f"VIP {vip} is on no interface of this node"
    if seen.dad_failed:
        return "down", f"VIP {vip} on {seen.ifname}: duplicate address detection failed (another host has it)"
    if ipaddress.ip_address(vip).version == 4:
        try:
            other = _net.arp_duplicate(seen.ifname, vip, seen.mac, timeout)
        except OSError as e:
            return "up", f"VIP {vip} on {seen.ifname} (duplicate not checked: {e})"
        if other is not None:
            return "down", f"VIP {vip} is also answered by {other} on {seen.ifname}: duplicate address"
    return "up", f"VIP {vip} on {seen.ifname}"


class IpChecker:
    """Checks a VIP on the primary (`when=prim`) every `interval` seconds."""

    def __init__(
        self, vip: str, state: StateFn, *, interval: float = 5.0, timeout: float = 1.0, when: str = "prim"
    ) -> None:
        """Prepares the checker.

        Args:
            vip: the virtual address.
            state: the module state as checkers see it.
            interval: seconds between two checks; each sends one ARP probe on the subnet.
            timeout: seconds to wait for another host's answer to the probe.
            when: in which states the VIP should be here (default prim: ALONE and PRIM).
        """
        self.vip = vip
        self.state = state
        self.interval = interval
        self.timeout = timeout
        self.when = when
        self.resource = f"ip.{vip}"
        self.why = ""

    async def probe(self) -> str:
        value, why = await trio.to_thread.run_sync(functools.partial(vip_status, self.vip, self.timeout))
        if why != self.why:
            log.info("checker %s: %s", self.resource, why)
        self.why = why
        return value

    async def run(self, resources: Resources, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probes until cancelled; started once the resource is declared."""
        await probe_loop(
            resources, self.resource, self.when, self.state, self.interval, self.probe, task_status=task_status
        )
