"""Which hosts the server answers: loopback addresses, the Host header check that stops
a web page from reaching a loopback server through its own domain (DNS rebinding), and
the Host names a server bound to an address accepts. Light: `qwen-mlx serve --help`
imports it, FastAPI is imported only when a request is refused.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

# A Host header: a name or IPv4 address, or a bracketed IPv6 address; then an optional port.
_HOST_HEADER = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^\[\]:/@\s]+)(?::\d{1,5})?$")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable


def allowed_hosts(host: str) -> list[str] | None:
    """The Host headers a server bound to `host` answers: on loopback, the loopback names
    and the address it is bound to; elsewhere any (None)."""
    if not is_loopback(host):
        return None
    bound = f"[{host}]" if ":" in host else host
    return sorted({"localhost", "127.0.0.1", "[::1]", bound.lower()})


def host_of(header: str) -> str | None:
    """The host named by a Host header, lowercased (`[::1]` keeps its brackets); None
    when the header is malformed."""
    m = _HOST_HEADER.match(header.strip())
    return m.group("host").lower() if m else None


class AllowedHosts:
    """Refuse requests whose Host header names another host (400). A server on a
    loopback address uses it so that a web page cannot reach it by pointing its own
    domain at 127.0.0.1 (DNS rebinding)."""

    def __init__(self, app: Any, hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = {h.lower() for h in hosts}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_of(header) not in self.hosts:
                from .errors import APIError  # FastAPI: not for `serve --help`

                raise APIError(
                    400,
                    f"This server answers requests for {', '.join(sorted(self.hosts))} only "
                    f"(the Host header says {header!r}).",
                    code="invalid_host",
                )
        await self.app(scope, receive, send)
