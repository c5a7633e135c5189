"""Netlink and ARP look-ups for the `intf` and `ip` checkers; every function here blocks."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from mirrorcore import garp

_IFF_UP = 0x1
_IFF_RUNNING = 0x40
_IFA_F_DADFAILED = 0x08
_PACKET_OUTGOING = 4

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Home:
    """The interface that carries a subnet: its index, name, MAC and the subnet."""

    index: int
    ifname: str
    mac: str
    network: IPNetwork


def _local(msg: Any) -> str:  # noqa: ANN401 (pyroute2 messages are untyped)
    return str(msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS"))


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def home_of(vip: str) -> Home | None:
    """The interface with an address of its own in a subnet containing `vip`, None when there is none."""
    ip = ipaddress.ip_address(vip)
    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=_family(ip.version)):
            own = ipaddress.ip_address(_local(msg))
            network = ipaddress.ip_network(f"{own}/{msg['prefixlen']}", strict=False)
            if ip in network and own != ip and network.prefixlen < network.max_prefixlen:
                link = ipr.get_links(msg["index"])[0]
                return Home(msg["index"], str(link.get("IFLA_IFNAME")), str(link.get("IFLA_ADDRESS")), network)
    return None


def link_up(index: int) -> bool:
    """Whether interface `index` is administratively up with a carrier (operstate UP, or UNKNOWN but running)."""
    with IPRoute() as ipr:
        try:
            (link,) = ipr.get_links(index)
        except Exception:  # pyroute2 raises NetlinkError for a vanished interface
            return False
        operstate = str(link.get("IFLA_OPERSTATE"))
        flags = int(link["flags"])
        if operstate == "UP":
            return True
        return operstate == "UNKNOWN" and bool(flags & _IFF_UP) and bool(flags & _IFF_RUNNING)


@dataclass(frozen=True)
class VipSeen:
    """Where a VIP is configured on this host: interface index and name, MAC, and whether DAD failed (IPv6)."""

    index: int
    ifname: str
    mac: str
    dad_failed: bool


def vip_here(vip: str) -> VipSeen | None:
    """The VIP as configured on this host, None when it is on no interface."""
    ip = ipaddress.ip_address(vip)
    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=_family(ip.version)):
            if ipaddress.ip_address(_local(msg)) == ip:
                link = ipr.get_links(msg["index"])[0]
                flags = int(msg.get("IFA_FLAGS") or msg["flags"])
                return VipSeen(
                    msg["index"],
                    str(link.get("IFLA_IFNAME")),
                    str(link.get("IFLA_ADDRESS")),
                    bool(flags & _IFA_F_DADFAILED),
                )
    return None


def arp_probe_frame(vip: str, mac: bytes) -> bytes:
    """An RFC 5227 ARP probe: who has `vip`? asked with sender address 0.0.0.0, so nobody's cache changes."""
    ether = b"\xff" * 6 + mac + struct.pack("!H", garp.ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + b"\0" * 4 + b"\0" * 6 + ipaddress.IPv4Address(vip).packed
    return ether + arp


def arp_claimers(ifname: str, vip: str, mac: str, timeout: float) -> list[str]:
    """Sends an ARP probe for `vip` on `ifname`; the MACs of the other hosts that claim it within `timeout` s.

    Any ARP from another MAC with `vip` as sender address counts: a reply to our probe, or that
    host's own announcement.

    Raises:
        OSError: no packet socket (not root / no CAP_NET_RAW) or the interface is gone.
    """
    own = garp.parse_mac(mac)
    target = ipaddress.IPv4Address(vip).packed
    found: list[str] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(garp.ETH_P_ARP)) as sock:
        sock.bind((ifname, garp.ETH_P_ARP))
        sock.send(arp_probe_frame(vip, own))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                break
            if addr[2] == _PACKET_OUTGOING or len(data) < 42:
                continue
            sha, spa = data[22:28], data[28:32]
            if spa == target and sha != own and sha.hex(":") not in found:
                found.append(sha.hex(":"))
    return found


def neighbour_macs(addrs: list[str]) -> set[str]:
    """The MAC addresses this host's neighbour tables hold for `addrs` (those it has heard from)."""
    macs: set[str] = set()
    with IPRoute() as ipr:
        for addr in addrs:
            family = _family(ipaddress.ip_address(addr).version)
            for msg in ipr.get_neighbours(family=family, dst=addr):
                lladdr = msg.get("NDA_LLADDR")
                if lladdr:
                    macs.add(str(lladdr))
    return macs
