"""Two nodes, one link: Hypothesis drives commands, heartbeats, partitions, scripts and resyncs.

The model plays the two daemons: it feeds each node's events to `fsm.step`, keeps the durable facts
each `SaveDurable` wrote, and delivers a node's current view to the other only while the link is up
(the daemon sends a heartbeat on every change, but it may arrive late, so delivery is its own rule).
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mirrorcore.fsm import (
    COMMANDS,
    Command,
    Event,
    Node,
    PeerLost,
    PeerSeen,
    Phase,
    ResyncDone,
    Role,
    RuleCleared,
    RunScript,
    SaveDurable,
    ScriptDone,
    Settings,
    is_primary,
    step,
)

NAMES = ("node1", "node2")
OK = st.sampled_from([True, True, True, False])  # failures matter, but mostly things work


class Pair(RuleBasedStateMachine):
    """Both nodes' state machines wired back to back."""

    @initialize(
        failover=st.booleans(),
        defaultprim=st.sampled_from([None, "node1", "node2"]),
        durable=st.tuples(*[st.tuples(st.sampled_from([True, True, False]), st.integers(0, 3))] * 2),
    )
    def setup(self, failover: bool, defaultprim: str | None, durable: tuple[tuple[bool, int], ...]) -> None:
        self.settings = [Settings(NAMES[i], NAMES[1 - i], failover, defaultprim, 3, 100.0) for i in range(2)]
        self.nodes = [Node.initial(u, g) for u, g in durable]
        self.durable = [u for u, _ in durable]
        self.synced = [False, False]  # a finished resync since the last SaveDurable(False)
        self.link_up = True
        self.delivered = [False, False]  # delivered[j]: node j holds node i's latest view
        self.now = 1000.0
        self.witness_loser: int | None = None  # the node that did not reach the witness at the last cut

    def apply(self, i: int, event: Event) -> None:
        before = self.nodes[i]
        was_primary = is_primary(before)
        self.now += 1.0
        out = step(self.settings[i], before, event)
        after = out.node
        if out.refused is not None:
            assert after == before, "a refused command must leave the node unchanged"
        scripts = [a for a in out.actions if isinstance(a, RunScript)]
        assert len(scripts) <= 1, out.actions
        assert not scripts or out.actions[-1] is scripts[0], "RunScript comes last"
        assert (after.phase is Phase.SCRIPT) == (after.script is not None)
        assert out.reason, "every step says why"
        if not was_primary and is_primary(after):
            # (1) A node never *becomes* primary while its live view of the peer is primary.
            assert after.peer is None or not after.peer.primary, (before, event, after)
            # (2) ...and never from stale data unless forced: its copy is durably uptodate, or it
            # finished a resync as SECOND, or an admin said `primforce` (or `prim` on a never-synced node).
            forced = after.role is Role.PRIMFORCE or (after.role is Role.PRIM and before.generation == 0)
            assert self.durable[i] or self.synced[i] or forced, (before, event, after)
        for a in out.actions:
            if isinstance(a, SaveDurable):
                self.durable[i] = a.uptodate
                if not a.uptodate:
                    self.synced[i] = False
        if isinstance(event, ResyncDone) and event.ok and after.uptodate and not before.uptodate:
            self.synced[i] = True
        self.nodes[i] = after
        if after.view(NAMES[i]) != before.view(NAMES[i]):
            self.delivered[1 - i] = False

    @rule(
        i=st.integers(0, 1),
        # Starting commands come more often: most interesting runs need both nodes up.
        name=st.sampled_from(COMMANDS + ("start",) * 4 + ("stop",)),
        initiator=st.sampled_from([None, "checker"]),
        fullsync=st.booleans(),
    )
    def command(self, i: int, name: str, initiator: str | None, fullsync: bool) -> None:
        if name in ("prim", "primforce") and i == self.witness_loser:
            self.witness_loser = None  # an admin overrides the witness
        self.apply(i, Command(name, self.now, initiator, fullsync))

    @rule(i=st.integers(0, 1))
    def rule_clears(self, i: int) -> None:
        """The rule behind `-i checker` commands (a wait() among them) no longer holds."""
        self.apply(i, RuleCleared("checker", "rule checker no longer holds", self.now))

    @precondition(lambda self: self.link_up)
    @rule(i=st.integers(0, 1))
    def deliver(self, i: int) -> None:
        """Node i's heartbeat reaches node 1-i."""
        self.apply(1 - i, PeerSeen(self.nodes[i].view(NAMES[i]), self.now))
        self.delivered[1 - i] = True

    @precondition(lambda self: self.link_up)
    @rule()
    def exchange(self) -> None:
        """Heartbeats flow both ways until neither node has news for the other."""
        for _ in range(8):
            for i in (0, 1):
                if not self.delivered[1 - i]:
                    self.deliver(i)
            if all(self.delivered):
                return

    @precondition(lambda self: self.link_up)
    @rule(witness=st.sampled_from([(None, None), (True, False), (False, True), (False, False), (True, True)]))
    def cut(self, witness: tuple[bool | None, bool | None]) -> None:
        self.link_up = False
        self.delivered = [False, False]
        self.witness_loser = witness.index(False) if witness.count(False) == 1 else None
        self.apply(0, PeerLost(self.now, witness[0]))
        self.apply(1, PeerLost(self.now, witness[1]))

    @precondition(lambda self: not self.link_up)
    @rule()
    def heal(self) -> None:
        self.link_up = True
        self.witness_loser = None

    @rule(i=st.integers(0, 1), ok=OK)
    def finish_script(self, i: int, ok: bool) -> None:
        script = self.nodes[i].script
        if script is not None:
            self.apply(i, ScriptDone(script, ok, "exit 0" if ok else "exit 1", self.now))

    @rule(i=st.integers(0, 1), ok=OK)
    def finish_resync(self, i: int, ok: bool) -> None:
        if self.nodes[i].resyncing:
            self.apply(i, ResyncDone(ok, "" if ok else "io error", self.now))

    @rule()
    def settle(self) -> None:
        """Every pending script and resync succeeds, with heartbeats in between (reaches steady states fast)."""
        for _ in range(6):
            for i in (0, 1):
                if self.nodes[i].script is not None:
                    self.finish_script(i, True)
                if self.nodes[i].resyncing:
                    self.finish_resync(i, True)
            if self.link_up:
                self.exchange()

    @invariant()
    def the_node_that_missed_the_witness_gives_up_the_application(self) -> None:
        # Cut from its peer and from the witness, a node runs the application only if an admin said so.
        if getattr(self, "witness_loser", None) is None:
            return
        loser = self.nodes[self.witness_loser]
        if loser.script is None:
            assert not is_primary(loser), loser

    @invariant()
    def one_primary_once_views_are_exchanged(self) -> None:
        # After a heal, once each node holds the other's latest view and neither is in the middle
        # of a script (a loser steps down as soon as its script ends), at most one is primary.
        if not hasattr(self, "nodes"):
            return
        settled = self.link_up and all(self.delivered) and all(n.script is None for n in self.nodes)
        if settled:
            assert not (is_primary(self.nodes[0]) and is_primary(self.nodes[1])), self.nodes


Pair.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestPair = Pair.TestCase


def test_both_nodes_reach_prim_and_second_after_a_first_start() -> None:
    """The documented first start: `prim` on the good node, `second` on the other."""
    s = [Settings(NAMES[i], NAMES[1 - i], True, None, 3, 100.0) for i in range(2)]
    n = [Node.initial(False, 0), Node.initial(False, 0)]
    n[0] = step(s[0], n[0], Command("prim", 1.0)).node
    n[1] = step(s[1], n[1], Command("second", 1.0)).node
    for i in range(2):
        n[i] = step(s[i], n[i], ScriptDone("prestart", True, "", 2.0)).node
    n[1] = step(s[1], n[1], PeerSeen(n[0].view("node1"), 3.0)).node  # node1 still WAIT: node2 waits
    n[0] = step(s[0], n[0], PeerSeen(n[1].view("node2"), 3.0)).node  # node1 starts
    n[0] = step(s[0], n[0], ScriptDone("start_prim", True, "", 4.0)).node
    n[1] = step(s[1], n[1], PeerSeen(n[0].view("node1"), 5.0)).node
    n[1] = step(s[1], n[1], ScriptDone("start_second", True, "", 6.0)).node
    n[1] = step(s[1], n[1], ResyncDone(True, "", 7.0)).node
    n[0] = step(s[0], n[0], PeerSeen(n[1].view("node2"), 8.0)).node
    assert [(x.state.value, x.color.value) for x in n] == [("PRIM", "green"), ("SECOND", "green")]
