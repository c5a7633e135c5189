"""cluster.xml: the two nodes and the LANs that join them (SPEC §2), and which node we are."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mirrorcore._config_base import Attrs, children, line_of, read_xml, single
from mirrorcore._config_error import ConfigError

__all__ = ["ClusterConfig", "Lan", "LanNode", "detect_local_node", "load_cluster"]


@dataclass(frozen=True)
class LanNode:
    """One node's address on one LAN."""

    name: str
    addr: str


@dataclass(frozen=True)
class Lan:
    """A network joining the two nodes; heartbeats (and replication, for the flow LAN) use it."""

    name: str
    nodes: tuple[LanNode, ...]

    def addr(self, node: str) -> str:
        """The address of `node` on this LAN.

        Raises:
            KeyError: the node is not on this LAN.
        """
        for n in self.nodes:
            if n.name == node:
                return n.addr
        raise KeyError(f"node {node!r} is not on LAN {self.name!r}")


@dataclass(frozen=True)
class ClusterConfig:
    """The parsed cluster.xml: exactly two nodes, each with an address on every LAN."""

    file: Path
    lans: tuple[Lan, ...]
    node_names: tuple[str, str]

    def lan(self, name: str) -> Lan:
        """The LAN called `name`.

        Raises:
            KeyError: no LAN has that name.
        """
        for lan in self.lans:
            if lan.name == name:
                return lan
        raise KeyError(f"no LAN {name!r} in {self.file}")

    @property
    def lan_names(self) -> tuple[str, ...]:
        return tuple(lan.name for lan in self.lans)


def load_cluster(path: Path) -> ClusterConfig:
    """Reads and validates cluster.xml.

    Args:
        path: the file (normally /etc/mirrorcore/cluster.xml).

    Returns:
        The cluster's nodes and LANs.

    Raises:
        ConfigError: the file is missing, malformed, or does not describe two nodes on every LAN.
    """
    root = read_xml(path, "cluster")
    Attrs(root, path).done()
    lans_el = single(root, path, "lans", required=True)
    list(children(root, path, ("lans",)))
    assert lans_el is not None
    Attrs(lans_el, path).done()
    lans: list[Lan] = []
    seen_addrs: dict[str, str] = {}
    for lan_el in children(lans_el, path, ("lan",)):
        a = Attrs(lan_el, path)
        name = a.required("name", "default")
        a.done()
        if any(lan.name == name for lan in lans):
            raise a.error(f'LAN "{name}" is defined twice', "give each <lan> a different name")
        nodes: list[LanNode] = []
        for node_el in children(lan_el, path, ("node",)):
            na = Attrs(node_el, path)
            node_name = na.required("name", "node1")
            addr = na.ip("addr")
            na.done()
            if any(n.name == node_name for n in nodes):
                raise na.error(f'node "{node_name}" appears twice on LAN "{name}"', "list each node once per LAN")
            if addr in seen_addrs:
                raise na.error(
                    f"address {addr} is already used by {seen_addrs[addr]}", "give every node a distinct address"
                )
            seen_addrs[addr] = f'node "{node_name}" on LAN "{name}"'
            nodes.append(LanNode(node_name, addr))
        if len(nodes) != 2:
            raise a.error(
                f'LAN "{name}" lists {len(nodes)} node(s)', 'list exactly two <node name="..." addr="..."/> in it'
            )
        lans.append(Lan(name, tuple(nodes)))
    if not lans:
        raise ConfigError(path, line_of(lans_el), "<lans> defines no LAN", 'add a <lan name="default"> with two nodes')
    first = lans[0]
    names = (first.nodes[0].name, first.nodes[1].name)
    for lan in lans[1:]:
        if {n.name for n in lan.nodes} != set(names):
            raise ConfigError(
                path,
                line_of(lans_el),
                f'LAN "{lan.name}" joins {", ".join(n.name for n in lan.nodes)} but LAN "{first.name}" joins '
                f"{', '.join(names)}",
                "put the same two nodes on every LAN",
            )
    return ClusterConfig(path, tuple(lans), names)


def _address_is_local(addr: str) -> bool:
    """True if `addr` is configured on this host: only then can a socket bind to it."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((addr, 0))
        except OSError:
            return False
    return True


def detect_local_node(
    cluster: ClusterConfig,
    node: str | None = None,
    *,
    is_local: Callable[[str], bool] = _address_is_local,
) -> str:
    """Decides which node of the cluster this host is.

    Args:
        cluster: the parsed cluster.xml.
        node: the node name given explicitly, if any; else MIRRORCORE_NODE, else address detection.
        is_local: tells whether an address is configured on this host (replaced in tests).

    Returns:
        The local node's name.

    Raises:
        ConfigError: the name is not a node of the cluster, or detection finds no node or both.
    """
    names = cluster.node_names
    listed = ", ".join(names)
    source = "the node given"
    if node is None and os.environ.get("MIRRORCORE_NODE"):
        node = os.environ["MIRRORCORE_NODE"]
        source = "MIRRORCORE_NODE"
    if node is not None:
        if node not in names:
            raise ConfigError(
                cluster.file,
                None,
                f'{source} ("{node}") is not a node of the cluster (nodes: {listed})',
                "use one of those names",
            )
        return node
    matches = [n for n in names if any(is_local(lan.addr(n)) for lan in cluster.lans)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        what = f"none of the addresses of {listed} is configured on this host"
    else:
        what = f"addresses of both nodes ({listed}) are configured on this host"
    raise ConfigError(
        cluster.file, None, what, "fix the addresses in cluster.xml, or name the local node with MIRRORCORE_NODE=<name>"
    )
