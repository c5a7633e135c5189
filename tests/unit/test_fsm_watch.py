"""The state machine's side of checkers and the witness: a rule's wait() and its end, rule-caused
actions, and what a node does when it loses every heartbeat with or without reaching the witness."""

from __future__ import annotations

from dataclasses import replace

from test_fsm import ALONE_PEER, SECOND_GREEN, S, T, alone, done, listening, peer, scripts, second_green

from mirrorcore.fsm import (
    Color,
    Command,
    Exit,
    Node,
    PeerLost,
    PeerSeen,
    Phase,
    RuleCleared,
    RunScript,
    SaveDurable,
    StartMirror,
    StartResync,
    State,
    Step,
    StopMirror,
    UnsetVip,
    is_primary,
    step,
)

WHY = "rule interface_down (intf.? == down) held: intf.10.0.0.0 is down; action wait"


def prim() -> Node:
    """PRIM green with a ready secondary."""
    st = step(S, alone(), PeerSeen(SECOND_GREEN, T))
    assert st.node.state is State.PRIM
    return st.node


def wait_for_rule(n: Node, rule: str = "interface_down", detail: str = WHY, now: float = T) -> Step:
    return step(S, n, Command("wait", now, initiator=rule, detail=detail))


def waiting(n: Node | None = None) -> Node:
    """A node the rule interface_down holds in WAIT red."""
    st = wait_for_rule(n or alone())
    while st.node.script is not None:
        st = done(st.node)
    assert (st.node.state, st.node.color, st.node.phase) == (State.WAIT, Color.RED, Phase.RESOURCE)
    return st.node


# --- a rule's wait() ---------------------------------------------------------------------------------------


def test_wait_on_a_primary_stops_everything_then_waits_red_naming_the_rule() -> None:
    st = wait_for_rule(alone())
    assert scripts(st) == ["stop_prim"]
    assert st.reason.startswith(WHY)
    assert not is_primary(st.node)
    assert st.node.loop_times == (T,)  # counted against maxloop
    st = done(st.node)
    assert st.actions == (
        UnsetVip(),
        StopMirror(),
        SaveDurable(True, 4),
        RunScript("poststop", State.ALONE, State.STOP, "stop"),
    )
    assert (st.node.state, st.node.color) == (State.WAIT, Color.RED)  # never shown as stopped
    st = done(st.node)
    assert (st.node.state, st.node.color, st.node.phase, st.actions) == (State.WAIT, Color.RED, Phase.RESOURCE, ())
    assert st.reason.startswith(f"waiting: {WHY}")
    assert "starts again by itself once rule interface_down no longer holds" in st.reason
    assert Exit() not in st.actions


def test_wait_on_a_secondary_stops_its_scripts_and_mirror_then_waits() -> None:
    st = wait_for_rule(second_green())
    assert scripts(st) == ["stop_second"]
    st = done(st.node)
    assert st.actions == (StopMirror(), RunScript("poststop", State.SECOND, State.STOP, "stop"))
    assert done(st.node).node.phase is Phase.RESOURCE


def test_the_rule_clearing_starts_the_module_again_as_start_would() -> None:
    n = waiting()
    st = step(S, n, RuleCleared("interface_down", "rule interface_down no longer holds: intf.10.0.0.0 is up", T))
    assert st.actions == (RunScript("prestart", State.WAIT, State.WAIT, "start"),)
    assert (st.node.state, st.node.color) == (State.WAIT, Color.ORANGE)
    assert st.reason == "rule interface_down no longer holds: intf.10.0.0.0 is up: starting again (prestart)"
    st = done(st.node)
    assert scripts(st) == ["start_prim"]  # then decides like any start: the peer is not heard, the data uptodate


def test_another_rule_clearing_changes_nothing_and_two_waits_need_both_cleared() -> None:
    n = waiting()
    assert step(S, n, RuleCleared("ping_gw_down", "x", T)).node == n
    st = wait_for_rule(n, "ping_gw_down", "rule ping_gw_down (ping.gw == down) held")
    assert (st.actions, st.node.wait_rules) == ((), ("interface_down", "ping_gw_down"))
    assert st.node.loop_times == n.loop_times  # nothing ran: not a loop
    assert "also rule ping_gw_down" in st.reason
    st = step(S, st.node, RuleCleared("interface_down", "cleared", T))
    assert (st.node.phase, st.actions) == (Phase.RESOURCE, ())
    st = step(S, st.node, RuleCleared("ping_gw_down", "cleared", T))
    assert scripts(st) == ["prestart"]


def test_a_rule_that_clears_while_the_application_stops_starts_it_again_after_poststop() -> None:
    st = wait_for_rule(alone())
    st = step(S, st.node, RuleCleared("interface_down", "cleared", T))
    assert st.node.script == "stop_prim"  # the stop goes on
    st = done(done(st.node).node)
    assert scripts(st) == ["prestart"]
    assert "no longer holds: starting again" in st.reason


def test_stop_while_waiting_stops_at_once_and_start_runs_prestart() -> None:
    st = step(S, waiting(), Command("stop", T))
    assert (st.node.state, st.node.color, st.actions) == (State.STOP, Color.RED, (Exit(),))
    assert st.node.wait_rules == ()
    st = step(S, waiting(), Command("start", T))
    assert scripts(st) == ["prestart"]
    assert st.node.wait_rules == ()


def test_wait_is_refused_on_a_stopped_or_busy_module() -> None:
    assert step(S, Node.initial(True, 3), Command("wait", T, "r")).refused is not None
    busy = wait_for_rule(alone()).node
    refused = step(S, busy, Command("wait", T, "other"))
    assert refused.refused is not None
    assert "busy running stop_prim" in refused.refused


def test_waits_count_against_maxloop() -> None:
    n = alone()
    for i in range(3):
        n = waiting(n)
        st = step(S, n, RuleCleared("interface_down", "cleared", T + i))
        st = done(st.node)  # prestart; the peer is lost: ALONE again
        st = done(st.node)  # start_prim
        n = st.node
        assert (n.state, n.color, len(n.loop_times)) == (State.ALONE, Color.GREEN, i + 1)
    st = wait_for_rule(n, now=T + 3)
    assert "maxloop reached: 4 actions" in st.reason
    st = done(done(st.node).node)
    assert (st.node.state, st.node.color) == (State.STOP, Color.RED)
    assert "mirrorctl resetloop" in st.reason


# --- other actions a rule asks for -------------------------------------------------------------------------


def test_a_rule_restart_says_which_rule_and_why() -> None:
    why = "rule proc_app_down (proc.app == down) held: proc.app is down; action restart"
    st = step(S, alone(), Command("restart", T, initiator="proc_app_down", detail=why))
    assert scripts(st) == ["stop_prim"]
    assert st.reason == f"{why}: restarting the application (stop_prim then start_prim)"
    assert st.node.loop_times == (T,)


def test_a_rule_stop_stops_without_exiting_and_keeps_the_rule_as_reason() -> None:
    why = "rule db_gone (tcp.db == down) held: tcp.db is down; action stop"
    st = step(S, alone(), Command("stop", T, initiator="db_gone", detail=why))
    st = done(done(st.node).node)
    assert (st.node.state, st.node.color) == (State.STOP, Color.RED)
    assert st.reason == f"stopped by {why}; fix the cause, then `mirrorctl start`"
    assert Exit() not in st.actions


# --- the split-brain witness --------------------------------------------------------------------------------


def test_a_secondary_that_reaches_the_witness_fails_over_and_says_so() -> None:
    st = step(S, second_green(), PeerLost(T, witness=True))
    assert scripts(st) == ["start_prim"]
    assert "split-brain witness answers from here" in st.reason


def test_a_secondary_that_cannot_reach_the_witness_waits_red_with_the_command_to_run() -> None:
    st = step(S, second_green(), PeerLost(T, witness=False))
    assert (st.node.state, st.node.color, st.node.phase) == (State.WAIT, Color.RED, Phase.ISOLATED)
    assert st.actions == (StopMirror(),)
    assert "witness does not answer from here" in st.reason
    assert "If node2 is really down, run `mirrorctl prim` here" in st.reason
    # The network comes back: it follows the primary that reached the witness.
    st = step(S, st.node, PeerSeen(ALONE_PEER, T))
    assert st.node.state is State.SECOND
    assert StartResync(False) in st.actions


def test_a_prim_that_cannot_reach_the_witness_stops_the_application_and_marks_its_copy_stale() -> None:
    st = step(S, prim(), PeerLost(T, witness=False))
    assert scripts(st) == ["stop_prim"]
    assert not is_primary(st.node)
    st = done(st.node)
    # node2 was a ready secondary and may have taken over: this copy is behind from now on.
    assert SaveDurable(False, 4) in st.actions
    assert st.node.state is State.WAIT
    st = done(st.node)
    assert (st.node.state, st.node.color, st.node.phase) == (State.WAIT, Color.RED, Phase.ISOLATED)
    assert "run `mirrorctl primforce` here to start the application anyway" in st.reason
    st = step(S, st.node, PeerSeen(ALONE_PEER, T))
    assert (st.node.state, st.actions[-1]) == (
        State.SECOND,
        RunScript("start_second", State.WAIT, State.SECOND, "start"),
    )
    assert StartMirror("secondary") in st.actions


def test_an_alone_primary_without_witness_stops_but_keeps_its_copy_uptodate() -> None:
    st = done(step(S, alone(), PeerLost(T, witness=False)).node)
    assert SaveDurable(True, 4) in st.actions
    assert "`mirrorctl prim` here" in done(st.node).reason


def test_a_primary_that_reaches_the_witness_stays_alone() -> None:
    st = step(S, prim(), PeerLost(T, witness=True))
    assert (st.node.state, st.node.color, st.actions) == (State.ALONE, Color.GREEN, ())
    assert "witness answers from here" in st.reason


def test_a_starting_node_without_peer_or_witness_waits_and_prim_overrides() -> None:
    n = listening(True, 3)
    st = step(S, n, PeerLost(T, witness=False))
    assert (st.node.state, st.node.color, st.node.phase, st.actions) == (State.WAIT, Color.RED, Phase.ISOLATED, ())
    st = step(S, st.node, Command("prim", T))
    assert scripts(st) == ["prestart"]
    st = done(st.node)
    assert scripts(st) == ["start_prim"]  # the admin decided: the witness is not asked again
    st = done(st.node)
    assert (st.node.state, st.node.color) == (State.ALONE, Color.GREEN)


def test_two_isolated_nodes_decide_again_once_they_hear_each_other() -> None:
    n = step(S, second_green(), PeerLost(T, witness=False)).node
    other = peer(State.WAIT, Color.RED, uptodate=False, generation=4, role=n.role)
    st = step(S, n, PeerSeen(other, T))
    assert scripts(st) == ["start_prim"]  # node1 has the latest data: it starts
    assert "node1 has the latest data" in st.reason


def test_stop_while_isolated_stops_at_once() -> None:
    n = step(S, second_green(), PeerLost(T, witness=False)).node
    st = step(S, n, Command("stop", T))
    assert (st.node.state, st.actions) == (State.STOP, (Exit(),))


def test_no_witness_configured_keeps_the_plain_failover() -> None:
    a = step(S, second_green(), PeerLost(T))
    b = step(S, second_green(), PeerLost(T, witness=None))
    assert a == b
    assert scripts(a) == ["start_prim"]
    assert "witness" not in a.reason


def test_hearing_the_peer_forgets_the_witness() -> None:
    n = step(S, second_green(), PeerLost(T, witness=False)).node
    st = step(S, n, PeerSeen(replace(ALONE_PEER), T))
    assert st.node.witness is None
