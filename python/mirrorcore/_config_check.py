"""The <errd> and <check> sections of userconfig.xml: process watch and checkers (SPEC §3, §5)."""

from __future__ import annotations

import os
import re
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from mirrorcore._config_base import Attrs, children
from mirrorcore._config_service import check_ident

__all__ = [
    "ACTIONS",
    "HANDLER_TIMEOUT",
    "PROC_ACTIONS",
    "Checks",
    "CustomCheck",
    "Errd",
    "ModuleCheck",
    "PingCheck",
    "Proc",
    "SplitBrainCheck",
    "TcpCheck",
    "is_handler",
    "parse_checks",
    "parse_errd",
]

ACTIONS = ("stop", "stopstart", "wait", "restart", "swap")
PROC_ACTIONS = (*ACTIONS, "noaction")
#: Seconds a `<proc>` handler may run before it is killed (`handler_timeout`), like the stop scripts'.
HANDLER_TIMEOUT = 300.0
WHEN = ("pre", "prim", "second", "both")
_MODULE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Proc:
    """An errd `<proc>`: `proc.<name>` goes down when fewer than `atleast` (default 1) or more than
    `atmax` (default None: no limit) matching processes run; then `action` (default stopstart;
    `noaction`: only watch; an absolute path: that handler program runs, killed after
    `handler_timeout` seconds, default 300) applies. `cls` ("class" in XML: prim (default),
    second, both or pre) says in which states it is watched. A process matches by `name` (its
    command name or the base name of argv[0]), or when given by `nameregex` (the same names, whole
    match) or `argregex` (searched in the whole command line); `name` then only names the resource.
    """

    name: str
    atleast: int
    atmax: int | None
    action: str
    cls: str
    nameregex: str | None = None
    argregex: str | None = None
    handler_timeout: float = HANDLER_TIMEOUT

    @property
    def handler(self) -> str | None:
        """The handler program `action` names, or None for a built-in action."""
        return self.action if is_handler(self.action) else None


def is_handler(action: str) -> bool:
    """Whether a `<proc action>` names a handler program (an absolute path) rather than an action."""
    return action.startswith("/")


@dataclass(frozen=True)
class Errd:
    """`<errd>`: processes counted every `polltimer` seconds (default 10; a bare number is seconds)."""

    polltimer: float
    procs: tuple[Proc, ...]


@dataclass(frozen=True)
class TcpCheck:
    """`<tcp ident when><to addr port interval timeout/>`: `tcp.<ident>` is up while a TCP connect to
    addr:port succeeds within `timeout` (default 5 s), tried every `interval` (default 10 s; bare
    numbers are seconds). `when` (default prim) is pre, prim, second or both; `action` default restart.
    """

    ident: str
    when: str
    addr: str
    port: int
    interval: float
    timeout: float
    action: str


@dataclass(frozen=True)
class PingCheck:
    """`<ping ident when><to addr/>…`: `ping.<ident>` is up while any `<to>` answers ICMP echo.

    interval (default 10 s) and timeout (default 5 s) are attributes of `<ping>` or of its
    first `<to>`; `when` defaults to pre, `action` to wait.
    """

    ident: str
    when: str
    addrs: tuple[str, ...]
    interval: float
    timeout: float
    action: str


@dataclass(frozen=True)
class CustomCheck:
    """`<custom ident when exec arg action/>`: a long-running program of ours that reports
    `custom.<ident>` with `mirrorctl set`; a relative `exec` is looked up in the module's bin dir.
    `when` defaults to prim, `action` to restart.
    """

    ident: str
    when: str
    exec: str
    args: tuple[str, ...]
    action: str


@dataclass(frozen=True)
class SplitBrainCheck:
    """`<splitbrain ident exec arg/>`: on loss of every heartbeat only the node for which `exec args`
    succeeds (default exec "ping": the witness address in `arg` answers) goes ALONE.
    """

    ident: str
    exec: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class ModuleCheck:
    """`<module name ident when action/>`: `module.<ident>` (ident defaults to the name) is up while
    module `name` on this node is PRIM, ALONE or SECOND; `when` defaults to pre, `action` to wait.
    """

    name: str
    ident: str
    when: str
    action: str


@dataclass(frozen=True)
class Checks:
    """`<check>`: every checker of the module (all empty when there is no `<check>`)."""

    tcp: tuple[TcpCheck, ...] = ()
    ping: tuple[PingCheck, ...] = ()
    custom: tuple[CustomCheck, ...] = ()
    splitbrain: SplitBrainCheck | None = None
    modules: tuple[ModuleCheck, ...] = ()


def parse_errd(el: etree._Element | None, file: Path) -> Errd | None:
    """Parses `<errd>`; None when there is none."""
    if el is None:
        return None
    a = Attrs(el, file)
    polltimer = a.duration("polltimer", 10.0, "s")
    a.done()
    procs: list[Proc] = []
    for p_el in children(el, file, ("proc",)):
        pa = Attrs(p_el, file)
        name = check_ident(pa, pa.required("name", "postgres"))
        atleast = pa.integer("atleast", 1, low=0)
        atmax_text = pa.text("atmax")
        atmax = None if atmax_text in (None, "none", "-1") else pa.integer("atmax", None, low=0)
        action = _proc_action(pa, name)
        handler_timeout = pa.duration("handler_timeout", HANDLER_TIMEOUT, "s")
        if pa.text("handler_timeout") is not None and not is_handler(action):
            raise pa.error(
                f'<proc name="{name}" handler_timeout> applies to a handler program, not to action="{action}"',
                'remove handler_timeout, or set action="/absolute/path/of/the/handler"',
            )
        cls = pa.choice("class", WHEN, "prim")
        nameregex, argregex = _regex(pa, "nameregex"), _regex(pa, "argregex")
        pa.done()
        if nameregex is not None and argregex is not None:
            raise pa.error(f'<proc name="{name}"> has both nameregex and argregex', "keep one of them")
        assert atleast is not None
        if atmax is not None and atmax < atleast:
            raise pa.error(f"<proc> atmax ({atmax}) is less than atleast ({atleast})", "make atmax >= atleast")
        if atleast == 0 and atmax is None:
            raise pa.error(f'<proc name="{name}"> can never fail (atleast 0, no atmax)', "set atleast or atmax")
        if any(p.name == name for p in procs):
            raise pa.error(f'<proc name="{name}"> is listed twice', "keep one <proc> per process name")
        procs.append(Proc(name, atleast, atmax, action, cls, nameregex, argregex, handler_timeout))
    return Errd(polltimer, tuple(procs))


def _proc_action(a: Attrs, name: str) -> str:
    """A built-in action, or the absolute path of an executable handler program (checked now)."""
    action = (a.text("action", "stopstart") or "").strip()
    if action in PROC_ACTIONS:
        return action
    desc = f'<proc name="{name}" action="{action}">'
    use = f"use one of: {', '.join(PROC_ACTIONS)}, or the absolute path of a handler program"
    if not is_handler(action):
        raise a.error(f"{desc} is not valid (a handler program is named by its absolute path)", use)
    try:
        st = os.stat(action)
    except FileNotFoundError:
        raise a.error(f"{desc}: the handler {action} does not exist", f"create it and chmod +x it, or {use}") from None
    except OSError as e:
        raise a.error(f"{desc}: cannot read the handler {action} ({e.strerror})", "check the path") from None
    if not stat.S_ISREG(st.st_mode):
        raise a.error(f"{desc}: the handler {action} is not a file", f"name the handler program itself, or {use}")
    if not os.access(action, os.X_OK):
        raise a.error(f"{desc}: the handler {action} is not executable", f"chmod +x {action}")
    return action


def _regex(a: Attrs, name: str) -> str | None:
    text = a.text(name)
    if text is None:
        return None
    try:
        re.compile(text)
    except re.error as e:
        raise a.error(f'<{a.el.tag} {name}="{text}"> is not a regular expression ({e})', "fix the pattern") from None
    return text


def _args(a: Attrs) -> tuple[str, ...]:
    text = a.text("arg", "") or ""
    try:
        return tuple(shlex.split(text))
    except ValueError as e:
        raise a.error(f'<{a.el.tag} arg="{text}"> cannot be split into arguments ({e})', "balance the quotes") from None


def parse_checks(el: etree._Element | None, file: Path, module: str) -> Checks:
    """Parses `<check>`; idents must be unique within each checker class."""
    if el is None:
        return Checks()
    Attrs(el, file).done()
    tcp: list[TcpCheck] = []
    ping: list[PingCheck] = []
    custom: list[CustomCheck] = []
    modules: list[ModuleCheck] = []
    splitbrain: SplitBrainCheck | None = None
    seen: dict[str, set[str]] = {}

    def unique(a: Attrs, ident: str) -> str:
        cls = "module" if a.el.tag == "module" else str(a.el.tag)
        if ident in seen.setdefault(cls, set()):
            raise a.error(f'two <{cls}> checkers have the ident "{ident}"', "give each checker a different ident")
        seen[cls].add(ident)
        return ident

    for c_el in children(el, file, ("tcp", "ping", "custom", "splitbrain", "module")):
        a = Attrs(c_el, file)
        if c_el.tag == "tcp":
            ident = unique(a, check_ident(a, a.required("ident", "db")))
            when = a.choice("when", WHEN, "prim")
            action = a.choice("action", ACTIONS, "restart")
            a.done()
            tos = list(children(c_el, file, ("to",)))
            if len(tos) != 1:
                raise a.error(f'<tcp ident="{ident}"> needs exactly one <to>', 'write <to addr="..." port="..."/>')
            ta = Attrs(tos[0], file)
            addr = ta.required("addr", "127.0.0.1")
            port = ta.integer("port", None, low=1, high=65535)
            interval = ta.duration("interval", 10.0, "s")
            timeout = ta.duration("timeout", 5.0, "s")
            ta.done()
            if port is None:
                raise ta.error('<to> lacks the attribute "port"', 'add port="5432"')
            tcp.append(TcpCheck(ident, when, addr, port, interval, timeout, action))
        elif c_el.tag == "ping":
            ident = unique(a, check_ident(a, a.required("ident", "gw")))
            when = a.choice("when", WHEN, "pre")
            action = a.choice("action", ACTIONS, "wait")
            interval = a.duration("interval", 10.0, "s")
            timeout = a.duration("timeout", 5.0, "s")
            a.done()
            addrs = []
            for to in children(c_el, file, ("to",)):
                ta = Attrs(to, file)
                addrs.append(ta.required("addr", "10.0.0.254"))
                ta.done()
            if not addrs:
                raise a.error(f'<ping ident="{ident}"> has no <to>', 'add <to addr="..."/>')
            ping.append(PingCheck(ident, when, tuple(addrs), interval, timeout, action))
        elif c_el.tag == "custom":
            ident = unique(a, check_ident(a, a.required("ident", "app")))
            when = a.choice("when", WHEN, "prim")
            exe = a.required("exec", "/path/to/checker")
            args = _args(a)
            action = a.choice("action", ACTIONS, "restart")
            a.done()
            list(children(c_el, file, ()))
            custom.append(CustomCheck(ident, when, exe, args, action))
        elif c_el.tag == "splitbrain":
            ident = unique(a, check_ident(a, a.required("ident", "witness")))
            exe = a.text("exec", "ping") or "ping"
            args = _args(a)
            a.done()
            list(children(c_el, file, ()))
            if splitbrain is not None:
                raise a.error("<splitbrain> appears twice", "keep one <splitbrain> checker")
            if exe == "ping" and not args:
                raise a.error('<splitbrain exec="ping"> has no witness', 'add arg="<address of the witness>"')
            splitbrain = SplitBrainCheck(ident, exe, args)
        else:
            name = a.required("name", "other_module")
            ident = unique(a, check_ident(a, a.text("ident") or name))
            when = a.choice("when", WHEN, "pre")
            action = a.choice("action", ACTIONS, "wait")
            a.done()
            list(children(c_el, file, ()))
            if not _MODULE_NAME.fullmatch(name):
                raise a.error(f'<module name="{name}"> is not a module name', "use letters, digits, . _ -")
            if name == module:
                raise a.error(f'<module name="{name}"> is this module itself', "name another module")
            modules.append(ModuleCheck(name, ident, when, action))
    return Checks(tuple(tcp), tuple(ping), tuple(custom), splitbrain, tuple(modules))
