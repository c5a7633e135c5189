"""HTTP on each node (SPEC §9): health checks for load balancers and the JSON status.

- ``GET /var/modules/<M>/ready.txt``: 200 ``OK`` when this node is PRIM or ALONE and
  ready (green), else 404 — the product's load-balancer health check.
- ``GET /primary`` / ``/secondary``: 200 when this node is the ready primary /
  a ready secondary, else 503; ``/health``: 200 unless the module is blocked (red).
- ``GET /api/state``: the same JSON as ``mirrorctl state --json``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

StatusSource = Callable[[], dict[str, Any]]

PRIMARY_STATES = ("PRIM", "ALONE")


def _is_ready_primary(status: dict[str, Any]) -> bool:
    return status.get("state") in PRIMARY_STATES and status.get("color") == "green"


def create_app(module: str, status: StatusSource) -> Starlette:
    """Builds the ASGI app of one module; `status` returns the current status object."""

    async def ready(request: Request) -> Response:
        if request.path_params["module"] == module and _is_ready_primary(status()):
            return PlainTextResponse("OK\n")
        return PlainTextResponse("NOT FOUND\n", status_code=404)

    async def primary(_: Request) -> Response:
        current = status()
        return _verdict(_is_ready_primary(current), current)

    async def secondary(_: Request) -> Response:
        current = status()
        return _verdict(current.get("state") == "SECOND" and current.get("color") == "green", current)

    async def health(_: Request) -> Response:
        current = status()
        return _verdict(current.get("color") != "red", current)

    async def api_state(_: Request) -> Response:
        return JSONResponse(status())

    return Starlette(
        routes=[
            Route("/var/modules/{module}/ready.txt", ready),
            Route("/primary", primary),
            Route("/secondary", secondary),
            Route("/health", health),
            Route("/api/state", api_state),
        ]
    )


def _verdict(good: bool, status: dict[str, Any]) -> Response:
    text = f"{status.get('state')} {status.get('color')}: {status.get('reason', '')}\n"
    return PlainTextResponse(text, status_code=200 if good else 503)


async def serve(
    module: str,
    status: StatusSource,
    port: int,
    *,
    host: str = "0.0.0.0",
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serves the module's HTTP endpoints on `host:port` until cancelled."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.5
    await trio.lowlevel.checkpoint()
    # Starlette's ASGI signature is looser than hypercorn's annotation; they interoperate at run time.
    app: Any = create_app(module, status)
    await hypercorn_serve(app, config, mode="asgi", task_status=_Started(task_status))


class _Started:
    """Adapts hypercorn's `started(binds)` to a task status that wants no value."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self._inner = inner

    def started(self, value: object = None) -> None:
        self._inner.started()
