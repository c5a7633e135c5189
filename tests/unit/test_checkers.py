"""Checkers against real things on this host: a TCP listener, loopback ICMP, processes, a control socket."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from mirrorcore import control
from mirrorcore.checkers import (
    CustomChecker,
    ErrdWatcher,
    ModuleChecker,
    PingChecker,
    ProcMatch,
    Resources,
    TcpChecker,
    count_processes,
    reachable,
    witness_reachable,
)
from mirrorcore.config import CustomCheck, Errd, ModuleCheck, PingCheck, Proc, SplitBrainCheck, TcpCheck


class State:
    """The module state a checker sees; tests change it at will."""

    def __init__(self, value: str = "PRIM") -> None:
        self.value = value

    def __call__(self) -> str:
        return self.value


async def until(res: Resources, name: str, value: str, within: float) -> float:
    """Waits until `name` has `value`; returns how long that took."""
    start = trio.current_time()
    with trio.fail_after(within):
        while (entry := res.get(name)) is None or entry.value != value:
            await res.changed(res.version)
    return trio.current_time() - start


async def eventually(predicate: Callable[[], bool], within: float) -> None:
    """Polls something outside trio (a file, a process) until it holds."""
    with trio.fail_after(within):
        while True:
            if predicate():
                return
            await trio.sleep(0.05)


# ---- tcp ---------------------------------------------------------------------------------


async def test_tcp_is_up_while_the_port_answers_and_down_soon_after_it_closes() -> None:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    check = TcpCheck("db", "prim", "127.0.0.1", port, interval=0.2, timeout=0.5, action="restart")
    res, state = Resources(), State("PRIM")
    async with trio.open_nursery() as nursery:
        await nursery.start(TcpChecker(check, state).run, res)
        await until(res, "tcp.db", "up", 5)
        await listener.aclose()
        took = await until(res, "tcp.db", "down", 5)
        assert took <= check.interval + check.timeout + 0.3
        state.value = "SECOND"  # when=prim: not watched on the secondary
        await until(res, "tcp.db", "unknown", 2)
        nursery.cancel_scope.cancel()


async def test_tcp_to_a_port_nobody_listens_on_is_down() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free a moment ago, and closed again: refused
    check = TcpCheck("x", "both", "127.0.0.1", port, interval=10, timeout=0.5, action="restart")
    res = Resources()
    async with trio.open_nursery() as nursery:
        await nursery.start(TcpChecker(check, State("ALONE")).run, res)
        await until(res, "tcp.x", "down", 2)
        nursery.cancel_scope.cancel()


# ---- ping --------------------------------------------------------------------------------


@pytest.mark.root
async def test_ping_of_the_loopback_answers() -> None:
    need_root("ICMP echo needs a raw socket here (net.ipv4.ping_group_range excludes us)")
    assert await reachable(["127.0.0.1"], 2) is True
    assert await reachable(["::1"], 2) is True
    check = PingCheck("lo", "pre", ("127.0.0.1",), interval=0.2, timeout=1, action="wait")
    res = Resources()
    async with trio.open_nursery() as nursery:
        await nursery.start(PingChecker(check, State("WAIT")).run, res)
        await until(res, "ping.lo", "up", 3)
        nursery.cancel_scope.cancel()


@pytest.mark.root
async def test_the_split_brain_witness_is_reached_by_ping_or_by_a_program(tmp_path: Path) -> None:
    need_root("ICMP echo needs a raw socket here")
    assert await witness_reachable(SplitBrainCheck("w", "ping", ("127.0.0.1",))) is True
    assert await witness_reachable(SplitBrainCheck("w", "/bin/true", ())) is True
    assert await witness_reachable(SplitBrainCheck("w", "false", ()), bin_dir=Path("/bin")) is False
    assert await witness_reachable(SplitBrainCheck("w", str(tmp_path / "missing"), ())) is False


def need_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"needs root: {why} (CI runs as root; deselect with -m 'not root')")


# ---- errd --------------------------------------------------------------------------------


@pytest.fixture
def sleeper(tmp_path: Path) -> tuple[str, Path]:
    """A copy of `sleep` under a name no other process on this host has."""
    name = f"mcsl{os.getpid() % 100000}"
    exe = tmp_path / name
    shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
    return name, exe


def start(exe: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(exe), *args])


def test_count_processes_by_name_nameregex_and_argregex(sleeper: tuple[str, Path]) -> None:
    name, exe = sleeper
    token = f"{os.getpid()}.4242"
    procs = [start(exe, "1000"), start(exe, token)]
    try:
        counts = count_processes(
            [
                ProcMatch(name),
                ProcMatch("x", nameregex=f"{name[:4]}.*"),
                ProcMatch("x", argregex=rf"\b{token}\b"),
                ProcMatch("x", argregex="^no such command line$"),
            ]
        )
        assert counts == [2, 2, 1, 0]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert count_processes([ProcMatch(name)]) == [0]


def test_a_zombie_does_not_count(sleeper: tuple[str, Path]) -> None:
    name, exe = sleeper
    p = start(exe, "1000")
    try:
        p.kill()
        for _ in range(100):  # killed, not reaped yet: a zombie
            if _proc_state(p.pid) == "Z":
                break
            time.sleep(0.01)
        assert _proc_state(p.pid) == "Z"
        assert count_processes([ProcMatch(name)]) == [0]
    finally:
        p.wait()


async def test_errd_sets_down_when_the_process_dies_and_watches_only_in_its_class(
    sleeper: tuple[str, Path],
) -> None:
    name, exe = sleeper
    errd = Errd(0.2, (Proc(name, atleast=1, atmax=1, action="restart", cls="prim"),))
    res, state = Resources(), State("PRIM")
    resource = f"proc.{name}"
    first = start(exe, "1000")
    second: subprocess.Popen[bytes] | None = None
    try:
        async with trio.open_nursery() as nursery:
            watcher = ErrdWatcher(errd, state)
            await nursery.start(watcher.run, res)
            await until(res, resource, "up", 3)
            second = start(exe, "1000")  # more than atmax
            await until(res, resource, "down", 3)
            second.kill()
            second.wait()
            await until(res, resource, "up", 3)
            first.kill()
            first.wait()
            took = await until(res, resource, "down", 3)
            assert took < 1
            entry = res.get(resource)
            assert entry is not None
            assert entry.by == "errd"
            state.value = "SECOND"  # class=prim: not watched on the secondary
            await until(res, resource, "unknown", 3)
            nursery.cancel_scope.cancel()
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


async def test_errd_looks_at_once_when_it_becomes_active(sleeper: tuple[str, Path]) -> None:
    name, exe = sleeper
    errd = Errd(3600, (Proc(name, atleast=1, atmax=None, action="restart", cls="prim"),))
    res, state = Resources(), State("WAIT")  # start_prim still running
    p = start(exe, "1000")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(ErrdWatcher(errd, state).run, res)
            await until(res, f"proc.{name}", "unknown", 2)
            state.value = "ALONE"  # start_prim returned
            took = await until(res, f"proc.{name}", "up", 3)
            assert took < 2  # not an hour (polltimer)
            nursery.cancel_scope.cancel()
    finally:
        p.kill()
        p.wait()


# ---- custom ------------------------------------------------------------------------------


async def test_custom_runs_its_program_while_active_and_stops_it_after(tmp_path: Path) -> None:
    out = tmp_path / "env"
    script = tmp_path / "check.sh"
    script.write_text(f'#!/bin/sh\necho "$MIRRORCORE_MODULE $MIRRORCORE_RESOURCE $1 $$" > {out}\nexec sleep 1000\n')
    script.chmod(0o755)
    check = CustomCheck("app", "prim", "check.sh", ("arg1",), "restart")
    res, state = Resources(), State("PRIM")
    checker = CustomChecker(check, state, module="AM", bin_dir=tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(checker.run, res)
        await eventually(lambda: out.exists() and bool(out.read_text().strip()), 5)
        module, resource, arg, pid = out.read_text().split()
        assert (module, resource, arg) == ("AM", "custom.app", "arg1")
        # the program reports through `mirrorctl set`, which the daemon turns into Resources.set
        assert res.set("custom.app", "down", by="check.sh") is True
        entry = res.get("custom.app")
        assert entry is not None
        assert (entry.value, entry.by) == ("down", "check.sh")
        state.value = "SECOND"
        await until(res, "custom.app", "unknown", 3)
        await eventually(lambda: _proc_state(int(pid)) in ("Z", "gone"), 8)  # SIGTERM to the program
        nursery.cancel_scope.cancel()
    assert checker.runs == 1


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


async def test_a_custom_program_that_exits_sets_down_and_is_started_again(tmp_path: Path) -> None:
    check = CustomCheck("app", "both", sys.executable, ("-c", "raise SystemExit(3)"), "restart")
    res = Resources()
    checker = CustomChecker(check, State("SECOND"), module="AM", bin_dir=tmp_path, restart_delay=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(checker.run, res)
        await until(res, "custom.app", "down", 5)
        await eventually(lambda: checker.runs >= 2, 5)
        nursery.cancel_scope.cancel()


# ---- module ------------------------------------------------------------------------------


async def test_module_checker_follows_the_other_modules_state_on_its_control_socket(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "other.sock"
    status = {"state": "PRIM", "color": "green"}

    async def handle(request: control.Request) -> control.Reply:
        assert request.cmd == "status"
        return control.Reply(ok=True, message="", status=dict(status))

    check = ModuleCheck("other", "other", "pre", "wait")
    res = Resources()
    checker = ModuleChecker(check, State("WAIT"), socket=sock, interval=0.1, timeout=2)
    async with trio.open_nursery() as nursery:
        server = trio.CancelScope()

        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with server:
                await control.serve(sock, handle, task_status=task_status)

        await nursery.start(serve)
        await nursery.start(checker.run, res)
        await until(res, "module.other", "up", 5)
        status["color"] = "orange"  # resynchronizing, scripts running: not ready
        await until(res, "module.other", "down", 5)
        status.update(state="SECOND", color="green")
        await until(res, "module.other", "up", 5)
        status["state"] = "WAIT"
        await until(res, "module.other", "down", 5)
        status["state"] = "ALONE"
        await until(res, "module.other", "up", 5)
        server.cancel()  # the other daemon stops
        await until(res, "module.other", "down", 5)
        nursery.cancel_scope.cancel()
