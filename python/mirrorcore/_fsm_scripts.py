"""What follows a finished script or resync: the continuation of each multi-step move."""

from __future__ import annotations

from mirrorcore._fsm_enter import (
    become_second,
    begin_start,
    begin_stop,
    chain,
    finish_stop,
    out,
    run,
)
from mirrorcore._fsm_settle import decide, settle_primary, settle_second
from mirrorcore._fsm_types import (
    Color,
    Exit,
    Goal,
    Node,
    Phase,
    ResyncDone,
    Role,
    SaveDurable,
    ScriptDone,
    Settings,
    State,
    Step,
    StopMirror,
    UnsetVip,
)

STOPPED = "stopped by `mirrorctl stop`; run `mirrorctl start` to start again"


def stop_now(node: Node) -> Step:
    """The admin's stop, from an idle node."""
    return begin_stop(node.but(stop_pending=False), Goal.STOP, "stopping as requested", STOPPED, exit_=True)


def then_pending_stop(st: Step) -> Step:
    """Carry out a stop that was requested while a script ran, once the node is idle again."""
    n = st.node
    if n.stop_pending and n.phase is not Phase.SCRIPT:
        return chain(st, stop_now(n))
    return st


def after_script(s: Settings, node: Node, ev: ScriptDone) -> Step:
    """Continue the move the finished script was part of.

    Args:
        s: the module settings.
        node: the current node.
        ev: the script's result.

    Returns:
        The next step; a late or unexpected ScriptDone changes nothing.
    """
    if node.phase is not Phase.SCRIPT or ev.script != node.script:
        return out(node)
    n = node.but(phase=Phase.IDLE, script=None)
    g, sc = n.goal, ev.script
    if sc == "poststop":
        return _after_poststop(s, n, ev)
    if g is Goal.START:
        if not ev.ok:
            final = f"prestart failed: {ev.detail}; fix the cause, then `mirrorctl start`"
            return _abort(n.but(role=Role.NONE), final)
        if n.stop_pending:
            return stop_now(n)
        return decide(s, n.but(phase=Phase.LISTEN, goal=Goal.NONE, color=Color.ORANGE))
    if sc == "start_prim":  # Goal.PRIMARY or the second half of Goal.RESTART
        if not ev.ok:
            return _abort(n, f"start_prim failed: {ev.detail}; fix the cause, then `mirrorctl start`")
        since = ev.now if g is Goal.PRIMARY else n.primary_since
        n = n.but(goal=Goal.NONE, color=Color.GREEN, primary_since=since)
        return then_pending_stop(settle_primary(s, n, ev.now))
    if sc == "start_second":
        if not ev.ok:
            return _abort(n, f"start_second failed: {ev.detail}; fix the cause, then `mirrorctl start`")
        n = n.but(goal=Goal.NONE)
        if n.resync_error is not None:
            return then_pending_stop(resync_failed(s, n))
        return then_pending_stop(settle_second(s, n))
    # A stop script (stop_prim / stop_second): a failure is reported but the stop goes on, since the
    # runner already escalated to `force` and leaving the module half-stopped helps nobody.
    note = "" if ev.ok else f" ({sc} failed: {ev.detail})"
    if g is Goal.STEPDOWN:
        return _after_stepdown(s, n, note)
    if g is Goal.RESTART and not n.stop_pending:
        if not ev.ok:
            return _abort(
                n, f"stop_prim failed during restart: {ev.detail}; fix the application, then `mirrorctl start`"
            )
        return run(n, "start_prim", n.state, "restart", Goal.RESTART, "restarting the application (start_prim)")
    if g is Goal.RESTART or n.stop_pending:
        n = n.but(goal=Goal.STOP, final_reason=STOPPED, stop_exit=True)
    final = n.final_reason + note
    # Name why it stops while poststop runs: STOP is red from here on, and a watcher that sees it
    # should already read the cause (maxloop, a failed start...), not a generic "stopping".
    into = State.WAIT if n.goal in _WAITING_GOALS else State.STOP
    return finish_stop(n.but(final_reason=final), f"{final or STOPPED} (running poststop)", into=into)


def _abort(node: Node, final: str) -> Step:
    """A start failed: undo it with the stop sequence and stay in STOP with the failure as reason."""
    return begin_stop(node, Goal.STOP, f"{final} (cleaning up)", final, exit_=node.stop_pending)


def _after_poststop(s: Settings, node: Node, ev: ScriptDone) -> Step:
    if node.goal is Goal.STOPSTART and not node.stop_pending:
        n = node.but(state=State.STOP, color=Color.RED, primary_since=None)
        return begin_start(n, Role.START, False, "stopstart: stopped; starting again (prestart)")
    if node.goal in _WAITING_GOALS and not node.stop_pending:
        return _after_wait_stop(s, node)
    note = "" if ev.ok or node.goal is Goal.START else f" (poststop failed: {ev.detail})"
    exit_ = node.stop_exit or node.stop_pending
    n = node.but(
        state=State.STOP,
        color=Color.RED,
        goal=Goal.NONE,
        role=Role.NONE,
        stop_pending=False,
        resyncing=False,
        primary_since=None,
        reason=(node.final_reason or STOPPED) + note,
        final_reason="",
    )
    return out(n, Exit()) if exit_ else out(n)


_WAITING_GOALS = (Goal.WAIT, Goal.ISOLATE)


def _after_wait_stop(s: Settings, node: Node) -> Step:
    """The application is stopped for a rule's wait() or a lost witness: wait, unless it is over already."""
    n = node.but(state=State.WAIT, color=Color.RED, goal=Goal.NONE, primary_since=None, final_reason="")
    if node.goal is Goal.WAIT:
        if not n.wait_rules:
            return begin_start(n, Role.START, False, "the rule that asked to wait no longer holds: starting again")
        return out(n.but(phase=Phase.RESOURCE, reason=node.final_reason))
    if n.peer is not None:
        return decide(s, n.but(phase=Phase.LISTEN, role=Role.START))
    return out(n.but(phase=Phase.ISOLATED, reason=node.final_reason))


def _after_stepdown(s: Settings, node: Node, note: str) -> Step:
    """Split-brain loser after stop_prim: this copy is now stale; follow the winner if it is still primary."""
    n = node.but(state=State.WAIT, color=Color.ORANGE, uptodate=False, primary_since=None, goal=Goal.NONE)
    dropped = out(n, UnsetVip(), StopMirror(), SaveDurable(False, n.generation))
    if n.stop_pending:
        n = n.but(goal=Goal.STOP, final_reason=STOPPED + note, stop_exit=True)
        return chain(dropped, run(n, "poststop", State.STOP, "stop", Goal.STOP, "stopping as requested"))
    p = n.peer
    if p is not None and p.primary:
        why = f"split brain resolved: {p.node} kept the application{note}; resyncing from it"
        # Full: this copy has writes the winner never saw; they are salvaged first, then replaced.
        return chain(dropped, become_second(n, p, why, full=True, salvage=why))
    return chain(dropped, decide(s, n.but(phase=Phase.LISTEN)))


def resync_failed(s: Settings, node: Node) -> Step:
    """A resync that failed leaves the copy unusable: wait for an admin instead of retrying in a loop."""
    why = f"resync from {s.peer} failed: {node.resync_error}; fix the cause, then run `mirrorctl second` to retry"
    n = node.but(state=State.WAIT, color=Color.RED, phase=Phase.BLOCKED, uptodate=False, resyncing=False, reason=why)
    return out(n, StopMirror())


def resync_done(s: Settings, node: Node, ev: ResyncDone) -> Step:
    """The secondary finished (or failed) catching up."""
    if not node.resyncing or node.state is not State.SECOND:
        return out(node)
    if ev.ok:
        n = node.but(resyncing=False, uptodate=True)
    else:
        n = node.but(resyncing=False, resync_error=ev.detail or "no detail")
    if n.phase is Phase.SCRIPT:  # start_second still runs; after_script settles
        return out(n)
    return settle_second(s, n) if ev.ok else resync_failed(s, n)
