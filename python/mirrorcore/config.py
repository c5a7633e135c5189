"""Module configuration: cluster.xml and a module's userconfig.xml (SPEC §2-3).

Parsed once into frozen dataclasses; anything unknown or invalid raises `ConfigError`
naming the file, the line and the fix, so that nothing starts on a bad config. The
sections live in small private modules (`_config_*.py`) and are re-exported here.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from mirrorcore import rules
from mirrorcore._config_base import Attrs, children, expand_macros, line_of, read_xml, single, tag_of
from mirrorcore._config_check import (
    Checks,
    CustomCheck,
    Errd,
    ModuleCheck,
    PingCheck,
    Proc,
    SplitBrainCheck,
    TcpCheck,
    is_handler,
    parse_checks,
    parse_errd,
)
from mirrorcore._config_cluster import ClusterConfig, Lan, LanNode, detect_local_node, load_cluster
from mirrorcore._config_error import ConfigError
from mirrorcore._config_rfs import Exclusion, Replicated, Rfs, parse_rfs
from mirrorcore._config_service import (
    Heart,
    Heartbeat,
    UserSection,
    VipInterface,
    VirtualAddr,
    parse_heart,
    parse_user,
    parse_vip,
)
from mirrorcore.durations import format_duration, parse_duration, parse_size
from mirrorcore.paths import Paths

__all__ = [
    "DEFAULT_PORT",
    "Checks",
    "ClusterConfig",
    "ConfigError",
    "CustomCheck",
    "Errd",
    "Exclusion",
    "Heart",
    "Heartbeat",
    "Lan",
    "LanNode",
    "ModuleCheck",
    "ModuleConfig",
    "PingCheck",
    "Proc",
    "Replicated",
    "Rfs",
    "SplitBrainCheck",
    "TcpCheck",
    "UserSection",
    "VipInterface",
    "VirtualAddr",
    "detect_local_node",
    "format_duration",
    "is_handler",
    "load_cluster",
    "load_module",
    "parse_duration",
    "parse_size",
]

DEFAULT_PORT = 9010
_MODULE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_SECTIONS = ("heart", "vip", "rfs", "user", "errd", "check", "failover")


@dataclass(frozen=True)
class ModuleConfig:
    """A module's whole configuration, as seen from the local node.

    Attributes:
        name: the module name (its directory under /etc/mirrorcore/modules).
        file: the userconfig.xml it was read from.
        cluster: the parsed cluster.xml.
        node: the local node; peer: the other one.
        mode: always "mirror".
        boot: start the module when the node boots (default off).
        failover: a SECOND whose PRIM is lost becomes ALONE (default on).
        defaultprim: the node to swap back to once it is SECOND green; None ("alone", default) for none.
        maxloop: checker actions allowed within loop_interval (default 3); one more stops the module.
        loop_interval: seconds (default 24 h; a bare number is hours, as in the product).
        port: [beyond] the HTTP TCP port (default 9010); heartbeats use UDP on the same number,
            replication TCP port+1.
        heart, vips, rfs, user, errd, checks: the sections of the same names (rfs and errd may be None).
        failover_rules: the rules of `<failover>`.
        handle_time: seconds a rule's action must stay the same before it is applied
            (`<failover handle_time>`, default 0; a bare number is seconds).
        macros: the `<macro>` definitions, in order.
    """

    name: str
    file: Path
    cluster: ClusterConfig
    node: str
    peer: str
    mode: str
    boot: bool
    failover: bool
    defaultprim: str | None
    maxloop: int
    loop_interval: float
    port: int
    heart: Heart
    vips: tuple[VipInterface, ...]
    rfs: Rfs | None
    user: UserSection
    errd: Errd | None
    checks: Checks
    failover_rules: tuple[rules.Rule, ...]
    handle_time: float = 0.0
    macros: tuple[tuple[str, str], ...] = ()

    def lan_addrs(self, lan: str) -> tuple[str, str]:
        """The (local address, peer address) pair on LAN `lan`."""
        the_lan = self.cluster.lan(lan)
        return the_lan.addr(self.node), the_lan.addr(self.peer)


def _macros(root: etree._Element, file: Path) -> dict[str, str]:
    macros: dict[str, str] = {}
    for el in root:
        if tag_of(el) != "macro":
            continue
        a = Attrs(el, file)
        name = a.required("name", "SERVICES")
        value = a.text("value", "") or ""
        a.done()
        list(children(el, file, ()))
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise a.error(f'<macro name="{name}"> is not a valid macro name', "use letters, digits and _")
        if name in macros:
            raise a.error(f'<macro name="{name}"> is defined twice', "keep one definition")
        # a macro may use the macros defined before it
        macros[name] = expand_macros(value, macros, file, line_of(el))
    return macros


def _expand_tree(root: etree._Element, macros: dict[str, str], file: Path) -> None:
    for el in root.iter():
        parent = el.getparent()
        in_failover = parent is not None and parent.tag == "failover"
        if el.tail and el.tail.strip() and not in_failover:
            where = f"<{parent.tag}>" if parent is not None else "the document"
            raise ConfigError(file, line_of(el), f"{where} contains stray text {el.tail.strip()[:30]!r}", "remove it")
        if tag_of(el) is None or el.tag == "macro":
            continue
        for key, value in el.attrib.items():
            text = value.decode() if isinstance(value, bytes) else value
            el.set(key, expand_macros(text, macros, file, line_of(el)))
        if el.tag != "failover" and el.text and el.text.strip():
            raise ConfigError(
                file, line_of(el), f"<{el.tag}> contains stray text {el.text.strip()[:30]!r}", "remove it"
            )


def _failover_source(el: etree._Element, file: Path) -> tuple[str, int, int]:
    """The rules text with the file line and column where it starts.

    lxml gives the text but not its position, so we find `<failover ...>` in the raw file
    and blank out the CDATA markers and comments (keeping every other character in place)
    so that errors point at the right column.
    """
    text = el.text or ""
    line = line_of(el) or 1
    try:
        raw = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return text, line, 1
    offset = sum(len(x) for x in raw.splitlines(keepends=True)[: line - 1])
    start_tag = re.compile(r"<failover\b[^>]*?(/?)>").search(raw, offset)
    if start_tag is None or start_tag.group(1):
        return text, line, 1
    end = raw.find("</failover>", start_tag.end())
    if end < 0:
        return text, line, 1
    inner = raw[start_tag.end() : end]

    def blank(m: re.Match[str]) -> str:
        return re.sub(r"[^\n]", " ", m.group())

    inner = re.sub(r"<!\[CDATA\[|\]\]>|<!--.*?-->", blank, inner, flags=re.DOTALL)
    inner = html.unescape(inner)
    before = raw[: start_tag.end()]
    return inner, before.count("\n") + 1, start_tag.end() - (before.rfind("\n") + 1) + 1


def _failover(el: etree._Element | None, file: Path, macros: dict[str, str]) -> tuple[tuple[rules.Rule, ...], float]:
    if el is None:
        return (), 0.0
    a = Attrs(el, file)
    handle_time = a.duration("handle_time", 0.0, "s", positive=False)
    a.done()
    list(children(el, file, ()))
    text, line, column = _failover_source(el, file)
    text = expand_macros(text, macros, file, line)
    return rules.parse_rules(text, file=file, line=line, column=column), handle_time


def _check_rule_resources(cfg: ModuleConfig) -> None:
    """A rule naming a checker that does not exist would never fire: that is a typo."""
    known: dict[str, set[str]] = {
        "heartbeat": {hb.ident for hb in cfg.heart.heartbeats},
        "ip": {va.addr for intf in cfg.vips for va in intf.addrs},
        "tcp": {c.ident for c in cfg.checks.tcp},
        "ping": {c.ident for c in cfg.checks.ping},
        "custom": {c.ident for c in cfg.checks.custom},
        "module": {c.ident for c in cfg.checks.modules},
        "proc": {p.name for p in cfg.errd.procs} if cfg.errd else set(),
        "splitbrain": {cfg.checks.splitbrain.ident} if cfg.checks.splitbrain else set(),
    }
    for rule in cfg.failover_rules:
        for res in rules.resources(rule.expr):
            if res.cls in known and res.ident not in ("*", "?") and res.ident not in known[res.cls]:
                names = ", ".join(sorted(known[res.cls])) or "none configured"
                raise ConfigError(
                    cfg.file,
                    rule.line,
                    f'rule "{rule.label}" uses {res.cls}.{res.ident}, which no checker provides ({res.cls}: {names})',
                    "correct the name or configure that checker",
                )


def load_module(paths: Paths, module: str, *, node: str | None = None) -> ModuleConfig:
    """Reads cluster.xml and the module's userconfig.xml.

    Args:
        paths: where the node keeps its files.
        module: the module name.
        node: the local node's name; else MIRRORCORE_NODE; else the node whose address is on this host.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: anything missing, unknown or invalid, naming file, line and fix.
    """
    file = paths.userconfig(module)
    if not _MODULE_NAME.fullmatch(module):
        raise ConfigError(file, None, f'"{module}" is not a valid module name', "use letters, digits, . _ - (max 64)")
    cluster = load_cluster(paths.cluster_xml)
    local = detect_local_node(cluster, node)
    peer = next(n for n in cluster.node_names if n != local)

    root = read_xml(file, "safe")
    Attrs(root, file).done()
    macros = _macros(root, file)
    _expand_tree(root, macros, file)
    list(children(root, file, ("macro", "service")))
    service = single(root, file, "service", required=True)
    assert service is not None
    a = Attrs(service, file)
    mode = a.text("mode", "mirror")
    if mode != "mirror":
        raise a.error(f'<service mode="{mode}"> is not supported', 'write mode="mirror" (farm modules are unsupported)')
    boot = a.flag("boot", False)
    failover = a.flag("failover", True)
    defaultprim_text = (a.text("defaultprim", "alone") or "alone").strip()
    maxloop = a.integer("maxloop", 3, low=0)
    loop_interval = a.duration("loop_interval", 24 * 3600.0, "h")
    port = a.integer("port", DEFAULT_PORT, low=1, high=65534)
    a.done()
    assert maxloop is not None
    assert port is not None
    if defaultprim_text not in ("alone", *cluster.node_names):
        raise a.error(
            f'<service defaultprim="{defaultprim_text}"> is neither "alone" nor a node',
            f"use alone or one of: {', '.join(cluster.node_names)}",
        )
    list(children(service, file, _SECTIONS))
    sec = {tag: single(service, file, tag, required=False) for tag in _SECTIONS}
    failover_rules, handle_time = _failover(sec["failover"], file, macros)
    cfg = ModuleConfig(
        name=module,
        file=file,
        cluster=cluster,
        node=local,
        peer=peer,
        mode=mode,
        boot=boot,
        failover=failover,
        defaultprim=None if defaultprim_text == "alone" else defaultprim_text,
        maxloop=maxloop,
        loop_interval=loop_interval,
        port=port,
        heart=parse_heart(sec["heart"], file, service, cluster),
        vips=parse_vip(sec["vip"], file),
        rfs=parse_rfs(sec["rfs"], file),
        user=parse_user(sec["user"], file),
        errd=parse_errd(sec["errd"], file),
        checks=parse_checks(sec["check"], file, module),
        failover_rules=failover_rules,
        handle_time=handle_time,
        macros=tuple(macros.items()),
    )
    _check_rule_resources(cfg)
    return cfg
