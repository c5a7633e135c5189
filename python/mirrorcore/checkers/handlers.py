"""errd handlers: `<proc action="/path/to/handler">` runs that program instead of an action (SPEC §5).

When the proc's default rule fires (`proc.<name>` down for `handle_time`), the daemon runs the
handler with `proc_name current_state` as arguments and `MODULE`, `NODE`, `RESOURCE`
(`proc.<name>`), `COUNT` (the matching processes found) and the module's `<var>`s in its
environment, the way it runs the module's scripts (`ScriptRunner.run_program`): output appended to
`script.log`, killed with every process it started after `handler_timeout`. Its outcome is logged
in the module log with the proc's name.

A handler is not a command of the state machine, so running it does not count against `maxloop`;
what it does with `mirrorctl ... -i NAME` (say `mirrorctl restart -i handler`) counts, as for any
script. It runs once per episode: the rule engine fires a rule once per holding period, so it runs
again only after `proc.<name>` has stopped being down (up again, or unknown while the module
restarts or stops) and gone down again. One run per proc at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mirrorcore.checkers.rules_runtime import proc_rule
from mirrorcore.config import Proc
from mirrorcore.modlog import ModuleLog
from mirrorcore.scripts import ScriptRunner

__all__ = ["ProcHandlers"]


class ProcHandlers:
    """The handler programs of a module's `<proc>`s, by the label of the rule that runs them."""

    def __init__(self, procs: Iterable[Proc], runner: ScriptRunner, log: ModuleLog) -> None:
        """Prepares the handlers; nothing runs until `run`.

        Args:
            procs: errd's `<proc>`s (those without a handler are left out).
            runner: the module's script runner (environment, script log, kill at a timeout).
            log: the module log.
        """
        self.by_rule = {proc_rule(p.name): p for p in procs if p.handler is not None}
        self.runner = runner
        self.log = log
        self.running: set[str] = set()

    def for_rule(self, rule: str, action: str) -> Proc | None:
        """The proc whose handler `action` is, when `rule` is that proc's default rule; else None."""
        proc = self.by_rule.get(rule)
        return proc if proc is not None and proc.handler == action else None

    async def run(self, proc: Proc, state: str, count: int) -> str:
        """Runs the handler of `proc` to completion and logs how it ended.

        Args:
            proc: a proc with a handler.
            state: the module's state, the handler's second argument.
            count: the matching processes errd found (`COUNT`).

        Returns:
            A short outcome for `state` ("handler exited with code 0", ...).
        """
        handler, rule, resource = proc.handler, proc_rule(proc.name), f"proc.{proc.name}"
        assert handler is not None
        if proc.name in self.running:
            self.log.write(
                f"Handler {handler} of {resource} is still running: not started again", level="E", initiator=rule
            )
            return "handler still running"
        self.running.add(proc.name)
        self.log.write(
            f"Handler {handler} of {resource} started ({proc.name} {state}; {count} process(es) running): "
            "it does not count against maxloop, what it runs with `mirrorctl -i` does",
            initiator=rule,
        )
        env = {"RESOURCE": resource, "MIRRORCORE_RESOURCE": resource, "COUNT": str(count)}
        try:
            result = await self.runner.run_program(
                Path(handler), (proc.name, state), limit=proc.handler_timeout, env=env
            )
        finally:
            self.running.discard(proc.name)
        where = f" (output in {self.runner.log_file})" if result.returncode is not None else ""
        self.log.write(
            f"Handler of {resource}: {result.detail}{where}", level="I" if result.ok else "E", initiator=rule
        )
        if result.returncode is None:
            return "handler could not run"
        if result.returncode < 0:
            return f"handler killed (signal {-result.returncode})"
        return f"handler exited with code {result.returncode}"
