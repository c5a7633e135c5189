"""The module log: one line per event, with the node and who initiated it (SPEC §1).

Lines look like ``2026-11-26 10:20:18.123 I node1 [admin] Action start``. Each line
is written with one O_APPEND write so that the daemon, scripts (`mirrorctl printe`)
and the CLI can log concurrently without tearing lines.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

LEVELS = {"I": "info", "E": "error"}


class ModuleLog:
    """Appends event lines to `<log dir>/module.log`."""

    def __init__(self, log_dir: Path, node: str) -> None:
        self.path = log_dir / "module.log"
        self.node = node

    def write(self, message: str, *, level: str = "I", initiator: str | None = None) -> None:
        """Appends one line; `initiator` None means an administrator (shown as "admin")."""
        if level not in LEVELS:
            raise ValueError(f"log level must be one of {sorted(LEVELS)}")
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        text = " ".join(message.split())  # one event, one line
        line = f"{stamp} {level} {self.node} [{initiator or 'admin'}] {text}\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def tail(self, lines: int) -> list[str]:
        """The last `lines` lines of the log (all of them when `lines` <= 0)."""
        try:
            content = self.path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return content if lines <= 0 else content[-lines:]
