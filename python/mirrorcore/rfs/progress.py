"""What a resync has done and has left, as the worker reports it (`{"event": "resync", ...}`).

"Done" counts what was compared or copied, whether or not it had to be sent: a full resync of
an identical tree is done when every block was compared, having sent almost nothing. The rate
and the ETA follow the bytes done; `bytes_sent` is what actually crossed the link.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["REPORT_EVERY", "Progress"]

#: At most this often (seconds) a progress line goes to the daemon, plus one at each phase change.
REPORT_EVERY = 0.5


@dataclass
class Progress:
    """Counters of one resync; `now` is any monotonic clock, passed in so that tests control it."""

    mode: str
    reason: str
    started: float
    phase: str = "namespace"  # then "content", then "done" or "interrupted"
    entries: int = 0  # namespace entries compared
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_sent: int = 0
    state: str = "running"  # running | throttled | boosted | paused (from the throttle)
    content_started: float | None = None
    ended: float | None = None
    _last_report: float | None = field(default=None, repr=False)

    def begin_content(self, now: float) -> None:
        self.phase = "content"
        self.content_started = now

    def end(self, now: float, phase: str = "done") -> None:
        self.phase = phase
        self.ended = now

    def rate(self, now: float) -> float:
        """Bytes done per second since the content phase began."""
        if self.content_started is None:
            return 0.0
        elapsed = (self.ended or now) - self.content_started
        return self.bytes_done / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float) -> float | None:
        """Seconds left at the current rate; None while unknown."""
        if self.phase == "done":
            return 0.0
        left = max(0, self.bytes_total - self.bytes_done)
        rate = self.rate(now)
        if left == 0 and self.phase == "content":
            return 0.0
        return round(left / rate, 1) if rate > 0 else None

    def snapshot(self, now: float) -> dict[str, Any]:
        """The fields of a progress event."""
        return {
            "mode": self.mode,
            "reason": self.reason,
            "phase": self.phase,
            "state": self.state,
            "entries": self.entries,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "bytes_sent": self.bytes_sent,
            "rate": round(self.rate(now)),
            "eta": self.eta(now),
            "seconds": round((self.ended or now) - self.started, 3),
        }

    def maybe_report(self, now: float, emit: Callable[[dict[str, Any]], None], *, force: bool = False) -> bool:
        """Emits a snapshot if `force` or at least `REPORT_EVERY` seconds passed since the last one."""
        if not force and self._last_report is not None and now - self._last_report < REPORT_EVERY:
            return False
        self._last_report = now
        emit(self.snapshot(now))
        return True
