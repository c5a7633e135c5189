"""The mirror module's state machine: a pure function from (node, event) to the next step.

The daemon holds the current `Node`, feeds every event to `step`, executes the returned actions in
order and logs `Step.reason`, the sentence that says why the node is where it is (and, when it is
blocked, what to do). Nothing here does I/O or reads the clock: time comes in with each event.

Layout: `_fsm_types` (values), `_fsm_rules` (tie-breaks both nodes compute alike), `_fsm_enter`
(first step of each move), `_fsm_settle` (decisions from the peer's view), `_fsm_scripts`
(continuations after scripts and resyncs), and here the event and command dispatch.
"""

from __future__ import annotations

from mirrorcore._fsm_enter import begin_restart, begin_start, begin_stop, out
from mirrorcore._fsm_rules import Candidate, primary_winner, start_winner
from mirrorcore._fsm_scripts import STOPPED, after_script, resync_done, stop_now
from mirrorcore._fsm_settle import decide, settle_primary, settle_second
from mirrorcore._fsm_types import (
    PRIMARIES,
    Action,
    Color,
    Command,
    CopyIncomplete,
    Event,
    Exit,
    Goal,
    Node,
    OweSalvage,
    PeerLost,
    PeerSeen,
    PeerView,
    Phase,
    ResyncDone,
    Role,
    RuleCleared,
    RunScript,
    SaveDurable,
    ScriptDone,
    Settings,
    SetVip,
    StartMirror,
    StartResync,
    State,
    Step,
    StopMirror,
    UnsetVip,
)
from mirrorcore._fsm_watch import also_wait, begin_wait, rule_cleared, stop_waiting

__all__ = [
    "COMMANDS",
    "Action",
    "Candidate",
    "Color",
    "Command",
    "CopyIncomplete",
    "Event",
    "Exit",
    "Goal",
    "Node",
    "OweSalvage",
    "PeerLost",
    "PeerSeen",
    "PeerView",
    "Phase",
    "ResyncDone",
    "Role",
    "RuleCleared",
    "RunScript",
    "SaveDurable",
    "ScriptDone",
    "SetVip",
    "Settings",
    "StartMirror",
    "StartResync",
    "State",
    "Step",
    "StopMirror",
    "UnsetVip",
    "is_primary",
    "primary_winner",
    "start_winner",
    "step",
]

_START_ROLES = {"start": Role.START, "prim": Role.PRIM, "second": Role.SECOND, "primforce": Role.PRIMFORCE}
COMMANDS = (*_START_ROLES, "stop", "restart", "stopstart", "swap", "resetloop", "wait")
# Actions a script or checker may repeat in a loop; `maxloop` bounds them.
_COUNTED = ("restart", "stopstart", "swap", "wait")
# WAIT phases a start command leaves at once (prestart again): the application is stopped, poststop ran.
_WAITING = (Phase.RESOURCE, Phase.ISOLATED)
# Internal initiator for the automatic hand-back to defaultprim: not a loop, and not an admin.
DEFAULTPRIM_INITIATOR = "defaultprim"


def is_primary(node: Node) -> bool:
    """True when the node runs (or is starting) the application and is not stepping down or stopping."""
    leaving = (Goal.STOP, Goal.STOPSTART, Goal.STEPDOWN, Goal.WAIT, Goal.ISOLATE)
    return node.state in PRIMARIES and node.goal not in leaving


def step(settings: Settings, node: Node, event: Event) -> Step:
    """Compute the next node, the actions to execute, and the reason.

    Args:
        settings: the module's settings.
        node: the current node.
        event: what just happened.

    Returns:
        The step; `refused` is set (and the node unchanged) when a command makes no sense now.
    """
    match event:
        case Command():
            return _command(settings, node, event)
        case PeerSeen(peer=peer):
            if _primary_stopped_mirroring(node, peer):
                return _mirror_broken(settings, node.but(peer=peer, peer_lost=False, witness=None))
            return _on_peer(settings, node.but(peer=peer, peer_lost=False, witness=None), event.now)
        case PeerLost(witness=witness):
            return _on_peer(settings, node.but(peer=None, peer_lost=True, witness=witness), event.now)
        case ScriptDone():
            return after_script(settings, node, event)
        case ResyncDone():
            return resync_done(settings, node, event)
        case RuleCleared():
            return rule_cleared(node, event)
        case CopyIncomplete():
            if node.state is State.SECOND and not node.resyncing and node.phase is not Phase.SCRIPT:
                return _mirror_broken(settings, node)
            return out(node)


def _on_peer(s: Settings, n: Node, now: float) -> Step:
    if n.phase is Phase.SCRIPT:
        return out(n)  # decided once the script finishes, with the latest view
    if n.state is State.WAIT:
        if n.phase is Phase.LISTEN:
            return decide(s, n)
        if n.phase is Phase.ISOLATED and n.peer is not None:
            return decide(s, n.but(phase=Phase.LISTEN, role=Role.START))
        p = n.peer
        # HELD (failover off) re-decides only when the peer is back as primary or is starting: a
        # stopped or silent peer is exactly what put us here.
        if (
            n.phase is Phase.HELD
            and p is not None
            and (p.primary or (p.state is State.WAIT and p.role is not Role.NONE))
        ):
            return decide(s, n.but(phase=Phase.LISTEN))
        return out(n)
    if n.state in PRIMARIES:
        return settle_primary(s, n, now)
    if n.state is State.SECOND:
        return settle_second(s, n)
    return out(n)


def _primary_stopped_mirroring(node: Node, peer: PeerView) -> bool:
    """A ready secondary whose primary, still running, no longer streams to it (the link broke)."""
    before = node.peer
    return (
        node.state is State.SECOND
        and not node.resyncing
        and node.phase is not Phase.SCRIPT
        and before is not None
        and before.mirroring
        and peer.primary
        and peer.color is Color.GREEN  # a primary that is stopping or restarting closes its link on purpose
        and not peer.mirroring
    )


def _mirror_broken(s: Settings, node: Node) -> Step:
    # The primary goes on without us: our copy falls behind, so we must not take over until a
    # new copy arrives; the primary keeps trying to reconnect and streams it.
    why = (
        f"replication from {s.peer} was interrupted and {s.peer} runs on without this node: "
        f"not uptodate until its new copy arrives"
    )
    n = node.but(color=Color.ORANGE, uptodate=False, resyncing=True, reason=why)
    # Persisted: a crash before the new copy is complete must not leave a node that believes it is uptodate.
    return Step(n, (SaveDurable(False, node.generation), StartResync(True, after_break=True)), why)


def _refuse(node: Node, why: str) -> Step:
    return Step(node, (), node.reason, why)


def _command(s: Settings, node: Node, c: Command) -> Step:
    if c.name == "resetloop":
        n = node.but(loop_times=())
        return Step(n, (), f"maxloop counter reset ({len(node.loop_times)} recent actions forgotten)")
    if c.name not in COMMANDS:
        return _refuse(node, f"unknown command {c.name!r}: use one of {', '.join(COMMANDS)}")
    if node.phase is Phase.SCRIPT and c.name != "stop":
        return _refuse(node, f"busy running {node.script}; try again when it finishes")
    if c.name == "wait" and node.phase is Phase.RESOURCE:
        return also_wait(node, c.initiator or "admin", c.detail)  # nothing runs: not a loop
    st = _accepted(s, node, c)
    if st.refused is not None:
        return st
    if c.initiator is None:
        times: tuple[float, ...] = ()  # an admin acted: whatever looped before is now their call
    elif c.initiator != DEFAULTPRIM_INITIATOR and c.name in _COUNTED:
        times = (*(t for t in node.loop_times if c.now - t < s.loop_interval), c.now)
        if len(times) > s.maxloop:
            return _maxloop(s, node.but(loop_times=times), c)
    else:
        times = node.loop_times
    return Step(st.node.but(loop_times=times), st.actions, st.reason)


def _maxloop(s: Settings, node: Node, c: Command) -> Step:
    why = (
        f"maxloop reached: {len(node.loop_times)} actions in {_span(s.loop_interval)} (maxloop {s.maxloop}); "
        f"module stopped: fix the cause, then `mirrorctl resetloop` and `mirrorctl start`"
    )
    if node.phase is Phase.SCRIPT:
        return out(node.but(stop_pending=True, reason=why))
    return begin_stop(node, Goal.STOP, why, why, exit_=False)


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _accepted(s: Settings, node: Node, c: Command) -> Step:
    """The command's effect, or a refusal."""
    name, state = c.name, node.state
    if name in _START_ROLES:
        role = _START_ROLES[name]
        # With prim/primforce the admin decides where the application runs, not the witness.
        decided = node.but(witness=None) if role in (Role.PRIM, Role.PRIMFORCE) else node
        if role is Role.PRIM and not node.uptodate and node.generation != 0 and state in (State.STOP, State.WAIT):
            # Known stale data: say so now rather than after prestart and listening for the peer.
            return _refuse(
                node,
                f"not uptodate: {s.peer} has newer data; start {s.peer} first, or run `mirrorctl primforce` "
                f"to start here anyway, losing {s.peer}'s newer data",
            )
        if state is State.STOP or node.phase in _WAITING:
            return begin_start(decided, role, c.fullsync, f"starting with `{name}`: running prestart")
        if state is State.WAIT and name != "start":
            # A waiting node may be told what to be; it then decides again at once.
            n = decided.but(role=role, fullsync=c.fullsync or node.fullsync, phase=Phase.LISTEN, resync_error=None)
            return decide(s, n)
        return _refuse(node, f"already {state.value}: run `mirrorctl stop` first to start it differently")
    if name == "stop":
        if node.phase is Phase.SCRIPT:
            why = f"stop requested: will stop once {node.script} finishes"
            return out(node.but(stop_pending=True, reason=why))
        if state is State.STOP:
            return _refuse(node, "already stopped")
        if node.phase in _WAITING:
            return stop_waiting(node, STOPPED)
        if c.detail:
            why = f"stopped by {c.detail}; fix the cause, then `mirrorctl start`"
            return begin_stop(node, Goal.STOP, f"{c.detail}: stopping", why, exit_=False)
        return stop_now(node)
    if state is State.STOP:
        return _refuse(node, f"{name} needs a running module: run `mirrorctl start`")
    cause = f"{c.detail}: " if c.detail else ""
    if name == "wait":
        return begin_wait(node, c.initiator or "admin", c.detail)
    if name == "restart":
        if state not in PRIMARIES:
            return _refuse(node, f"restart only applies to a primary (ALONE or PRIM); this node is {state.value}")
        return begin_restart(node, f"{cause}restarting the application (stop_prim then start_prim)")
    if name == "swap":
        if state is State.SECOND:
            return _refuse(node, f"run swap on the primary {s.peer}")
        if state is not State.PRIM or node.color is not Color.GREEN or node.peer is None or not node.peer.ready_second:
            return _refuse(
                node, f"swap needs this node PRIM green and {s.peer} SECOND green; this node is {state.value}"
            )
        why = f"{cause}swap: handing the application to {s.peer}"
        return begin_stop(node, Goal.STOPSTART, why, why, exit_=False)
    why = f"{cause}stopstart: stopping, then starting again"
    if c.initiator == DEFAULTPRIM_INITIATOR:
        why = f"defaultprim={s.peer}: handing the application back to {s.peer}"
    return begin_stop(node, Goal.STOPSTART, why, why, exit_=False)
