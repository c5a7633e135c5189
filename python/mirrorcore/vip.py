"""Sets and removes a module's virtual IPs on the primary node (SPEC §10).

Each VIP goes on the interface that already has an address in a subnet containing it, with that
subnet's prefix, so the kernel makes it a secondary address. `one_side` also makes it the preferred
source address of the subnet route. After adding, the subnet is told with gratuitous ARP / unsolicited
NA (garp.py). Every call is blocking: the daemon runs it in a worker thread.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from mirrorcore import garp

log = logging.getLogger(__name__)

_IFA_F_NODAD = 0x02
_IFA_F_SECONDARY = 0x01
_RT_SCOPE_LINK = 253
_RTPROT_KERNEL = 2
_RT_TABLE_MAIN = 254

_IPRoute: TypeAlias = Any  # pyroute2 ships no type hints

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class VirtualAddrLike(Protocol):
    """What VipManager needs of `config.VirtualAddr`."""

    @property
    def addr(self) -> str: ...

    @property
    def where(self) -> str: ...


class VipInterfaceLike(Protocol):
    """What VipManager needs of `config.VipInterface`."""

    @property
    def addrs(self) -> Sequence[VirtualAddrLike]: ...


class VipError(Exception):
    """A VIP cannot be set or removed; the message says why and what to do."""


@dataclass(frozen=True)
class _Home:
    """Where a VIP belongs on this host: the interface and subnet that contain it."""

    index: int
    ifname: str
    mac: str
    network: IPNetwork
    primary: IPAddress  # the interface's own address in that subnet


def _local(msg: Any) -> str:  # noqa: ANN401 (pyroute2 messages are untyped)
    return str(msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS"))


class VipManager:
    """Adds, removes and looks for a module's virtual IPs on this host."""

    def __init__(self, vips: Sequence[VipInterfaceLike], *, announce_count: int = 3) -> None:
        """Prepares the manager; nothing is touched until `set`.

        Args:
            vips: the module's `<interface>` entries with their `<virtual_addr>`s.
            announce_count: how many gratuitous ARPs / neighbour advertisements to send per VIP.
        """
        self.addrs = tuple(a for iface in vips for a in iface.addrs)
        for a in self.addrs:
            if a.where not in ("one_side_alias", "one_side"):
                raise VipError(f"virtual_addr {a.addr}: where={a.where!r} is not supported; use one_side_alias.")
        self.announce_count = announce_count

    def _home(self, ipr: _IPRoute, vip: IPAddress) -> _Home:
        candidates = []
        for msg in ipr.get_addr(family=2 if vip.version == 4 else 10):
            own = ipaddress.ip_address(_local(msg))
            network = ipaddress.ip_network(f"{own}/{msg['prefixlen']}", strict=False)
            if vip in network and own != vip and network.prefixlen < network.max_prefixlen:
                candidates.append((msg["index"], network, own))
        if not candidates:
            raise VipError(
                f"VIP {vip}: no interface on this node has an address in a subnet containing it. "
                "Fix: configure the node's own address on that subnet, or correct <virtual_addr addr>."
            )
        index, network, own = candidates[0]
        link = ipr.get_links(index)[0]
        return _Home(index, str(link.get("IFLA_IFNAME")), str(link.get("IFLA_ADDRESS")), network, own)

    def _configured(self, ipr: _IPRoute, vip: IPAddress) -> list[Any]:
        return [m for m in ipr.get_addr(family=2 if vip.version == 4 else 10) if _local(m) == str(vip)]

    def set(self) -> None:
        """Adds every VIP (if absent) and announces it to the subnet.

        Raises:
            VipError: a VIP has no matching interface or the kernel refused it.
        """
        with IPRoute() as ipr:
            for a in self.addrs:
                vip = ipaddress.ip_address(a.addr)
                home = self._home(ipr, vip)
                if not self._configured(ipr, vip):
                    # No duplicate address detection for IPv6: the VIP must be usable by start_prim at once,
                    # and a duplicate on the network is the `ip` checker's business.
                    flags = _IFA_F_NODAD if vip.version == 6 else 0
                    try:
                        ipr.addr(
                            "add", index=home.index, address=str(vip), prefixlen=home.network.prefixlen, flags=flags
                        )
                    except NetlinkError as e:
                        if e.code != errno.EEXIST:
                            raise VipError(f"VIP {vip}: cannot add it to {home.ifname}: {e}") from e
                if a.where == "one_side":
                    self._route_source(ipr, home, vip)
                log.info("VIP %s set on %s", vip, home.ifname)
                self._announce(home, vip)

    def announce(self) -> list[str]:
        """Announces again every VIP configured here (after another host claimed one); returns those announced.

        A host that answered for the VIP during a duplicate-address episode left its MAC address in
        its neighbours' caches; the owner's gratuitous ARP / unsolicited NA points them back.
        """
        done: list[str] = []
        with IPRoute() as ipr:
            for a in self.addrs:
                vip = ipaddress.ip_address(a.addr)
                if self._configured(ipr, vip) and self._announce(self._home(ipr, vip), vip):
                    done.append(a.addr)
        return done

    def _announce(self, home: _Home, vip: IPAddress) -> bool:
        try:
            garp.announce(home.ifname, home.index, str(vip), home.mac, count=self.announce_count)
        except OSError as e:
            # The VIP works anyway; neighbours learn it when their cache entries expire.
            log.warning("VIP %s: could not announce it on %s: %s", vip, home.ifname, e)
            return False
        return True

    def _route_source(self, ipr: _IPRoute, home: _Home, src: IPAddress) -> None:
        try:
            ipr.route(
                "replace",
                dst=str(home.network.network_address),
                dst_len=home.network.prefixlen,
                oif=home.index,
                prefsrc=str(src),
                scope=_RT_SCOPE_LINK,
                proto=_RTPROT_KERNEL,
                table=_RT_TABLE_MAIN,
                family=2 if src.version == 4 else 10,
            )
        except NetlinkError as e:
            raise VipError(f"cannot make {src} the source address of {home.network} on {home.ifname}: {e}") from e

    def unset(self) -> None:
        """Removes every VIP; removing one that is not there is not an error.

        Raises:
            VipError: the kernel refused to remove it.
        """
        with IPRoute() as ipr:
            for a in self.addrs:
                vip = ipaddress.ip_address(a.addr)
                for msg in self._configured(ipr, vip):
                    if a.where == "one_side":
                        # Deleting the preferred source would delete the subnet route with it: hand it back first.
                        home = self._home(ipr, vip)
                        self._route_source(ipr, home, home.primary)
                    try:
                        ipr.addr("del", index=msg["index"], address=str(vip), prefixlen=msg["prefixlen"])
                    except NetlinkError as e:
                        if e.code != errno.EADDRNOTAVAIL:
                            raise VipError(f"VIP {vip}: cannot remove it: {e}") from e
                    log.info("VIP %s removed", vip)

    def present(self) -> dict[str, bool]:
        """Whether each VIP is configured on this host."""
        with IPRoute() as ipr:
            return {a.addr: bool(self._configured(ipr, ipaddress.ip_address(a.addr))) for a in self.addrs}
