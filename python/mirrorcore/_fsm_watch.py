"""What the watchers make the module do: a rule's `wait()`, its end, and the split-brain witness.

A rule's `wait()` stops the module (the whole stop sequence, poststop included) and holds it in
WAIT red, named after the rule, until the rule clears (`RuleCleared`); it then starts again as
`start` would. A node that loses every heartbeat and cannot reach the witness gives up the
application the same way and waits until it hears the peer again, so that only the node that
reached the witness runs it. The continuations after poststop live in `_fsm_scripts`.
"""

from __future__ import annotations

from mirrorcore._fsm_enter import begin_start, begin_stop, out, wait
from mirrorcore._fsm_types import (
    Color,
    Exit,
    Goal,
    Node,
    Phase,
    Role,
    RuleCleared,
    Settings,
    State,
    Step,
    StopMirror,
)


def begin_wait(node: Node, rule: str, detail: str) -> Step:
    """A rule's `wait()` on a running node: stop everything here, then wait in WAIT red for the rule to clear."""
    cause = detail or f"rule {rule} asked to wait"
    final = (
        f"waiting: {cause}; the module starts again by itself once rule {rule} no longer holds "
        f"(`mirrorctl start` starts it now, `mirrorctl stop` stops waiting)"
    )
    n = node.but(wait_rules=(*node.wait_rules, rule) if rule not in node.wait_rules else node.wait_rules)
    return begin_stop(n, Goal.WAIT, f"{cause}: stopping the application to wait", final, exit_=False)


def also_wait(node: Node, rule: str, detail: str) -> Step:
    """Another rule's `wait()` while already waiting for one: the module resumes once both cleared."""
    if rule in node.wait_rules:
        return out(node)
    cause = detail or f"rule {rule} asked to wait"
    rules = (*node.wait_rules, rule)
    why = f"{node.reason}; also {cause} (starts again once {', '.join(rules)} no longer hold)"
    return out(node.but(wait_rules=rules, reason=why))


def rule_cleared(node: Node, ev: RuleCleared) -> Step:
    """A rule that asked to wait no longer holds: start again once no other rule keeps the module waiting."""
    if ev.rule not in node.wait_rules:
        return out(node)
    rest = tuple(r for r in node.wait_rules if r != ev.rule)
    n = node.but(wait_rules=rest)
    if rest or node.phase is not Phase.RESOURCE:
        # Another rule still holds, or the stop sequence still runs: it looks at wait_rules when done.
        return out(n)
    return begin_start(n, Role.START, False, f"{ev.reason}: starting again (prestart)")


def isolated_reason(s: Settings, uptodate: bool, generation: int) -> str:
    """What a node cut from its peer and from the witness says, with the command that overrides it."""
    cmd = "prim" if uptodate or generation == 0 else "primforce"
    return (
        f"every heartbeat from {s.peer} is lost and the split-brain witness does not answer from here: "
        f"the application does not run here, so that {s.peer} runs it alone if it reached the witness; "
        f"this node follows {s.peer} once it hears it again. If {s.peer} is really down, run "
        f"`mirrorctl {cmd}` here to start the application anyway"
    )


def isolate_primary(s: Settings, node: Node) -> Step:
    """A primary that lost its peer and the witness stops the application and waits for the peer.

    A PRIM's secondary was ready and may take over (it reached the witness): from then on this copy
    is behind, so it is persisted as not uptodate. An ALONE node's peer could not take over.
    """
    keep = node.state is not State.PRIM
    n = node.but(role=Role.START, final_uptodate=keep)
    why = (
        f"every heartbeat from {s.peer} is lost and the split-brain witness does not answer from here: "
        f"stopping the application ({s.peer} runs it if it reached the witness)"
    )
    return begin_stop(n, Goal.ISOLATE, why, isolated_reason(s, keep, node.generation), exit_=False)


def isolate_second(s: Settings, node: Node) -> Step:
    """A ready secondary that lost its primary and the witness does not take over: the primary may run on."""
    why = isolated_reason(s, node.uptodate, node.generation)
    n = node.but(state=State.WAIT, color=Color.RED, phase=Phase.ISOLATED, role=Role.START, reason=why)
    return out(n, StopMirror())


def isolate_waiting(s: Settings, node: Node) -> Step:
    """A starting node that hears no peer and no witness does not start the application on its own."""
    return wait(node, Color.RED, isolated_reason(s, node.uptodate, node.generation), Phase.ISOLATED)


def stop_waiting(node: Node, reason: str) -> Step:
    """`stop` while waiting for a rule or the peer: poststop already ran, so the module is simply stopped."""
    n = node.but(
        state=State.STOP,
        color=Color.RED,
        phase=Phase.IDLE,
        goal=Goal.NONE,
        role=Role.NONE,
        wait_rules=(),
        stop_pending=False,
        reason=reason,
    )
    return out(n, Exit())
