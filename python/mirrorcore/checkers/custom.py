"""The `custom` checker: a long-running program of the user's that reports `custom.<ident>` itself.

The program runs while `when` holds and is stopped (SIGTERM, then SIGKILL after 5 s) when it no
longer does. It reports with `mirrorctl -m $MIRRORCORE_MODULE set -r $MIRRORCORE_RESOURCE -v down`
(or `up`), which reaches the daemon as the control request
`{"cmd": "set", "args": {"resource": "custom.app", "value": "down"}, "initiator": ...}`; the daemon
answers it with `Resources.set(resource, value, by=initiator or "admin")`.

A program that exits on its own can no longer vouch for anything: the resource goes down and the
program is started again after `restart_delay` seconds.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import trio

from mirrorcore._config_check import CustomCheck
from mirrorcore.checkers._loop import StateFn, is_active, log, wait_state
from mirrorcore.checkers.resources import Resources

__all__ = ["CustomChecker"]


class CustomChecker:
    """Keeps the configured program running while `when` holds."""

    def __init__(
        self,
        check: CustomCheck,
        state: StateFn,
        *,
        module: str,
        bin_dir: Path,
        log_file: Path | None = None,
        restart_delay: float = 10.0,
    ) -> None:
        """Prepares the checker.

        Args:
            check: the `<custom>` element.
            state: the module state as checkers see it.
            module: the module name, given to the program in MIRRORCORE_MODULE.
            bin_dir: where a relative `exec` is looked up.
            log_file: where the program's output goes (appended); discarded when None.
            restart_delay: seconds before a program that exited is started again.
        """
        self.check = check
        self.state = state
        self.module = module
        self.resource = f"custom.{check.ident}"
        exe = Path(check.exec)
        self.argv = [str(exe if exe.is_absolute() else bin_dir / exe), *check.args]
        self.log_file = log_file
        self.restart_delay = restart_delay
        self.runs = 0  # how many times the program was started

    def _active(self) -> bool:
        return is_active(self.check.when, self.state())

    async def run(self, resources: Resources, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs the program whenever active, until cancelled."""
        resources.declare(self.resource, by=self.resource)
        task_status.started()
        while True:
            if not self._active():
                resources.set(self.resource, "unknown", by=self.resource)
                await wait_state(self._active)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._supervise, resources)
                await wait_state(lambda: not self._active())
                nursery.cancel_scope.cancel()

    async def _supervise(self, resources: Resources) -> None:
        env = dict(os.environ, MIRRORCORE_MODULE=self.module, MIRRORCORE_RESOURCE=self.resource)
        while True:
            self.runs += 1
            log.info("checker %s: starting %s", self.resource, " ".join(self.argv))
            out = self.log_file.open("ab") if self.log_file is not None else None
            try:
                result = await trio.run_process(
                    self.argv,
                    check=False,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out if out is not None else subprocess.DEVNULL,
                    stderr=subprocess.STDOUT if out is not None else subprocess.DEVNULL,
                )
                why = f"exited with status {result.returncode}"
            except OSError as e:
                why = f"cannot be started: {e}"
            finally:
                if out is not None:
                    out.close()
            log.warning("checker %s: %s %s; restarting it in %gs", self.resource, self.argv[0], why, self.restart_delay)
            resources.set(self.resource, "down", by=self.resource)
            await trio.sleep(self.restart_delay)
