"""The `tcp` checker: `tcp.<ident>` is up while a TCP connect to addr:port succeeds within `timeout`."""

from __future__ import annotations

import trio

from mirrorcore._config_check import TcpCheck
from mirrorcore.checkers._loop import StateFn, probe_loop
from mirrorcore.checkers.resources import Resources

__all__ = ["TcpChecker", "tcp_up"]


async def tcp_up(addr: str, port: int) -> bool:
    """Whether a TCP connection to addr:port opens (it is closed at once); bound it with `trio.move_on_after`."""
    try:
        stream = await trio.open_tcp_stream(addr, port)
    except OSError:
        return False
    await stream.aclose()
    return True


class TcpChecker:
    """Connects to the configured address every `interval` while `when` holds."""

    def __init__(self, check: TcpCheck, state: StateFn) -> None:
        self.check = check
        self.state = state
        self.resource = f"tcp.{check.ident}"

    async def probe(self) -> str:
        c = self.check
        with trio.move_on_after(c.timeout):
            return "up" if await tcp_up(c.addr, c.port) else "down"
        return "down"

    async def run(self, resources: Resources, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probes until cancelled; started once the resource is declared."""
        c = self.check
        await probe_loop(resources, self.resource, c.when, self.state, c.interval, self.probe, task_status=task_status)
