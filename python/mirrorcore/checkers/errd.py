"""errd: process monitoring by scanning /proc (SPEC §5).

`proc.<name>` is down when fewer than `atleast` or more than `atmax` matching processes run.
A process matches by `name` (its command name or the base name of argv[0]), by `nameregex`
(the same names, whole match) or by `argregex` (searched in the whole command line).
Zombies do not count: they are dead, only not yet reaped.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from mirrorcore.checkers._loop import StateFn, is_active, log, wait_state
from mirrorcore.checkers.resources import Resources

__all__ = ["ErrdWatcher", "ProcMatch", "count_processes"]

_PROC = Path("/proc")


class ProcLike(Protocol):
    """What errd needs of `config.Proc` (`nameregex`/`argregex` are optional attributes)."""

    @property
    def name(self) -> str: ...
    @property
    def atleast(self) -> int: ...
    @property
    def atmax(self) -> int | None: ...
    @property
    def cls(self) -> str: ...


class ErrdLike(Protocol):
    """What errd needs of `config.Errd`."""

    @property
    def polltimer(self) -> float: ...
    @property
    def procs(self) -> tuple[ProcLike, ...]: ...


@dataclass(frozen=True)
class ProcMatch:
    """How processes are recognised; without regexes, by `name`."""

    name: str
    nameregex: str | None = None
    argregex: str | None = None

    @classmethod
    def of(cls, proc: ProcLike) -> ProcMatch:
        return cls(proc.name, getattr(proc, "nameregex", None), getattr(proc, "argregex", None))

    def matches(self, comm: str, argv: list[str]) -> bool:
        names = {comm, os.path.basename(argv[0])} if argv else {comm}
        if self.argregex is not None:
            return bool(argv) and re.search(self.argregex, " ".join(argv)) is not None
        if self.nameregex is not None:
            return any(re.fullmatch(self.nameregex, n) for n in names)
        # comm is cut to 15 characters by the kernel
        return self.name in names or (len(self.name) > 15 and comm == self.name[:15])


def _read(pid_dir: Path) -> tuple[str, list[str]] | None:
    try:
        stat = (pid_dir / "stat").read_text()
        cmdline = (pid_dir / "cmdline").read_bytes()
    except OSError:
        return None  # gone meanwhile, or not ours to read
    # "pid (comm) S ...": comm may contain spaces and parentheses, the state follows the last ")"
    open_, close = stat.find("("), stat.rfind(")")
    if open_ < 0 or close < 0 or stat[close + 2 : close + 3] in ("Z", "X"):
        return None
    argv = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    return stat[open_ + 1 : close], argv


def count_processes(matches: list[ProcMatch], *, proc_root: Path = _PROC) -> list[int]:
    """Counts the live processes that match each of `matches` in one pass over /proc (blocking)."""
    counts = [0] * len(matches)
    me = os.getpid()
    for entry in proc_root.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        info = _read(entry)
        if info is None:
            continue
        for i, m in enumerate(matches):
            if m.matches(*info):
                counts[i] += 1
    return counts


def _value(proc: ProcLike, count: int) -> str:
    if count < proc.atleast or (proc.atmax is not None and count > proc.atmax):
        return "down"
    return "up"


class ErrdWatcher:
    """Counts every `<proc>` each `polltimer` seconds; each is watched in the states of its `class`.

    `mirrorctl errd off` is the daemon passing a `state` that answers "STOP" meanwhile.
    """

    def __init__(self, errd: ErrdLike, state: StateFn, *, proc_root: Path = _PROC) -> None:
        self.errd = errd
        self.state = state
        self.proc_root = proc_root
        self.matches = [ProcMatch.of(p) for p in errd.procs]
        self.counts: dict[str, int] = {}

    async def poll(self, resources: Resources) -> None:
        """One pass: counts the processes and sets `proc.<name>` (unknown while not watched)."""
        state = self.state()
        active = [is_active(p.cls, state) for p in self.errd.procs]
        if any(active):
            counts = await trio.to_thread.run_sync(lambda: count_processes(self.matches, proc_root=self.proc_root))
        else:
            counts = [self.counts.get(p.name, 0) for p in self.errd.procs]  # nothing watched: spare the /proc scan
        state = self.state()  # a script may have run meanwhile: judge by the state now
        for proc, count, was in zip(self.errd.procs, counts, active, strict=True):
            name = f"proc.{proc.name}"
            self.counts[proc.name] = count
            value = _value(proc, count) if was and is_active(proc.cls, state) else "unknown"
            if resources.set(name, value, by="errd"):
                log.info("resource %s set to %s (%d running, atleast %d)", name, value, count, proc.atleast)

    async def run(self, resources: Resources, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Polls until cancelled. Becoming active (start_prim returned) triggers a pass at once."""
        for proc in self.errd.procs:
            resources.declare(f"proc.{proc.name}", by="errd")
        task_status.started()
        while True:
            await self.poll(resources)
            changed = functools.partial(self._changed, self._activity())
            await wait_state(changed, deadline=trio.current_time() + self.errd.polltimer)

    def _changed(self, before: tuple[bool, ...]) -> bool:
        return self._activity() != before

    def _activity(self) -> tuple[bool, ...]:
        state = self.state()
        return tuple(is_active(p.cls, state) for p in self.errd.procs)
