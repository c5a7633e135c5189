"""Tells the subnet that a virtual IP moved here: gratuitous ARP (IPv4) or unsolicited NA (IPv6), SPEC §10.

Without it, clients and routers keep sending to the old owner's MAC address until their neighbour
cache entries expire, which can take minutes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import time

ETH_P_ARP = 0x0806
_BROADCAST = b"\xff" * 6
_ICMPV6_NA = 136
_NA_OVERRIDE = 0x20000000
_OPT_TARGET_LLADDR = 2


def parse_mac(mac: str) -> bytes:
    """`"aa:bb:cc:dd:ee:ff"` -> 6 bytes."""
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not an Ethernet MAC address: {mac!r}")
    return raw


def arp_frame(vip: str, mac: bytes) -> bytes:
    """A broadcast Ethernet frame carrying an ARP request with sender = target = `vip`.

    A request (rather than a reply) is what Linux, switches and most hosts update their caches from.
    """
    ip = ipaddress.IPv4Address(vip).packed
    ether = _BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\x00" * 6 + ip
    return ether + arp


def na_message(vip: str, mac: bytes) -> bytes:
    """An ICMPv6 neighbour advertisement for `vip` with the override flag and our link-layer address.

    The checksum is left zero: the kernel fills it for raw ICMPv6 sockets (RFC 3542).
    """
    target = ipaddress.IPv6Address(vip).packed
    option = struct.pack("!BB", _OPT_TARGET_LLADDR, 1) + mac
    return struct.pack("!BBHI", _ICMPV6_NA, 0, 0, _NA_OVERRIDE) + target + option


def send_gratuitous_arp(ifname: str, vip: str, mac: bytes, *, count: int = 3, interval: float = 0.2) -> None:
    """Broadcasts `count` gratuitous ARPs for `vip` on `ifname` (blocking).

    Raises:
        OSError: no raw socket (not root / no CAP_NET_RAW) or the interface is gone.
    """
    frame = arp_frame(vip, mac)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
        sock.bind((ifname, ETH_P_ARP))
        for i in range(count):
            if i:
                time.sleep(interval)  # spaced out, so one lost frame does not lose the announcement
            sock.send(frame)


def send_unsolicited_na(
    ifname: str, ifindex: int, vip: str, mac: bytes, *, count: int = 3, interval: float = 0.2
) -> None:
    """Sends `count` unsolicited neighbour advertisements for `vip` to all nodes (ff02::1) on `ifname`.

    Raises:
        OSError: no raw socket (not root / no CAP_NET_RAW) or the interface is gone.
    """
    message = na_message(vip, mac)
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
        # Receivers ignore neighbour discovery that did not come from the link itself (RFC 4861 §7.1.2).
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        # Prefer the VIP itself as source; if it is not usable yet the kernel picks the link-local one.
        with contextlib.suppress(OSError):
            sock.bind((vip, 0, 0, ifindex))
        for i in range(count):
            if i:
                time.sleep(interval)
            sock.sendto(message, ("ff02::1", 0, 0, ifindex))


def announce(ifname: str, ifindex: int, vip: str, mac: str, *, count: int = 3, interval: float = 0.2) -> None:
    """Announces that `vip` is now reachable at `mac` on `ifname`: gratuitous ARP or unsolicited NA."""
    raw = parse_mac(mac)
    if ipaddress.ip_address(vip).version == 4:
        send_gratuitous_arp(ifname, vip, raw, count=count, interval=interval)
    else:
        send_unsolicited_na(ifname, ifindex, vip, raw, count=count, interval=interval)
