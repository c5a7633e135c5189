"""mirrorctl commands about resources and checkers (SPEC §8): get, set, checker, errd.

`cli.py` registers them with its own `-m/-i` options and its way of reaching the daemon (it may run
as `python -m mirrorcore.cli`, so this module must not import it). `status_lines` gives the lines
`mirrorctl state` prints about the watchers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


class ModuleOptions(Protocol):
    """`cli.module_options`: adds `-m MODULE` and `-i INITIATOR` to a command."""

    def __call__(self, func: F, /) -> F: ...


#: `call(module, cmd, initiator, args)`: sends the command to the module's daemon and prints its answer.
Call = Callable[[str | None, str, str | None, dict[str, Any]], None]


def register(main: click.Group, module_options: ModuleOptions, call: Call) -> None:
    """Adds `get`, `set`, `checker` and `errd` to `main`."""

    @main.command("get")
    @module_options
    @click.option("-r", "resource", required=True, help="The resource, e.g. tcp.db (remote.tcp.db: the peer's).")
    def get(module: str | None, initiator: str | None, resource: str) -> None:
        """Print a resource's value, who set it and when."""
        call(module, "get", initiator, {"resource": resource})

    @main.command("set")
    @module_options
    @click.option("-r", "resource", required=True, help="The resource, e.g. custom.app.")
    @click.option("-v", "value", required=True, type=click.Choice(["up", "down"]), help="The new value.")
    def set_(module: str | None, initiator: str | None, resource: str, value: str) -> None:
        """Set a resource (what a <custom> checker's program runs); failover rules see it at once."""
        call(module, "set", initiator, {"resource": resource, "value": value})

    for what, doc in (
        ("checker", "Turn the checkers (tcp, ping, custom, intf, ip, module) on or off until the daemon stops."),
        ("errd", "Turn process monitoring (errd) on or off until the daemon stops."),
    ):
        main.command(what, help=doc)(_switch(what, module_options, call))


def _switch(what: str, module_options: ModuleOptions, call: Call) -> Callable[..., None]:
    @module_options
    @click.argument("onoff", type=click.Choice(["on", "off"]))
    def command(module: str | None, initiator: str | None, onoff: str) -> None:
        call(module, what, initiator, {"on": onoff == "on"})

    return command


def status_lines(status: dict[str, Any]) -> list[str]:
    """What `state` says about the watchers of the local node: what is down, what is off, the last rule."""
    lines: list[str] = []
    down = status.get("resources_down") or []
    if down:
        lines.append(f"resources down: {', '.join(down)}")
    off = [name for name in ("checkers", "errd") if status.get(name) is False]
    if off:
        lines.append(f"{' and '.join(off)} off (`mirrorctl {off[0].rstrip('s')} on` turns them back on)")
    last = status.get("last_rule")
    if last:
        at = time.strftime("%H:%M:%S", time.localtime(float(last.get("at", 0))))
        outcome = "" if last.get("outcome") == "applied" else f" ({last.get('outcome')})"
        action = str(last.get("action"))
        shown = action if action.startswith("/") else f"{action}()"  # a handler program is not a rule action
        lines.append(f"last rule at {at}: {last.get('rule')} -> {shown}{outcome}: {last.get('reason')}")
    return lines
