"""The table of resources `class.ident` → `init | up | down | unknown` (SPEC §5).

Checkers write local values; the peer's values arrive through heartbeats (`set_remote`). The rule
engine reads both through `lookup`, the contract of `rules.evaluate`, and waits for changes with
`changed`. Every entry says who set it and when, so `mirrorctl get` and `state` can say why a
resource is down, not only that it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from mirrorcore import rules

__all__ = ["Entry", "Resources", "lookup_in", "split_name"]


@dataclass(frozen=True)
class Entry:
    """One resource's value, who set it (a checker, "peer", or the `-i NAME` of a command) and when (epoch s)."""

    value: str
    by: str
    at: float


def split_name(name: str) -> tuple[str, str]:
    """`"ip.10.0.0.100"` → `("ip", "10.0.0.100")`.

    Raises:
        ValueError: not `class.ident` with a known class; the message says what is expected.
    """
    cls, dot, ident = name.partition(".")
    if not dot or not ident or cls not in rules.CLASSES or ident in ("*", "?"):
        raise ValueError(
            f"{name!r} is not a resource: write class.ident with class one of {', '.join(rules.CLASSES)} (e.g. tcp.db)"
        )
    return cls, ident


def _check_value(value: str) -> None:
    if value not in rules.VALUES:
        raise ValueError(f"{value!r} is not a resource value: use one of {', '.join(rules.VALUES)}")


def lookup_in(values: Mapping[str, str]) -> rules.Lookup:
    """A `rules.evaluate` lookup over scoped names (`"local.tcp.db"` → `"down"`).

    A named ident yields its value (none when absent); `*` and `?` yield every value of the class
    in that scope, and `rules.evaluate` applies "all" or "any".
    """

    def lookup(scope: str, cls: str, ident: str) -> Sequence[str]:
        if ident in ("*", "?"):
            prefix = f"{scope}.{cls}."
            return [v for k, v in values.items() if k.startswith(prefix)]
        value = values.get(f"{scope}.{cls}.{ident}")
        return [] if value is None else [value]

    return lookup


class Resources:
    """Local and remote resource values, with change notification for the rule engine.

    Only trio tasks (or code holding the trio token) may call the setters: notification uses a
    `trio.Event`. Readers never block.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._local: dict[str, Entry] = {}
        self._remote: dict[str, Entry] = {}
        self._version = 0
        self._event = trio.Event()

    # ---- writing -----------------------------------------------------------------------

    def declare(self, name: str, *, by: str) -> None:
        """Makes `name` known with the value `init` unless it already has a value."""
        split_name(name)
        if name not in self._local:
            self._local[name] = Entry("init", by, self._clock())
            self._bump()

    def set(self, name: str, value: str, *, by: str) -> bool:
        """Sets a local resource; this is also what `mirrorctl set -r RES -v VALUE` ends in.

        The daemon's control handler takes `{"cmd": "set", "args": {"resource": "custom.app",
        "value": "down"}, "initiator": ...}` and calls `set(resource, value, by=initiator or "admin")`.

        Args:
            name: `class.ident`, e.g. `custom.app`.
            value: init, up, down or unknown.
            by: who sets it: a checker's name, or the command's initiator.

        Returns:
            True when the value changed (then waiters of `changed` wake up).

        Raises:
            ValueError: a bad name or value; the message says what is expected.
        """
        split_name(name)
        _check_value(value)
        old = self._local.get(name)
        if old is not None and old.value == value:
            return False
        self._local[name] = Entry(value, by, self._clock())
        self._bump()
        return True

    def set_remote(self, snapshot: Mapping[str, str]) -> bool:
        """Replaces the peer's values with those of its latest heartbeat (`snapshot()` on its side).

        Malformed entries are dropped: a peer running another version must not stop our rules.
        An empty mapping forgets the peer (call it when every heartbeat is lost).

        Returns:
            True when any remote value changed.
        """
        now = self._clock()
        new: dict[str, Entry] = {}
        for name, value in snapshot.items():
            try:
                split_name(name)
                _check_value(value)
            except ValueError:
                continue
            old = self._remote.get(name)
            new[name] = old if old is not None and old.value == value else Entry(value, "peer", now)
        if {k: e.value for k, e in new.items()} == {k: e.value for k, e in self._remote.items()}:
            self._remote = new
            return False
        self._remote = new
        self._bump()
        return True

    def _bump(self) -> None:
        self._version += 1
        event, self._event = self._event, trio.Event()
        event.set()

    # ---- reading -----------------------------------------------------------------------

    def get(self, name: str, *, scope: str = "local") -> Entry | None:
        """The entry of `name` (`mirrorctl get -r RES`), None when nothing set it."""
        return (self._local if scope == "local" else self._remote).get(name)

    def snapshot(self) -> dict[str, str]:
        """Local values by name: what our heartbeats carry to the peer."""
        return {name: e.value for name, e in sorted(self._local.items())}

    def details(self) -> dict[str, dict[str, dict[str, object]]]:
        """Both tables with who and when, for `state --json` and the HTTP status."""
        return {
            scope: {name: {"value": e.value, "by": e.by, "at": e.at} for name, e in sorted(table.items())}
            for scope, table in (("local", self._local), ("remote", self._remote))
        }

    def down(self) -> list[str]:
        """Local resources that are down, for the `state` line."""
        return sorted(name for name, e in self._local.items() if e.value == "down")

    def values(self) -> dict[str, str]:
        """Every value under its scoped name (`"local.tcp.db"`, `"remote.tcp.db"`): the rule engine's input."""
        out = {f"local.{name}": e.value for name, e in self._local.items()}
        out.update({f"remote.{name}": e.value for name, e in self._remote.items()})
        return out

    def lookup(self, scope: str, cls: str, ident: str) -> Sequence[str]:
        """The `rules.evaluate` lookup: one value for a named ident, the whole class for `*` or `?`."""
        return lookup_in(self.values())(scope, cls, ident)

    @property
    def version(self) -> int:
        """Grows by one at every change."""
        return self._version

    async def changed(self, since: int) -> int:
        """Waits until the table differs from version `since`; returns the new version.

        Passing the version read before evaluating guarantees no change is missed in between.
        """
        while self._version == since:
            await self._event.wait()
        return self._version
