"""One test per transition of the mirror state machine: state, colour, actions and the reason a user reads."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mirrorcore.fsm import (
    Color,
    Command,
    CopyIncomplete,
    Exit,
    Node,
    OweSalvage,
    PeerLost,
    PeerSeen,
    PeerView,
    Phase,
    ResyncDone,
    Role,
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
    is_primary,
    step,
)

S = Settings(node="node1", peer="node2", failover=True, defaultprim=None, maxloop=3, loop_interval=86400.0)
T = 1000.0


def peer(
    state: State = State.WAIT,
    color: Color = Color.ORANGE,
    *,
    uptodate: bool = False,
    generation: int = 1,
    role: Role = Role.START,
    since: float | None = None,
) -> PeerView:
    return PeerView("node2", state, color, uptodate, generation, role, since)


ALONE_PEER = peer(State.ALONE, Color.GREEN, uptodate=True, generation=4, since=500.0)
SECOND_GREEN = peer(State.SECOND, Color.GREEN, uptodate=True, generation=4)


def done(node: Node, ok: bool = True, detail: str = "exit 0", s: Settings = S) -> Step:
    """Finish the script the node is running."""
    assert node.script is not None, node
    return step(s, node, ScriptDone(node.script, ok, detail, T))


def listening(
    uptodate: bool, generation: int, cmd: str = "start", s: Settings = S, known: PeerView | None = None
) -> Node:
    """A node that ran prestart and now waits to hear from the peer."""
    n = Node.initial(uptodate, generation)
    if known is not None:
        n = replace(n, peer=known)
    st = step(s, n, Command(cmd, T))
    if known is not None:
        return st.node
    st = done(st.node)
    assert st.node.phase is Phase.LISTEN
    return st.node


def alone(s: Settings = S, generation: int = 3, since: float = T) -> Node:
    """An ALONE green node (peer not heard)."""
    n = replace(Node.initial(True, generation), peer_lost=True)
    st = done(step(s, n, Command("start", T)).node)
    assert st.node.script == "start_prim"
    st = step(s, st.node, ScriptDone("start_prim", True, "", since))
    assert (st.node.state, st.node.color) == (State.ALONE, Color.GREEN)
    return st.node


def second_green(s: Settings = S) -> Node:
    n = listening(False, 3, s=s)
    st = step(s, n, PeerSeen(ALONE_PEER, T))
    st = done(st.node, s=s)
    st = step(s, st.node, ResyncDone(True, "", T))
    assert (st.node.state, st.node.color) == (State.SECOND, Color.GREEN)
    return st.node


def scripts(st: Step) -> list[str]:
    return [a.script for a in st.actions if isinstance(a, RunScript)]


# --- start -------------------------------------------------------------------------------------------------


def test_initial_node_is_stop_red_and_says_how_to_start() -> None:
    first = Node.initial(False, 0)
    assert (first.state, first.color) == (State.STOP, Color.RED)
    assert "mirrorctl prim" in first.reason
    assert "mirrorctl start" in Node.initial(True, 5).reason


def test_start_runs_prestart_in_wait_orange() -> None:
    st = step(S, Node.initial(True, 2), Command("start", T))
    assert (st.node.state, st.node.color, st.node.role) == (State.WAIT, Color.ORANGE, Role.START)
    assert st.actions == (RunScript("prestart", State.STOP, State.WAIT, "start"),)
    assert "prestart" in st.reason
    assert st.refused is None


def test_prestart_failure_stops_red_with_the_error() -> None:
    st = done(step(S, Node.initial(True, 2), Command("start", T)).node, ok=False, detail="exit 3")
    assert scripts(st) == ["poststop"]
    st = done(st.node)
    assert (st.node.state, st.node.color) == (State.STOP, Color.RED)
    assert "prestart failed: exit 3" in st.reason
    assert "mirrorctl start" in st.reason
    assert Exit() not in st.actions


def test_after_prestart_waits_to_hear_from_the_peer() -> None:
    st = done(step(S, Node.initial(True, 2), Command("start", T)).node)
    assert (st.node.state, st.node.color, st.node.phase) == (State.WAIT, Color.ORANGE, Phase.LISTEN)
    assert st.reason == "waiting to hear from node2"
    assert st.actions == ()


def test_known_peer_is_decided_right_after_prestart() -> None:
    n = replace(Node.initial(False, 3), peer=ALONE_PEER)
    st = done(step(S, n, Command("start", T)).node)
    assert st.node.state is State.SECOND


# --- becoming SECOND ---------------------------------------------------------------------------------------


def test_peer_primary_makes_a_starting_node_second_and_resync() -> None:
    st = step(S, listening(False, 3), PeerSeen(ALONE_PEER, T))
    assert (st.node.state, st.node.color) == (State.SECOND, Color.ORANGE)
    assert st.actions == (
        SaveDurable(False, 4),
        StartMirror("secondary"),
        StartResync(False),
        RunScript("start_second", State.WAIT, State.SECOND, "start"),
    )
    assert "node2 is primary" in st.reason
    assert "incremental resync" in st.reason
    assert not is_primary(st.node)


def test_second_turns_green_when_script_and_resync_end_but_durable_stays_stale() -> None:
    n = step(S, listening(False, 3), PeerSeen(ALONE_PEER, T)).node
    st = step(S, n, ResyncDone(True, "", T))
    assert st.node.color is Color.ORANGE  # start_second still runs
    st = done(st.node)
    assert (st.node.state, st.node.color) == (State.SECOND, Color.GREEN)
    assert "ready for failover" in st.reason
    assert st.node.uptodate
    assert not any(isinstance(a, SaveDurable) for a in st.actions)


@pytest.mark.parametrize(("generation", "fullsync"), [(0, False), (3, True)])
def test_first_start_or_fullsync_asks_for_a_full_resync(generation: int, fullsync: bool) -> None:
    n = done(step(S, Node.initial(False, generation), Command("second", T, fullsync=fullsync)).node).node
    st = step(S, n, PeerSeen(ALONE_PEER, T))
    assert StartResync(True) in st.actions
    assert "full resync" in st.reason


def test_failed_resync_blocks_in_wait_red_until_second_is_run_again() -> None:
    n = done(step(S, listening(False, 3), PeerSeen(ALONE_PEER, T)).node).node
    st = step(S, n, ResyncDone(False, "disk full", T))
    assert (st.node.state, st.node.color, st.node.phase) == (State.WAIT, Color.RED, Phase.BLOCKED)
    assert st.actions == (StopMirror(),)
    assert "resync from node2 failed: disk full" in st.reason
    assert "mirrorctl second" in st.reason
    assert step(S, st.node, PeerSeen(ALONE_PEER, T)).node.state is State.WAIT  # no retry loop on heartbeats
    st = step(S, st.node, Command("second", T))
    assert st.node.state is State.SECOND


# --- deciding against a live, non-primary peer -------------------------------------------------------------


def test_prim_refuses_when_the_peer_is_already_primary() -> None:
    st = step(S, listening(True, 3, cmd="prim"), PeerSeen(ALONE_PEER, T))
    assert scripts(st) == ["poststop"]
    st = done(st.node)
    assert (st.node.state, st.node.color) == (State.STOP, Color.RED)
    assert "node2 is already primary; run `mirrorctl second` here" in st.reason


def test_peer_second_means_wait_for_its_failover() -> None:
    st = step(S, listening(True, 3), PeerSeen(SECOND_GREEN, T))
    assert (st.node.state, st.node.color) == (State.WAIT, Color.ORANGE)
    assert "node2 is SECOND" in st.reason


@pytest.mark.parametrize(("pstate", "color"), [(State.WAIT, Color.ORANGE), (State.STOP, Color.RED)])
def test_second_role_waits_for_the_peer_to_become_primary(pstate: State, color: Color) -> None:
    st = step(S, listening(True, 3, cmd="second"), PeerSeen(peer(pstate, uptodate=True, role=Role.NONE), T))
    assert (st.node.state, st.node.color) == (State.WAIT, color)
    assert "waiting for node2 to become primary" in st.reason


def test_prim_on_fresh_node_becomes_alone() -> None:
    st = step(S, listening(False, 0, cmd="prim"), PeerSeen(peer(State.WAIT), T))
    assert (st.node.state, st.node.color) == (State.ALONE, Color.ORANGE)
    assert "started with `prim`" in st.reason


def test_prim_on_stale_node_refuses_at_once_and_names_primforce() -> None:
    stale = Node.initial(uptodate=False, generation=3)
    st = step(S, stale, Command("prim", T))
    assert st.node == stale
    assert st.actions == ()
    assert st.refused is not None
    assert "not uptodate" in st.refused
    assert "mirrorctl primforce" in st.refused
    assert "losing node2's newer data" in st.refused


def test_primforce_becomes_alone_even_when_stale() -> None:
    st = step(S, listening(False, 3, cmd="primforce"), PeerSeen(peer(State.WAIT, uptodate=True), T))
    assert st.node.state is State.ALONE
    assert "primforce" in st.reason


def test_start_uptodate_beats_a_stale_peer() -> None:
    st = step(S, listening(True, 3), PeerSeen(peer(State.WAIT, uptodate=False, generation=3), T))
    assert st.node.state is State.ALONE
    assert "node1 has the latest data" in st.reason


@pytest.mark.parametrize(
    ("pstate", "role", "color"), [(State.WAIT, Role.START, Color.ORANGE), (State.STOP, Role.NONE, Color.RED)]
)
def test_start_stale_waits_for_the_uptodate_peer(pstate: State, role: Role, color: Color) -> None:
    st = step(S, listening(False, 3), PeerSeen(peer(pstate, uptodate=True, role=role), T))
    assert (st.node.state, st.node.color) == (State.WAIT, color)
    assert "not uptodate: waiting for node2, which has the latest data, to start" in st.reason


def test_start_yields_to_a_peer_started_with_prim() -> None:
    st = step(S, listening(True, 3), PeerSeen(peer(State.WAIT, uptodate=False, role=Role.PRIM), T))
    assert st.node.state is State.WAIT
    assert "node2 was started with `prim`" in st.reason


def test_neither_uptodate_says_to_primforce() -> None:
    st = step(S, listening(False, 3), PeerSeen(peer(State.WAIT, uptodate=False), T))
    assert (st.node.state, st.node.color) == (State.WAIT, Color.RED)
    assert "neither is node2" in st.reason
    assert "primforce" in st.reason


@pytest.mark.parametrize(
    ("mine", "theirs", "defaultprim", "winner"),
    [
        ((True, 5, Role.START), (True, 4, Role.START), None, "node1"),
        ((True, 4, Role.START), (True, 5, Role.START), None, "node2"),
        ((True, 4, Role.START), (True, 4, Role.START), "node2", "node2"),
        ((True, 4, Role.START), (True, 4, Role.START), None, "node1"),
        ((True, 4, Role.START), (True, 9, Role.SECOND), None, "node1"),
    ],
)
def test_tie_break_gives_the_same_winner_on_both_nodes(
    mine: tuple[bool, int, Role], theirs: tuple[bool, int, Role], defaultprim: str | None, winner: str
) -> None:
    s1 = replace(S, defaultprim=defaultprim)
    s2 = Settings("node2", "node1", True, defaultprim, 3, 86400.0)
    n1 = listening(mine[0], mine[1], cmd=mine[2].value, s=s1)
    n2 = listening(theirs[0], theirs[1], cmd=theirs[2].value, s=s2)
    st1 = step(s1, n1, PeerSeen(n2.view("node2"), T))
    st2 = step(s2, n2, PeerSeen(n1.view("node1"), T))
    starters = {name for name, st in (("node1", st1), ("node2", st2)) if st.node.state is State.ALONE}
    assert starters == {winner}


# --- deciding when the peer is lost ------------------------------------------------------------------------


def test_peer_lost_start_uptodate_becomes_alone() -> None:
    st = step(S, listening(True, 3), PeerLost(T))
    assert st.node.state is State.ALONE
    assert "node2 is not heard" in st.reason


def test_peer_lost_start_stale_waits_red() -> None:
    st = step(S, listening(False, 3), PeerLost(T))
    assert (st.node.state, st.node.color) == (State.WAIT, Color.RED)
    assert "not uptodate" in st.reason


def test_peer_lost_first_start_says_to_run_prim() -> None:
    st = step(S, listening(False, 0), PeerLost(T))
    assert (st.node.state, st.node.color) == (State.WAIT, Color.RED)
    assert "first start" in st.reason
    assert "mirrorctl prim" in st.reason


def test_peer_lost_second_role_waits_for_a_primary() -> None:
    st = step(S, listening(True, 3, cmd="second"), PeerLost(T))
    assert (st.node.state, st.node.color) == (State.WAIT, Color.RED)
    assert "no primary" in st.reason


def test_lost_peer_stays_known_across_a_restart_of_the_module() -> None:
    n = replace(Node.initial(True, 3), peer_lost=True)
    st = done(step(S, n, Command("start", T)).node)
    assert st.node.state is State.ALONE


# --- becoming primary --------------------------------------------------------------------------------------


def test_become_alone_persists_sets_vip_and_starts_the_app() -> None:
    st = step(S, listening(True, 3), PeerLost(T))
    assert st.actions == (
        SaveDurable(True, 4),
        StartMirror("primary"),
        SetVip(),
        RunScript("start_prim", State.WAIT, State.ALONE, "start"),
    )
    assert (st.node.state, st.node.color) == (State.ALONE, Color.ORANGE)
    assert is_primary(st.node)
    st = step(S, st.node, ScriptDone("start_prim", True, "", 1234.0))
    assert (st.node.state, st.node.color, st.node.primary_since) == (State.ALONE, Color.GREEN, 1234.0)
    assert "it catches up when it returns" in st.reason


def test_start_prim_failure_cleans_up_and_stops_red() -> None:
    st = done(step(S, listening(True, 3), PeerLost(T)).node, ok=False, detail="exit 1: port busy")
    assert st.actions == (RunScript("stop_prim", State.ALONE, State.STOP, "stop"),)
    assert not is_primary(st.node)
    st = done(st.node)
    assert st.actions == (
        UnsetVip(),
        StopMirror(),
        SaveDurable(True, 4),
        RunScript("poststop", State.ALONE, State.STOP, "stop"),
    )
    st = done(st.node)
    assert (st.node.state, st.node.color) == (State.STOP, Color.RED)
    assert st.reason == "start_prim failed: exit 1: port busy; fix the cause, then `mirrorctl start`"
    assert st.actions == ()


def test_alone_becomes_prim_when_the_peer_is_a_ready_second() -> None:
    st = step(S, alone(), PeerSeen(SECOND_GREEN, T))
    assert (st.node.state, st.node.color) == (State.PRIM, Color.GREEN)
    assert st.reason == "primary: node2 is mirrored and ready for failover"
    assert st.actions == ()


@pytest.mark.parametrize("event", [PeerLost(T), PeerSeen(peer(State.SECOND, Color.ORANGE), T)])
def test_prim_falls_back_to_alone_when_the_second_goes(event: PeerLost | PeerSeen) -> None:
    prim = step(S, alone(), PeerSeen(SECOND_GREEN, T)).node
    st = step(S, prim, event)
    assert (st.node.state, st.node.color) == (State.ALONE, Color.GREEN)
    assert "it catches up when it returns" in st.reason
    assert st.actions == ()


# --- failover ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [PeerLost(T), PeerSeen(peer(State.STOP, Color.RED, role=Role.NONE), T)])
def test_second_fails_over_when_the_primary_goes(event: PeerLost | PeerSeen) -> None:
    st = step(S, second_green(), event)
    assert (st.node.state, st.node.color) == (State.ALONE, Color.ORANGE)
    assert st.actions == (
        StopMirror(),
        SaveDurable(True, 5),
        StartMirror("primary"),
        SetVip(),
        RunScript("start_prim", State.SECOND, State.ALONE, "start"),
    )
    assert "primary node2" in st.reason
    assert "failing over" in st.reason


def test_second_with_failover_off_waits_red_and_persists_uptodate() -> None:
    s = replace(S, failover=False)
    st = step(s, second_green(s), PeerLost(T))
    assert (st.node.state, st.node.color) == (State.WAIT, Color.RED)
    assert st.actions == (StopMirror(), SaveDurable(True, 4))
    assert "failover is off: run `mirrorctl stop` then `mirrorctl prim` to start here" in st.reason
    assert step(s, st.node, PeerLost(T)).node.state is State.WAIT
    assert step(s, st.node, PeerSeen(peer(State.STOP, Color.RED, role=Role.NONE), T)).node.state is State.WAIT
    assert step(s, st.node, PeerSeen(ALONE_PEER, T)).node.state is State.SECOND


def test_second_still_resyncing_never_fails_over() -> None:
    n = done(step(S, listening(False, 3), PeerSeen(ALONE_PEER, T)).node).node
    st = step(S, n, PeerLost(T))
    assert (st.node.state, st.node.color) == (State.WAIT, Color.RED)
    assert st.actions == (StopMirror(),)
    assert "before the resync finished" in st.reason
    assert "primforce" in st.reason
    assert not st.node.uptodate


# --- stop --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("known", "keep"), [(SECOND_GREEN, False), (None, True)])
def test_stop_primary_persists_whether_the_second_takes_over(known: PeerView | None, keep: bool) -> None:
    n = replace(alone(), peer=known)
    st = step(S, n, Command("stop", T))
    assert st.actions == (RunScript("stop_prim", State.ALONE, State.STOP, "stop"),)
    assert (st.node.color, is_primary(st.node)) == (Color.ORANGE, False)
    st = done(st.node)
    assert st.actions == (
        UnsetVip(),
        StopMirror(),
        SaveDurable(keep, 4),
        RunScript("poststop", State.ALONE, State.STOP, "stop"),
    )
    st = done(st.node)
    assert (st.node.state, st.node.color, st.node.role) == (State.STOP, Color.RED, Role.NONE)
    assert st.actions == (Exit(),)
    assert "stopped by `mirrorctl stop`" in st.reason


def test_stop_second_runs_stop_second_then_poststop() -> None:
    st = step(S, second_green(), Command("stop", T))
    assert scripts(st) == ["stop_second"]
    st = done(st.node)
    assert st.actions == (StopMirror(), RunScript("poststop", State.SECOND, State.STOP, "stop"))
    st = done(st.node)
    assert st.node.state is State.STOP
    assert st.actions == (Exit(),)


def test_stop_waiting_node_runs_poststop() -> None:
    st = step(S, listening(False, 3), Command("stop", T))
    assert scripts(st) == ["poststop"]
    assert done(st.node).actions == (Exit(),)


def test_stop_on_stopped_node_is_refused() -> None:
    n = Node.initial(True, 3)
    st = step(S, n, Command("stop", T))
    assert st.refused == "already stopped"
    assert st.node == n
    assert st.actions == ()


def test_commands_during_a_script_are_refused_but_stop_is_remembered() -> None:
    n = step(S, listening(True, 3), PeerLost(T)).node  # start_prim runs
    st = step(S, n, Command("restart", T))
    assert st.refused == "busy running start_prim; try again when it finishes"
    st = step(S, n, Command("stop", T))
    assert st.refused is None
    assert st.actions == ()
    assert "will stop once start_prim finishes" in st.reason
    st = done(st.node)
    assert scripts(st) == ["stop_prim"]
    st = done(done(st.node).node)
    assert (st.node.state, st.actions) == (State.STOP, (Exit(),))


# --- restart, stopstart, swap, defaultprim -----------------------------------------------------------------


def test_restart_runs_stop_prim_then_start_prim_and_keeps_the_vip() -> None:
    st = step(S, alone(since=50.0), Command("restart", T))
    assert st.actions == (RunScript("stop_prim", State.ALONE, State.ALONE, "restart"),)
    assert is_primary(st.node)
    st = done(st.node)
    assert st.actions == (RunScript("start_prim", State.ALONE, State.ALONE, "restart"),)
    st = done(st.node)
    assert (st.node.state, st.node.color, st.node.primary_since) == (State.ALONE, Color.GREEN, 50.0)
    assert st.actions == ()


def test_restart_on_a_secondary_is_refused() -> None:
    st = step(S, second_green(), Command("restart", T))
    assert st.refused is not None
    assert "only applies to a primary" in st.refused


def test_stopstart_stops_then_starts_again_and_listens() -> None:
    prim = step(S, alone(), PeerSeen(SECOND_GREEN, T)).node
    st = step(S, prim, Command("stopstart", T))
    assert scripts(st) == ["stop_prim"]
    st = done(st.node)
    assert SaveDurable(False, 4) in st.actions
    st = done(st.node)  # poststop
    assert st.actions == (RunScript("prestart", State.STOP, State.WAIT, "start"),)
    st = step(S, done(st.node).node, PeerSeen(replace(ALONE_PEER, generation=5), T))
    assert (st.node.state, st.node.generation) == (State.SECOND, 5)


def test_swap_only_on_prim_green_with_ready_second() -> None:
    st = step(S, second_green(), Command("swap", T))
    assert st.refused == "run swap on the primary node2"
    st = step(S, alone(), Command("swap", T))
    assert st.refused is not None
    assert "SECOND green" in st.refused
    prim = step(S, alone(), PeerSeen(SECOND_GREEN, T)).node
    st = step(S, prim, Command("swap", T))
    assert scripts(st) == ["stop_prim"]
    assert "handing the application to node2" in st.reason


def test_defaultprim_hands_the_application_back() -> None:
    s = replace(S, defaultprim="node2")
    st = step(s, alone(s), PeerSeen(SECOND_GREEN, T))
    assert st.actions == (RunScript("stop_prim", State.PRIM, State.STOP, "stop"),)
    assert st.reason == "defaultprim=node2: handing the application back to node2"
    assert not is_primary(st.node)


def test_defaultprim_naming_myself_does_nothing() -> None:
    s = replace(S, defaultprim="node1")
    st = step(s, alone(s), PeerSeen(SECOND_GREEN, T))
    assert st.node.state is State.PRIM
    assert st.actions == ()


# --- maxloop -----------------------------------------------------------------------------------------------


def restart_cycle(n: Node, now: float, initiator: str | None = "checker") -> Step:
    st = step(S, n, Command("restart", now, initiator=initiator))
    if st.node.script == "stop_prim" and st.node.goal.value == "restart":
        return done(done(st.node).node)
    return st


def test_maxloop_stops_the_module_on_the_fourth_counted_action() -> None:
    n = alone()
    for i in range(3):
        n = restart_cycle(n, T + i).node
        assert (n.state, n.color) == (State.ALONE, Color.GREEN)
    st = step(S, n, Command("restart", T + 3, initiator="checker"))
    assert scripts(st) == ["stop_prim"]
    assert "maxloop reached: 4 actions in 1d (maxloop 3)" in st.reason
    st = done(done(st.node).node)
    assert (st.node.state, st.node.color) == (State.STOP, Color.RED)
    assert "mirrorctl resetloop" in st.reason
    assert Exit() not in st.actions


def test_maxloop_forgets_old_actions_and_admin_or_resetloop_resets() -> None:
    n = alone()
    for i in range(3):
        n = restart_cycle(n, T + i).node
    assert restart_cycle(n, T + 86400.0 + 1).node.state is State.ALONE  # the first three expired
    admin = restart_cycle(n, T + 5, initiator=None).node
    assert admin.loop_times == ()
    st = step(S, n, Command("resetloop", T))
    assert st.node.loop_times == ()
    assert "reset" in st.reason


# --- split brain -------------------------------------------------------------------------------------------


def test_split_brain_older_primary_stays() -> None:
    st = step(S, alone(since=100.0), PeerSeen(replace(ALONE_PEER, primary_since=200.0), T))
    assert (st.node.state, st.actions) == (State.ALONE, ())
    assert "node2 steps down" in st.reason


def test_split_brain_younger_primary_steps_down_and_resyncs() -> None:
    st = step(S, alone(since=300.0), PeerSeen(replace(ALONE_PEER, primary_since=200.0), T))
    # Owed at once (persisted): whatever happens before the resync, this copy's changes are saved first.
    assert st.actions == (OweSalvage(st.reason), RunScript("stop_prim", State.ALONE, State.SECOND, "stop"))
    assert "split brain resolved: node2 has run the application since" in st.reason
    assert not is_primary(st.node)
    st = done(st.node)
    assert st.actions == (
        UnsetVip(),
        StopMirror(),
        SaveDurable(False, 4),
        SaveDurable(False, 4),
        # The loser's copy has writes the winner never saw: saved first (salvage), then a full resync.
        StartMirror(
            "secondary", full=True, salvage="split brain resolved: node2 kept the application; resyncing from it"
        ),
        StartResync(True),
        RunScript("start_second", State.WAIT, State.SECOND, "start"),
    )
    assert (st.node.state, st.node.color) == (State.SECOND, Color.ORANGE)
    assert "resyncing from it" in st.reason


def test_split_brain_tie_goes_to_defaultprim() -> None:
    s = replace(S, defaultprim="node2")
    st = step(s, alone(s, since=200.0), PeerSeen(replace(ALONE_PEER, primary_since=200.0), T))
    assert scripts(st) == ["stop_prim"]


# --- other commands ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", ["prim", "start", "second"])
def test_start_commands_on_a_running_node_are_refused(cmd: str) -> None:
    n = alone()
    st = step(S, n, Command(cmd, T))
    assert st.refused is not None
    assert st.refused.startswith("already ALONE")
    assert st.node == n


def test_second_on_wait_changes_role() -> None:
    st = step(S, listening(True, 3), Command("second", T))
    assert st.node.role is Role.SECOND
    assert "no primary" not in st.reason  # peer not heard yet: still listening
    assert st.node.state is State.WAIT


def test_primforce_on_wait_starts_here() -> None:
    n = step(S, listening(False, 3), PeerLost(T)).node
    st = step(S, n, Command("primforce", T))
    assert st.node.state is State.ALONE


def test_unknown_command_and_stale_script_results_change_nothing() -> None:
    n = alone()
    assert step(S, n, Command("dance", T)).refused is not None
    st = step(S, n, ScriptDone("start_prim", True, "", T))
    assert (st.node, st.actions) == (n, ())
    st = step(S, n, ResyncDone(True, "", T))
    assert (st.node, st.actions) == (n, ())


def test_a_secondary_whose_primary_stops_mirroring_to_it_is_no_longer_uptodate() -> None:
    mirrored = replace(ALONE_PEER, state=State.PRIM, mirroring=True)
    st = step(S, second_green(), PeerSeen(mirrored, T))
    assert (st.node.state, st.node.color) == (State.SECOND, Color.GREEN)
    # The primary's link to us broke and it runs on alone: we fall behind.
    st = step(S, st.node, PeerSeen(replace(mirrored, state=State.ALONE, mirroring=False), T))
    assert (st.node.state, st.node.color, st.node.uptodate) == (State.SECOND, Color.ORANGE, False)
    assert st.actions == (SaveDurable(False, st.node.generation), StartResync(True, after_break=True))
    assert "interrupted" in st.reason
    # If the primary now dies, this stale copy must not start the application.
    st = step(S, st.node, PeerLost(T))
    assert st.node.state is State.WAIT
    assert "not uptodate" in st.reason


def test_a_stopping_primary_closing_its_link_leaves_the_secondary_ready_to_take_over() -> None:
    mirrored = replace(ALONE_PEER, state=State.PRIM, mirroring=True)
    st = step(S, second_green(), PeerSeen(mirrored, T))
    # A clean stop (or swap) closes replication on purpose while the primary is orange: not a broken mirror.
    st = step(S, st.node, PeerSeen(replace(mirrored, color=Color.ORANGE, mirroring=False), T))
    assert (st.node.state, st.node.color, st.node.uptodate) == (State.SECOND, Color.GREEN, True)


def test_a_new_copy_makes_the_interrupted_secondary_ready_again() -> None:
    mirrored = replace(ALONE_PEER, state=State.PRIM, mirroring=True)
    st = step(S, step(S, second_green(), PeerSeen(mirrored, T)).node, PeerSeen(replace(mirrored, mirroring=False), T))
    st = step(S, st.node, ResyncDone(True, "the primary's full copy arrived", T))
    assert (st.node.state, st.node.color, st.node.uptodate) == (State.SECOND, Color.GREEN, True)


def test_a_primary_that_never_mirrored_does_not_disturb_its_secondary() -> None:
    st = step(S, second_green(), PeerSeen(ALONE_PEER, T))  # mirroring False from the start (no <rfs>)
    assert (st.node.state, st.node.color) == (State.SECOND, Color.GREEN)


def test_a_ready_secondary_whose_copy_becomes_incomplete_turns_orange_and_not_uptodate() -> None:
    # The primary reconnected within one pulse and resyncs: heartbeats never showed it stop mirroring.
    green = second_green()
    st = step(S, green, CopyIncomplete("a new resync session began", T))
    assert (st.node.state, st.node.color, st.node.uptodate) == (State.SECOND, Color.ORANGE, False)
    assert st.actions == (SaveDurable(False, green.generation), StartResync(True, after_break=True))
    assert "not uptodate" in st.reason
    # Already resyncing (or any other state): nothing to do.
    assert step(S, st.node, CopyIncomplete("again", T)).actions == ()
