"""Values of the mirror state machine: states, events, actions, and the node record.

Everything here is a frozen value so that `fsm.step` stays a pure function: the daemon owns the
only mutable reference (the current `Node`) and replaces it with each `Step.node`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class State(StrEnum):
    """Module state as shown to users; values are shipped and never renamed."""

    STOP = "STOP"
    WAIT = "WAIT"
    ALONE = "ALONE"
    PRIM = "PRIM"
    SECOND = "SECOND"


class Color(StrEnum):
    """Red: stopped or blocked; orange: transient; green: ready."""

    RED = "red"
    ORANGE = "orange"
    GREEN = "green"


class Role(StrEnum):
    """How the module was asked to start; decides what it does when it hears (or loses) the peer."""

    NONE = "none"
    START = "start"
    PRIM = "prim"
    SECOND = "second"
    PRIMFORCE = "primforce"


class Phase(StrEnum):
    """What the node is doing inside its state (internal, but shown in `state --json` for debugging)."""

    IDLE = "idle"  # steady: nothing pending except maybe a resync
    SCRIPT = "script"  # `Node.script` runs; `Node.goal` says what comes after it
    LISTEN = "listen"  # WAIT: re-decides on every peer event
    HELD = "held"  # WAIT red after losing the primary with failover off: only a returning peer unblocks
    BLOCKED = "blocked"  # WAIT red after a failed resync: only an admin command unblocks
    RESOURCE = "resource"  # WAIT red after a rule's wait(): starts again once every such rule clears
    ISOLATED = "isolated"  # WAIT red: every heartbeat lost and the witness unreachable; decides once the peer is heard


class Goal(StrEnum):
    """The multi-script sequence the node is in the middle of."""

    NONE = "none"
    START = "start"  # prestart, then listen
    PRIMARY = "primary"  # start_prim after becoming ALONE
    SECONDARY = "secondary"  # start_second after becoming SECOND
    STOP = "stop"  # stop_prim/stop_second, poststop, then STOP
    RESTART = "restart"  # stop_prim then start_prim
    STOPSTART = "stopstart"  # the stop sequence, then the start sequence with role START
    STEPDOWN = "stepdown"  # split-brain loser: stop_prim, then SECOND
    WAIT = "wait"  # a rule's wait(): the stop sequence, then WAIT red until the rule clears
    ISOLATE = "isolate"  # peer and witness lost: the stop sequence, then WAIT red until the peer is heard


PRIMARIES = (State.ALONE, State.PRIM)


@dataclass(frozen=True)
class Settings:
    """The parts of the module configuration the machine decides with."""

    node: str
    peer: str
    failover: bool
    defaultprim: str | None
    maxloop: int
    loop_interval: float


@dataclass(frozen=True)
class PeerView:
    """What the last heartbeat said of the peer (the daemon builds it from `heart.Beat`)."""

    node: str
    state: State
    color: Color
    uptodate: bool
    generation: int
    role: Role
    primary_since: float | None
    mirroring: bool = False  # a primary streaming every replicated directory to us

    @property
    def primary(self) -> bool:
        """True when the peer runs the application (ALONE or PRIM)."""
        return self.state in PRIMARIES

    @property
    def ready_second(self) -> bool:
        """True when the peer is a secondary ready for failover (SECOND green)."""
        return self.state is State.SECOND and self.color is Color.GREEN


@dataclass(frozen=True)
class Node:
    """Everything the machine knows about the local module.

    `uptodate` is the in-memory truth (a SECOND turns it on when its resync ends) while the durable
    copy only changes through `SaveDurable`. `peer` is None when no live heartbeat is known;
    `peer_lost` tells "lost" (PeerLost seen) from "not heard yet".
    """

    state: State
    color: Color
    reason: str
    phase: Phase
    role: Role
    uptodate: bool
    generation: int
    peer: PeerView | None = None
    peer_lost: bool = False
    primary_since: float | None = None
    loop_times: tuple[float, ...] = ()
    fullsync: bool = False
    goal: Goal = Goal.NONE
    script: str | None = None
    stop_pending: bool = False
    stop_exit: bool = True  # whether the stop under way ends with Exit (admin stop) or not (failure)
    final_reason: str = ""  # the reason the stop under way will leave in STOP
    resyncing: bool = False
    resync_error: str | None = None
    wait_rules: tuple[str, ...] = ()  # rules whose wait() holds the module in WAIT (Phase.RESOURCE)
    witness: bool | None = None  # the split-brain witness answered at the last loss of the peer (None: not asked)
    final_uptodate: bool | None = None  # what the stop under way persists as uptodate (None: from the peer's view)

    @classmethod
    def initial(cls, uptodate: bool, generation: int) -> Node:
        """The node as the daemon starts it: STOP red, with the durable facts from `state.Durable`."""
        if generation == 0:
            why = (
                "stopped: first start: run `mirrorctl prim` on the node with the good data "
                "and `mirrorctl second` on the other"
            )
        else:
            why = "stopped: run `mirrorctl start`"
        return cls(State.STOP, Color.RED, why, Phase.IDLE, Role.NONE, uptodate, generation)

    def view(self, name: str) -> PeerView:
        """What this node's heartbeat tells the peer (the peer's daemon turns it back into a PeerView)."""
        return PeerView(name, self.state, self.color, self.uptodate, self.generation, self.role, self.primary_since)

    def but(self, **changes: object) -> Node:
        """A copy with some fields changed (`dataclasses.replace`, typed loosely for brevity)."""
        return replace(self, **changes)  # type: ignore[arg-type]


# Events: the daemon feeds each one to `step` together with the current Node.


@dataclass(frozen=True)
class Command:
    """A `mirrorctl` command. `initiator` is `-i NAME` (a script or checker); None means an admin.

    A failover rule's action arrives as a command too, with the rule's label as initiator and in
    `detail` the sentence that says why it fired (it starts the reason the user reads).
    """

    name: str
    now: float
    initiator: str | None = None
    fullsync: bool = False
    detail: str = ""


@dataclass(frozen=True)
class PeerSeen:
    """A heartbeat from the peer."""

    peer: PeerView
    now: float


@dataclass(frozen=True)
class PeerLost:
    """Every heartbeat LAN timed out, or none was heard within the timeout after the daemon started.

    `witness` is whether this node reached the split-brain witness then (None: no witness configured).
    """

    now: float
    witness: bool | None = None


@dataclass(frozen=True)
class RuleCleared:
    """A failover rule whose action fired no longer holds (for `handle_time`): a `wait()` it caused may end."""

    rule: str
    reason: str
    now: float


@dataclass(frozen=True)
class ScriptDone:
    """The script asked for by the last `RunScript` finished."""

    script: str
    ok: bool
    detail: str
    now: float


@dataclass(frozen=True)
class ResyncDone:
    """The resync asked for by `StartResync` finished."""

    ok: bool
    detail: str
    now: float


@dataclass(frozen=True)
class CopyIncomplete:
    """Secondary: the primary (re)connected and is resyncing; the local copy is not complete meanwhile.

    Heartbeats may never show it (the link broke and came back within one pulse), so the
    replication layer says it directly.
    """

    detail: str
    now: float


Event = Command | PeerSeen | PeerLost | ScriptDone | ResyncDone | RuleCleared | CopyIncomplete


# Actions: the daemon executes them in order.


@dataclass(frozen=True)
class RunScript:
    """Run a user script with arguments `current next action`; the daemon then feeds `ScriptDone`."""

    script: str
    current: State
    next: State
    action: str


@dataclass(frozen=True)
class SetVip:
    """Add the virtual addresses and announce them."""


@dataclass(frozen=True)
class UnsetVip:
    """Remove the virtual addresses (idempotent)."""


@dataclass(frozen=True)
class StartMirror:
    """Start replication in the given role ("primary" or "secondary").

    For the secondary role: `full` asks the primary for a full resync (the copy here cannot be
    trusted to be a prefix of the primary's); a non-empty `salvage` is why this copy's own changes
    must first be saved (a split-brain loser), before anything replaces them.
    """

    role: str
    full: bool = False
    salvage: str = ""


@dataclass(frozen=True)
class OweSalvage:
    """Persist that this copy's own changes must be saved before anything replaces them (split-brain loser).

    Written when the step-down is decided, so that whatever happens next (heartbeats flapping, a
    stop, a crash) the next start as secondary salvages first.
    """

    reason: str


@dataclass(frozen=True)
class StopMirror:
    """Stop replication (and any resync under way)."""


@dataclass(frozen=True)
class StartResync:
    """Catch up with the primary; the daemon then feeds `ResyncDone` (at once when there is no rfs).

    `after_break`: the primary stopped mirroring to this complete copy: only a new session's mark ends it.
    """

    full: bool
    after_break: bool = False


@dataclass(frozen=True)
class SaveDurable:
    """Persist the facts that must survive a crash: is the local copy the latest, and its generation."""

    uptodate: bool
    generation: int


@dataclass(frozen=True)
class Exit:
    """The module reached STOP through `stop`: an auto-launched daemon exits."""


Action = RunScript | SetVip | UnsetVip | StartMirror | StopMirror | StartResync | SaveDurable | OweSalvage | Exit


@dataclass(frozen=True)
class Step:
    """The outcome of one event: the next node, what to do, and why.

    `refused` is set (and `node` unchanged) when a command makes no sense now; it says why and
    what to do instead.
    """

    node: Node
    actions: tuple[Action, ...]
    reason: str
    refused: str | None = None
