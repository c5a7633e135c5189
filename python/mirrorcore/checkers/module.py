"""The `module` checker: `module.<ident>` is up while another module on this node is PRIM, ALONE or
SECOND and green (ready), as its daemon says on its control socket."""

from __future__ import annotations

import functools
from pathlib import Path

import trio

from mirrorcore import control
from mirrorcore._config_check import ModuleCheck
from mirrorcore.checkers._loop import StateFn, probe_loop
from mirrorcore.checkers.resources import Resources

__all__ = ["ModuleChecker", "module_up"]

_RUNNING = ("PRIM", "ALONE", "SECOND")


async def module_up(socket: Path) -> bool:
    """Whether the module whose daemon listens on `socket` is PRIM, ALONE or SECOND and green.

    A daemon that does not run or answers nonsense counts as down. Bound the wait with
    `trio.move_on_after`: the blocking call is abandoned on cancellation (and gives up by itself
    after `control.call`'s own 30 s).
    """
    request = control.Request(cmd="status", initiator="checker")
    call = functools.partial(control.call, socket, request)
    try:
        reply = await trio.to_thread.run_sync(call, abandon_on_cancel=True)
    except (control.DaemonNotRunning, OSError, ValueError, KeyError):
        return False
    return reply.status.get("state") in _RUNNING and reply.status.get("color") == "green"


class ModuleChecker:
    """Asks the other module's daemon for its status every `interval` while `when` holds."""

    def __init__(
        self, check: ModuleCheck, state: StateFn, *, socket: Path, interval: float = 5.0, timeout: float = 5.0
    ) -> None:
        """Prepares the checker.

        Args:
            check: the `<module>` element.
            state: the module state as checkers see it.
            socket: the other module's control socket, `paths.socket(check.name)`.
            interval: seconds between two questions (`<module>` has no such attribute yet).
            timeout: seconds to wait for the answer.
        """
        self.check = check
        self.state = state
        self.socket = socket
        self.interval = interval
        self.timeout = timeout
        self.resource = f"module.{check.ident}"

    async def probe(self) -> str:
        with trio.move_on_after(self.timeout):
            return "up" if await module_up(self.socket) else "down"
        return "down"

    async def run(self, resources: Resources, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probes until cancelled; started once the resource is declared."""
        await probe_loop(
            resources, self.resource, self.check.when, self.state, self.interval, self.probe, task_status=task_status
        )
