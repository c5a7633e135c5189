"""watch.py, the daemon's side of checkers and rules, without a daemon: a fired rule becomes a command
named after it, fires again only once its action is over, stale values go unknown when the state
changes, and get/set/checker answer with what to do. (tests/cluster/test_lab_checkers.py runs it for real.)"""

from __future__ import annotations

from pathlib import Path

from test_rules_runtime import module_config

from mirrorcore import control, fsm
from mirrorcore.cli_watch import status_lines
from mirrorcore.modlog import ModuleLog
from mirrorcore.paths import Paths
from mirrorcore.vip import VipManager
from mirrorcore.watch import Watch

S = fsm.Settings(node="node1", peer="node2", failover=True, defaultprim=None, maxloop=3, loop_interval=86400.0)
WHY = "rule proc_postgres_down (proc.postgres == down) held for 3s: proc.postgres is down"


class Harness:
    """A Watch over the test config whose state machine is the real `fsm.step`."""

    def __init__(self, tmp_path: Path) -> None:
        cfg = module_config(tmp_path)
        paths = Paths(etc=tmp_path / "etc", lib=tmp_path / "lib", log=tmp_path / "log", run=tmp_path / "run")
        self.node = fsm.Node.initial(True, 3).but(state=fsm.State.ALONE, color=fsm.Color.GREEN, peer_lost=True)
        self.events: list[fsm.Event] = []
        self.log = ModuleLog(tmp_path / "log", "node1")
        self.watch = Watch(
            cfg, paths, self.log, VipManager(cfg.vips), node=lambda: self.node, submit=self.submit, kick=lambda: None
        )

    async def submit(self, event: fsm.Event) -> fsm.Step:
        self.events.append(event)
        st = fsm.step(S, self.node, event)
        if st.refused is None:
            self.move(st.node)
        return st

    def move(self, node: fsm.Node) -> None:
        before, self.node = self.node, node
        self.watch.node_changed(before, node)

    def finish_script(self) -> None:
        assert self.node.script is not None
        self.move(fsm.step(S, self.node, fsm.ScriptDone(self.node.script, True, "", 1.0)).node)


async def fire_postgres(h: Harness) -> None:
    """The engine fires proc_postgres_down (handle_time 3 in the test config) and the watch acts on it."""
    values = {"local.proc.postgres": "down"}
    h.watch.engine.due_actions(0, values)
    (decision,) = [d for d in h.watch.engine.due_actions(3, values) if d.rule == "proc_postgres_down"]
    await h.watch._fire(decision.action, decision.rule, decision.reason)


async def test_a_fired_rule_is_a_command_named_after_it_and_fires_again_only_after_its_action(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await fire_postgres(h)
    (command,) = h.events
    assert command == fsm.Command("restart", command.now, initiator="proc_postgres_down", detail=WHY)
    assert h.node.script == "stop_prim"
    assert h.watch.last_rule is not None
    assert (h.watch.last_rule.rule, h.watch.last_rule.outcome) == ("proc_postgres_down", "applied")
    assert "proc_postgres_down" in h.watch.engine.holding()  # does not fire again meanwhile
    h.finish_script()  # stop_prim; start_prim runs
    assert "proc_postgres_down" in h.watch.engine.holding()
    h.finish_script()  # the restart is over: the rule may fire again if it still holds
    assert h.watch.engine.holding() == []
    assert "Rule proc_postgres_down (proc.postgres == down) held" in h.log.path.read_text()


async def test_a_rule_refused_for_good_stays_fired_and_one_refused_while_busy_is_rearmed(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.node = h.node.but(state=fsm.State.SECOND)  # restart only applies to a primary
    await fire_postgres(h)
    assert h.watch.last_rule is not None
    assert h.watch.last_rule.outcome.startswith("refused: restart only applies to a primary")
    h.move(h.node.but(reason="something else"))
    assert h.watch.engine.holding() == ["proc_postgres_down"]

    h = Harness(tmp_path / "busy")
    await h.submit(fsm.Command("restart", 0.0))  # an admin's restart: busy with stop_prim
    await fire_postgres(h)
    assert h.watch.last_rule is not None
    assert h.watch.last_rule.outcome.startswith("refused: busy running stop_prim")
    h.finish_script()
    h.finish_script()
    assert h.watch.engine.holding() == []


async def test_values_of_checkers_inactive_in_the_new_state_go_unknown_at_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.watch.resources.set("tcp.db", "down", by="tcp.db")  # when=prim
    h.watch.resources.set("ping.gw", "down", by="ping.gw")  # when=pre
    h.watch.resources.set("proc.postgres", "down", by="errd")  # class=prim
    await h.submit(fsm.Command("restart", 0.0))  # scripts run: checkers see WAIT
    assert h.watch.resources.snapshot()["tcp.db"] == "unknown"
    assert h.watch.resources.snapshot()["proc.postgres"] == "unknown"
    assert h.watch.resources.snapshot()["ping.gw"] == "down"  # a pre checker still watches


async def test_get_set_and_checker_answer_with_what_there_is(tmp_path: Path) -> None:
    h = Harness(tmp_path)

    def ask(cmd: str, **args: object) -> control.Reply:
        return h.watch.handle(control.Request(cmd=cmd, args=dict(args), initiator="probe"))

    assert ask("get", resource="heartbeat.default").message.startswith("heartbeat.default init (set by heart at ")
    refused = ask("get", resource="remote.tcp.db")
    assert (refused.ok, refused.message) == (False, "no remote resource 'tcp.db'; remote resources: none")
    assert not ask("set", resource="heartbeat.default", value="maybe").ok
    unknown = ask("set", resource="custom.nope", value="down")
    assert not unknown.ok
    assert "heartbeat.default" in unknown.message
    assert ask("set", resource="heartbeat.default", value="down").message == "heartbeat.default set to down"
    entry = h.watch.resources.get("heartbeat.default")
    assert entry is not None
    assert (entry.value, entry.by) == ("down", "probe")
    h.watch.resources.set("tcp.db", "down", by="tcp.db")
    assert ask("checker", on=False).message == "checkers off"
    assert h.watch.checker_state() == "STOP"
    assert h.watch.resources.snapshot()["tcp.db"] == "unknown"
    status = h.watch.status()
    assert (status["checkers"], status["errd"], status["resources_down"]) == (False, True, ["heartbeat.default"])


def test_state_lines_say_what_is_down_what_is_off_and_the_last_rule() -> None:
    status = {
        "resources_down": ["proc.app", "tcp.app"],
        "checkers": False,
        "errd": True,
        "last_rule": {
            "rule": "tcp_app_down",
            "action": "restart",
            "reason": "rule tcp_app_down held",
            "at": 0,
            "outcome": "applied",
        },
    }
    lines = status_lines(status)
    assert lines[0] == "resources down: proc.app, tcp.app"
    assert lines[1] == "checkers off (`mirrorctl checker on` turns them back on)"
    assert lines[2].endswith("tcp_app_down -> restart(): rule tcp_app_down held")
    assert status_lines({"checkers": True, "errd": True, "resources_down": [], "last_rule": None}) == []


def test_checker_and_errd_off_outlive_a_restart_of_the_daemon(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    paths = Paths(etc=tmp_path / "etc", lib=tmp_path / "lib", log=tmp_path / "log", run=tmp_path / "run")

    def restarted() -> Watch:
        """The Watch of a new daemon of the same module."""
        cfg = h.watch.config
        return Watch(cfg, paths, h.log, VipManager(cfg.vips), node=lambda: h.node, submit=h.submit, kick=lambda: None)

    def ask(watch: Watch, cmd: str, on: bool) -> control.Reply:
        return watch.handle(control.Request(cmd=cmd, args={"on": on}, initiator="admin"))

    assert (h.watch.checkers_on, h.watch.errd_on) == (True, True)  # never set: both on
    assert ask(h.watch, "checker", False).message == "checkers off"
    assert ask(h.watch, "errd", False).message == "errd off"
    again = restarted()
    assert (again.checkers_on, again.errd_on) == (False, False)
    assert again.checker_state() == "STOP"
    assert "Checker off, as set before the daemon started: `mirrorctl checker on` resumes" in h.log.path.read_text()
    ask(again, "checker", True)
    assert (restarted().checkers_on, restarted().errd_on) == (True, False)
    # A damaged record is reported and ignored: watching is the safe default.
    (tmp_path / "lib" / "AM" / "watch.json").write_text("{not json")
    damaged = restarted()
    assert (damaged.checkers_on, damaged.errd_on) == (True, True)
    assert f"Ignoring {tmp_path}/lib/AM/watch.json" in h.log.path.read_text()
