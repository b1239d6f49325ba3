"""Who may use the web chat: the API key (once, as a session cookie), the CSRF token, and
the Origin of every change.

- With an API key, the page asks for it once (a form) and keeps an HttpOnly,
  SameSite=Strict session cookie derived from it (never the key itself);
  `Authorization: Bearer` works too.
- Every `/web/api` request carries the page's CSRF token (a header that a cross-site page
  can neither read nor set), bound to the session and to this server process.
- Every state-changing request, the sign-in form included, must come with an `Origin`
  equal to the server's own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request

from ..errors import APIError

SESSION_COOKIE = "qwen_mlx_session"


class WebGuard:
    """Who may use the page: the API key (as a cookie or a bearer header), the CSRF token
    and, for changes, the request's Origin."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key
        self._secret = secrets.token_bytes(32)  # a restart asks open pages to reload
        self.cookie = (
            hmac.new(api_key.encode(), b"qwen-mlx web session", hashlib.sha256).hexdigest()
            if api_key
            else ""
        )

    def signed_in(self, request: Request) -> bool:
        if not self.api_key:
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        bearer = scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )
        return bearer or hmac.compare_digest(cookie.encode(), self.cookie.encode())

    def csrf_token(self, request: Request) -> str:
        session = request.cookies.get(SESSION_COOKIE, "").encode()
        return hmac.new(self._secret, b"csrf:" + session, hashlib.sha256).hexdigest()

    def check_origin(self, request: Request) -> None:
        """Refuse a change that does not come from a page of this very server."""
        origin = request.headers.get("origin")
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin is None or origin.lower() != expected.lower():
            raise APIError(
                403,
                "Cross-site request refused: changes must come from this server's own page "
                f"(Origin {origin or 'missing'}, expected {expected}).",
                code="cross_site",
            )

    async def api(self, request: Request) -> None:
        """The check on every /web/api route."""
        if not self.signed_in(request):
            raise APIError(
                401, "Sign in with the server's API key: reload the page.", code="invalid_api_key"
            )
        token = request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(token.encode(), self.csrf_token(request).encode()):
            raise APIError(
                403,
                "Missing or stale CSRF token (the server restarted?): reload the page.",
                code="csrf",
            )
        if request.method not in ("GET", "HEAD"):
            self.check_origin(request)
