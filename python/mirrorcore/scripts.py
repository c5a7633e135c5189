"""Runs a module's scripts (prestart, start_prim, stop_prim, poststop, ...) as SPEC §4 describes.

Each script gets `current next action` as arguments and the module's `<var>`s in its environment;
its output is appended to `script.log`. Stop scripts that do not finish within `nicestoptimeout`
are run again with `force` as the action, and that run is killed, with every process it started,
after `forcestoptimeout`.

`run_program` runs another program of the module (an errd `<proc>` handler) the same way: same
environment plus what the caller adds, output in `script.log`, killed with its children at a timeout.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

OPTIONAL = frozenset({"start_second", "stop_second", "start_both", "stop_both", "transition"})
STOP_SCRIPTS = frozenset({"stop_prim", "stop_second", "stop_both", "poststop"})
LOG_NAME = "script.log"
_TAIL_BYTES = 4096
_TAIL_LINES = 3


@dataclass(frozen=True)
class ScriptResult:
    """How a script run ended.

    Attributes:
        script: the script's name.
        ok: it ran and exited 0 (or is optional and absent).
        returncode: the last run's exit status (negative: killed by that signal); None if not run.
        detail: one line: what happened and the last lines the script printed.
        skipped: an optional script that does not exist.
    """

    script: str
    ok: bool
    returncode: int | None
    detail: str
    skipped: bool = False


class ScriptRunner:
    """Runs the scripts of one module from its bin directory."""

    def __init__(
        self,
        module: str,
        bin_dir: Path,
        log_dir: Path,
        env: Mapping[str, str],
        nicestoptimeout: float,
        forcestoptimeout: float,
        *,
        node: str | None = None,
    ) -> None:
        """Prepares the runner.

        Args:
            module: the module's name (MODULE and MIRRORCORE_MODULE in the scripts' environment).
            bin_dir: where the scripts are.
            log_dir: where `script.log` is appended.
            env: the module's `<var>`s.
            nicestoptimeout: seconds a stop script may take before it is re-run with `force`.
            forcestoptimeout: seconds the `force` run may take before it is killed.
            node: the local node's name (NODE in the environment).
        """
        self.module = module
        self.bin_dir = bin_dir
        self.log_dir = log_dir
        self.env = dict(env)
        self.nicestoptimeout = nicestoptimeout
        self.forcestoptimeout = forcestoptimeout
        self.node = node

    @property
    def log_file(self) -> Path:
        return self.log_dir / LOG_NAME

    def _environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra or {})
        env["MODULE"] = env["MIRRORCORE_MODULE"] = self.module
        if self.node is not None:
            env["NODE"] = self.node
        # Scripts call `mirrorctl printe ...`; it sits next to the interpreter running the daemon.
        here = os.path.dirname(sys.executable)
        env["PATH"] = here + os.pathsep + env.get("PATH", os.defpath)
        return env

    async def run(self, script: str, current: str, next: str, action: str) -> ScriptResult:
        """Runs one script to completion (stop scripts: with the nice/force timeouts).

        Args:
            script: its name in the bin directory, e.g. "start_prim".
            current: the state the module is in, e.g. "WAIT".
            next: the state it is going to.
            action: why, e.g. "start", "stop", "restart".

        Returns:
            The outcome; never raises for a script failure.
        """
        path = self.bin_dir / script
        if not path.exists():
            if script in OPTIONAL:
                return ScriptResult(script, True, None, f"no {script} script: nothing to do", skipped=True)
            return ScriptResult(
                script, False, None, f"{path} is missing. Fix: create it (see the module skeleton) and chmod +x it."
            )
        if not os.access(path, os.X_OK):
            return ScriptResult(script, False, None, f"{path} is not executable. Fix: chmod +x {path}.")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        args = (current, next, action)
        if script not in STOP_SCRIPTS:
            # Start scripts may legitimately take long (recovering a database): no timeout.
            rc, killed, tail = await self._run_once(path, args, None)
            return self._result(script, action, rc, killed, tail, None)
        rc, killed, tail = await self._run_once(path, args, self.nicestoptimeout)
        if not killed:
            return self._result(script, action, rc, killed, tail, None)
        nice = f"did not finish within nicestoptimeout={self.nicestoptimeout:g}s; re-run with force"
        rc, killed, tail = await self._run_once(path, (current, next, "force"), self.forcestoptimeout)
        if killed:
            return self._result(
                script, "force", rc, killed, tail, f"{nice}, killed after forcestoptimeout={self.forcestoptimeout:g}s"
            )
        return self._result(script, "force", rc, killed, tail, nice)

    async def run_program(
        self, path: Path, args: Sequence[str], *, limit: float, env: Mapping[str, str] | None = None
    ) -> ScriptResult:
        """Runs a program that is not one of the module's scripts, as the scripts are run.

        Args:
            path: the program (absolute).
            args: its arguments.
            limit: seconds it may take; then it is killed with every process it started.
            env: variables added to the scripts' environment.

        Returns:
            The outcome (`script` is the program's path); never raises for a program failure.
        """
        name = str(path)
        if not os.access(path, os.X_OK):
            missing = not os.access(path, os.F_OK)
            what = "is missing" if missing else "is not executable"
            fix = "create it and chmod +x it" if missing else f"chmod +x {path}"
            return ScriptResult(name, False, None, f"{path} {what}. Fix: {fix}.")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            rc, killed, tail = await self._run_once(path, tuple(args), limit, env)
        except OSError as e:
            return ScriptResult(name, False, None, f"{path} could not be run: {e.strerror or e}")
        ok = rc == 0 and not killed
        why = f"{path} killed after its time limit of {limit:g}s" if killed else f"{path} exited with code {rc}"
        return ScriptResult(name, ok, rc, why + (": " + " | ".join(tail) if tail else ""))

    def _result(
        self, script: str, action: str, rc: int | None, killed: bool, tail: list[str], why: str | None
    ) -> ScriptResult:
        ok = rc == 0 and not killed
        if why is None:
            why = f"{script} {action} " + ("done" if ok else f"failed with exit code {rc}")
        elif not killed:
            why += ": " + ("done" if ok else f"failed with exit code {rc}")
        detail = why + (": " + " | ".join(tail) if tail else "")
        return ScriptResult(script, ok, rc, detail)

    async def _run_once(
        self, path: Path, args: tuple[str, ...], limit: float | None, env: Mapping[str, str] | None = None
    ) -> tuple[int, bool, list[str]]:
        """Returns (exit status, killed at the time limit, last output lines)."""
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        header = f"=== {stamp} {self.module} {path.name} {' '.join(args)}\n".encode()
        # The script writes straight to the log file rather than through a pipe: a start script that
        # leaves a daemon running in the background must not keep us waiting for an end of file.
        fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, header)
            start = os.lseek(fd, 0, os.SEEK_END)
            proc = await trio.lowlevel.open_process(
                [str(path), *args],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env=self._environ(env),
                cwd=str(self.bin_dir),
                start_new_session=True,  # its own process group, so a kill reaches every child
            )
        finally:
            os.close(fd)
        killed = False
        try:
            if limit is None:
                await proc.wait()
            else:
                with trio.move_on_after(limit) as scope:
                    await proc.wait()
                if scope.cancelled_caught:
                    killed = True
                    _kill_group(proc.pid)
        finally:
            if proc.returncode is None:
                # Cancelled by the caller (daemon shutting down): do not leave the script behind.
                _kill_group(proc.pid)
                with trio.CancelScope(shield=True):
                    await proc.wait()
        with trio.CancelScope(shield=True):
            await proc.wait()
        if killed:
            _append(self.log_file, f"=== {path.name}: killed after {limit:g}s\n")
        rc = proc.returncode
        assert rc is not None  # waited for above
        return rc, killed, _tail(self.log_file, start)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _append(file: Path, text: str) -> None:
    with open(file, "ab") as f:
        f.write(text.encode())


def _tail(file: Path, start: int) -> list[str]:
    """The last non-empty lines written to `file` after offset `start`."""
    with open(file, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        f.seek(max(start, end - _TAIL_BYTES))
        text = f.read().decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("=== ")]
    return lines[-_TAIL_LINES:]
