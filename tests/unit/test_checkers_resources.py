"""checkers/resources.py: the resource table, its lookup contract and change notification."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import mirrorcore.checkers as checkers
from mirrorcore.checkers import Resources, is_active, lookup_in
from mirrorcore.rules import evaluate, parse_rules

F = Path("userconfig.xml")


def test_public_surface_is_what_all_says() -> None:
    assert sorted(checkers.__all__) == sorted(set(checkers.__all__))
    for name in checkers.__all__:
        assert getattr(checkers, name) is not None


def test_set_records_value_who_and_when_and_reports_changes() -> None:
    res = Resources(clock=lambda: 1000.0)
    res.declare("custom.app", by="custom.app")
    assert res.get("custom.app") == checkers.Entry("init", "custom.app", 1000.0)
    assert res.set("custom.app", "down", by="checkscript") is True
    assert res.set("custom.app", "down", by="someone else") is False  # same value: not a change
    entry = res.get("custom.app")
    assert entry is not None
    assert (entry.value, entry.by) == ("down", "checkscript")
    assert res.down() == ["custom.app"]
    assert res.snapshot() == {"custom.app": "down"}
    res.declare("custom.app", by="x")  # declaring again keeps the value
    assert res.snapshot() == {"custom.app": "down"}
    assert res.get("tcp.none") is None


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("app", "up", "class.ident"),
        ("nosuch.app", "up", "class.ident"),
        ("tcp.*", "up", "class.ident"),
        ("tcp.db", "sideways", "init, up, down, unknown"),
    ],
)
def test_bad_names_and_values_are_refused_with_what_to_write(name: str, value: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Resources().set(name, value, by="admin")


def test_remote_values_come_from_the_peers_snapshot_and_bad_entries_are_dropped() -> None:
    mine, peer = Resources(), Resources()
    peer.set("tcp.db", "down", by="tcp.db")
    peer.set("ip.10.0.0.100", "up", by="ip")
    assert mine.set_remote({**peer.snapshot(), "bogus": "up", "tcp.x": "maybe"}) is True
    assert mine.set_remote(peer.snapshot()) is False
    remote = mine.get("tcp.db", scope="remote")
    assert remote is not None
    assert (remote.value, remote.by) == ("down", "peer")
    assert mine.get("tcp.db") is None  # not ours
    assert mine.values() == {"remote.tcp.db": "down", "remote.ip.10.0.0.100": "up"}
    details = mine.details()
    assert details["remote"]["tcp.db"]["value"] == "down"
    assert details["local"] == {}
    assert mine.set_remote({}) is True  # every heartbeat lost: the peer is forgotten
    assert mine.values() == {}


def test_lookup_returns_one_value_or_the_whole_class_for_star_and_question_mark() -> None:
    res = Resources()
    res.set("ip.10.0.0.100", "up", by="ip")
    res.set("ip.10.0.0.101", "down", by="ip")
    res.set("tcp.db", "up", by="tcp")
    res.set_remote({"ip.10.0.0.100": "down"})
    assert res.lookup("local", "ip", "10.0.0.100") == ["up"]
    assert sorted(res.lookup("local", "ip", "*")) == ["down", "up"]
    assert sorted(res.lookup("local", "ip", "?")) == ["down", "up"]
    assert res.lookup("remote", "ip", "*") == ["down"]
    assert res.lookup("local", "ping", "gw") == []
    (any_down,) = parse_rules("r: if (ip.? == down) then stop();", file=F)
    (all_down,) = parse_rules("r: if (ip.* == down) then stop();", file=F)
    assert evaluate(any_down.expr, res.lookup) is True
    assert evaluate(all_down.expr, res.lookup) is False
    assert evaluate(all_down.expr, lookup_in({"local.ip.a": "down"})) is True


async def test_changed_wakes_a_waiter_on_local_and_remote_changes(autojump_clock: trio.testing.MockClock) -> None:
    res = Resources()
    version = res.version
    woke: list[int] = []

    async def waiter() -> None:
        woke.append(await res.changed(version))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1)
        assert woke == []
        res.set("tcp.db", "up", by="t")
        await trio.sleep(1)
    assert woke == [version + 1]
    assert await res.changed(version) == version + 1  # already changed: no wait
    with trio.move_on_after(5) as scope:
        await res.changed(res.version)
    assert scope.cancelled_caught
    v = res.version
    res.set_remote({"tcp.db": "down"})
    assert await res.changed(v) == v + 1


@pytest.mark.parametrize(
    ("when", "active_in"),
    [
        ("pre", {"WAIT", "ALONE", "PRIM", "SECOND"}),
        ("prim", {"ALONE", "PRIM"}),
        ("second", {"SECOND"}),
        ("both", {"ALONE", "PRIM", "SECOND"}),
    ],
)
def test_when_says_in_which_states_a_checker_runs(when: str, active_in: set[str]) -> None:
    assert {s for s in ("STOP", "WAIT", "ALONE", "PRIM", "SECOND") if is_active(when, s)} == active_in
