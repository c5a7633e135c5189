"""The module's watchers at run time: checkers, errd, failover rules and the witness (SPEC §5).

`Watch` owns the resource table, runs every configured checker and errd as tasks, and runs the
rule engine. A rule that fires becomes an `fsm.Command` whose initiator is the rule's label (so it
counts against maxloop and the log says which rule acted); a `wait()` rule that clears becomes
`fsm.RuleCleared`. The rule of an errd `<proc>` whose action is a handler program runs that program
instead, in the background (`checkers.handlers`): not a command, so it does not count against
maxloop. The daemon calls `node_changed` after every step, `peer_beat`/`link_changed`/`all_lost`
for heartbeat news, `witness` when every heartbeat is lost, and `handle` for the `get`, `set`,
`checker` and `errd` commands; it sends `resources.snapshot()` in its heartbeats.

Checkers see the module's state through `checker_state`: WAIT while a script runs, so a `prim`
checker (and errd's `class="prim"`) starts watching once start_prim has returned, and STOP while
`mirrorctl checker off` (`errd off` for errd) is in force; both switches are kept in the module's
state directory (`watch.json`), so they outlive a restart of the daemon.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio

from mirrorcore import control, fsm
from mirrorcore.checkers import (
    CustomChecker,
    ErrdWatcher,
    IntfChecker,
    IpChecker,
    ModuleChecker,
    PingChecker,
    ProcHandlers,
    Resources,
    RuleEngine,
    TcpChecker,
    is_active,
    split_name,
    witness_reachable,
)
from mirrorcore.checkers.splitbrain import WITNESS_TIMEOUT
from mirrorcore.config import ModuleConfig, Proc
from mirrorcore.heart import Beat, unpack_resources
from mirrorcore.modlog import ModuleLog
from mirrorcore.paths import Paths
from mirrorcore.scripts import ScriptRunner
from mirrorcore.state import write_atomic
from mirrorcore.vip import VipManager

__all__ = ["COMMANDS", "IP_INTERVAL", "Watch"]

#: The control commands `Watch.handle` answers.
COMMANDS = ("get", "set", "checker", "errd")

#: Seconds between two checks of a VIP (`<virtual_addr check="on">`): one ARP probe each.
IP_INTERVAL = 2.0
#: Seconds an ARP probe waits for another host claiming the VIP; a LAN answers in microseconds.
ARP_TIMEOUT = 0.5

Submit = Callable[[fsm.Event], Awaitable[fsm.Step]]


class _Checker(Protocol):
    @property
    def resource(self) -> str: ...

    async def run(self, resources: Resources, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


@dataclass
class _Watched:
    """A checker task and the `when` that says in which states it probes."""

    checker: _Checker
    when: str


@dataclass
class _LastRule:
    rule: str
    action: str
    reason: str
    at: float
    outcome: str = "applied"


class Watch:
    """Everything that watches the module and its surroundings, for one daemon."""

    def __init__(
        self,
        config: ModuleConfig,
        paths: Paths,
        log: ModuleLog,
        vip: VipManager,
        *,
        node: Callable[[], fsm.Node],
        submit: Submit,
        kick: Callable[[], None],
    ) -> None:
        """Prepares the watchers; nothing runs until `run`.

        Args:
            config: the module configuration.
            paths: where the module's files are (bin dir for custom checkers, other modules' sockets).
            log: the module log.
            vip: the daemon's VIP manager (re-announces a VIP after a duplicate-address episode).
            node: the daemon's current fsm node.
            submit: feeds an event to the state machine and returns its step.
            kick: sends a heartbeat now (local resources changed).
        """
        self.config = config
        self.log = log
        self.vip = vip
        self._node = node
        self._submit = submit
        self._kick = kick
        self.resources = Resources()
        self.engine = RuleEngine.for_module(config)
        # `checker off` / `errd off` outlive a daemon restart (an operator's maintenance must not end
        # because the daemon was restarted): kept in the module's state directory.
        self._switches = paths.state_dir(config.name) / "watch.json"
        self.checkers_on, self.errd_on = _load_switches(self._switches, log)
        for what, on in (("checker", self.checkers_on), ("errd", self.errd_on)):
            if not on:
                said = f"{what} off, as set before the daemon started: `mirrorctl {what} on` resumes"
                log.write(_sentence(said), initiator="watch")
        self.last_rule: _LastRule | None = None
        self._acting: set[str] = set()  # rules whose action is under way: fire again once it is over
        self._bin_dir = paths.bin_dir(config.name)
        self._watched = self._build(paths)
        self.errd = ErrdWatcher(config.errd, self.errd_state) if config.errd is not None else None
        runner = ScriptRunner(
            module=config.name,
            bin_dir=self._bin_dir,
            log_dir=paths.log_dir(config.name),
            env=dict(config.user.vars),
            nicestoptimeout=config.user.nicestoptimeout,
            forcestoptimeout=config.user.forcestoptimeout,
            node=config.node,
        )
        self.handlers = ProcHandlers(config.errd.procs if config.errd is not None else (), runner, log)
        self._nursery: trio.Nursery | None = None  # where handlers run, once `run` has started
        for hb in config.heart.heartbeats:
            self.resources.declare(f"heartbeat.{hb.ident}", by="heart")
        sb = config.checks.splitbrain
        if sb is not None:
            self.resources.declare(f"splitbrain.{sb.ident}", by="splitbrain")

    def _build(self, paths: Paths) -> list[_Watched]:
        cfg, state = self.config, self.checker_state
        out: list[_Watched] = []
        peers = [lan.addr(cfg.peer) for lan in cfg.cluster.lans]
        for iface in cfg.vips:
            if iface.check and iface.addrs:
                out.append(_Watched(IntfChecker(iface.addrs[0].addr, state), "pre"))
            for a in iface.addrs:
                if a.check:
                    ip = IpChecker(a.addr, state, interval=IP_INTERVAL, timeout=ARP_TIMEOUT, peers=peers)
                    out.append(_Watched(ip, "prim"))
        out += [_Watched(TcpChecker(c, state), c.when) for c in cfg.checks.tcp]
        out += [_Watched(PingChecker(c, state), c.when) for c in cfg.checks.ping]
        log_file = paths.log_dir(cfg.name) / "checkers.log"
        out += [
            _Watched(CustomChecker(c, state, module=cfg.name, bin_dir=self._bin_dir, log_file=log_file), c.when)
            for c in cfg.checks.custom
        ]
        out += [_Watched(ModuleChecker(c, state, socket=paths.socket(c.name)), c.when) for c in cfg.checks.modules]
        return out

    # ---- the state checkers see ----------------------------------------------------------

    def _seen(self) -> str:
        node = self._node()
        return "WAIT" if node.phase is fsm.Phase.SCRIPT else node.state.value

    def checker_state(self) -> str:
        """The module state as checkers see it (STOP while `checker off`)."""
        return self._seen() if self.checkers_on else "STOP"

    def errd_state(self) -> str:
        """The module state as errd sees it (STOP while `errd off`)."""
        return self._seen() if self.errd_on else "STOP"

    # ---- running -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs every checker, errd and the rule engine until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for w in self._watched:
                await nursery.start(w.checker.run, self.resources)
            if self.errd is not None:
                await nursery.start(self.errd.run, self.resources)
            nursery.start_soon(self._follow_changes)
            await nursery.start(partial(self.engine.run, self.resources, self._fire, on_clear=self._clear))
            task_status.started()

    async def _fire(self, action: str, rule: str, reason: str) -> None:
        detail = reason.removesuffix(f"; action {action}")
        self.log.write(_sentence(reason), level="E", initiator=rule)
        proc = self.handlers.for_rule(rule, action)
        if proc is not None:
            # Not a command: the rule stays fired (no rearm) until proc.<name> stops being down.
            last = self.last_rule = _LastRule(rule, action, reason, time.time(), "handler running")
            run = partial(self._run_handler, proc, last)
            if self._nursery is None:
                await run()
            else:
                self._nursery.start_soon(run)
            return
        self.last_rule = _LastRule(rule, action, reason, time.time())
        self._acting.add(rule)
        step = await self._submit(fsm.Command(action, time.time(), initiator=rule, detail=detail))
        if step.refused is not None:
            # Refused while a script runs: the rule may fire again once the node is idle (node_changed
            # rearms it). Refused for good (restart on a secondary...): it stays fired until it clears.
            if self._node().phase is not fsm.Phase.SCRIPT:
                self._acting.discard(rule)
            self.last_rule.outcome = f"refused: {step.refused}"

    async def _run_handler(self, proc: Proc, last: _LastRule) -> None:
        count = self.errd.counts.get(proc.name, 0) if self.errd is not None else 0
        last.outcome = await self.handlers.run(proc, self._node().state.value, count)

    async def _clear(self, action: str, rule: str, reason: str) -> None:
        # Only a wait() waits for its rule to clear; other rules clear as soon as their action stops
        # the checker (its resource goes unknown), which is not news.
        if action == "wait":
            self.log.write(_sentence(reason), initiator=rule)
            await self._submit(fsm.RuleCleared(rule, reason, time.time()))

    async def _follow_changes(self) -> None:
        """Logs local resource changes, tells the peer at once, and re-announces a VIP that came back."""
        before = self.resources.snapshot()
        version = self.resources.version
        while True:
            version = await self.resources.changed(version)
            now = self.resources.snapshot()
            if now == before:
                continue
            for name, value in now.items():
                old = before.get(name)
                if old == value or value in ("init", "unknown"):
                    continue
                entry = self.resources.get(name)
                by = entry.by if entry is not None else None
                why = self._why(name)
                level = "E" if value == "down" else "I"
                self.log.write(f"Resource {name} set to {value}{why}", level=level, initiator=by)
                if name.startswith("ip.") and old == "down" and value == "up":
                    await self._announce_vip(name)
            before = now
            self._kick()

    def _why(self, name: str) -> str:
        """What the checker of `name` said about it, when it says more than up or down (the ip checker)."""
        for w in self._watched:
            if w.checker.resource == name:
                why = getattr(w.checker, "why", "")
                return f": {why}" if why else ""
        return ""

    async def _announce_vip(self, name: str) -> None:
        node = self._node()
        if node.state not in (fsm.State.ALONE, fsm.State.PRIM) or node.phase is fsm.Phase.SCRIPT:
            return
        try:
            done = await trio.to_thread.run_sync(self.vip.announce)
        except OSError as e:
            self.log.write(f"Could not announce the virtual IP again: {e}", level="E", initiator="vip")
            return
        if done:
            self.log.write(
                f"{name} is up again: virtual IP {', '.join(done)} announced again (gratuitous ARP), "
                "so that no neighbour keeps the address of the host that claimed it",
                initiator="vip",
            )

    # ---- what the daemon tells us --------------------------------------------------------

    def node_changed(self, before: fsm.Node, after: fsm.Node) -> None:
        """After every step: stale resources go unknown at once, and finished actions rearm their rules.

        A checker that is inactive in the new state would say so at its next look; saying it now
        means a rule never acts on a value measured before a restart (the value "down" that caused it).
        """
        self._invalidate()
        if after.phase is not fsm.Phase.SCRIPT and self._acting:
            for rule in self._acting - set(after.wait_rules):
                self.engine.rearm(rule)
            self._acting.clear()
        if self.config.rfs is not None:
            self.resources.set("rfs.uptodate", "up" if after.uptodate else "down", by="fsm")

    def _invalidate(self) -> None:
        state = self.checker_state()
        for w in self._watched:
            if not is_active(w.when, state):
                self.resources.set(w.checker.resource, "unknown", by=w.checker.resource)
        if self.errd is not None:
            state = self.errd_state()
            for p in self.errd.errd.procs:
                if not is_active(p.cls, state):
                    self.resources.set(f"proc.{p.name}", "unknown", by="errd")

    def peer_beat(self, beat: Beat) -> None:
        """The peer's resources, from its latest heartbeat, for `remote.` rules."""
        self.resources.set_remote(unpack_resources(beat.resources))

    def link_changed(self, ident: str, alive: bool) -> None:
        """A heartbeat LAN came up or went down: `heartbeat.<ident>`."""
        self.resources.set(f"heartbeat.{ident}", "up" if alive else "down", by="heart")

    def all_lost(self) -> None:
        """Every heartbeat is lost: the peer's values are no longer known."""
        self.resources.set_remote({})

    async def witness(self) -> bool | None:
        """Asks the split-brain witness (None when none is configured); sets `splitbrain.<ident>`.

        The node that misses the witness keeps the application while it asks, and the other takes
        over meanwhile: the wait is bounded by the heartbeat timeout (at most WITNESS_TIMEOUT).
        """
        sb = self.config.checks.splitbrain
        if sb is None:
            return None
        timeout = min(WITNESS_TIMEOUT, max(1.0, self.config.heart.timeout))
        ok = await witness_reachable(sb, bin_dir=self._bin_dir, within=timeout)
        self.resources.set(f"splitbrain.{sb.ident}", "up" if ok else "down", by="splitbrain")
        what = f"{sb.exec} {' '.join(sb.args)}".strip()
        verdict = "answers" if ok else f"does not answer within {timeout:g}s"
        self.log.write(f"Split-brain witness ({what}) {verdict}", level="I" if ok else "E", initiator="splitbrain")
        return ok

    # ---- commands ------------------------------------------------------------------------

    def handle(self, request: control.Request) -> control.Reply:
        """Answers `get`, `set`, `checker on|off` and `errd on|off`."""
        args = request.args
        if request.cmd == "get":
            return self._get(str(args.get("resource", "")))
        if request.cmd == "set":
            return self._set(str(args.get("resource", "")), str(args.get("value", "")), request.initiator)
        on = bool(args.get("on"))
        if request.cmd == "checker":
            self.checkers_on = on
        else:
            self.errd_on = on
        self._invalidate()
        what = "checkers" if request.cmd == "checker" else "errd"
        try:
            write_atomic(self._switches, json.dumps({"checkers": self.checkers_on, "errd": self.errd_on}))
        except OSError as e:
            state = "on" if on else "off"
            kept = f"{what} {state} until the daemon stops: could not record it in {self._switches} ({e})"
            self.log.write(_sentence(kept), level="E", initiator=request.initiator)
            return control.Reply(ok=True, message=kept)
        self.log.write(f"{what.capitalize()} set {'on' if on else 'off'}", initiator=request.initiator)
        return control.Reply(ok=True, message=f"{what} {'on' if on else 'off'}")

    def _known(self, scope: str) -> str:
        names = sorted(self.resources.details()[scope])
        return ", ".join(names) or "none"

    def _get(self, name: str) -> control.Reply:
        scope, _, rest = name.partition(".")
        if scope not in ("local", "remote"):
            scope, rest = "local", name
        entry = self.resources.get(rest, scope=scope)
        if entry is None:
            return control.Reply(
                ok=False, message=f"no {scope} resource {rest!r}; {scope} resources: {self._known(scope)}"
            )
        stamp = time.strftime("%H:%M:%S", time.localtime(entry.at))
        shown = rest if scope == "local" else name
        return control.Reply(ok=True, message=f"{shown} {entry.value} (set by {entry.by} at {stamp})")

    def _set(self, name: str, value: str, initiator: str | None) -> control.Reply:
        if value not in ("up", "down"):
            return control.Reply(ok=False, message=f"value {value!r}: use -v up or -v down")
        try:
            split_name(name)
        except ValueError as e:
            return control.Reply(ok=False, message=str(e))
        if self.resources.get(name) is None:
            return control.Reply(
                ok=False,
                message=f"no resource {name!r} on this node (a <custom> checker's is custom.IDENT); "
                f"resources: {self._known('local')}",
            )
        self.resources.set(name, value, by=initiator or "admin")
        return control.Reply(ok=True, message=f"{name} set to {value}")

    # ---- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The watchers' part of `state --json` and `/api/state`."""
        last = self.last_rule
        remote_down = sorted(n for n, v in self.resources.details()["remote"].items() if v["value"] == "down")
        return {
            "checkers": self.checkers_on,
            "errd": self.errd_on,
            "resources_down": self.resources.down(),
            "remote_resources_down": remote_down,
            "last_rule": None if last is None else dict(vars(last)),
            "resources": self.resources.details(),
        }


def _load_switches(path: Path, log: ModuleLog) -> tuple[bool, bool]:
    """(checkers on, errd on) as last set with `mirrorctl checker|errd`; both on when never set."""
    try:
        saved = json.loads(path.read_text())
        return bool(saved.get("checkers", True)), bool(saved.get("errd", True))
    except FileNotFoundError:
        return True, True
    except (OSError, ValueError, AttributeError) as e:
        log.write(f"Ignoring {path} ({e}): checkers and errd on", level="E", initiator="watch")
        return True, True


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]
