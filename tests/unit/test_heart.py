"""Heartbeats over real UDP on loopback addresses: who is believed, and when a LAN counts as lost."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from mirrorcore.heart import (
    AllLost,
    BadBeat,
    Beat,
    BeatState,
    HeartEvent,
    HeartService,
    Link,
    LinkChanged,
    PeerBeat,
    decode,
    encode,
    pack_resources,
    unpack_resources,
)

KEY = bytes(range(32))
PULSE = 0.05
TIMEOUT = 0.4

# Node A and node B each have two heartbeat LANs; each LAN goes through a relay the test can cut.
A_ADDR = {"a": "127.0.0.1", "b": "127.0.0.3"}
B_ADDR = {"a": "127.0.0.2", "b": "127.0.0.4"}
FACE_A = {"a": "127.0.0.5", "b": "127.0.0.7"}  # where A sends: the relay, posing as B
FACE_B = {"a": "127.0.0.6", "b": "127.0.0.8"}  # where B sends: the relay, posing as A


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Relay:
    """A cuttable wire for one LAN that also records what A sent, to replay or tamper with it."""

    def __init__(self, ident: str, port: int) -> None:
        self.ident = ident
        self.port = port
        self.cut = False
        self.from_a: list[bytes] = []
        self.sock_a = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.sock_b = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.sock_a.bind((FACE_A[self.ident], self.port))
        await self.sock_b.bind((FACE_B[self.ident], self.port))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, self.sock_a, self.sock_b, B_ADDR[self.ident], True)
            nursery.start_soon(self._pump, self.sock_b, self.sock_a, A_ADDR[self.ident], False)
            task_status.started()

    async def _pump(self, src: trio.socket.SocketType, dst: trio.socket.SocketType, to: str, record: bool) -> None:
        while True:
            try:
                data, _ = await src.recvfrom(65536)
            except OSError:
                continue
            if record:
                self.from_a.append(data)
            if not self.cut:
                await dst.sendto(data, (to, self.port))

    async def inject_to_b(self, data: bytes) -> None:
        """Sends a datagram to B exactly as if it came from A on this LAN."""
        await self.sock_b.sendto(data, (B_ADDR[self.ident], self.port))


class Recorder:
    def __init__(self, service: HeartService) -> None:
        self.service = service
        self.events: list[HeartEvent] = []

    async def run(self) -> None:
        async for event in self.service.events:
            self.events.append(event)

    def of(self, kind: type) -> list[HeartEvent]:
        return [e for e in self.events if isinstance(e, kind)]


async def wait_until(pred: Callable[[], bool], within: float = 5.0) -> None:
    """Polls `pred` (state of the services under test) until true; fails after `within` seconds."""
    with trio.fail_after(within):
        while True:
            if pred():
                return
            await trio.sleep(0.01)


def service(side: str, port: int, *, key: bytes = KEY, module: str = "am", idents: tuple[str, ...] = ("a", "b")):
    node, peer = ("node1", "node2") if side == "A" else ("node2", "node1")
    local, face = (A_ADDR, FACE_A) if side == "A" else (B_ADDR, FACE_B)
    links = [Link(ident=i, lan=f"lan_{i}", local_addr=local[i], peer_addr=face[i]) for i in idents]
    state = BeatState(state="PRIM" if side == "A" else "SECOND", color="green", uptodate=True, generation=7)
    return HeartService(module, node, peer, links, port, key, PULSE, TIMEOUT, local=lambda: state)


@asynccontextmanager
async def running(*services: HeartService) -> AsyncIterator[tuple[dict[str, Relay], list[Recorder]]]:
    port = services[0].port
    relays = {i: Relay(i, port) for i in ("a", "b")}
    recorders = [Recorder(s) for s in services]
    async with trio.open_nursery() as nursery:
        for relay in relays.values():
            await nursery.start(relay.run)
        for s, r in zip(services, recorders, strict=True):
            nursery.start_soon(r.run)
            await nursery.start(s.run)
        yield relays, recorders
        nursery.cancel_scope.cancel()
    for relay in relays.values():
        relay.sock_a.close()
        relay.sock_b.close()


async def test_two_nodes_see_each_other_alive_on_every_lan():
    port = free_port()
    a, b = service("A", port), service("B", port)
    async with running(a, b) as (_, (rec_a, rec_b)):
        await wait_until(lambda: all(a.links_alive().values()) and all(b.links_alive().values()))
        await wait_until(lambda: len(rec_b.of(PeerBeat)) >= 4)
    beat = rec_b.of(PeerBeat)[-1]
    assert isinstance(beat, PeerBeat)
    assert (beat.beat.node, beat.beat.state, beat.beat.generation, beat.beat.uptodate) == ("node1", "PRIM", 7, True)
    assert {e.ident for e in rec_b.of(LinkChanged) if isinstance(e, LinkChanged) and e.alive} == {"a", "b"}
    assert rec_a.of(AllLost) == rec_b.of(AllLost) == []
    assert b.counters["dropped_mac"] == b.counters["dropped_replay"] == b.counters["dropped_other_module"] == 0


async def test_kick_sends_a_beat_without_waiting_for_the_pulse():
    port = free_port()
    a, b = service("A", port, idents=("a",)), service("B", port, idents=("a",))
    a.pulse = 3600.0  # only the first beat (sent before B listened) and kicks go out
    async with running(a, b) as (_, (_, rec_b)):
        a.kick()
        await wait_until(lambda: len(rec_b.of(PeerBeat)) == 1, within=1.0)
        a.local = lambda: {"state": "ALONE", "color": "orange", "port": 9010}  # a mapping works too
        a.kick()
        await wait_until(lambda: len(rec_b.of(PeerBeat)) == 2, within=1.0)
    last = rec_b.of(PeerBeat)[-1]
    assert isinstance(last, PeerBeat)
    assert last.beat.state == "ALONE"


async def test_a_beat_carries_the_senders_mirroring_flag_and_local_resources():
    port = free_port()
    a, b = service("A", port, idents=("a",)), service("B", port, idents=("a",))
    values = {"proc.app": "down", "tcp.app": "up", "ip.fd00::64": "unknown", "custom.x": "init"}
    a.local = lambda: BeatState(state="PRIM", mirroring=True, resources=pack_resources(values))
    async with running(a, b) as (_, (_, rec_b)):
        await wait_until(lambda: len(rec_b.of(PeerBeat)) >= 1)
    last = rec_b.of(PeerBeat)[-1]
    assert isinstance(last, PeerBeat)
    assert last.beat.mirroring is True
    assert unpack_resources(last.beat.resources) == values


def test_packed_resources_are_compact_and_bad_entries_are_dropped():
    packed = pack_resources({"tcp.db": "up", "proc.postgres": "down"})
    assert packed == "proc.postgres=d tcp.db=u"
    assert unpack_resources("tcp.db=u junk =d tcp.x=z ip.fd00::1=n") == {"tcp.db": "up", "ip.fd00::1": "unknown"}
    many = {f"custom.c{i:04d}": "up" for i in range(1000)}
    assert len(pack_resources(many)) <= 4000  # a beat stays one datagram


async def test_a_node_with_another_key_is_not_believed():
    port = free_port()
    a, b = service("A", port, key=b"x" * 32), service("B", port)
    async with running(a, b) as (_, (_, rec_b)):
        await wait_until(lambda: b.counters["dropped_mac"] >= 4)
        await trio.sleep(TIMEOUT)
    assert rec_b.of(PeerBeat) == []
    assert b.links_alive() == {"a": False, "b": False}
    assert rec_b.of(AllLost) == [AllLost()]  # nothing believed within timeout of starting


async def test_another_module_is_not_believed():
    port = free_port()
    a, b = service("A", port, module="other"), service("B", port)
    async with running(a, b) as (_, (_, rec_b)):
        await wait_until(lambda: b.counters["dropped_other_module"] >= 4)
    assert rec_b.of(PeerBeat) == []
    assert b.counters["dropped_mac"] == 0


async def test_a_replayed_beat_is_dropped():
    port = free_port()
    a, b = service("A", port), service("B", port)
    async with running(a, b) as (relays, (_, rec_b)):
        await wait_until(lambda: len(relays["a"].from_a) >= 3 and len(rec_b.of(PeerBeat)) >= 3)
        accepted = b.counters["accepted"]
        await relays["a"].inject_to_b(relays["a"].from_a[0])
        await wait_until(lambda: b.counters["dropped_replay"] == 1)
        # The same beat captured on LAN a and replayed onto LAN b is refused too: the LAN is signed.
        await relays["b"].inject_to_b(relays["a"].from_a[-1])
        await wait_until(lambda: b.counters["dropped_other_module"] == 1)
        await wait_until(lambda: b.counters["accepted"] > accepted + 2)  # real beats keep being believed
    assert b.counters["dropped_replay"] == 1


async def test_a_beat_altered_after_signing_is_dropped():
    port = free_port()
    a, b = service("A", port), service("B", port)
    async with running(a, b) as (relays, _):
        await wait_until(lambda: len(relays["a"].from_a) >= 1)
        relays["a"].cut = True
        forged = relays["a"].from_a[-1].replace(b'"generation":7', b'"generation":8')
        assert forged != relays["a"].from_a[-1]
        before = b.counters["accepted"]
        await relays["a"].inject_to_b(forged)
        await wait_until(lambda: b.counters["dropped_mac"] == 1)
        assert b.counters["accepted"] == before


async def test_losing_one_lan_is_reported_for_that_lan_only():
    port = free_port()
    a, b = service("A", port), service("B", port)
    async with running(a, b) as (relays, (_, rec_b)):
        await wait_until(lambda: all(b.links_alive().values()))
        relays["b"].cut = True
        await wait_until(lambda: not b.links_alive()["b"])
        await trio.sleep(2 * TIMEOUT)
        assert b.links_alive() == {"a": True, "b": False}
    downs = [e for e in rec_b.of(LinkChanged) if isinstance(e, LinkChanged) and not e.alive]
    assert downs == [LinkChanged("b", False)]
    assert rec_b.of(AllLost) == []


async def test_losing_every_lan_is_all_lost_and_a_lan_coming_back_is_reported():
    port = free_port()
    a, b = service("A", port), service("B", port)
    async with running(a, b) as (relays, (_, rec_b)):
        await wait_until(lambda: all(b.links_alive().values()))
        relays["a"].cut = relays["b"].cut = True
        await wait_until(lambda: len(rec_b.of(AllLost)) == 1)
        assert b.links_alive() == {"a": False, "b": False}
        relays["a"].cut = False
        await wait_until(lambda: b.links_alive()["a"])
    assert rec_b.of(AllLost) == [AllLost()]
    assert rec_b.events[-1] != AllLost()


async def test_nothing_heard_after_start_is_all_lost_once(autojump_clock):
    port = free_port()
    alone = service("B", port)
    rec = Recorder(alone)
    seen_at: list[float] = []
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(rec.run)
        await nursery.start(alone.run)
        await wait_until(lambda: bool(rec.of(AllLost)), within=3600)
        seen_at.append(trio.current_time() - start)
        await trio.sleep(10 * TIMEOUT)
        nursery.cancel_scope.cancel()
    assert rec.events == [AllLost()]
    assert TIMEOUT <= seen_at[0] < TIMEOUT + 0.05


def _fresh_beat(**changes: object) -> Beat:
    beat = Beat(
        module="am",
        node="node1",
        state="PRIM",
        color="green",
        uptodate=True,
        generation=1,
        sync_timestamp=None,
        seq=0,
        primary_since=None,
        role="prim",
        reason="",
        port=9010,
        boot_id="x",
        counter=1,
        sent_at=time.time(),
        link="a",
    )
    return dataclasses.replace(beat, **changes)  # type: ignore[arg-type]


async def test_a_beat_outside_the_replay_window_is_dropped():
    port = free_port()
    b = service("B", port, idents=("a",))
    async with running(b) as (relays, _):
        await relays["a"].inject_to_b(encode(_fresh_beat(sent_at=time.time() - 120), KEY))
        await wait_until(lambda: b.counters["dropped_replay"] == 1)
        await relays["a"].inject_to_b(encode(_fresh_beat(), KEY))
        await wait_until(lambda: b.counters["accepted"] == 1)


async def test_a_new_run_of_the_peer_is_believed_only_if_newer():
    port = free_port()
    b = service("B", port, idents=("a",))
    now = time.time()
    async with running(b) as (relays, _):
        await relays["a"].inject_to_b(encode(_fresh_beat(boot_id="run1", counter=50, sent_at=now - 5), KEY))
        await relays["a"].inject_to_b(encode(_fresh_beat(boot_id="run2", counter=1, sent_at=now - 1), KEY))
        await wait_until(lambda: b.counters["accepted"] == 2)
        # A beat captured from the earlier run, replayed now, is older than what run2 said.
        await relays["a"].inject_to_b(encode(_fresh_beat(boot_id="run1", counter=51, sent_at=now - 4), KEY))
        await wait_until(lambda: b.counters["dropped_replay"] == 1)
        assert b.counters["accepted"] == 2


names = st.text(max_size=20)
floats = st.floats(allow_nan=False, allow_infinity=False)
beats = st.builds(
    Beat,
    module=names,
    node=names,
    state=names,
    color=names,
    uptodate=st.booleans(),
    generation=st.integers(min_value=0, max_value=2**63),
    sync_timestamp=st.none() | floats,
    seq=st.integers(min_value=0, max_value=2**64),
    primary_since=st.none() | floats,
    role=names,
    reason=st.text(max_size=200),
    port=st.integers(min_value=0, max_value=65535),
    boot_id=names,
    counter=st.integers(min_value=0, max_value=2**63),
    sent_at=floats,
    link=names,
    mirroring=st.booleans(),
    resources=st.text(max_size=100),
)


@given(beats)
def test_encode_decode_round_trip(beat: Beat):
    assert decode(encode(beat, KEY), KEY) == beat


@given(beats, st.data())
def test_any_altered_byte_is_refused(beat: Beat, data: st.DataObject):
    packet = bytearray(encode(beat, KEY))
    i = data.draw(st.integers(min_value=0, max_value=len(packet) - 1))
    packet[i] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(BadBeat):
        decode(bytes(packet), KEY)


def test_a_signed_but_malformed_beat_is_a_format_error():
    from mirrorcore.heart import MAGIC, _mac

    body = MAGIC + b'{"module":"am"}'
    with pytest.raises(BadBeat) as e:
        decode(MAGIC + _mac(KEY, body) + body[len(MAGIC) :], KEY)
    assert e.value.kind == "format"
    with pytest.raises(BadBeat) as e:
        decode(b"hello", KEY)
    assert e.value.kind == "format"
