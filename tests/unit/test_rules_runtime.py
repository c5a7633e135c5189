"""checkers/rules_runtime.py: an action fires only after its rule held for handle_time, once; defaults."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio
import trio.testing

from mirrorcore.checkers import Decision, Resources, RuleEngine, default_rules, describe
from mirrorcore.config import ModuleConfig, load_module
from mirrorcore.paths import Paths
from mirrorcore.rules import Rule, parse_rules

F = Path("/etc/mirrorcore/modules/AM/conf/userconfig.xml")


def parse(text: str) -> tuple[Rule, ...]:
    return parse_rules(text, file=F)


DB = parse("db_down: if (tcp.db == down) then restart();")


def fired(decisions: list[Decision]) -> list[tuple[str, str]]:
    return [(d.rule, d.action) for d in decisions if d.kind == "fire"]


# ---- due_actions with plain numbers ------------------------------------------------------


def test_a_flap_shorter_than_handle_time_fires_nothing_and_a_steady_down_fires_once() -> None:
    engine = RuleEngine(DB, handle_time=5)
    down, up = {"local.tcp.db": "down"}, {"local.tcp.db": "up"}
    assert engine.due_actions(0, down) == []
    assert engine.due_actions(4.9, down) == []
    assert engine.due_actions(5.5, up) == []  # back up: never seen down for 5 s
    assert engine.due_actions(6, down) == []  # a new holding period starts at 6
    assert engine.due_actions(10.9, down) == []
    (d,) = engine.due_actions(11, down)
    assert (d.kind, d.rule, d.action) == ("fire", "db_down", "restart")
    assert "db_down" in d.reason
    assert "tcp.db is down" in d.reason
    assert "5s" in d.reason
    assert engine.due_actions(12, down) == []
    assert engine.due_actions(100, down) == []  # still the same holding period: not again


def test_a_fired_rule_clears_after_it_stopped_holding_for_handle_time() -> None:
    engine = RuleEngine(DB, handle_time=2)
    engine.due_actions(0, {"local.tcp.db": "down"})
    assert fired(engine.due_actions(2, {"local.tcp.db": "down"})) == [("db_down", "restart")]
    assert engine.holding() == ["db_down"]
    assert engine.due_actions(3, {"local.tcp.db": "up"}) == []
    assert engine.due_actions(4, {"local.tcp.db": "down"}) == []  # a blip down: still the same episode
    assert engine.due_actions(5, {"local.tcp.db": "up"}) == []
    (d,) = engine.due_actions(7, {"local.tcp.db": "up"})
    assert (d.kind, d.rule) == ("clear", "db_down")
    assert "no longer holds" in d.reason
    assert "tcp.db is up" in d.reason
    assert engine.holding() == []


def test_rearm_lets_a_rule_that_still_holds_fire_again_after_handle_time() -> None:
    engine = RuleEngine(DB, handle_time=3)
    down = {"local.tcp.db": "down"}
    engine.due_actions(0, down)
    assert fired(engine.due_actions(3, down)) == [("db_down", "restart")]
    engine.rearm("db_down")
    assert engine.due_actions(4, down) == []
    assert engine.due_actions(6.5, down) == []
    assert fired(engine.due_actions(7, down)) == [("db_down", "restart")]


def test_handle_time_zero_fires_at_the_first_evaluation() -> None:
    engine = RuleEngine(DB, handle_time=0)
    assert fired(engine.due_actions(0, {"local.tcp.db": "down"})) == [("db_down", "restart")]


def test_next_deadline_is_when_a_holding_rule_becomes_due() -> None:
    engine = RuleEngine(DB, handle_time=5)
    assert engine.next_deadline() is None
    engine.due_actions(10, {"local.tcp.db": "down"})
    assert engine.next_deadline() == 15


def test_star_needs_every_resource_and_question_mark_any() -> None:
    engine = RuleEngine(
        parse("all: if (proc.* == down) then stop(); any: if (proc.? == down) then restart();"), handle_time=0
    )
    one_down = {"local.proc.a": "down", "local.proc.b": "up"}
    assert fired(engine.due_actions(0, one_down)) == [("any", "restart")]
    assert fired(engine.due_actions(1, {"local.proc.a": "down", "local.proc.b": "down"})) == [("all", "stop")]


def test_star_and_question_mark_over_a_class_with_no_resource_hold_neither() -> None:
    engine = RuleEngine(parse("a: if (ping.* == down) then stop(); b: if (ping.? == down) then wait();"), 0)
    assert engine.due_actions(0, {"local.tcp.db": "down"}) == []


def test_local_and_remote_scopes_read_their_own_table() -> None:
    engine = RuleEngine(parse("peer_db: if (remote.tcp.db == down && tcp.db == up) then swap();"), handle_time=0)
    assert engine.due_actions(0, {"local.tcp.db": "down", "remote.tcp.db": "up"}) == []
    (d,) = engine.due_actions(1, {"local.tcp.db": "up", "remote.tcp.db": "down"})
    assert (d.rule, d.action) == ("peer_db", "swap")
    assert "remote.tcp.db is down" in d.reason
    assert "tcp.db is up" in d.reason


def test_a_resource_nobody_set_is_unknown() -> None:
    engine = RuleEngine(parse("r: if (tcp.db == unknown) then wait();"), handle_time=0)
    assert fired(engine.due_actions(0, {})) == [("r", "wait")]


def test_describe_writes_the_expression_back_with_precedence() -> None:
    (rule,) = parse("r: if (!(tcp.a == up || remote.tcp.b != down) && proc.? == down) then stop();")
    assert describe(rule.expr) == "!(tcp.a == up || remote.tcp.b != down) && proc.? == down"


# ---- default rules -----------------------------------------------------------------------

CLUSTER = """<cluster><lans>
  <lan name="default"><node name="node1" addr="10.0.0.1"/><node name="node2" addr="10.0.0.2"/></lan>
</lans></cluster>"""

USERCONFIG = """<safe><service mode="mirror">
  <heart><heartbeat name="default"/></heart>
  <vip><interface_list><interface check="on"><real_interface>
    <virtual_addr addr="10.0.0.100" where="one_side_alias" check="on"/>
  </real_interface></interface></interface_list></vip>
  <errd><proc name="postgres" action="restart"/><proc name="cron" action="noaction"/></errd>
  <check>
    <tcp ident="db"><to addr="127.0.0.1" port="5432"/></tcp>
    <ping ident="gw"><to addr="10.0.0.254"/></ping>
    <custom ident="app" exec="/bin/true" action="stopstart"/>
    <module name="other"/>
  </check>
  <failover handle_time="3"><![CDATA[FAILOVER]]></failover>
</service></safe>"""


def module_config(tmp_path: Path, failover: str = "") -> ModuleConfig:
    paths = Paths(etc=tmp_path / "etc", lib=tmp_path / "lib", log=tmp_path / "log", run=tmp_path / "run")
    paths.etc.mkdir(parents=True)
    paths.cluster_xml.write_text(CLUSTER)
    conf = paths.userconfig("AM")
    conf.parent.mkdir(parents=True)
    conf.write_text(USERCONFIG.replace("FAILOVER", failover))
    return load_module(paths, "AM", node="node1")


def test_default_rules_cover_every_configured_checker_with_its_action(tmp_path: Path) -> None:
    cfg = module_config(tmp_path)
    got = {(r.label, describe(r.expr), r.action) for r in default_rules(cfg.errd, cfg.checks, cfg.vips)}
    assert got == {
        ("interface_down", "intf.? == down", "wait"),
        ("vip_down", "ip.? == down", "stopstart"),
        ("proc_postgres_down", "proc.postgres == down", "restart"),
        ("tcp_db_down", "tcp.db == down", "restart"),
        ("ping_gw_down", "ping.gw == down", "wait"),
        ("custom_app_down", "custom.app == down", "stopstart"),
        ("module_other_down", "module.other == down", "wait"),
    }  # proc.cron (action noaction) is only watched
    engine = RuleEngine.for_module(cfg)
    assert engine.handle_time == 3
    assert len(engine.rules) == 7


def test_a_user_rule_on_a_resource_replaces_its_default_and_defaults_can_be_dropped(tmp_path: Path) -> None:
    cfg = module_config(tmp_path, "mine: if (tcp.db == down && ping.? == down) then stop();")
    labels = [r.label for r in RuleEngine.for_module(cfg).rules]
    assert labels[0] == "mine"
    assert "tcp_db_down" not in labels
    assert "ping_gw_down" not in labels
    assert "proc_postgres_down" in labels
    assert [r.label for r in RuleEngine.for_module(cfg, default_rules=False).rules] == ["mine"]


def test_default_rules_act_on_down_only(tmp_path: Path) -> None:
    engine = RuleEngine.for_module(module_config(tmp_path))
    quiet = {"local.tcp.db": "unknown", "local.proc.postgres": "init", "local.intf.10.0.0.0": "up"}
    assert engine.due_actions(0, quiet) == []
    engine.due_actions(1, {**quiet, "local.intf.10.0.0.0": "down"})
    assert fired(engine.due_actions(4, {**quiet, "local.intf.10.0.0.0": "down"})) == [("interface_down", "wait")]


# ---- run() on trio's MockClock -----------------------------------------------------------


async def test_run_ignores_a_flapping_resource_and_acts_once_on_a_steady_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    res = Resources()
    res.set("tcp.db", "up", by="test")
    engine = RuleEngine(DB, handle_time=5)
    actions: list[tuple[float, str, str, str]] = []

    async def on_action(action: str, rule: str, reason: str) -> None:
        actions.append((trio.current_time(), action, rule, reason))

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run, res, on_action)
        start = trio.current_time()
        for _ in range(10):  # down 4 s, up 1 s: never 5 s in a row
            res.set("tcp.db", "down", by="test")
            await trio.sleep(4)
            res.set("tcp.db", "up", by="test")
            await trio.sleep(1)
        assert actions == []
        went_down = trio.current_time()
        res.set("tcp.db", "down", by="test")
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert went_down - start == 50
    assert [(a, r) for _, a, r, _ in actions] == [("restart", "db_down")]
    assert actions[0][0] == pytest.approx(went_down + 5)  # at the deadline, not at the next period tick
    assert "tcp.db is down" in actions[0][3]


async def test_run_reports_a_clear_through_on_clear(autojump_clock: trio.testing.MockClock) -> None:
    res = Resources()
    engine = RuleEngine(parse("lan: if (intf.? == down) then wait();"), handle_time=2)
    seen: list[tuple[str, str]] = []

    async def on_action(action: str, rule: str, reason: str) -> None:
        seen.append(("fire", action))

    async def on_clear(action: str, rule: str, reason: str) -> None:
        seen.append(("clear", action))

    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(engine.run, res, on_action, on_clear=on_clear))
        res.set("intf.10.0.0.0", "down", by="test")
        await trio.sleep(3)
        res.set("intf.10.0.0.0", "up", by="test")
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert seen == [("fire", "wait"), ("clear", "wait")]


async def test_run_sees_the_peers_values_from_heartbeats(autojump_clock: trio.testing.MockClock) -> None:
    res = Resources()
    engine = RuleEngine(parse("peer: if (remote.proc.? == down) then swap();"), handle_time=1)
    got: list[str] = []

    async def on_action(action: str, rule: str, reason: str) -> None:
        got.append(action)

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run, res, on_action)
        res.set("proc.app", "down", by="test")  # ours: not the peer's
        await trio.sleep(5)
        assert got == []
        res.set_remote({"proc.app": "down"})
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert got == ["swap"]
