"""The command protocol between `mirrorctl` and a module's daemon.

One JSON object per line over the module's Unix socket: the CLI sends
``{"cmd": ..., "args": {...}, "initiator": ...}`` and reads back one reply
``{"ok": bool, "message": str, "status": {...}}``. The HTTP API answers with the
same status objects, so the CLI, the API and the daemon speak one language.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

MAX_LINE = 1 << 20


class DaemonNotRunning(Exception):
    """Nobody listens on the module's control socket."""


@dataclass(frozen=True)
class Request:
    """A command for the daemon; `initiator` is None when an administrator typed it."""

    cmd: str
    args: dict[str, Any] = field(default_factory=dict)
    initiator: str | None = None

    def encode(self) -> bytes:
        return json.dumps({"cmd": self.cmd, "args": self.args, "initiator": self.initiator}).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Request:
        raw = json.loads(line)
        if not isinstance(raw, dict) or not isinstance(raw.get("cmd"), str):
            raise ValueError("a request is a JSON object with a string 'cmd'")
        args = raw.get("args") or {}
        initiator = raw.get("initiator")
        if not isinstance(args, dict) or not (initiator is None or isinstance(initiator, str)):
            raise ValueError("'args' must be an object and 'initiator' a string or null")
        return cls(cmd=raw["cmd"], args=args, initiator=initiator)


@dataclass(frozen=True)
class Reply:
    """The daemon's answer: `ok` False means refused, and `message` says why."""

    ok: bool
    message: str
    status: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps({"ok": self.ok, "message": self.message, "status": self.status}).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Reply:
        raw = json.loads(line)
        return cls(ok=bool(raw["ok"]), message=str(raw["message"]), status=dict(raw.get("status") or {}))


Handler = Callable[[Request], Awaitable[Reply]]


async def serve(path: Path, handle: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serves requests on a Unix socket at `path` until cancelled.

    A stale socket file left by a dead daemon is replaced; a live one means a
    second daemon for the same module, which is refused.
    """
    _claim_socket_path(path)
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    os.chmod(path, 0o600)  # only root talks to the daemon
    listener.listen(16)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(_serve_one, trio.SocketStream(conn), handle)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _claim_socket_path(path: Path) -> None:
    """Removes a stale socket left by a dead daemon; a live one means a second daemon, refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        if _is_listening(path):
            raise RuntimeError(f"another daemon already serves {path}; stop it first (mirrorctl stop)")
        path.unlink()


async def _serve_one(stream: trio.SocketStream, handle: Handler) -> None:
    async with stream:
        buffer = b""
        with trio.move_on_after(10):
            while b"\n" not in buffer and len(buffer) < MAX_LINE:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffer += chunk
        line = buffer.split(b"\n", 1)[0]
        try:
            request = Request.decode(line)
        except ValueError as exc:
            reply = Reply(ok=False, message=f"malformed request: {exc}")
        else:
            reply = await handle(request)
        # A client that gave up waiting breaks the stream; the command still took effect.
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(reply.encode())


def _is_listening(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def call(path: Path, request: Request, *, timeout: float = 30.0) -> Reply:
    """Sends one request to the daemon listening at `path` and returns its reply.

    Raises:
        DaemonNotRunning: nothing listens on `path`.
        TimeoutError: the daemon did not answer within `timeout` seconds.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(str(path)) from exc
        sock.sendall(request.encode())
        buffer = b""
        while b"\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"the daemon at {path} closed the connection without answering")
            buffer += chunk
        return Reply.decode(buffer.split(b"\n", 1)[0])
    except TimeoutError as exc:
        raise TimeoutError(f"the daemon at {path} did not answer within {timeout:.0f}s") from exc
    finally:
        sock.close()


def is_running(path: Path) -> bool:
    """True when a daemon answers on the control socket at `path`."""
    return _is_listening(path)
