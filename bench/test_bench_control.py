"""Control-plane costs: what one heartbeat and one state-machine step take.

Heartbeats are sent every `pulse` on every LAN and each is verified on arrival; the
state machine steps on every heartbeat. Both must stay negligible next to the pulse.
"""

from __future__ import annotations

import time

from mirrorcore import fsm, heart

KEY = bytes(range(32))
BEAT = heart.Beat(
    module="demo",
    node="node1",
    state="PRIM",
    color="green",
    uptodate=True,
    generation=7,
    sync_timestamp=time.time(),
    seq=123456,
    primary_since=time.time(),
    role="start",
    reason="primary: node2 is mirrored and ready for failover",
    port=9010,
    boot_id="3f1c",
    counter=42,
    sent_at=time.time(),
    link="default",
)
SETTINGS = fsm.Settings(node="node1", peer="node2", failover=True, defaultprim=None, maxloop=3, loop_interval=86400)


def test_heartbeat_sign_and_verify(benchmark):
    def round_trip() -> heart.Beat:
        return heart.decode(heart.encode(BEAT, KEY), KEY)

    assert benchmark(round_trip) == BEAT


def test_state_machine_step_on_a_heartbeat(benchmark):
    node = fsm.Node.initial(uptodate=True, generation=1)
    seen = fsm.PeerSeen(
        peer=fsm.PeerView(
            node="node2",
            state=fsm.State.SECOND,
            color=fsm.Color.GREEN,
            uptodate=True,
            generation=1,
            role=fsm.Role.START,
            primary_since=None,
        ),
        now=time.time(),
    )
    result = benchmark(fsm.step, SETTINGS, node, seen)
    assert result.node.state is fsm.State.STOP  # a stopped node only records what it heard
