"""The `intf` checker (`<interface check="on">`): `intf.<net>` is up while the interface that carries
the VIP's subnet is up with a carrier. Its default rule is `wait()`: the module waits for the
interface instead of failing over in a loop."""

from __future__ import annotations

import trio

from mirrorcore.checkers import _net
from mirrorcore.checkers._loop import StateFn, log, probe_loop
from mirrorcore.checkers.resources import Resources

__all__ = ["IntfChecker"]


class IntfChecker:
    """Watches the interface of a VIP's subnet; active as soon as the module runs (`when=pre`)."""

    def __init__(self, vip: str, state: StateFn, *, interval: float = 2.0, when: str = "pre") -> None:
        """Prepares the checker; the interface is found when it runs.

        Args:
            vip: a virtual address of the `<interface>`; its subnet names the resource.
            state: the module state as checkers see it.
            interval: seconds between two looks (netlink, cheap).
            when: in which states it looks (default pre: in WAIT too, so a wait() ends by itself).
        """
        self.vip = vip
        self.state = state
        self.interval = interval
        self.when = when
        self.home: _net.Home | None = None
        self.resource = f"intf.{vip}"  # until the subnet is known

    async def probe(self) -> str:
        if self.home is None:
            self.home = await trio.to_thread.run_sync(_net.home_of, self.vip)
        if self.home is None:
            log.warning("checker %s: no interface has an address in a subnet containing %s", self.resource, self.vip)
            return "down"
        return "up" if await trio.to_thread.run_sync(_net.link_up, self.home.index) else "down"

    async def run(self, resources: Resources, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probes until cancelled. The resource is `intf.<network address>` of the subnet found at start
        (`intf.<vip>` if no interface carries it then); it does not change while running."""
        self.home = await trio.to_thread.run_sync(_net.home_of, self.vip)
        if self.home is not None:
            self.resource = f"intf.{self.home.network.network_address}"
        await probe_loop(
            resources, self.resource, self.when, self.state, self.interval, self.probe, task_status=task_status
        )
