"""One daemon per module: wires heartbeats, the state machine, scripts, the VIP and HTTP.

The daemon owns no policy. Every input (a command, a heartbeat, a script that
finished) becomes an `fsm` event; `fsm.step` answers with the next state, the
actions to carry out and a sentence saying why; the daemon logs the sentence,
executes the actions and feeds their results back as events. One task consumes
the event channel, so the state machine sees one event at a time, in order.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import trio

from mirrorcore import api, control, fsm, heart, rfsctl, watch
from mirrorcore.config import ModuleConfig
from mirrorcore.modlog import ModuleLog
from mirrorcore.paths import Paths
from mirrorcore.rfs.mirror import Mirror, missing_tocheck
from mirrorcore.scripts import ScriptRunner
from mirrorcore.state import Durable, DurableStore
from mirrorcore.vip import VipManager

#: Commands the state machine decides on; everything else the daemon answers itself.
FSM_COMMANDS = ("prim", "second", "start", "stop", "restart", "stopstart", "swap", "primforce", "resetloop")

#: How long a new daemon waits for the previous one (just stopped) to release the module.
LOCK_WAIT_SECONDS = 10.0

#: How long a stopping daemon keeps announcing STOP so the peer reacts at once.
ANNOUNCE_STOP_SECONDS = 1.0

_Item = tuple[fsm.Event, trio.MemorySendChannel[fsm.Step] | None]


class Daemon:
    """The running module on this node."""

    def __init__(self, paths: Paths, config: ModuleConfig, key: bytes, *, exit_on_stop: bool) -> None:
        self.paths = paths
        self.config = config
        self.exit_on_stop = exit_on_stop
        self.log = ModuleLog(paths.log_dir(config.name), config.node)
        self.store = DurableStore(paths.state_dir(config.name))
        self.durable = self.store.load()
        failover = config.failover if self.durable.failover_override is None else self.durable.failover_override
        self.settings = fsm.Settings(
            node=config.node,
            peer=config.peer,
            failover=failover,
            defaultprim=config.defaultprim,
            maxloop=config.maxloop,
            loop_interval=config.loop_interval,
        )
        self.node = fsm.Node.initial(uptodate=self.durable.uptodate, generation=self.durable.generation)
        # What the heartbeats say: the node once its step's actions are carried out. The peer must not
        # act on a STOP before this node has removed its VIP and closed replication (a clean stop
        # waits there until the secondary has flushed everything).
        self.announced = self.node
        self.peer_beat: heart.Beat | None = None
        self.peer_alive = False
        self.vip = VipManager(config.vips)
        self.scripts = ScriptRunner(
            module=config.name,
            bin_dir=paths.bin_dir(config.name),
            log_dir=paths.log_dir(config.name),
            env=self._script_env(),
            nicestoptimeout=config.user.nicestoptimeout,
            forcestoptimeout=config.user.forcestoptimeout,
        )
        links = [
            heart.Link(
                ident=hb.ident,
                lan=hb.lan,
                local_addr=config.lan_addrs(hb.lan)[0],
                peer_addr=config.lan_addrs(hb.lan)[1],
            )
            for hb in config.heart.heartbeats
        ]
        self.heart = heart.HeartService(
            module=config.name,
            node=config.node,
            peer=config.peer,
            links=links,
            port=config.port,
            key=key,
            pulse=config.heart.pulse,
            timeout=config.heart.timeout,
            local=self._beat_fields,
        )
        self.mirror = (
            Mirror(paths, config, key, self.log, self._mirror_changed, self._worker_lost)
            if config.rfs is not None
            else None
        )
        self.rfsctl = rfsctl.RfsControl(self.mirror, config, paths, self.log)
        self.watch = watch.Watch(
            config, paths, self.log, self.vip, node=lambda: self.node, submit=self.submit, kick=self.heart.kick
        )
        self._events_send, self._events_recv = trio.open_memory_channel[_Item](256)
        self._nursery: trio.Nursery | None = None

    # ---- running -----------------------------------------------------------------------

    async def run(self, initial_command: str | None = None) -> None:
        """Runs the module until a `stop` ends it (auto-launched daemons) or it is cancelled.

        Args:
            initial_command: a command to carry out once listening (`daemon --start` at boot).
        """
        with _single_instance(self.paths.pidfile(self.config.name)):
            self.log.write(f"Daemon started (pid {os.getpid()}), {self.node.state.value}: {self.node.reason}")
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self.heart.run)
                    await nursery.start(self.watch.run)
                    nursery.start_soon(self._pump_heartbeats)
                    nursery.start_soon(self._event_loop)
                    nursery.start_soon(self.rfsctl.run, lambda: self.node, self.submit, self._save_sync_timestamp)
                    await nursery.start(api.serve, self.config.name, self.status, self.config.port)
                    await nursery.start(control.serve, self.paths.socket(self.config.name), self.handle)
                    if initial_command is not None:
                        reply = await self.handle(control.Request(cmd=initial_command, initiator="boot"))
                        self.log.write(f"Boot {initial_command}: {reply.message}", initiator="boot")
            finally:
                if self.mirror is not None:
                    with trio.CancelScope(shield=True):
                        await self.mirror.stop()
                self.store.save_last_status(self.status())
                self.log.write(f"Daemon exiting in state {self.node.state.value}")

    async def handle(self, request: control.Request) -> control.Reply:
        """Answers one control request from the CLI."""
        if request.cmd == "status":
            return control.Reply(ok=True, message=self.node.reason, status=self.status())
        if request.cmd == "failover":
            return self._set_failover(bool(request.args.get("on")), request.initiator)
        if request.cmd in watch.COMMANDS:
            return replace(self.watch.handle(request), status=self.status())
        if request.cmd in rfsctl.COMMANDS:
            return await self.rfsctl.handle(request)
        if request.cmd not in FSM_COMMANDS:
            return control.Reply(ok=False, message=f"unknown command {request.cmd!r}")
        if request.cmd in ("start", "prim", "primforce") and self.config.rfs is not None:
            missing = await trio.to_thread.run_sync(missing_tocheck, self.config.rfs)
            if missing:
                why = (
                    f"{request.cmd} refused: {', '.join(missing)} missing (a <tocheck> path): the replicated data "
                    f"is not all there (is its disk mounted?); fix it, then run `mirrorctl {request.cmd}` again"
                )
                self.log.write(why, level="E", initiator=request.initiator)
                return control.Reply(ok=False, message=why, status=self.status())
        fullsync = bool(request.args.get("fullsync", False))
        words = f"{request.cmd}{' fullsync' if fullsync else ''}"
        self.log.write(f"Action {words} called", initiator=request.initiator)
        event = fsm.Command(name=request.cmd, now=time.time(), initiator=request.initiator, fullsync=fullsync)
        step = await self.submit(event)
        if step.refused is not None:
            return control.Reply(ok=False, message=step.refused, status=self.status())
        return control.Reply(ok=True, message=step.reason, status=self.status())

    async def submit(self, event: fsm.Event) -> fsm.Step:
        """Feeds one event to the state machine, in turn with every other, and returns its step."""
        reply_send, reply_recv = trio.open_memory_channel[fsm.Step](1)
        await self._events_send.send((event, reply_send))
        return await reply_recv.receive()

    def status(self) -> dict[str, Any]:
        """The status object shared by `state --json`, `/api/state` and the heartbeats' readers."""
        node = self.node
        beat = self.peer_beat if self.peer_alive else None
        peer: dict[str, Any] = {"node": self.config.peer, "state": "UNKNOWN", "color": "red", "reason": "no heartbeat"}
        if beat is not None:
            peer = {
                "node": beat.node,
                "state": beat.state,
                "color": beat.color,
                "reason": beat.reason,
                "uptodate": beat.uptodate,
                "generation": beat.generation,
            }
        return {
            "module": self.config.name,
            "node": self.config.node,
            "state": node.state.value,
            "color": node.color.value,
            "reason": node.reason,
            "uptodate": node.uptodate,
            "generation": node.generation,
            "role": node.role.value,
            "failover": self.settings.failover,
            "primary_since": node.primary_since,
            "loop": {"count": len(node.loop_times), "maxloop": self.settings.maxloop},
            "heartbeats": self.heart.links_alive(),
            "heartbeat_counters": dict(self.heart.counters),
            "peer": peer,
            "pid": os.getpid(),
            "rfs": self.mirror.status() if self.mirror is not None else None,
            **self.watch.status(),
        }

    # ---- inputs ------------------------------------------------------------------------

    async def _pump_heartbeats(self) -> None:
        async for event in self.heart.events:
            if isinstance(event, heart.PeerBeat):
                self.peer_beat = event.beat
                self.peer_alive = True
                self.watch.peer_beat(event.beat)
                await self._events_send.send((fsm.PeerSeen(peer=_peer_view(event.beat), now=time.time()), None))
            elif isinstance(event, heart.LinkChanged):
                self.watch.link_changed(event.ident, event.alive)  # logs "Resource heartbeat.X set to ..."
            elif isinstance(event, heart.AllLost):
                self.peer_alive = False
                self.log.write(f"All heartbeats from {self.config.peer} lost", level="E", initiator="heart")
                self.watch.all_lost()
                assert self._nursery is not None
                self._nursery.start_soon(self._peer_lost)

    async def _peer_lost(self) -> None:
        """Every heartbeat is lost: ask the split-brain witness (if any) before telling the state machine."""
        witness = await self.watch.witness()
        if self.peer_alive:
            return  # heard again while asking: nothing is lost
        await self._events_send.send((fsm.PeerLost(now=time.time(), witness=witness), None))

    async def _event_loop(self) -> None:
        async for event, reply in self._events_recv:
            step = fsm.step(self.settings, self.node, event)
            if reply is not None:
                reply.send_nowait(step)
            if step.refused is not None:
                self.log.write(f"Refused: {step.refused}", level="E", initiator=_initiator(event))
                continue
            await self._apply(step, event)

    async def _apply(self, step: fsm.Step, event: fsm.Event) -> None:
        before = self.node
        self.node = step.node
        if fsm.is_primary(step.node) and not fsm.is_primary(before):
            # Taking the application is said at once: a peer deciding meanwhile must see it.
            self.announced = step.node
        self.watch.node_changed(before, step.node)
        moved = (before.state, before.color) != (step.node.state, step.node.color)
        if moved or before.reason != step.node.reason:
            self.log.write(
                f"{before.state.value} {before.color.value} -> {step.node.state.value} {step.node.color.value}: "
                f"{step.reason}",
                initiator=_initiator(event),
            )
        not_mounted: list[str] = []
        for action in step.actions:
            if not_mounted and isinstance(action, fsm.SetVip | fsm.RunScript):
                # start_prim (and the VIP) follow StartMirror: the application must not start on an
                # unreplicated copy. Its start fails instead, and the module stops (the peer may take over).
                if isinstance(action, fsm.RunScript):
                    detail = f"not run: replicated directory {', '.join(not_mounted)}"
                    done = fsm.ScriptDone(script=action.script, ok=False, detail=detail, now=time.time())
                    await self._events_send.send((done, None))
                continue
            if isinstance(action, fsm.StartMirror) and action.role == "primary" and self.mirror is not None:
                assert self._nursery is not None
                not_mounted = await self.mirror.start_primary(self._nursery)
                continue
            await self._execute(action)
        self.announced = self.node
        if moved:
            self.heart.kick()

    async def _execute(self, action: fsm.Action) -> None:
        assert self._nursery is not None
        if isinstance(action, fsm.RunScript):
            self._nursery.start_soon(self._run_script, action)
        elif isinstance(action, fsm.SetVip):
            await self._vip_call("set", self.vip.set)
        elif isinstance(action, fsm.UnsetVip):
            await self._vip_call("unset", self.vip.unset)
        elif isinstance(action, fsm.StartResync):
            if self.mirror is None:
                await self._events_send.send(
                    (fsm.ResyncDone(ok=True, detail="no replicated directories", now=time.time()), None)
                )
            else:
                done = self.mirror.sessions_done(after_break=action.after_break)
                self._nursery.start_soon(self._await_resync, self.mirror, done)
        elif isinstance(action, fsm.StartMirror) and self.mirror is not None:
            # The primary's StartMirror is carried out by the step loop, which needs its outcome.
            blocked = await self.rfsctl.start_secondary(action)
            if blocked is not None:
                await self._events_send.send((fsm.ResyncDone(ok=False, detail=blocked, now=time.time()), None))
        elif isinstance(action, fsm.OweSalvage) and self.mirror is not None:
            await self.rfsctl.owe_salvage(action.reason)
        elif isinstance(action, fsm.StopMirror) and self.mirror is not None:
            await self.mirror.stop()
        elif isinstance(action, fsm.SaveDurable):
            self.durable = replace(self.durable, uptodate=action.uptodate, generation=action.generation)
            await trio.to_thread.run_sync(self.store.save, self.durable)
        elif isinstance(action, fsm.Exit) and self.exit_on_stop:
            self._nursery.start_soon(self._exit_after_announcing)

    async def _await_resync(self, mirror: Mirror, sessions_done: list[int]) -> None:
        if await mirror.wait_synced(sessions_done):
            detail = "the primary's resync is complete: both copies are identical"
            await self._events_send.send((fsm.ResyncDone(ok=True, detail=detail, now=time.time()), None))

    async def _run_script(self, action: fsm.RunScript) -> None:
        result = await self.scripts.run(action.script, action.current.value, action.next.value, action.action)
        if not result.skipped:
            verdict = "succeeded" if result.ok else f"failed: {result.detail}"
            self.log.write(f"Script {action.script} {verdict}", level="I" if result.ok else "E", initiator="scripts")
        await self._events_send.send(
            (fsm.ScriptDone(script=action.script, ok=result.ok, detail=result.detail, now=time.time()), None)
        )

    async def _vip_call(self, what: str, call: Callable[[], None]) -> None:
        if not self.config.vips:
            return
        try:
            await trio.to_thread.run_sync(call)
        except OSError as exc:
            self.log.write(f"Could not {what} the virtual IP: {exc}", level="E", initiator="vip")
        else:
            addrs = ", ".join(a.addr for i in self.config.vips for a in i.addrs)
            self.log.write(f"Virtual IP {addrs} {what}", initiator="vip")

    async def _exit_after_announcing(self) -> None:
        self.heart.kick()
        await trio.sleep(min(ANNOUNCE_STOP_SECONDS, 3 * self.config.heart.pulse))
        assert self._nursery is not None
        # A command that arrived meanwhile (a `start` right after the `stop`) keeps us running.
        if self.node.state is fsm.State.STOP:
            self._nursery.cancel_scope.cancel()

    async def _save_sync_timestamp(self, now: float) -> None:
        """Both copies are known identical at `now` (SPEC: the sync timestamp is kept while PRIM/SECOND green)."""
        self.durable = replace(self.durable, sync_timestamp=now)
        await trio.to_thread.run_sync(self.store.save, self.durable)

    def _set_failover(self, on: bool, initiator: str | None) -> control.Reply:
        self.settings = replace(self.settings, failover=on)
        self.durable = replace(self.durable, failover_override=on)
        self.store.save(self.durable)
        self.log.write(f"Failover set {'on' if on else 'off'}", initiator=initiator)
        return control.Reply(ok=True, message=f"failover is {'on' if on else 'off'}", status=self.status())

    # ---- outputs -----------------------------------------------------------------------

    def _beat_fields(self) -> dict[str, Any]:
        node = self.announced
        return {
            "state": node.state.value,
            "color": node.color.value,
            "uptodate": node.uptodate,
            "generation": node.generation,
            "sync_timestamp": self.durable.sync_timestamp,
            "seq": 0,
            "primary_since": node.primary_since,
            "role": node.role.value,
            "reason": node.reason,
            "port": self.config.port,
            "mirroring": self.mirror is not None and self.mirror.mirroring,
            "resources": heart.pack_resources(self.watch.resources.snapshot()),
        }

    def _mirror_changed(self) -> None:
        """Replication started or stopped streaming: tell the peer now, not at the next pulse."""
        self.heart.kick()

    def _worker_lost(self, why: str, mounted: bool) -> None:
        """A replication worker died and was replaced. Mounted again: the application restarts on the
        new mount (its open files were on the dead one), counted against maxloop like a rule's restart.
        Not mounted: the module stops (the peer takes over), rather than run on an unreplicated copy."""
        if self._nursery is not None:
            self._nursery.start_soon(self._act_on_lost_worker, why, mounted)

    async def _act_on_lost_worker(self, why: str, mounted: bool) -> None:
        action = "restart" if mounted else "stop"
        step = await self.submit(fsm.Command(action, time.time(), initiator="rfs", detail=why))
        if step.refused is not None:
            self.log.write(f"{action} after {why} refused: {step.refused}", level="E", initiator="rfs")

    def _script_env(self) -> dict[str, str]:
        env = dict(self.config.user.vars)
        env["MODULE"] = self.config.name
        env["NODE"] = self.config.node
        return env


def _peer_view(beat: heart.Beat) -> fsm.PeerView:
    return fsm.PeerView(
        node=beat.node,
        state=fsm.State(beat.state),
        color=fsm.Color(beat.color),
        uptodate=beat.uptodate,
        generation=beat.generation,
        role=fsm.Role(beat.role),
        primary_since=beat.primary_since,
        mirroring=beat.mirroring,
    )


def _initiator(event: fsm.Event) -> str | None:
    if isinstance(event, fsm.Command):
        return event.initiator
    if isinstance(event, fsm.PeerSeen | fsm.PeerLost):
        return "heart"
    if isinstance(event, fsm.ScriptDone):
        return event.script
    if isinstance(event, fsm.RuleCleared):
        return event.rule
    return "daemon"


class _single_instance:
    """Holds an exclusive lock on the module's pid file while the daemon runs."""

    def __init__(self, pidfile: os.PathLike[str]) -> None:
        self.pidfile = pidfile
        self.fd = -1

    def __enter__(self) -> None:
        os.makedirs(os.path.dirname(self.pidfile), exist_ok=True)
        self.fd = os.open(self.pidfile, os.O_RDWR | os.O_CREAT, 0o644)
        # A daemon that was just stopped may still be unmounting and closing: give it a moment.
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                other = os.read(self.fd, 32).decode().strip() or "?"
                os.close(self.fd)
                raise RuntimeError(
                    f"the module's daemon already runs (pid {other}); use `mirrorctl stop` first"
                ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


__all__ = ["Daemon", "Durable"]
