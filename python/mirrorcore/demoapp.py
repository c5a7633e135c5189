"""The demo's application: a small HTTP key-value service, and a client for it.

``python -m mirrorcore.demoapp serve --port 8080 --data /srv/demo/data`` stores each
value as a file under the data directory and makes it durable (fsync of the file
and of the directory) before answering, as a database would at commit.
``get URL`` and ``put URL VALUE`` are the client side, used from the lab's client.

SIGUSR1 makes the server stop answering (it closes its port) while the process lives on,
as a hung application would: what the demo's `tcp` checker is there to notice.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def store(data_dir: Path, key: str, value: bytes) -> None:
    """Writes `value` under `key` durably: temp file, fsync, rename, fsync of the directory."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{key}.tmp"
    with tmp.open("wb") as f:
        f.write(value)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(data_dir / key)
    dir_fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def make_handler(data_dir: Path, node: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _key(self) -> str | None:
            if not self.path.startswith("/kv/"):
                return None
            key = self.path[len("/kv/") :]
            return key if key and set(key) <= KEY_CHARS and not key.startswith(".") else None

        def _answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Served-By", node)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/":
                self._answer(200, f"mirrorcore demo app on {node}\n".encode())
                return
            key = self._key()
            if key is None:
                self._answer(400, b"use /kv/<key>\n")
                return
            try:
                self._answer(200, (data_dir / key).read_bytes())
            except FileNotFoundError:
                self._answer(404, b"no such key\n")

        def do_PUT(self) -> None:
            key = self._key()
            if key is None:
                self._answer(400, b"use /kv/<key>\n")
                return
            length = int(self.headers.get("Content-Length", "0"))
            store(data_dir, key, self.rfile.read(length))
            self._answer(201, f"stored on {node}\n".encode())

    return Handler


def serve(port: int, data_dir: Path) -> None:
    node = os.environ.get("NODE", socket.gethostname())
    server = ThreadingHTTPServer(("0.0.0.0", port), make_handler(data_dir, node))
    server.daemon_threads = True
    # shutdown() waits for serve_forever to return, so it cannot run in the handler's (main) thread.
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    server.server_close()
    threading.Event().wait()  # hung: alive, port closed, until killed


def request(method: str, url: str, body: bytes | None = None, timeout: float = 3.0) -> tuple[int, str, str]:
    """One HTTP request; returns (status, served-by node, body)."""
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("X-Served-By", "?"), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("X-Served-By", "?"), exc.read().decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mirrorcore.demoapp")
    sub = parser.add_subparsers(dest="cmd", required=True)
    srv = sub.add_parser("serve")
    srv.add_argument("--port", type=int, default=8080)
    srv.add_argument("--data", type=Path, default=Path("/srv/demo/data"))
    srv.add_argument("--lab", default="", help="the lab's name, so that errd tells labs sharing /proc apart")
    get = sub.add_parser("get")
    get.add_argument("url")
    put = sub.add_parser("put")
    put.add_argument("url")
    put.add_argument("value")
    for client in (get, put):
        client.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.port, args.data)
        return 0
    try:
        if args.cmd == "get":
            code, node, body = request("GET", args.url, timeout=args.timeout)
        else:
            code, node, body = request("PUT", args.url, args.value.encode(), timeout=args.timeout)
    except OSError as exc:
        print(f"unreachable: {exc}", file=sys.stderr)
        return 2
    print(f"{code} {node} {body.strip()}")
    return 0 if code < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
