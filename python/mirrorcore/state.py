"""Durable node state of one module: what must survive a crash or a reboot (SPEC §1, DESIGN).

Written atomically (temporary file, fsync, rename, fsync of the directory), so after a crash the
file holds either the old or the new state, never a mix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_NAME = "durable.json"
LAST_STATUS_NAME = "last_status.json"


@dataclass(frozen=True)
class Durable:
    """What a node remembers of itself across restarts.

    Attributes:
        uptodate: the local copy of the replicated data is complete and current.
        generation: bumped each time a node becomes primary alone; the higher one has the newer data.
        sync_timestamp: wall-clock time of the last moment both copies were known identical.
        failover_override: `mirrorctl failover on|off` given at run time; None means "as configured".
        clean_stop: the module stopped cleanly (bitmaps were saved and can be trusted).
    """

    uptodate: bool = False
    generation: int = 0
    sync_timestamp: float | None = None
    failover_override: bool | None = None
    clean_stop: bool = False


class DurableStateError(Exception):
    """The durable state file cannot be used; the message names the file and the fix."""


def _check(name: str, value: object) -> None:
    ok: bool
    if name in ("uptodate", "clean_stop"):
        ok = isinstance(value, bool)
    elif name == "generation":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    elif name == "sync_timestamp":
        ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    else:  # failover_override
        ok = value is None or isinstance(value, bool)
    if not ok:
        raise ValueError(f"bad value for {name}: {value!r}")


class DurableStore:
    """Loads and saves a module's `Durable` state in `<dir>/durable.json`."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.file = dir / FILE_NAME

    def load(self) -> Durable:
        """Reads the saved state.

        Returns:
            The saved state, or the defaults (not uptodate, generation 0) when nothing was saved yet.

        Raises:
            DurableStateError: the file exists but is not a valid state file.
        """
        try:
            raw = self.file.read_bytes()
        except FileNotFoundError:
            return Durable()
        except OSError as e:
            raise DurableStateError(f"{self.file}: cannot read ({e}). Fix: check permissions; run as root.") from None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            fields = {f.name for f in dataclasses.fields(Durable)}
            values = {k: v for k, v in data.items() if k in fields}
            for k, v in values.items():
                _check(k, v)
            if values.get("sync_timestamp") is not None:
                values["sync_timestamp"] = float(values["sync_timestamp"])
            return Durable(**values)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise DurableStateError(
                f"{self.file}: corrupt durable state ({e}). Fix: restore it from a backup, or delete it and start "
                "this node with `mirrorctl second` so it resyncs from its peer (it will count as not uptodate)."
            ) from None

    def save(self, durable: Durable) -> None:
        """Writes the state atomically and durably.

        Args:
            durable: the state to save.
        """
        self._write(self.file, json.dumps(dataclasses.asdict(durable), indent=1, sort_keys=True))

    @property
    def last_status_file(self) -> Path:
        return self.dir / LAST_STATUS_NAME

    def save_last_status(self, status: Mapping[str, Any]) -> None:
        """Saves the daemon's last status (shown by `state` while the module is stopped), atomically.

        Args:
            status: a JSON-able mapping; values JSON cannot represent are written as strings.
        """
        self._write(self.last_status_file, json.dumps(status, indent=1, sort_keys=True, default=str))

    def load_last_status(self) -> dict[str, Any] | None:
        """The last status saved, or None if there is none or it cannot be read (it is informative only)."""
        try:
            data = json.loads(self.last_status_file.read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write(self, path: Path, text: str) -> None:
        write_atomic(path, text)


def write_atomic(path: Path, text: str) -> None:
    """Temporary file, fsync, rename, fsync of the directory: after a crash, the old content or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per write: two threads may write the same record at once (the last rename wins).
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write((text + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename is durable only once the directory entry itself is on disk.
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
