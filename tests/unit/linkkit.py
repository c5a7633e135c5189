"""Shared by the native link tests: the cluster key of their loopback links, and `Valve`.

`Valve` is a loopback TCP relay between a Forwarder and a Receiver whose forward direction can be
held shut. What the primary sends while it is shut reaches the secondary later, as over a slow link
(or never, if the relay is closed first): used to test replicated times and tracking of
unacknowledged writes. The `roots` and `receiver` fixtures are in conftest.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading

KEY = b"cluster key for the native link tests"


class Valve:
    """A TCP relay whose primary-to-secondary direction can be held shut (nothing reaches the secondary)."""

    def __init__(self, upstream_port: int) -> None:
        self.port_to = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.sockets: list[socket.socket] = [self.listener]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        try:
            down, _ = self.listener.accept()
            up = socket.create_connection(("127.0.0.1", self.port_to))
        except OSError:
            return
        self.sockets += [down, up]
        for src, dst, gated in [(down, up, True), (up, down, False)]:
            t = threading.Thread(target=self._relay, args=(src, dst, gated), daemon=True)
            t.start()
            self.threads.append(t)

    def _relay(self, src: socket.socket, dst: socket.socket, gated: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if gated:
                    self.flowing.wait()
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        """Cuts both connections at once (shutdown wakes the relays blocked in recv; close alone would not)."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.flowing.set()
        for sock in self.sockets:
            sock.close()
        for t in self.threads:
            t.join(10)
