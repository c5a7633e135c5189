"""The failover rule language (SPEC §5).

    label: if (expr) then stop()|stopstart()|wait()|restart()|swap();

`expr` combines comparisons `resource == value` / `resource != value` with `!`, `&&`, `||`
and parentheses (`!` binds tightest, then comparisons, then `&&`, then `||`). A resource
is `[local.|remote.]class.ident` (local when no scope is written); `ident` may contain dots
(`ip.10.0.0.100`) and colons (`ip.fd00::64`), or be `*` (every resource of the class
must match) or `?` (at least one must). Values are `init up down unknown`. `#` starts
a comment that runs to the end of the line.

Parsing is pure and yields frozen dataclasses; `evaluate` is pure too, the caller supplies
the current values through a lookup function.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from mirrorcore._config_error import ConfigError

__all__ = [
    "ACTIONS",
    "CLASSES",
    "VALUES",
    "And",
    "Compare",
    "Expr",
    "Lookup",
    "Not",
    "Or",
    "Resource",
    "Rule",
    "evaluate",
    "parse_rules",
    "resources",
]

ACTIONS = ("stop", "stopstart", "wait", "restart", "swap")
VALUES = ("init", "up", "down", "unknown")
CLASSES = ("heartbeat", "intf", "ip", "rfs", "proc", "tcp", "ping", "custom", "splitbrain", "module")
SCOPES = ("local", "remote")


@dataclass(frozen=True)
class Resource:
    """`[scope.]cls.ident`; ident "*" means all resources of the class, "?" any of them."""

    scope: str
    cls: str
    ident: str

    def __str__(self) -> str:
        return f"{self.scope}.{self.cls}.{self.ident}"


@dataclass(frozen=True)
class Compare:
    resource: Resource
    op: str  # "==" or "!="
    value: str


@dataclass(frozen=True)
class Not:
    operand: Expr


@dataclass(frozen=True)
class And:
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Or:
    left: Expr
    right: Expr


Expr: TypeAlias = "Compare | Not | And | Or"
Lookup: TypeAlias = Callable[[str, str, str], Sequence[str]]


@dataclass(frozen=True)
class Rule:
    """One failover rule; `line` is its line in the userconfig file."""

    label: str
    expr: Expr
    action: str
    line: int


@dataclass(frozen=True)
class _Tok:
    kind: str  # "word", "op", "end"
    text: str
    line: int
    col: int


_TOKEN = re.compile(
    r"(?P<space>[ \t\r\n]+|\#[^\n]*)"
    r"|(?P<op>==|!=|&&|\|\||[!();:=&|])"
    r"|(?P<word>[A-Za-z0-9_.*?:\-]+)"
)


def _tokens(text: str, file: Path, line: int, column: int) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    ln, line_start = line, -column + 1  # so that col = pos - line_start + 1 == column at pos 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        col = pos - line_start + 1
        if m is None:
            raise ConfigError(
                file,
                ln,
                f"unexpected character {text[pos]!r} in a failover rule",
                "rules read: label: if (resource == value) then action(); using ! && || == != and ( )",
                column=col,
            )
        kind = m.lastgroup
        assert kind is not None
        if kind == "space":
            for i, ch in enumerate(m.group(), pos):
                if ch == "\n":
                    ln, line_start = ln + 1, i + 1
        else:
            word = m.group()
            head, colon, _ = word.partition(":")
            # a label is glued to its colon ("db_down:if"); resources always have a dot before any
            # colon (ip.fd00::64), so a word with a colon but no dot before it is a label
            if kind == "word" and colon and head and "." not in head:
                out.append(_Tok("word", head, ln, col))
                out.append(_Tok("op", ":", ln, col + len(head)))
                pos += len(head) + 1
                continue
            out.append(_Tok(kind, word, ln, col))
        pos = m.end()
    out.append(_Tok("end", "end of the rules", ln, pos - line_start + 1))
    return out


class _Parser:
    def __init__(self, toks: list[_Tok], file: Path) -> None:
        self.toks = toks
        self.i = 0
        self.file = file

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def fail(self, tok: _Tok, what: str, fix: str) -> ConfigError:
        return ConfigError(self.file, tok.line, what, fix, column=tok.col)

    def expect(self, text: str, fix: str) -> _Tok:
        tok = self.take()
        if tok.text != text or tok.kind == "end":
            raise self.fail(tok, f"expected {text!r} but found {tok.text!r}", fix)
        return tok

    def rules(self) -> tuple[Rule, ...]:
        out: list[Rule] = []
        while self.peek().kind != "end":
            rule = self.rule()
            if any(r.label == rule.label for r in out):
                raise ConfigError(
                    self.file,
                    rule.line,
                    f'two failover rules are labelled "{rule.label}"',
                    "give each a distinct label",
                )
            out.append(rule)
        return tuple(out)

    def rule(self) -> Rule:
        label = self.take()
        if label.kind != "word" or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", label.text):
            raise self.fail(label, f"expected a rule label but found {label.text!r}", "start each rule with label:")
        self.expect(":", f"write {label.text}: if (...) then action();")
        self.expect("if", f"write {label.text}: if (...) then action();")
        expr = self.or_()
        self.expect("then", "close the condition, then write: then action();")
        act = self.take()
        if act.text not in ACTIONS:
            actions = ", ".join(a + "()" for a in ACTIONS)
            raise self.fail(act, f"{act.text!r} is not an action", f"use one of: {actions}")
        self.expect("(", f"write {act.text}();")
        self.expect(")", f"write {act.text}();")
        self.expect(";", "end each rule with ;")
        return Rule(label.text, expr, act.text, label.line)

    def or_(self) -> Expr:
        left = self.and_()
        while self.peek().text == "||":
            self.take()
            left = Or(left, self.and_())
        return left

    def and_(self) -> Expr:
        left = self.unary()
        while self.peek().text == "&&":
            self.take()
            left = And(left, self.unary())
        return left

    def unary(self) -> Expr:
        tok = self.peek()
        if tok.text == "!" and tok.kind == "op":
            self.take()
            return Not(self.unary())
        if tok.text == "(" and tok.kind == "op":
            self.take()
            inner = self.or_()
            self.expect(")", "close every ( with a )")
            return inner
        return self.compare()

    def compare(self) -> Compare:
        res_tok = self.take()
        if res_tok.kind != "word":
            raise self.fail(res_tok, f"expected a resource but found {res_tok.text!r}", "write e.g. tcp.db == down")
        resource = self.resource(res_tok)
        op = self.take()
        if op.text not in ("==", "!="):
            raise self.fail(op, f"expected == or != but found {op.text!r}", f"write {res_tok.text} == down")
        val = self.take()
        if val.text not in VALUES:
            raise self.fail(val, f"{val.text!r} is not a resource value", f"compare with one of: {', '.join(VALUES)}")
        return Compare(resource, op.text, val.text)

    def resource(self, tok: _Tok) -> Resource:
        parts = tok.text.split(".")
        scope = "local"
        if parts[0] in SCOPES:
            scope, parts = parts[0], parts[1:]
        if len(parts) < 2 or not parts[1]:
            raise self.fail(tok, f"{tok.text!r} is not a resource", "write [local.|remote.]class.ident, e.g. tcp.db")
        cls, ident = parts[0], ".".join(parts[1:])
        if cls not in CLASSES:
            raise self.fail(tok, f"{cls!r} is not a resource class", f"use one of: {', '.join(CLASSES)}")
        if ("*" in ident or "?" in ident) and ident not in ("*", "?"):
            raise self.fail(tok, f"{tok.text!r} mixes * or ? with a name", f"write {cls}.* (all) or {cls}.? (any)")
        return Resource(scope, cls, ident)


def parse_rules(text: str, *, file: Path, line: int = 1, column: int = 1) -> tuple[Rule, ...]:
    """Parses the text of `<failover>`.

    Args:
        text: the rules.
        file: the userconfig file, for error messages.
        line: the file line where `text` starts.
        column: the file column where `text` starts.

    Returns:
        The rules in order.

    Raises:
        ConfigError: a syntax error, naming line and column and the fix.
    """
    return _Parser(_tokens(text, file, line, column), file).rules()


def resources(expr: Expr) -> Iterator[Resource]:
    """Every resource an expression mentions, left to right."""
    if isinstance(expr, Compare):
        yield expr.resource
    elif isinstance(expr, Not):
        yield from resources(expr.operand)
    else:
        yield from resources(expr.left)
        yield from resources(expr.right)


def evaluate(expr: Expr, lookup: Lookup) -> bool:
    """Evaluates an expression against the current resource values.

    Args:
        expr: a parsed expression.
        lookup: `lookup(scope, cls, ident)` returns the values of the matching resources:
            one value for a named ident (empty if unknown: it then counts as "unknown"),
            every value of the class for ident "*" or "?".

    Returns:
        True when the expression holds. With "*" every value must satisfy the comparison,
        with "?" at least one; a class with no resource at all satisfies neither.
    """
    if isinstance(expr, Not):
        return not evaluate(expr.operand, lookup)
    if isinstance(expr, And):
        return evaluate(expr.left, lookup) and evaluate(expr.right, lookup)
    if isinstance(expr, Or):
        return evaluate(expr.left, lookup) or evaluate(expr.right, lookup)
    r = expr.resource
    values = list(lookup(r.scope, r.cls, r.ident))
    if r.ident not in ("*", "?") and not values:
        values = ["unknown"]
    results = [(v == expr.value) == (expr.op == "==") for v in values]
    if r.ident == "?":
        return any(results)
    return bool(results) and all(results)
