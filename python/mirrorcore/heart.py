"""UDP heartbeats between the two nodes of a module, one socket per LAN, authenticated (SPEC §4, §5).

Each beat carries the sender's state and is signed with the cluster key (HMAC-SHA256). A beat is
believed only if its MAC is right, it comes from the peer node of the same module on the LAN it
was sent for, it is newer than every beat already accepted from that peer on that LAN, and its
send time is within `REPLAY_WINDOW` of our clock. A LAN is alive while beats keep arriving on it
within `timeout`; when every LAN is down the service says `AllLost`, which the state machine
reads as "the peer is gone".

Wire format: ``MAGIC || HMAC-SHA256(key, MAGIC || json) || json`` where json is the compact JSON
object of the `Beat`'s fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import trio

log = logging.getLogger(__name__)

MAGIC = b"MCB1"
_MAC_LEN = 32
REPLAY_WINDOW = 60.0
"""Seconds a beat's `sent_at` may differ from our wall clock; older copies are refused as replays."""
_MAX_REASON = 1000  # keeps a beat well inside one UDP datagram


@dataclass(frozen=True)
class Beat:
    """One heartbeat: what a node says about itself.

    `link` names the heartbeat LAN (its ident) the beat was sent on; it is signed, so a beat
    captured on one LAN cannot be replayed on another to fake that LAN alive.
    """

    module: str
    node: str
    state: str
    color: str
    uptodate: bool
    generation: int
    sync_timestamp: float | None
    seq: int
    primary_since: float | None
    role: str
    reason: str
    port: int
    boot_id: str
    counter: int
    sent_at: float
    link: str = ""
    mirroring: bool = False  # a primary whose every replicated directory streams to the peer
    resources: str = ""  # the sender's local resources, `pack_resources` form: its peer's `remote.` rules read them


@dataclass(frozen=True)
class BeatState:
    """The part of a `Beat` that the daemon supplies; the service fills in the rest."""

    state: str = "STOP"
    color: str = "red"
    uptodate: bool = False
    generation: int = 0
    sync_timestamp: float | None = None
    seq: int = 0
    primary_since: float | None = None
    role: str = "none"
    reason: str = ""
    mirroring: bool = False
    resources: str = ""


# Resources travel as "tcp.db=u proc.app=d": one letter per value keeps a beat in one datagram.
_VALUE_LETTER = {"init": "i", "up": "u", "down": "d", "unknown": "n"}
_LETTER_VALUE = {letter: value for value, letter in _VALUE_LETTER.items()}
_MAX_RESOURCES = 4000


def pack_resources(values: Mapping[str, str]) -> str:
    """`{"tcp.db": "up"}` -> `"tcp.db=u"`, for `Beat.resources`; entries past a few kilobytes are left out."""
    out: list[str] = []
    size = 0
    for name, value in sorted(values.items()):
        entry = f"{name}={_VALUE_LETTER.get(value, 'n')}"
        size += len(entry) + 1
        if size > _MAX_RESOURCES or " " in name:
            break
        out.append(entry)
    return " ".join(out)


def unpack_resources(text: str) -> dict[str, str]:
    """The inverse of `pack_resources`; malformed entries are dropped (a peer of another version)."""
    values: dict[str, str] = {}
    for entry in text.split():
        name, eq, letter = entry.rpartition("=")
        if eq and name and letter in _LETTER_VALUE:
            values[name] = _LETTER_VALUE[letter]
    return values


class BadBeat(Exception):
    """A datagram that is not a valid beat: `kind` is "mac" (not signed with our key) or "format"."""

    def __init__(self, kind: Literal["mac", "format"], what: str) -> None:
        super().__init__(f"{kind}: {what}")
        self.kind: Literal["mac", "format"] = kind
        self.what = what


_FIELDS = {f.name: f for f in dataclasses.fields(Beat)}
_STR = {"module", "node", "state", "color", "role", "reason", "boot_id", "link", "resources"}
_INT = {"generation", "seq", "port", "counter"}
_OPT_FLOAT = {"sync_timestamp", "primary_since"}


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def encode(beat: Beat, key: bytes) -> bytes:
    """Serializes and signs a beat.

    Args:
        beat: the beat to send.
        key: the cluster key.

    Returns:
        The datagram.
    """
    body = MAGIC + json.dumps(dataclasses.asdict(beat), separators=(",", ":"), allow_nan=False).encode()
    return MAGIC + _mac(key, body) + body[len(MAGIC) :]


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def _field(data: dict[str, object], name: str) -> object:
    if name not in data:
        raise BadBeat("format", f"missing field {name!r}")
    value = data[name]
    if name in _STR:
        ok = isinstance(value, str)
    elif name in _INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif name in ("uptodate", "mirroring"):
        ok = isinstance(value, bool)
    elif name == "sent_at" or (name in _OPT_FLOAT and value is not None):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value  # type: ignore[arg-type]
    else:
        ok = name in _OPT_FLOAT
    if not ok:
        raise BadBeat("format", f"field {name!r} has a bad value {value!r}")
    return value


def decode(data: bytes, key: bytes) -> Beat:
    """Verifies and parses a datagram.

    Args:
        data: the datagram as received.
        key: the cluster key.

    Returns:
        The beat.

    Raises:
        BadBeat: kind "mac" if it is not signed with `key` (or was altered), "format" if it is
            signed but not a well-formed beat.
    """
    if len(data) < len(MAGIC) + _MAC_LEN or not data.startswith(MAGIC):
        raise BadBeat("format", "not a mirrorcore heartbeat")
    mac = data[len(MAGIC) : len(MAGIC) + _MAC_LEN]
    payload = data[len(MAGIC) + _MAC_LEN :]
    if not hmac.compare_digest(mac, _mac(key, MAGIC + payload)):
        raise BadBeat("mac", "bad MAC (different cluster key, or altered in transit)")
    try:
        obj = json.loads(payload, parse_constant=_reject_constant)
    except ValueError as e:  # includes UnicodeDecodeError
        raise BadBeat("format", f"bad JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadBeat("format", "not a JSON object")
    # Unknown fields are ignored so that a newer peer can add some without breaking us.
    values = {name: _field(obj, name) for name, f in _FIELDS.items() if name in obj or f.default is dataclasses.MISSING}
    return Beat(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Link:
    """One heartbeat LAN: our address and the peer's on it."""

    ident: str
    lan: str
    local_addr: str
    peer_addr: str


@dataclass(frozen=True)
class PeerBeat:
    """A valid beat arrived from the peer."""

    beat: Beat
    ident: str


@dataclass(frozen=True)
class LinkChanged:
    """A heartbeat LAN came up (a beat arrived) or went down (none within `timeout`)."""

    ident: str
    alive: bool


@dataclass(frozen=True)
class AllLost:
    """No heartbeat LAN is alive: the peer is gone or unreachable."""


HeartEvent = PeerBeat | LinkChanged | AllLost


COUNTERS = ("received", "accepted", "dropped_mac", "dropped_replay", "dropped_format", "dropped_other_module")
"""Names of `HeartService.counters`: datagrams received, beats believed, and why the others were refused."""

_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(BeatState))


@dataclass
class _Seen:
    boot_id: str
    sent_at: float
    counter: int


class HeartService:
    """Sends our beats and watches the peer's on every heartbeat LAN of one module.

    Run it with `await nursery.start(service.run)`; read `service.events` for `HeartEvent`s.
    """

    def __init__(
        self,
        module: str,
        node: str,
        peer: str,
        links: Sequence[Link],
        port: int,
        key: bytes,
        pulse: float,
        timeout: float,
        *,
        local: Callable[[], BeatState | Mapping[str, Any]] = BeatState,
    ) -> None:
        """Prepares the service; nothing is bound until `run`.

        Args:
            module: module name; beats of other modules are refused.
            node: our node name.
            peer: the peer node's name; beats from any other node are refused.
            links: one per heartbeat LAN (idents must be unique).
            port: UDP port, the same on both nodes and every LAN.
            key: the cluster key.
            pulse: seconds between beats.
            timeout: a LAN is down when no valid beat arrived on it for this long.
            local: returns our current state for each beat sent, as a `BeatState` or a mapping of its
                field names (extra keys are ignored); may be replaced at any time.
        """
        if len({link.ident for link in links}) != len(links) or not links:
            raise ValueError("heartbeat links must be at least one, with unique idents")
        self.module = module
        self.node = node
        self.peer = peer
        self.links = tuple(links)
        self.port = port
        self.key = key
        self.pulse = pulse
        self.timeout = timeout
        self.local = local
        self.boot_id = uuid.uuid4().hex
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._counter = 0
        self._send_events, self.events = trio.open_memory_channel[HeartEvent](math.inf)
        self._alive = {link.ident: False for link in self.links}
        self._last_heard: dict[str, float] = {}
        self._seen: dict[str, _Seen] = {}
        self._kicked = trio.Event()
        self._woken = trio.Event()
        self._all_lost_said = False

    def links_alive(self) -> dict[str, bool]:
        """Whether each heartbeat LAN (by ident) currently hears the peer."""
        return dict(self._alive)

    def kick(self) -> None:
        """Sends a beat on every LAN now rather than at the next pulse (our state just changed)."""
        self._kicked.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Binds one UDP socket per LAN, then sends, receives and watches until cancelled.

        Raises:
            OSError: a socket cannot be bound (address not on this host, port in use).
        """
        socks: list[trio.socket.SocketType] = []
        try:
            for link in self.links:
                family = (
                    trio.socket.AF_INET6 if ipaddress.ip_address(link.local_addr).version == 6 else trio.socket.AF_INET
                )
                sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
                socks.append(sock)
                try:
                    await sock.bind((link.local_addr, self.port))
                except OSError as e:
                    raise OSError(
                        e.errno,
                        f"heartbeat {link.ident!r}: cannot bind UDP {link.local_addr}:{self.port} ({e.strerror}); "
                        "check that the address is configured on this host and the port is free",
                    ) from e
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for link, sock in zip(self.links, socks, strict=True):
                    nursery.start_soon(self._receive, link, sock)
                nursery.start_soon(self._send_loop, socks)
                nursery.start_soon(self._watch, started)
                task_status.started()
        finally:
            for sock in socks:
                sock.close()

    def _next_beat(self, link: Link) -> Beat:
        fields = self.local()
        state = (
            BeatState(**{k: fields[k] for k in _STATE_FIELDS if k in fields}) if isinstance(fields, Mapping) else fields
        )
        self._counter += 1
        return Beat(
            module=self.module,
            node=self.node,
            state=state.state,
            color=state.color,
            uptodate=state.uptodate,
            generation=state.generation,
            sync_timestamp=state.sync_timestamp,
            seq=state.seq,
            primary_since=state.primary_since,
            role=state.role,
            reason=state.reason[:_MAX_REASON],
            port=self.port,
            boot_id=self.boot_id,
            counter=self._counter,
            sent_at=time.time(),  # wall clock: the peer compares it with its own for anti-replay
            link=link.ident,
            mirroring=state.mirroring,
            resources=state.resources,
        )

    async def _send_loop(self, socks: list[trio.socket.SocketType]) -> None:
        while True:
            self._kicked = trio.Event()
            for link, sock in zip(self.links, socks, strict=True):
                data = encode(self._next_beat(link), self.key)
                try:
                    await sock.sendto(data, (link.peer_addr, self.port))
                except OSError as e:
                    # A LAN that is down must not stop the others; the peer will see it as down.
                    log.debug("heartbeat %s: send to %s failed: %s", link.ident, link.peer_addr, e)
            with trio.move_on_after(self.pulse):
                await self._kicked.wait()

    async def _receive(self, link: Link, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data, addr = await sock.recvfrom(65536)
            except OSError as e:
                # ICMP errors from earlier sends surface here (e.g. ECONNREFUSED while the peer is stopped).
                log.debug("heartbeat %s: receive error: %s", link.ident, e)
                continue
            self.counters["received"] += 1
            beat = self._verify(link, data, addr[0])
            if beat is None:
                continue
            self.counters["accepted"] += 1
            self._last_heard[link.ident] = trio.current_time()
            if not self._alive[link.ident]:
                self._alive[link.ident] = True
                self._all_lost_said = False
                self._send_events.send_nowait(LinkChanged(link.ident, True))
                self._woken.set()
            self._send_events.send_nowait(PeerBeat(beat, link.ident))

    def _verify(self, link: Link, data: bytes, source: str) -> Beat | None:
        try:
            beat = decode(data, self.key)
        except BadBeat as e:
            if e.kind == "mac":
                self.counters["dropped_mac"] += 1
            else:
                self.counters["dropped_format"] += 1
            log.debug("heartbeat %s: dropped datagram from %s: %s", link.ident, source, e)
            return None
        if (
            beat.module != self.module
            or beat.node != self.peer
            or beat.link != link.ident
            or ipaddress.ip_address(source) != ipaddress.ip_address(link.peer_addr)
        ):
            self.counters["dropped_other_module"] += 1
            log.debug("heartbeat %s: dropped beat of %s/%s from %s", link.ident, beat.module, beat.node, source)
            return None
        if not self._fresh(link.ident, beat):
            self.counters["dropped_replay"] += 1
            log.debug("heartbeat %s: dropped replayed or stale beat %s#%d", link.ident, beat.boot_id, beat.counter)
            return None
        return beat

    def _fresh(self, ident: str, beat: Beat) -> bool:
        if abs(time.time() - beat.sent_at) > REPLAY_WINDOW:
            return False
        seen = self._seen.get(ident)
        if seen is not None:
            if beat.boot_id == seen.boot_id:
                # Within one run of the peer its counter orders beats; its wall clock may step back.
                if beat.counter <= seen.counter:
                    return False
            elif beat.sent_at <= seen.sent_at:
                # A different run of the peer is believed only if it is newer than the last one seen,
                # so beats captured from an earlier run cannot be replayed.
                return False
        self._seen[ident] = _Seen(beat.boot_id, beat.sent_at, beat.counter)
        return True

    async def _watch(self, started: float) -> None:
        heard_any = False
        while True:
            now = trio.current_time()
            for ident, alive in self._alive.items():
                if alive and now - self._last_heard[ident] >= self.timeout:
                    self._alive[ident] = False
                    self._send_events.send_nowait(LinkChanged(ident, False))
            heard_any = heard_any or any(self._alive.values())
            if (
                not any(self._alive.values())
                and not self._all_lost_said
                and (heard_any or now - started >= self.timeout)
            ):
                self._all_lost_said = True
                self._send_events.send_nowait(AllLost())
            deadlines = [self._last_heard[i] + self.timeout for i, alive in self._alive.items() if alive]
            if not heard_any and not self._all_lost_said:
                deadlines.append(started + self.timeout)
            self._woken = trio.Event()
            if deadlines:
                with trio.move_on_at(min(deadlines)):
                    await self._woken.wait()
            else:
                await self._woken.wait()
