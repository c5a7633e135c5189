"""The `ping` checker: `ping.<ident>` is up while any target answers an ICMP echo.

Echoes are sent from this process, so from the node's own network namespace, with no external
binary: an unprivileged ICMP datagram socket when `net.ipv4.ping_group_range` allows it, else a
raw socket (root or CAP_NET_RAW, which the daemon has).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence

import trio

from mirrorcore._config_check import PingCheck
from mirrorcore.checkers._loop import StateFn, probe_loop
from mirrorcore.checkers.resources import Resources

__all__ = ["PingChecker", "ping", "ping_any", "reachable"]

_ECHO = {4: (8, 0), 6: (128, 129)}  # (request type, reply type)
_PROTO = {4: socket.IPPROTO_ICMP, 6: socket.IPPROTO_ICMPV6}
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int(word) for word in struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _open(version: int) -> tuple[trio.socket.SocketType, bool]:
    """An ICMP socket and whether it is raw (then replies carry an IPv4 header and any ICMP traffic)."""
    try:
        return trio.socket.socket(_FAMILY[version], socket.SOCK_DGRAM, _PROTO[version]), False
    except PermissionError:
        return trio.socket.socket(_FAMILY[version], socket.SOCK_RAW, _PROTO[version]), True


async def ping(addr: str, *, spacing: float = 1.0) -> None:
    """Returns once `addr` (IPv4 or IPv6, numeric) answers an ICMP echo; one echo leaves every `spacing` s.

    It waits as long as there is no answer (an unreachable network included: the route may come
    back), so bound it with `trio.move_on_after`.

    Raises:
        PermissionError: neither an ICMP datagram socket nor a raw socket may be opened.
    """
    version = ipaddress.ip_address(addr).version
    request, reply = _ECHO[version]
    sock, raw = _open(version)
    ident = os.getpid() & 0xFFFF
    token = os.urandom(8)
    with sock:
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                seq = 0
                while True:
                    seq = (seq + 1) & 0xFFFF
                    header = struct.pack("!BBHHH", request, 0, 0, ident, seq)
                    checksum = _checksum(header + token) if version == 4 else 0  # the kernel sums ICMPv6
                    packet = struct.pack("!BBHHH", request, 0, checksum, ident, seq) + token
                    with contextlib.suppress(OSError):  # no route, interface down: try again later
                        await sock.sendto(packet, (addr, 0))
                    await trio.sleep(spacing)

            nursery.start_soon(send)
            while True:
                data, source = await sock.recvfrom(2048)
                if raw and version == 4:
                    data = data[(data[0] & 0x0F) * 4 :]
                if len(data) < 8 or data[0] != reply or data[8:] != token:
                    continue  # someone else's ICMP, or our own request looped back
                if ipaddress.ip_address(source[0].split("%")[0]) != ipaddress.ip_address(addr):
                    continue
                if raw and struct.unpack("!H", data[4:6])[0] != ident:
                    continue
                nursery.cancel_scope.cancel()
                return


async def ping_any(addrs: Sequence[str], *, spacing: float = 1.0) -> str:
    """Pings every address at once and returns the first that answers; bound it with `trio.move_on_after`."""
    answered: list[str] = []
    async with trio.open_nursery() as nursery:

        async def one(addr: str) -> None:
            await ping(addr, spacing=spacing)
            answered.append(addr)
            nursery.cancel_scope.cancel()

        for addr in addrs:
            nursery.start_soon(one, addr)
    return answered[0]


async def reachable(addrs: Sequence[str], within: float) -> bool:
    """Whether any of `addrs` answers an echo within `within` seconds (three echoes each meanwhile)."""
    with trio.move_on_after(within):
        await ping_any(addrs, spacing=within / 3)
        return True
    return False


class PingChecker:
    """Pings the configured targets every `interval` while `when` holds."""

    def __init__(self, check: PingCheck, state: StateFn) -> None:
        self.check = check
        self.state = state
        self.resource = f"ping.{check.ident}"

    async def probe(self) -> str:
        return "up" if await reachable(self.check.addrs, self.check.timeout) else "down"

    async def run(self, resources: Resources, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probes until cancelled; started once the resource is declared."""
        c = self.check
        await probe_loop(resources, self.resource, c.when, self.state, c.interval, self.probe, task_status=task_status)
