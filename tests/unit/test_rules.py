"""rules.py: the failover rule language parses to the right tree and evaluates as documented."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from mirrorcore.config import ConfigError
from mirrorcore.rules import And, Compare, Not, Or, Resource, Rule, evaluate, parse_rules, resources

F = Path("/etc/mirrorcore/modules/AM/conf/userconfig.xml")


def one(text: str) -> Rule:
    (rule,) = parse_rules(text, file=F)
    return rule


def cmp(cls: str, ident: str, value: str, op: str = "==", scope: str = "local") -> Compare:
    return Compare(Resource(scope, cls, ident), op, value)


def lookup_from(values: dict[tuple[str, str, str], str]):
    """A lookup over a fixed table: `*`/`?` return every value of the class."""

    def lookup(scope: str, cls: str, ident: str) -> Sequence[str]:
        if ident in ("*", "?"):
            return [v for (s, c, _), v in values.items() if (s, c) == (scope, cls)]
        value = values.get((scope, cls, ident))
        return [] if value is None else [value]

    return lookup


def test_simple_rule() -> None:
    assert one("db_down: if (tcp.db == down) then restart();") == Rule(
        "db_down", cmp("tcp", "db", "down"), "restart", 1
    )


def test_and_binds_tighter_than_or_and_not_tightest() -> None:
    rule = one("r: if (ping.a == up || !ping.b == down && ping.c != init) then stop();")
    assert rule.expr == Or(cmp("ping", "a", "up"), And(Not(cmp("ping", "b", "down")), cmp("ping", "c", "init", "!=")))


def test_parentheses_override_precedence() -> None:
    rule = one("r: if ((ping.a == up || ping.b == up) && ping.c == up) then wait();")
    assert rule.expr == And(Or(cmp("ping", "a", "up"), cmp("ping", "b", "up")), cmp("ping", "c", "up"))


def test_scopes_dotted_and_ipv6_idents_and_wildcards() -> None:
    rule = one(
        "r: if (remote.ip.10.0.0.100 == down && local.heartbeat.* == down && ip.fd00::64 == up && proc.? == down)"
        " then swap();"
    )
    assert list(resources(rule.expr)) == [
        Resource("remote", "ip", "10.0.0.100"),
        Resource("local", "heartbeat", "*"),
        Resource("local", "ip", "fd00::64"),
        Resource("local", "proc", "?"),
    ]
    assert rule.action == "swap"


def test_several_rules_with_comments_keep_their_lines() -> None:
    text = "\n# comment\na: if (tcp.x == down) then restart();\n\nb:if(tcp.y==down)then stopstart();  # trailing\n"
    rules = parse_rules(text, file=F, line=40)
    assert [(r.label, r.line, r.action) for r in rules] == [("a", 42, "restart"), ("b", 44, "stopstart")]


def test_star_means_all_and_question_mark_means_any() -> None:
    table = {
        ("local", "heartbeat", "default"): "down",
        ("local", "heartbeat", "flow"): "up",
        ("remote", "heartbeat", "default"): "down",
    }
    lookup = lookup_from(table)
    all_down = one("r: if (heartbeat.* == down) then wait();").expr
    any_down = one("r: if (heartbeat.? == down) then wait();").expr
    assert evaluate(all_down, lookup) is False
    assert evaluate(any_down, lookup) is True
    table[("local", "heartbeat", "flow")] = "down"
    assert evaluate(all_down, lookup) is True
    # remote. reads the peer's view, not ours
    assert evaluate(one("r: if (remote.heartbeat.* == down) then wait();").expr, lookup) is True
    assert evaluate(one("r: if (remote.heartbeat.? == up) then wait();").expr, lookup) is False


def test_no_resource_of_a_class_satisfies_neither_star_nor_question_mark() -> None:
    lookup = lookup_from({})
    assert evaluate(one("r: if (tcp.* == down) then wait();").expr, lookup) is False
    assert evaluate(one("r: if (tcp.? != up) then wait();").expr, lookup) is False
    # a named resource nobody reported is "unknown"
    assert evaluate(one("r: if (tcp.db == unknown) then wait();").expr, lookup) is True


def test_evaluate_combines_with_not_and_or() -> None:
    lookup = lookup_from({("local", "tcp", "db"): "down", ("local", "ping", "gw"): "up"})
    expr = one("r: if (tcp.db == down && !(ping.gw == down)) then restart();").expr
    assert evaluate(expr, lookup) is True
    expr = one("r: if (tcp.db != down || ping.gw == down) then restart();").expr
    assert evaluate(expr, lookup) is False


@pytest.mark.parametrize(
    ("text", "line", "column", "what", "fix"),
    [
        ("r: if (tcp.db == down) then restart()", 1, 38, "expected ';'", "end each rule with ;"),
        ("r: if (tcp.db == dwn) then restart();", 1, 18, "'dwn' is not a resource value", "init, up, down, unknown"),
        ("r: if (tcp.db == down then restart();", 1, 23, "expected ')'", "close every ("),
        ("\n  r: if (tcp.db = down) then stop();", 2, 17, "expected == or != but found '='", "tcp.db == down"),
        ("r: if (disk.x == down) then stop();", 1, 8, "'disk' is not a resource class", "heartbeat, intf"),
        ("r: if (tcp.db == down) then reboot();", 1, 29, "'reboot' is not an action", "stopstart()"),
        ("r: if (tcp == down) then stop();", 1, 8, "'tcp' is not a resource", "class.ident"),
        ("r: if (tcp.d* == down) then stop();", 1, 8, "mixes * or ?", "tcp.*"),
        ("if (tcp.db == down) then stop();", 1, 4, "expected ':'", "if (...)"),
        ("r: if (tcp.db == down) then stop(); r: if (tcp.db == up) then stop();", 1, None, 'labelled "r"', "label"),
        ("r: if (tcp.db == down) then stop(); $", 1, 37, "unexpected character '$'", "label: if"),
    ],
)
def test_syntax_errors_name_line_column_and_fix(text: str, line: int, column: int | None, what: str, fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(text, file=F)
    err = info.value
    assert (err.file, err.line, err.column) == (F, line, column)
    assert what in err.what
    assert fix in err.fix


def test_error_position_is_relative_to_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules("r: if (tcp.db == dwn) then stop();\n  s: if", file=F, line=30, column=15)
    assert (info.value.line, info.value.column) == (30, 15 + 17)
    assert str(info.value).startswith(f"{F}:30:32: ")


def test_negating_star_means_not_all_and_negating_question_mark_means_none() -> None:
    lookup = lookup_from({("local", "tcp", "a"): "up", ("local", "tcp", "b"): "down"})
    assert evaluate(one("r: if (!(tcp.* == up)) then wait();").expr, lookup) is True  # one is not up
    assert evaluate(one("r: if (tcp.? != up) then wait();").expr, lookup) is True  # the same, by De Morgan
    assert evaluate(one("r: if (!(tcp.? == down)) then wait();").expr, lookup) is False  # one is down
    assert evaluate(one("r: if (tcp.* != down) then wait();").expr, lookup) is False


def test_a_forgotten_peer_leaves_remote_rules_on_unknown() -> None:
    # When every heartbeat is lost the daemon forgets the peer's values: a named remote resource
    # is then unknown, and a remote wildcard matches nothing.
    lookup = lookup_from({("local", "tcp", "db"): "down"})
    assert evaluate(one("r: if (remote.tcp.db == down) then stop();").expr, lookup) is False
    assert evaluate(one("r: if (remote.tcp.db == unknown) then stop();").expr, lookup) is True
    assert evaluate(one("r: if (remote.tcp.? == down || remote.tcp.* == down) then stop();").expr, lookup) is False
    assert evaluate(one("r: if (local.tcp.db == down && tcp.db == down) then stop();").expr, lookup) is True


def test_a_scope_with_no_class_is_an_error_at_its_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules("r: if (tcp.db == down &&\n       remote.tcp == up) then stop();", file=F, line=7)
    assert (info.value.line, info.value.column) == (8, 8)
    assert "'remote.tcp' is not a resource" in info.value.what
