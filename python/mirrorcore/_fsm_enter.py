"""The first step of each sequence: entering a state or starting a multi-script move.

Every function returns a `Step` whose node has its reason set; a sequence that needs a script ends
with one `RunScript` and continues in `_fsm_scripts.after_script`.
"""

from __future__ import annotations

from mirrorcore._fsm_types import (
    PRIMARIES,
    Action,
    Color,
    Goal,
    Node,
    OweSalvage,
    PeerView,
    Phase,
    Role,
    RunScript,
    SaveDurable,
    SetVip,
    StartMirror,
    StartResync,
    State,
    Step,
    StopMirror,
    UnsetVip,
)


def out(node: Node, *actions: Action) -> Step:
    """A Step whose reason is the node's."""
    return Step(node, tuple(actions), node.reason)


def chain(first: Step, second: Step) -> Step:
    """`first` then `second` (computed from `first.node`)."""
    return Step(second.node, first.actions + second.actions, second.reason, second.refused)


def run(
    node: Node,
    script: str,
    next_state: State,
    action: str,
    goal: Goal,
    reason: str,
    *before: Action,
    current: State | None = None,
) -> Step:
    """Run one script as part of `goal`; the actions in `before` go first.

    `current` is the state the script is told it leaves (default: the node's).
    """
    n = node.but(phase=Phase.SCRIPT, script=script, goal=goal, reason=reason)
    return out(n, *before, RunScript(script, current or node.state, next_state, action))


def wait(node: Node, color: Color, reason: str, phase: Phase = Phase.LISTEN) -> Step:
    """Stay (or go) to WAIT without running anything."""
    return out(node.but(state=State.WAIT, color=color, reason=reason, phase=phase, goal=Goal.NONE, script=None))


def begin_start(node: Node, role: Role, fullsync: bool, reason: str) -> Step:
    """STOP -> WAIT: run prestart, then listen for the peer."""
    n = node.but(state=State.WAIT, color=Color.ORANGE, role=role, fullsync=fullsync, resync_error=None, wait_rules=())
    return run(n, "prestart", State.WAIT, "start", Goal.START, reason, current=node.state)


def become_alone(node: Node, why: str) -> Step:
    """Take the application: persist that this copy is now the latest, start mirroring, set the VIP."""
    gen = node.generation + 1
    before: list[Action] = []
    if node.state is State.SECOND:
        before.append(StopMirror())  # leave the secondary role before replicating the other way
    n = node.but(
        state=State.ALONE,
        color=Color.ORANGE,
        uptodate=True,
        generation=gen,
        primary_since=None,
        resyncing=False,
        resync_error=None,
        fullsync=False,
    )
    before += [SaveDurable(True, gen), StartMirror("primary"), SetVip()]
    return run(
        n,
        "start_prim",
        State.ALONE,
        "start",
        Goal.PRIMARY,
        f"{why}: starting the application (start_prim)",
        *before,
        current=node.state,
    )


def become_second(node: Node, peer: PeerView, why: str, *, full: bool | None = None, salvage: str = "") -> Step:
    """Follow the primary `peer`: this copy is stale until the resync ends, so persist that first.

    `salvage` (a split-brain loser): why the copy's own changes are saved before the resync.
    """
    if full is None:
        full = node.fullsync or node.generation == 0
    n = node.but(
        state=State.SECOND,
        color=Color.ORANGE,
        uptodate=False,
        generation=peer.generation,
        primary_since=None,
        resyncing=True,
        resync_error=None,
        fullsync=False,
    )
    kind = "full" if full else "incremental"
    return run(
        n,
        "start_second",
        State.SECOND,
        "start",
        Goal.SECONDARY,
        f"{why}: {kind} resync from primary {peer.node} under way",
        SaveDurable(False, peer.generation),
        StartMirror("secondary", full=full, salvage=salvage),
        StartResync(full),
        current=node.state,
    )


def begin_stop(node: Node, goal: Goal, reason: str, final_reason: str, *, exit_: bool) -> Step:
    """Start the stop sequence from an idle node (goal STOP, or STOPSTART which starts again after)."""
    n = node.but(final_reason=final_reason, stop_exit=exit_, resyncing=False, color=_stop_color(node))
    if node.state in PRIMARIES:
        return run(n, "stop_prim", State.STOP, "stop", goal, reason)
    if node.state is State.SECOND:
        return run(n, "stop_second", State.STOP, "stop", goal, reason)
    return run(n, "poststop", State.STOP, "stop", goal, reason)


def _stop_color(node: Node) -> Color:
    return Color.RED if node.state is State.STOP else Color.ORANGE


def begin_restart(node: Node, reason: str) -> Step:
    """Restart the application on a primary: stop_prim then start_prim, VIP and mirror untouched."""
    return run(node.but(color=Color.ORANGE), "stop_prim", node.state, "restart", Goal.RESTART, reason)


def begin_stepdown(node: Node, reason: str) -> Step:
    """Split-brain loser: stop the application here, then resync from the winner (its changes saved first)."""
    n = node.but(color=Color.ORANGE, role=Role.START)
    return run(n, "stop_prim", State.SECOND, "stop", Goal.STEPDOWN, reason, OweSalvage(reason))


def finish_stop(node: Node, reason: str, *, into: State = State.STOP) -> Step:
    """The stop script (if any) is done: drop the VIP and the mirror, persist, then run poststop.

    A primary that stops while its peer is a ready secondary persists "not uptodate": the secondary
    takes over and gets newer writes, so this copy must not start on its own next time. A stop that
    knows better (the peer was lost meanwhile) says so in `final_uptodate`. `into` is the state shown
    while poststop runs: WAIT for a stop that waits afterwards, so nobody reads it as stopped.
    """
    before: list[Action] = []
    n = node
    if node.state in PRIMARIES:
        keep = node.final_uptodate
        if keep is None:
            keep = not (node.peer is not None and node.peer.ready_second)
        n = n.but(uptodate=keep, primary_since=None)
        before = [UnsetVip(), StopMirror(), SaveDurable(keep, node.generation)]
    elif node.state is State.SECOND:
        before = [StopMirror()]
    n = n.but(state=into, color=Color.RED, final_uptodate=None)
    return run(n, "poststop", State.STOP, "stop", node.goal, reason, *before, current=node.state)
