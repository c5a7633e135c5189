"""Decisions an idle node takes from what it knows of the peer.

`decide` is the WAIT logic (who starts the application); `settle_primary` and `settle_second` keep a
running node in line with the peer (PRIM <-> ALONE, failover, split brain, defaultprim hand-back).
"""

from __future__ import annotations

from mirrorcore._fsm_enter import (
    become_alone,
    become_second,
    begin_stepdown,
    begin_stop,
    chain,
    out,
    wait,
)
from mirrorcore._fsm_rules import Candidate, fmt_time, primary_winner, start_winner
from mirrorcore._fsm_types import (
    Color,
    Goal,
    Node,
    PeerView,
    Phase,
    Role,
    SaveDurable,
    Settings,
    State,
    Step,
    StopMirror,
)
from mirrorcore._fsm_watch import isolate_primary, isolate_second, isolate_waiting

_WITNESS_OK = " and the split-brain witness answers from here"
_FORCE_HINT = "run `mirrorctl primforce` to start here anyway, losing {peer}'s newer data"


def refuse_start(s: Settings, node: Node, reason: str) -> Step:
    """A start that cannot go on: run poststop and stop, keeping the reason (no Exit: the admin must read it)."""
    n = node.but(role=Role.NONE)
    return begin_stop(n, Goal.STOP, f"{reason} (running poststop)", reason, exit_=False)


def decide(s: Settings, node: Node) -> Step:
    """WAIT: become primary, secondary, refuse, or keep waiting, from the latest view of the peer."""
    p = node.peer
    if p is None:
        if not node.peer_lost:
            return wait(node, Color.ORANGE, f"waiting to hear from {s.peer}")
        return _decide_alone(s, node)
    if p.primary:
        if node.role in (Role.PRIM, Role.PRIMFORCE):
            return refuse_start(s, node, f"{p.node} is already primary; run `mirrorctl second` here")
        return become_second(node, p, f"{p.node} is primary")
    if p.state is State.SECOND:
        return wait(node, Color.ORANGE, f"waiting: {p.node} is SECOND without a primary and will take over or wait")
    return _decide_vs_waiting(s, node, p)


def _not_uptodate(s: Settings, node: Node) -> str:
    if node.generation == 0:
        return (
            "first start: data here was never synchronized; run `mirrorctl prim` on the node with the good data "
            "and `mirrorctl second` on the other"
        )
    return f"not uptodate: waiting for {s.peer}, which has the latest data, to start; " + _FORCE_HINT.format(
        peer=s.peer
    )


def _decide_alone(s: Settings, node: Node) -> Step:
    """The peer is not heard: only a node with the latest data (or forced) starts."""
    gone = f"{s.peer} is not heard"
    if node.role is Role.PRIMFORCE:
        return become_alone(node, f"{gone}; forced with `primforce`")
    if node.role is Role.PRIM:
        if node.uptodate or node.generation == 0:
            return become_alone(node, f"{gone}; started with `prim`")
        return refuse_start(s, node, "not uptodate: " + _FORCE_HINT.format(peer=s.peer))
    if node.role is Role.SECOND:
        return wait(node, Color.RED, f"no primary: waiting for {s.peer} to start as primary")
    if node.witness is False:
        return isolate_waiting(s, node)
    if node.uptodate:
        return become_alone(node, f"{gone} and the data here is uptodate")
    return wait(node, Color.RED, _not_uptodate(s, node))


def _decide_vs_waiting(s: Settings, node: Node, p: PeerView) -> Step:
    """The peer is alive but WAIT or STOP: decide who starts, the same way on both nodes."""
    if node.role is Role.SECOND:
        color = Color.RED if p.state is State.STOP else Color.ORANGE
        return wait(node, color, f"waiting for {p.node} to become primary (it is {p.state.value})")
    if node.role is Role.PRIMFORCE:
        return become_alone(node, "forced with `primforce`")
    if node.role is Role.PRIM:
        if node.uptodate or node.generation == 0:
            return become_alone(node, "started with `prim`")
        return refuse_start(s, node, "not uptodate: " + _FORCE_HINT.format(peer=p.node))
    me = Candidate(s.node, node.uptodate, node.generation, node.role)
    other = Candidate(p.node, p.uptodate, p.generation, p.role)
    winner, why = start_winner(me, other, s.defaultprim)
    if winner == s.node:
        return become_alone(node, f"{why}")
    starting = p.state is State.WAIT and p.role is not Role.NONE
    color = Color.ORANGE if starting else Color.RED
    if winner is None:
        hint = (
            _not_uptodate(s, node)
            if node.generation == 0
            else "run `mirrorctl primforce` on the node with the best data"
        )
        return wait(node, Color.RED, f"not uptodate, and neither is {p.node}: {hint}")
    if not node.uptodate:
        return wait(node, color, _not_uptodate(s, node))
    return wait(node, color, f"waiting for {p.node} to start as primary: {why}")


def settle_primary(s: Settings, node: Node, now: float) -> Step:
    """An idle ALONE/PRIM green node: follow the peer (PRIM/ALONE, split brain, defaultprim)."""
    p = node.peer
    if p is None:
        if node.witness is False:
            return isolate_primary(s, node)
        heard = f"{s.peer} is not heard{_WITNESS_OK if node.witness else ''}"
        return out(node.but(state=State.ALONE, reason=f"running alone: {heard}; it catches up when it returns"))
    if p.primary:
        return _split_brain(s, node, p)
    if p.ready_second:
        n = node.but(state=State.PRIM, reason=f"primary: {p.node} is mirrored and ready for failover")
        if s.defaultprim == p.node and p.node != s.node:
            handback = f"defaultprim={p.node}: handing the application back to {p.node}"
            return chain(out(n), begin_stop(n, Goal.STOPSTART, handback, handback, exit_=False))
        return out(n)
    why = f"running alone: {p.node} is {p.state.value} {p.color.value}; it catches up when it returns"
    return out(node.but(state=State.ALONE, reason=why))


def _split_brain(s: Settings, node: Node, p: PeerView) -> Step:
    winner, why = primary_winner(s.node, node.primary_since, p.node, p.primary_since, s.defaultprim)
    if winner == s.node:
        return out(
            node.but(
                state=State.ALONE,
                reason=f"split brain: {p.node} is also primary; {why}, longer, "
                f"so {p.node} steps down and resyncs from here",
            )
        )
    return begin_stepdown(
        node,
        f"split brain resolved: {why}, longer than this node (since {fmt_time(node.primary_since)}); "
        f"stopping the application here to resync from it",
    )


def settle_second(s: Settings, node: Node) -> Step:
    """An idle SECOND: keep following a live primary, else fail over or wait."""
    p = node.peer
    if p is not None and p.primary:
        if node.resyncing:
            return out(node.but(color=Color.ORANGE))
        return out(node.but(color=Color.GREEN, reason=f"secondary: mirrored from {p.node}, ready for failover"))
    lost = f"primary {s.peer} lost" if p is None else f"primary {s.peer} is {p.state.value}"
    if node.resyncing or not node.uptodate:
        n = node.but(state=State.WAIT, color=Color.RED, phase=Phase.LISTEN, resyncing=False, uptodate=False)
        why = f"{lost} before the resync finished: not uptodate; waiting for it, or " + _FORCE_HINT.format(peer=s.peer)
        return out(n.but(reason=why), StopMirror())
    if p is None and node.witness is False:
        return isolate_second(s, node)
    if p is None and node.witness:
        lost += _WITNESS_OK
    if s.failover:
        return become_alone(node, f"{lost}: failing over")
    # Our copy equals what the primary had when it stopped: persist it so a later `prim` here loses nothing.
    why = f"{lost} and failover is off: run `mirrorctl stop` then `mirrorctl prim` to start here"
    n = node.but(state=State.WAIT, color=Color.RED, phase=Phase.HELD, reason=why)
    return out(n, StopMirror(), SaveDurable(True, node.generation))
