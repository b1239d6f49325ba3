"""The FastAPI app: the protocols the server speaks, registered the same way over the
shared parts, behind the same guards.

`create_app` only assembles. Around every request, from the outside in: the request
counter (metrics.py), the error shaper (errors.py: every error in the shape of the
protocol whose path the request took), the request limit and the body's size and time
(connections.py), the Host check (net.py). Then each protocol (protocol.py: `Protocol`)
adds its routes to a router that checks the API key where the protocol's clients send
it (guard.py), over a `ServerContext`: the engine, the guard (which also reads and
checks each body), the metrics and the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from fastapi import APIRouter, FastAPI

from . import web
from .connections import BodyLimit, RequestLimit, default_max_connections
from .defaults import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES
from .engine import Engine
from .errors import Errors, ErrorShapes, install_error_handlers
from .guard import Guard
from .metrics import Metrics, RequestCounter
from .net import AllowedHosts
from .protocol import Protocol, ServerContext, error_shapes
from .protocols import anthropic, health, ollama, openai, prometheus, responses
from .record import Recorder

# Every protocol the server speaks; errors on a path no prefix claims are OpenAI's.
PROTOCOLS: tuple[Protocol, ...] = (
    health.PROTOCOL,
    openai.PROTOCOL,
    responses.PROTOCOL,
    anthropic.PROTOCOL,
    ollama.PROTOCOL,
    prometheus.PROTOCOL,
    web.PROTOCOL,
)


def create_app(
    engine: Engine,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allowed_hosts: Sequence[str] | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    web_home: str | Path | None = None,
    max_connections: int | None = None,
    record: str | Path | None = None,
) -> FastAPI:
    """The FastAPI app serving `engine`. With `api_key`, every route but /health needs
    it (as each protocol's clients send it). With `allowed_hosts`, a request whose Host
    header names another host is refused: a web page cannot reach a loopback server by
    pointing its own domain at 127.0.0.1 (DNS rebinding). A body larger than
    `max_body_bytes` gets 413, one that has not arrived `body_timeout` seconds after its
    headers 408. At most `max_connections` requests are in progress at once (default:
    what the engine runs and queues, and a margin; see `connections.py`). The web chat
    answers `/`, with the chats under `web_home` (default: the store's). With `record`,
    every API request is appended to that file (`record.py`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # uvicorn ends the process on SIGTERM as soon as it returns: the prompt caches
        # go to --cache-dir while the app shuts down, not after
        await asyncio.to_thread(engine.persist)

    app = FastAPI(
        title="qwen-mlx", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    shapes = ErrorShapes(error_shapes(PROTOCOLS))
    install_error_handlers(app, shapes)
    if record is not None:  # inside the body limit: what it refuses is not a request
        app.add_middleware(Recorder, path=record)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout=body_timeout)
    if allowed_hosts is not None:
        app.add_middleware(AllowedHosts, hosts=allowed_hosts)
    if max_connections is None:
        max_connections = default_max_connections(engine.max_batch, engine.max_queue)
    app.add_middleware(RequestLimit, limit=max_connections)
    app.state.max_connections = max_connections  # server_config bounds the sockets by it
    app.add_middleware(Errors, shapes=shapes)
    metrics = Metrics(engine)
    app.add_middleware(RequestCounter, metrics=metrics, routes=app)
    guard = Guard(engine, api_key)
    ctx = ServerContext(engine, guard, metrics, app.state, web_home=web_home)
    for protocol in PROTOCOLS:
        router = APIRouter(dependencies=guard.key_check(protocol.key))
        protocol.install(router, ctx)
        app.include_router(router)
    return app
