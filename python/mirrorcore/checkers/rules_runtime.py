"""The failover rules at run time: which action is due, and when (SPEC §5).

A rule's action fires once the rule has held *continuously* for `handle_time`; a resource that
flaps faster than that triggers nothing. A rule that fired does not fire again while it keeps
holding (the daemon calls `rearm` once the action it caused has finished, so a resource still
down fires again and counts against `maxloop`); once it has stopped holding for `handle_time`
a "clear" decision tells the daemon that a `wait()` may end.

`due_actions` is the whole decision and takes the time as an argument, so it is tested with plain
numbers; `run` drives it from resource changes, each rule's deadline and a `period` tick.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import trio

from mirrorcore import rules as rl
from mirrorcore.checkers.resources import Resources, lookup_in
from mirrorcore.config import ModuleConfig

__all__ = ["DEFAULT_PERIOD", "Decision", "RuleEngine", "default_rules", "describe", "proc_rule"]

#: Seconds between two evaluations when nothing changes. Every change is evaluated at once and
#: every handle_time deadline is woken for exactly, so this tick is only a safety net (a clock
#: step, a change notified while an action ran); one second is what the product uses too.
DEFAULT_PERIOD = 1.0

OnAction = Callable[[str, str, str], Awaitable[None]]


@dataclass(frozen=True)
class Decision:
    """What `due_actions` found: `kind` "fire" applies `action`; "clear" says the rule no longer holds."""

    kind: Literal["fire", "clear"]
    rule: str
    action: str
    reason: str


@dataclass
class _Hold:
    since: float | None = None  # the rule holds since then
    fired: bool = False
    false_since: float | None = None  # a fired rule no longer holds since then


# ---- default rules ----------------------------------------------------------------------


class _ProcLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def action(self) -> str: ...


class _ErrdLike(Protocol):
    @property
    def procs(self) -> Sequence[_ProcLike]: ...


class _IdentAction(Protocol):
    @property
    def ident(self) -> str: ...
    @property
    def action(self) -> str: ...


class _ChecksLike(Protocol):
    @property
    def tcp(self) -> Sequence[_IdentAction]: ...
    @property
    def ping(self) -> Sequence[_IdentAction]: ...
    @property
    def custom(self) -> Sequence[_IdentAction]: ...
    @property
    def modules(self) -> Sequence[_IdentAction]: ...


class _AddrLike(Protocol):
    @property
    def check(self) -> bool: ...


class _VipLike(Protocol):
    @property
    def check(self) -> bool: ...
    @property
    def addrs(self) -> Sequence[_AddrLike]: ...


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def proc_rule(name: str) -> str:
    """The label of the default rule of errd's `<proc name>`: `proc_<name>_down`."""
    return _label(f"proc_{name}_down")


def _down(cls: str, ident: str, action: str, label: str) -> rl.Rule:
    return rl.Rule(_label(label), rl.Compare(rl.Resource("local", cls, ident), "==", "down"), action, 0)


def default_rules(errd: _ErrdLike | None, checks: _ChecksLike, vips: Sequence[_VipLike] = ()) -> tuple[rl.Rule, ...]:
    """The rules of SPEC §5 for what the module configures (heartbeats are the daemon's own business).

    `intf.?` and `ip.?` use "any": one lost interface or one stolen VIP is enough to act.
    Each checker gets a rule on its own resource with its configured action. A `<proc>` whose action
    is a handler program gets a rule whose action is that program's path: the daemon runs it (`Watch`)
    instead of giving a command to the state machine.
    """
    out: list[rl.Rule] = []
    if any(v.check for v in vips):
        out.append(_down("intf", "?", "wait", "interface_down"))
    if any(a.check for v in vips for a in v.addrs):
        out.append(_down("ip", "?", "stopstart", "vip_down"))
    for p in errd.procs if errd is not None else ():
        if p.action != "noaction":
            out.append(_down("proc", p.name, p.action, proc_rule(p.name)))
    for cls, items in (("tcp", checks.tcp), ("ping", checks.ping), ("custom", checks.custom)):
        out.extend(_down(cls, c.ident, c.action, f"{cls}_{c.ident}_down") for c in items)
    out.extend(_down("module", c.ident, c.action, f"module_{c.ident}_down") for c in checks.modules)
    return tuple(out)


_default_rules = default_rules


def _replaced(default: rl.Rule, user: Iterable[rl.Rule]) -> bool:
    """A user rule about the same local resource (or its whole class) replaces the default rule."""
    (mine,) = rl.resources(default.expr)
    for rule in user:
        for res in rl.resources(rule.expr):
            if res.scope != "local" or res.cls != mine.cls:
                continue
            if res.ident in ("*", "?") or mine.ident in ("*", "?") or res.ident == mine.ident:
                return True
    return False


# ---- explaining -------------------------------------------------------------------------


def describe(expr: rl.Expr) -> str:
    """The expression as the user would write it; `local.` is left out."""
    if isinstance(expr, rl.Compare):
        r = expr.resource
        name = f"{r.cls}.{r.ident}" if r.scope == "local" else str(r)
        return f"{name} {expr.op} {expr.value}"
    if isinstance(expr, rl.Not):
        inner = describe(expr.operand)
        return f"!{inner}" if isinstance(expr.operand, rl.Compare) else f"!({inner})"
    left, right = describe(expr.left), describe(expr.right)
    if isinstance(expr, rl.And):
        left = f"({left})" if isinstance(expr.left, rl.Or) else left
        right = f"({right})" if isinstance(expr.right, rl.Or) else right
        return f"{left} && {right}"
    return f"{left} || {right}"


def _values_of(expr: rl.Expr, values: Mapping[str, str]) -> str:
    seen: list[str] = []
    for r in rl.resources(expr):
        if r.ident in ("*", "?"):
            prefix = f"{r.scope}.{r.cls}."
            names = sorted(k for k in values if k.startswith(prefix))
        else:
            names = [str(r)]
        for name in names:
            shown = name.removeprefix("local.")
            text = f"{shown} is {values.get(name, 'unknown')}"
            if text not in seen:
                seen.append(text)
    return ", ".join(seen) or "no such resource"


def _secs(seconds: float) -> str:
    return f"{seconds:g}s"


# ---- the engine -------------------------------------------------------------------------


class RuleEngine:
    """Evaluates the failover rules and says which action is due."""

    def __init__(
        self,
        rules: Sequence[rl.Rule],
        handle_time: float,
        *,
        defaults: Sequence[rl.Rule] = (),
        default_rules: bool = True,
        period: float = DEFAULT_PERIOD,
    ) -> None:
        """Prepares the engine.

        Args:
            rules: the user's rules (`ModuleConfig.failover_rules`), evaluated in order.
            handle_time: seconds a rule must hold before its action fires (`<failover handle_time>`).
            defaults: the default rules (`default_rules(cfg.errd, cfg.checks, cfg.vips)`); each is kept
                unless a user rule mentions the same local resource or its class with `*`/`?`.
            default_rules: False drops every default rule.
            period: seconds between evaluations when nothing changes.
        """
        kept = [d for d in defaults if not _replaced(d, rules)] if default_rules else []
        labels = {r.label for r in rules}
        self.rules: tuple[rl.Rule, ...] = (*rules, *(d for d in kept if d.label not in labels))
        self.handle_time = handle_time
        self.period = period
        self._holds = {r.label: _Hold() for r in self.rules}

    @classmethod
    def for_module(cls, cfg: ModuleConfig, *, default_rules: bool = True, period: float = DEFAULT_PERIOD) -> RuleEngine:
        """The engine of a module: its `<failover>` rules and handle_time, plus the default rules."""
        defaults = _default_rules(cfg.errd, cfg.checks, cfg.vips)
        return cls(cfg.failover_rules, cfg.handle_time, defaults=defaults, default_rules=default_rules, period=period)

    def due_actions(self, now: float, values: Mapping[str, str]) -> list[Decision]:
        """Evaluates every rule at time `now` against `values` and returns what became due.

        Args:
            now: the current time (any monotonic clock, in seconds).
            values: scoped resource values, `{"local.tcp.db": "down", "remote.tcp.db": "up"}`
                (`Resources.values()`).

        Returns:
            In rule order: "fire" for a rule that has now held for `handle_time` (once per holding
            period), "clear" for a fired rule that has now stopped holding for `handle_time`.
        """
        lookup = lookup_in(values)
        out: list[Decision] = []
        for rule in self.rules:
            hold = self._holds[rule.label]
            if rl.evaluate(rule.expr, lookup):
                hold.false_since = None
                if hold.since is None:
                    hold.since = now
                if not hold.fired and now - hold.since >= self.handle_time:
                    hold.fired = True
                    held = f" for {_secs(self.handle_time)}" if self.handle_time else ""
                    reason = (
                        f"rule {rule.label} ({describe(rule.expr)}) held{held}: {_values_of(rule.expr, values)}; "
                        f"action {rule.action}"
                    )
                    out.append(Decision("fire", rule.label, rule.action, reason))
            else:
                hold.since = None
                if hold.fired:
                    if hold.false_since is None:
                        hold.false_since = now
                    if now - hold.false_since >= self.handle_time:
                        hold.fired, hold.false_since = False, None
                        now_values = _values_of(rule.expr, values)
                        reason = f"rule {rule.label} ({describe(rule.expr)}) no longer holds: {now_values}"
                        out.append(Decision("clear", rule.label, rule.action, reason))
        return out

    def next_deadline(self) -> float | None:
        """The earliest time at which `due_actions` may decide something without any change."""
        times: list[float] = []
        for hold in self._holds.values():
            if hold.since is not None and not hold.fired:
                times.append(hold.since + self.handle_time)
            if hold.false_since is not None:
                times.append(hold.false_since + self.handle_time)
        return min(times, default=None)

    def rearm(self, label: str | None = None) -> None:
        """Lets a fired rule (every rule when `label` is None) fire again after another `handle_time`."""
        for name, hold in self._holds.items():
            if label is None or name == label:
                hold.since, hold.fired, hold.false_since = None, False, None

    def holding(self) -> list[str]:
        """Labels of the rules that fired and still hold: what `state` shows as the rule that acted."""
        return [name for name, hold in self._holds.items() if hold.fired]

    async def run(
        self,
        resources: Resources,
        on_action: OnAction,
        *,
        on_clear: OnAction | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Evaluates on every change, at each deadline and every `period`, until cancelled.

        Args:
            resources: the table to read.
            on_action: `await on_action(action, rule_label, reason)` for every rule that fires.
            on_clear: `await on_clear(action, rule_label, reason)` when a fired rule stops holding.
            task_status: started once the first evaluation is done.
        """
        started = False
        while True:
            version = resources.version
            for d in self.due_actions(trio.current_time(), resources.values()):
                if d.kind == "fire":
                    await on_action(d.action, d.rule, d.reason)
                elif on_clear is not None:
                    await on_clear(d.action, d.rule, d.reason)
            if not started:
                task_status.started()
                started = True
            deadline = trio.current_time() + self.period
            due = self.next_deadline()
            if due is not None:
                deadline = min(deadline, due)
            with trio.move_on_at(deadline):
                await resources.changed(version)
