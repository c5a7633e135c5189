"""errd `<proc action="/path/to/handler">`: the handler runs instead of an action, with the proc's name
and the state as arguments and the module's environment, once per down episode, without counting
against maxloop, and its outcome is in the module log (real processes, real handler, tmp dirs)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import trio
from test_config import make_paths

from mirrorcore import fsm
from mirrorcore.checkers import default_rules, describe
from mirrorcore.config import ModuleConfig, load_module
from mirrorcore.modlog import ModuleLog
from mirrorcore.paths import Paths
from mirrorcore.vip import VipManager
from mirrorcore.watch import Watch

HANDLER = """#!/bin/sh
echo "handler $*"
echo "$* $MODULE $NODE $RESOURCE $COUNT $SERVICES" >> {marker}
{tail}
"""


def config(tmp_path: Path, token: str, handler_tail: str = "exit 3", handler_timeout: str = "5s") -> ModuleConfig:
    handler = tmp_path / "handlers" / "on_app_down"
    handler.parent.mkdir(parents=True)
    handler.write_text(HANDLER.format(marker=tmp_path / "marker", tail=handler_tail))
    handler.chmod(0o755)
    xml = f"""<safe><service>
      <heart><heartbeat name="default"/></heart>
      <user><var name="SERVICES" value="postgresql"/></user>
      <errd polltimer="100ms">
        <proc name="app" argregex="{token}" action="{handler}" handler_timeout="{handler_timeout}"/>
      </errd>
    </service></safe>"""
    paths = make_paths(tmp_path, xml)
    paths.bin_dir("AM").mkdir(parents=True)
    return load_module(paths, "AM", node="node1")


class Harness:
    def __init__(self, tmp_path: Path, **kw: str) -> None:
        self.tmp_path = tmp_path
        self.token = f"app-{uuid.uuid4().hex}"
        self.cfg = config(tmp_path, self.token, **kw)
        paths = Paths(etc=tmp_path / "etc", lib=tmp_path / "lib", log=tmp_path / "log", run=tmp_path / "run")
        self.node = fsm.Node.initial(True, 3).but(state=fsm.State.ALONE, color=fsm.Color.GREEN, peer_lost=True)
        self.events: list[fsm.Event] = []
        self.log = ModuleLog(paths.log_dir("AM"), "node1")
        self.watch = Watch(
            self.cfg, paths, self.log, VipManager(()), node=lambda: self.node, submit=self.submit, kick=lambda: None
        )

    async def submit(self, event: fsm.Event) -> fsm.Step:
        self.events.append(event)
        raise AssertionError(f"a handler's rule gave the state machine {event}")

    def app(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", self.token])

    def marker(self) -> list[str]:
        path = self.tmp_path / "marker"
        return path.read_text().splitlines() if path.exists() else []

    def module_log(self) -> str:
        return self.log.path.read_text() if self.log.path.exists() else ""


async def until(what: str, check: Callable[[], object], seconds: float = 10) -> None:
    deadline = trio.current_time() + seconds
    while not check():
        if trio.current_time() > deadline:
            raise AssertionError(f"{what}: not within {seconds:g}s")
        await trio.sleep(0.05)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


def test_the_default_rule_of_a_proc_with_a_handler_has_the_handler_as_its_action(tmp_path: Path) -> None:
    cfg = config(tmp_path, "x")
    assert cfg.errd is not None
    (rule,) = default_rules(cfg.errd, cfg.checks, cfg.vips)
    handler = str(tmp_path / "handlers/on_app_down")
    assert (rule.label, describe(rule.expr), rule.action) == ("proc_app_down", "proc.app == down", handler)


async def test_a_dead_process_runs_its_handler_once_per_episode_and_not_as_a_command(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    handler = tmp_path / "handlers/on_app_down"
    app = h.app()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(h.watch.run)
            await until("proc.app up", lambda: h.watch.resources.snapshot()["proc.app"] == "up")
            kill(app)
            await until("the handler's exit in the module log", lambda: "Handler of proc.app:" in h.module_log())
            assert h.marker() == ["app ALONE AM node1 proc.app 0 postgresql"]
            log = h.module_log()
            assert "[proc_app_down] Rule proc_app_down (proc.app == down) held: proc.app is down; action " in log
            assert f"[proc_app_down] Handler {handler} of proc.app started (app ALONE; 0 process(es) running)" in log
            assert (
                f" E node1 [proc_app_down] Handler of proc.app: {handler} exited with code 3: handler app ALONE" in log
            )
            assert f"(output in {tmp_path / 'log/AM/script.log'})" in log
            assert "on_app_down app ALONE" in (tmp_path / "log/AM/script.log").read_text()
            last = h.watch.status()["last_rule"]
            assert (last["rule"], last["action"], last["outcome"]) == (
                "proc_app_down",
                str(handler),
                "handler exited with code 3",
            )
            assert h.events == []  # not a command: nothing counted against maxloop

            await trio.sleep(0.5)  # five more polls, still down: the same episode
            assert len(h.marker()) == 1
            app = h.app()  # back up, then down again: a new episode
            await until("proc.app up again", lambda: h.watch.resources.snapshot()["proc.app"] == "up")
            kill(app)
            await until("the handler run again", lambda: len(h.marker()) == 2)
            await until("its second exit logged", lambda: h.module_log().count("Handler of proc.app:") == 2)
            nursery.cancel_scope.cancel()
    finally:
        if app.poll() is None:
            kill(app)


async def test_a_handler_past_its_timeout_is_killed_and_that_is_logged(tmp_path: Path) -> None:
    h = Harness(tmp_path, handler_tail="sleep 30", handler_timeout="300ms")
    assert h.cfg.errd is not None
    (proc,) = h.cfg.errd.procs
    with trio.fail_after(5):
        outcome = await h.watch.handlers.run(proc, "PRIM", 0)
    assert outcome == "handler killed (signal 9)"
    assert h.marker() == ["app PRIM AM node1 proc.app 0 postgresql"]
    assert (
        f"Handler of proc.app: {proc.handler} killed after its time limit of 0.3s: handler app PRIM" in h.module_log()
    )
