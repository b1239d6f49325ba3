"""How uvicorn serves the app: time limits on slow clients and a connection limit.

uvicorn closes idle keep-alive connections, but a connection that sends part of its
request headers and then nothing stays open for ever (slowloris: a few dozen such sockets
hold a server, before any route or API key check runs). So the HTTP protocol here closes
a connection whose request headers are not complete `header_timeout` seconds after it
opened or after its last response, `BodyLimit` (errors.py) gives up on a body that does
not arrive in time, and past `max_connections` new requests get 503.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .defaults import DEFAULT_HEADER_TIMEOUT, DEFAULT_KEEP_ALIVE, DEFAULT_MAX_CONNECTIONS


def server_config(
    app: Any,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    keep_alive: int = DEFAULT_KEEP_ALIVE,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    **options: Any,
) -> Any:
    """A `uvicorn.Config` for `app` with these limits (other uvicorn options pass through)."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=_with_header_timeout(AutoHTTPProtocol, header_timeout),
        timeout_keep_alive=keep_alive,
        limit_concurrency=max_connections,
        **options,
    )


def _with_header_timeout(base: type[asyncio.Protocol], seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (h11 or httptools: both start a new `cycle` when a request's
    headers are complete), closing connections whose headers do not come in time."""

    class HeaderTimeout(base):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None
        _waiting_after: Any = None  # the cycle that was current when the timer started

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._wait_for_headers()

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

        def _wait_for_headers(self) -> None:
            self._stop_waiting()
            self._waiting_after = self.cycle
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

    HeaderTimeout.__name__ = HeaderTimeout.__qualname__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeout
