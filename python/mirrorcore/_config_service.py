"""The <heart>, <vip> and <user> sections of userconfig.xml (SPEC §3)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from mirrorcore._config_base import Attrs, children, line_of, single
from mirrorcore._config_cluster import ClusterConfig
from mirrorcore._config_error import ConfigError

__all__ = ["Heart", "Heartbeat", "UserSection", "VipInterface", "VirtualAddr", "parse_heart", "parse_user", "parse_vip"]

_IDENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# set by the script runner itself; a <var> of the same name would be silently overridden
RESERVED_VARS = frozenset({"MODULE", "NODE", "MIRRORCORE_MODULE", "PATH"})


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat link: a LAN of cluster.xml; its resource is `heartbeat.<ident>`.

    `ident` defaults to the LAN's name; `ident="flow"` marks the LAN replication uses.
    """

    lan: str
    ident: str


@dataclass(frozen=True)
class Heart:
    """`<heart>`: beat every `pulse` seconds (default 0.7), peer lost after `timeout` (default 30)."""

    pulse: float
    timeout: float
    heartbeats: tuple[Heartbeat, ...]

    @property
    def flow_lan(self) -> str:
        """The LAN replication uses: the heartbeat with ident "flow", else the first one."""
        for hb in self.heartbeats:
            if hb.ident == "flow":
                return hb.lan
        return self.heartbeats[0].lan


@dataclass(frozen=True)
class VirtualAddr:
    """One virtual IP; `where` is "one_side_alias" (default) or "one_side"; `check` (default on) watches it."""

    addr: str
    where: str
    check: bool


@dataclass(frozen=True)
class VipInterface:
    """An `<interface>` of `<vip>`: its virtual addresses; `check` (default off) watches the interface."""

    check: bool
    addrs: tuple[VirtualAddr, ...]


@dataclass(frozen=True)
class UserSection:
    """`<user>`: stop-script timeouts in seconds (default 300 each) and `<var>`s given to the scripts."""

    nicestoptimeout: float
    forcestoptimeout: float
    vars: tuple[tuple[str, str], ...]


def check_ident(a: Attrs, value: str) -> str:
    """Validates a checker ident: it becomes part of a resource name in failover rules."""
    if not _IDENT.fullmatch(value):
        raise a.error(
            f'<{a.el.tag} ident="{value}"> is not a valid ident',
            "use letters, digits and . _ - : (starting with a letter or digit)",
        )
    return value


def parse_heart(el: etree._Element | None, file: Path, service: etree._Element, cluster: ClusterConfig) -> Heart:
    """Parses `<heart>`; bare pulse and timeout values are milliseconds, as in the product."""
    if el is None:
        raise ConfigError(
            file, line_of(service), "<service> has no <heart>", 'add <heart><heartbeat name="default"/></heart>'
        )
    a = Attrs(el, file)
    pulse = a.duration("pulse", 0.7, "ms")
    timeout = a.duration("timeout", 30.0, "ms")
    a.done()
    if timeout < 2 * pulse:
        raise a.error(
            f"<heart> timeout ({timeout:g}s) is less than twice the pulse ({pulse:g}s)",
            "a peer is declared lost after missing several pulses: make timeout much longer than pulse",
        )
    beats: list[Heartbeat] = []
    lans = cluster.lan_names
    for hb_el in children(el, file, ("heartbeat",)):
        ha = Attrs(hb_el, file)
        lan = ha.required("name", lans[0])
        ident = check_ident(ha, ha.text("ident") or lan)
        ha.done()
        if lan not in lans:
            raise ha.error(
                f'<heartbeat name="{lan}"> names no LAN of cluster.xml (LANs: {", ".join(lans)})',
                f"use one of those names or add the LAN to {cluster.file}",
            )
        if any(b.lan == lan for b in beats):
            raise ha.error(f'LAN "{lan}" has two <heartbeat>s', "keep one <heartbeat> per LAN")
        if any(b.ident == ident for b in beats):
            raise ha.error(f'two <heartbeat>s have the ident "{ident}"', "give each heartbeat a different ident")
        beats.append(Heartbeat(lan, ident))
    if not beats:
        raise a.error("<heart> has no <heartbeat>", f'add <heartbeat name="{lans[0]}"/> inside it')
    return Heart(pulse, timeout, tuple(beats))


def parse_vip(el: etree._Element | None, file: Path) -> tuple[VipInterface, ...]:
    """Parses `<vip><interface_list><interface><real_interface><virtual_addr .../>`."""
    if el is None:
        return ()
    Attrs(el, file).done()
    seen: set[str] = set()
    interfaces: list[VipInterface] = []
    for list_el in children(el, file, ("interface_list",)):
        Attrs(list_el, file).done()
        for intf_el in children(list_el, file, ("interface",)):
            ia = Attrs(intf_el, file)
            check = ia.flag("check", False)
            ia.done()
            addrs: list[VirtualAddr] = []
            list(children(intf_el, file, ("real_interface",)))
            real = single(intf_el, file, "real_interface", required=True)
            assert real is not None
            Attrs(real, file).done()
            for va_el in children(real, file, ("virtual_addr",)):
                va = Attrs(va_el, file)
                addr = va.ip("addr")
                where = va.choice("where", ("one_side_alias", "one_side"), "one_side_alias")
                vcheck = va.flag("check", True)
                va.done()
                if ipaddress.ip_address(addr).is_loopback or ipaddress.ip_address(addr).is_unspecified:
                    raise va.error(f"virtual address {addr} cannot move between nodes", "use an address of a LAN")
                if addr in seen:
                    raise va.error(f"virtual address {addr} is listed twice", "list each virtual address once")
                seen.add(addr)
                addrs.append(VirtualAddr(addr, where, vcheck))
            if not addrs:
                raise ia.error("<real_interface> has no <virtual_addr>", 'add <virtual_addr addr="10.0.0.100"/>')
            interfaces.append(VipInterface(check, tuple(addrs)))
    return tuple(interfaces)


def parse_user(el: etree._Element | None, file: Path) -> UserSection:
    """Parses `<user>`: bare stop timeouts are seconds; `<var name value>` become script env vars."""
    if el is None:
        return UserSection(300.0, 300.0, ())
    a = Attrs(el, file)
    nice = a.duration("nicestoptimeout", 300.0, "s")
    force = a.duration("forcestoptimeout", 300.0, "s")
    a.done()
    variables: list[tuple[str, str]] = []
    for var_el in children(el, file, ("var",)):
        va = Attrs(var_el, file)
        name = va.required("name", "SERVICES")
        value = va.text("value", "")
        assert value is not None
        va.done()
        if not _ENV_NAME.fullmatch(name):
            raise va.error(f'<var name="{name}"> is not a valid environment variable name', "use letters, digits, _")
        if name in RESERVED_VARS:
            raise va.error(f'<var name="{name}"> is set by mirrorcore itself', "choose another name")
        if any(n == name for n, _ in variables):
            raise va.error(f'<var name="{name}"> is defined twice', "keep one definition")
        variables.append((name, value))
    return UserSection(nice, force, tuple(variables))
