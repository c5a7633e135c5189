"""Tie-breaks both nodes compute alike.

Each function takes the two sides as an unordered pair and returns the winner's name, so two nodes
that hold the same facts (their own and the peer's heartbeat) always agree without talking.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from mirrorcore._fsm_types import Role

_FORCING = (Role.PRIM, Role.PRIMFORCE)


@dataclass(frozen=True)
class Candidate:
    """One side of a start tie-break."""

    name: str
    uptodate: bool
    generation: int
    role: Role


def start_winner(a: Candidate, b: Candidate, defaultprim: str | None) -> tuple[str | None, str]:
    """Which of two waiting nodes should start the application.

    Args:
        a: one node.
        b: the other node.
        defaultprim: the configured preferred primary, if any.

    Returns:
        The winner's name (None when neither may start on its own) and the rule that decided.
    """
    if (a.role in _FORCING) != (b.role in _FORCING):
        w = a if a.role in _FORCING else b
        return w.name, f"{w.name} was started with `{w.role.value}`"
    if a.uptodate != b.uptodate:
        w = a if a.uptodate else b
        return w.name, f"{w.name} has the latest data"
    if not a.uptodate:
        return None, "neither node has uptodate data"
    if (a.role is Role.SECOND) != (b.role is Role.SECOND):
        w = b if a.role is Role.SECOND else a
        return w.name, f"{w.name} was not asked to be secondary"
    if a.generation != b.generation:
        w = a if a.generation > b.generation else b
        return w.name, f"{w.name} has the newer data (generation {w.generation})"
    if defaultprim in (a.name, b.name):
        return defaultprim, f"defaultprim={defaultprim}"
    w = a if a.name < b.name else b
    return w.name, f"{w.name} has the lower node name"


def primary_winner(
    a: str, a_since: float | None, b: str, b_since: float | None, defaultprim: str | None
) -> tuple[str, str]:
    """Which of two primaries (split brain) keeps the application; the other resyncs from it.

    The older primary wins because its copy has usually served clients the longest; a primary whose
    application has not finished starting (`since` None) counts as the youngest.

    Returns:
        The winner's name and the rule that decided.
    """
    inf = float("inf")
    sa = inf if a_since is None else a_since
    sb = inf if b_since is None else b_since
    if sa != sb:
        w, ws = (a, a_since) if sa < sb else (b, b_since)
        return w, f"{w} has run the application since {fmt_time(ws)}"
    if defaultprim in (a, b):
        assert defaultprim is not None
        return defaultprim, f"defaultprim={defaultprim}"
    w = min(a, b)
    return w, f"{w} has the lower node name"


def fmt_time(t: float | None) -> str:
    """A timestamp for reasons (UTC, to the second)."""
    if t is None:
        return "never"
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
