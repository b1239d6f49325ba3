"""How many requests the server takes at once, how large and slow their bodies may be, and
how uvicorn serves the app: time limits on slow clients and a bound on open sockets that
a flood of them cannot turn into a lockout.

- Requests (`RequestLimit`, an ASGI middleware): at most `max_connections` in progress
  (default: every request the engine can hold, `--max-batch` + `--max-queue`, and
  `CONNECTION_HEADROOM` more for those being read or prepared), so the engine's own queue limit
  answers first. Past it a request gets 503 in its protocol's shape (see errors.py) with
  Retry-After. Requests that
  only read (GET, HEAD, OPTIONS, DELETE: /health, /metrics, model lists, stored
  responses) have `RESERVE` places more, so they answer while generation is full.
- Bodies (`BodyLimit`, an ASGI middleware): larger than `--max-body-bytes`, a 413 before
  any route parses them; not arrived in time, a 408.
- Slow clients (the HTTP protocol, `server_config`): uvicorn closes idle keep-alive
  connections, but a connection that sends part of its request headers and then nothing
  stays open for ever (slowloris: a few dozen such sockets held a server, before any route
  or API key check runs). So a connection whose request headers are not complete
  `header_timeout` seconds after it opened or after its last response is closed, and
  `BodyLimit` gives up on a body that does not arrive in time.
- Open sockets: at most `max_connections` + 2 x `RESERVE`. A new connection past that
  closes the one that has waited longest for its request headers (idle, or trickling
  them); only when every socket is busy with a request is the new one closed. uvicorn's
  own `limit_concurrency` is not used: it counts idle and half-open sockets alike and
  answers /health too with a plain-text 503.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .defaults import (
    CONNECTION_HEADROOM,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEP_ALIVE,
    RETRY_AFTER,
)

RESERVE = 16  # places more for requests that only read
_DRAIN_LIMIT = 64 << 20  # an oversized body is read and dropped up to here, then cut off
_READING = frozenset(("GET", "HEAD", "OPTIONS", "DELETE"))


def default_max_connections(max_batch: int, max_queue: int) -> int:
    """Requests in progress at most: all the engine runs and queues, and
    `CONNECTION_HEADROOM` more."""
    return max_batch + max_queue + CONNECTION_HEADROOM


class RequestLimit:
    """ASGI middleware: at most `limit` requests in progress (`RESERVE` more for reading
    ones); past that, 503 with Retry-After (see the module docstring). It runs on the
    event loop only, so a plain counter is safe."""

    def __init__(self, app: Any, limit: int) -> None:
        if limit < 1:
            raise ValueError("max_connections must be at least 1.")
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        room = self.limit + (RESERVE if scope.get("method") in _READING else 0)
        if self.active >= room:
            raise _busy(self.active, self.limit)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def _busy(active: int, limit: int) -> Any:
    from .errors import APIError

    return APIError(
        503,
        f"The server is busy: {active} requests are in progress, its limit is {limit} "
        f"(`qwen-mlx serve --max-connections`). Retry in {RETRY_AFTER} s.",
        type="server_error",
        code="server_busy",
        headers={"Retry-After": str(RETRY_AFTER)},
    )


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413 before any route parses them, and
    bodies that have not arrived `timeout` seconds after their headers with 408 (a slow
    client must not hold a connection for ever)."""

    def __init__(self, app: Any, max_bytes: int, timeout: float = 60.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from .errors import APIError

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        total = int(declared) if declared.isdigit() else 0
        body: list[bytes] = []
        if total <= _DRAIN_LIMIT:
            total = 0
            try:
                async with asyncio.timeout(self.timeout):
                    while True:
                        message = await receive()
                        if message["type"] != "http.request":
                            return  # the client left
                        chunk = message.get("body", b"")
                        total += len(chunk)
                        if total <= self.max_bytes:
                            body.append(chunk)
                        if not message.get("more_body", False) or total > _DRAIN_LIMIT:
                            break
            except TimeoutError:
                raise APIError(
                    408,
                    f"The request body did not arrive within {self.timeout:g} seconds.",
                    code="request_timeout",
                ) from None
        if total > self.max_bytes:
            raise APIError(
                413,
                f"The request body is larger than this server accepts ({self.max_bytes:,} "
                "bytes; see `qwen-mlx serve --max-body-bytes`).",
                code="request_too_large",
            )
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()  # later calls: disconnect notices
            replayed = True
            return {"type": "http.request", "body": b"".join(body), "more_body": False}

        await self.app(scope, replay, send)


def server_config(
    app: Any,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    keep_alive: int = DEFAULT_KEEP_ALIVE,
    **options: Any,
) -> Any:
    """A `uvicorn.Config` for `app` with these limits (other uvicorn options pass through).
    The sockets' bound follows the app's request limit (`create_app`'s
    `max_connections`)."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    requests = getattr(getattr(app, "state", None), "max_connections", None)
    sockets = (requests or default_max_connections(1, 4)) + 2 * RESERVE
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=_guarded(AutoHTTPProtocol, header_timeout, sockets),
        timeout_keep_alive=keep_alive,
        **options,
    )


def _guarded(base: type[asyncio.Protocol], seconds: float, sockets: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (h11 or httptools: both start a new `cycle` when a request's
    headers are complete), closing connections whose headers do not come in time, and
    keeping at most `sockets` open (see the module docstring)."""

    class Guarded(base):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None
        _waiting_after: Any = None  # the cycle that was current when the timer started
        _waiting_since = 0.0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._wait_for_headers()
            self._make_room()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._headers_arrived()

        def on_response_complete(self) -> None:
            self._wait_for_headers()  # first: a pipelined request may start at once
            super().on_response_complete()
            self._headers_arrived()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        @property
        def waiting(self) -> bool:
            """Whether it waits for a request's headers (none is in progress)."""
            return self._header_timer is not None

        def _make_room(self) -> None:
            open_ = self.server_state.connections
            if len(open_) <= sockets:
                return
            waiting = [c for c in open_ if c is not self and getattr(c, "waiting", False)]
            oldest = min(waiting, key=lambda c: c._waiting_since, default=self)
            oldest._stop_waiting()
            oldest.transport.close()

        def _wait_for_headers(self) -> None:
            self._stop_waiting()
            self._waiting_after = self.cycle
            self._waiting_since = self.loop.time()
            self._header_timer = self.loop.call_later(seconds, self._headers_timed_out)

        def _headers_arrived(self) -> None:
            if self._header_timer is not None and self.cycle is not self._waiting_after:
                self._stop_waiting()

        def _stop_waiting(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_timed_out(self) -> None:
            self._header_timer = None
            if self.cycle is self._waiting_after and not self.transport.is_closing():
                self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded
