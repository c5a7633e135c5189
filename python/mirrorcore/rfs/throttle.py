"""How fast resync data may go: `<rfs reiallowedbw>` as a token bucket, and the operator's pause/boost.

Only resync data (the blocks `copy_range` queues) takes tokens; the application's own writes are
forwarded as they come and never wait here. The bucket holds at most one second of tokens (or
one chunk, if larger), so a resync that was idle does not then burst far above the limit.
"""

from __future__ import annotations

import trio

__all__ = ["Throttle"]

_EPSILON = 1e-6  # bytes
_MIN_WAIT = 1e-3  # seconds


class Throttle:
    """A token bucket of `rate` bytes per second (None: unlimited) that can be paused and boosted.

    Args:
        rate: bytes per second, None for no limit.
        burst: the most bytes one `take` may ask for at once (the bucket holds max(rate, burst)).
    """

    def __init__(self, rate: int | None, burst: int) -> None:
        self.rate = rate
        self._capacity = float(max(rate or 0, burst))
        self._tokens = self._capacity
        self._stamp = trio.current_time()
        self.paused = False
        self.boosted = False
        self._changed = trio.Event()

    @property
    def limited(self) -> bool:
        """Whether `take` may wait for tokens (a rate is set and no boost is on)."""
        return self.rate is not None and not self.boosted

    def command(self, name: str) -> str:
        """Applies an operator command ("pause", "resume", "boost", "unboost"); returns what it did.

        Raises:
            ValueError: an unknown command.
        """
        if name == "pause":
            self.paused = True
        elif name == "resume":
            self.paused = False
        elif name == "boost":
            self.boosted, self.paused = True, False
        elif name == "unboost":
            self.boosted = False
        else:
            raise ValueError(f"unknown resync command {name!r}: use pause, resume, boost or unboost")
        self._changed.set()
        self._changed = trio.Event()
        return self.state

    @property
    def state(self) -> str:
        """One word for the progress report."""
        if self.paused:
            return "paused"
        if self.boosted:
            return "boosted"
        return "throttled" if self.rate is not None else "running"

    async def wait_running(self) -> None:
        """Returns at once unless paused; then waits for resume (or boost)."""
        while self.paused:
            await self._changed.wait()

    async def take(self, nbytes: int) -> None:
        """Waits until `nbytes` of resync data may be sent (and while paused); takes the tokens."""
        await self.wait_running()
        if nbytes <= 0 or not self.limited:
            return
        assert self.rate is not None
        want = min(float(nbytes), self._capacity)
        while True:
            self._refill()
            if self._tokens + _EPSILON >= want:  # rounding must not leave a wait too short to move the clock
                break
            need = max((want - self._tokens) / self.rate, _MIN_WAIT)
            with trio.move_on_after(need):
                await self._changed.wait()  # a boost or pause ends the wait early
            await self.wait_running()
            if not self.limited:
                return
        # A request larger than the bucket (a chunk bigger than one second) is charged in full: the
        # balance goes negative and the next request waits for it.
        self._tokens -= float(nbytes)

    def _refill(self) -> None:
        now = trio.current_time()
        if self.rate is not None:
            self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
