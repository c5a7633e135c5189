"""What every checker shares: when it is active (`when=`) and the probe loop around its probe."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from mirrorcore.checkers.resources import Resources

log = logging.getLogger("mirrorcore.checkers")

#: The module's state as checkers should see it ("STOP", "WAIT", "ALONE", "PRIM", "SECOND").
#: The daemon reports "WAIT" while start/stop scripts run, so a `prim` checker starts watching
#: once start_prim has returned, and "STOP" while `mirrorctl checker off` is in force.
StateFn = Callable[[], str]

#: How often an inactive checker looks at the state to start probing; calling `state()` is cheap.
STATE_POLL = 0.5

_ACTIVE = {
    "pre": ("WAIT", "ALONE", "PRIM", "SECOND"),
    "prim": ("ALONE", "PRIM"),
    "second": ("SECOND",),
    "both": ("ALONE", "PRIM", "SECOND"),
}


def is_active(when: str, state: str) -> bool:
    """Whether a checker with `when` probes in `state`.

    `pre` checkers run as soon as the module is started, in WAIT too: a `wait()` they caused ends
    when they see their resource back. `prim` runs on the primary (ALONE, PRIM), `second` on the
    secondary, `both` on either. Nothing runs in STOP.
    """
    try:
        return state in _ACTIVE[when]
    except KeyError:
        raise ValueError(f"when={when!r}: use one of {', '.join(_ACTIVE)}") from None


Probe = Callable[[], Awaitable[str]]


async def wait_state(predicate: Callable[[], bool], *, deadline: float = float("inf")) -> bool:
    """Waits until `predicate()` holds or the trio clock reaches `deadline`; returns whether it holds.

    `state()` is a plain callable owned by the daemon, which signals nothing when it changes, so it
    is polled every STATE_POLL seconds; that costs nothing and bounds how late a checker starts.
    """
    while not predicate():
        now = trio.current_time()
        if now >= deadline:
            return False
        await trio.sleep(min(STATE_POLL, deadline - now))
    return True


async def probe_loop(
    resources: Resources,
    name: str,
    when: str,
    state: StateFn,
    interval: float,
    probe: Probe,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Sets resource `name` from `probe()` every `interval` seconds while `when` is active.

    The resource is `init` until the first probe and `unknown` while the checker is inactive
    (rules compare with `down`, so an inactive checker never triggers anything). A probe that
    finished after the checker became inactive is thrown away for the same reason.
    """
    resources.declare(name, by=name)
    task_status.started()
    was_active: bool | None = None
    while True:
        if not is_active(when, state()):
            if was_active is not False and resources.set(name, "unknown", by=name):
                log.info("checker %s inactive in %s (when=%s)", name, state(), when)
            was_active = False
            await wait_state(lambda: is_active(when, state()))
            continue
        was_active = True
        value = await probe()
        if not is_active(when, state()):
            continue
        if resources.set(name, value, by=name):
            log.info("resource %s set to %s", name, value)
        await wait_state(lambda: not is_active(when, state()), deadline=trio.current_time() + interval)
