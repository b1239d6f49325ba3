"""Who may use the web chat: the API key (once, then a session cookie), the CSRF token, and
the Origin of every change.

- With an API key, the page asks for it once (a form) and sets an HttpOnly,
  SameSite=Strict session cookie: a random token of that sign-in (never the key, nor
  anything derived from it), which expires after `SESSION_LIFETIME` and with the server
  process. `Authorization: Bearer` works too.
- A wrong key makes the next sign-in wait, twice as long after each failure in a row
  (`FAILURE_DELAY` up to `MAX_FAILURE_DELAY`): guessing the key goes at a few tries a
  minute, not hundreds a second. The wait is for everyone, not per address: all the
  page's users share the one key, and a guesser can change addresses.
- Every `/web/api` request carries the page's CSRF token (a header that a cross-site page
  can neither read nor set), bound to the session and to this server process.
- Every state-changing request, the sign-in form included, must come with an `Origin`
  equal to the server's own.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time

from fastapi import Request

from ..errors import APIError
from ..guard import bearer_token, same_key

SESSION_COOKIE = "qwen_mlx_session"
SESSION_LIFETIME = 7 * 24 * 3600  # seconds a sign-in lasts
MAX_SESSIONS = 256  # sign-ins kept; past that the oldest ends
FAILURE_DELAY = 1.0  # seconds before the next try after one wrong key; doubles per failure
MAX_FAILURE_DELAY = 60.0


def _clock() -> float:
    """Seconds, for expiry and delays (a test moves it)."""
    return time.monotonic()


class SignInRefused(Exception):
    """A sign-in tried before the wait after a wrong key is over."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        seconds = math.ceil(wait)
        super().__init__(
            f"Too many wrong keys: try again in {seconds} second{'s' if seconds != 1 else ''}."
        )


class WebGuard:
    """Who may use the page: the API key (as a session cookie or a bearer header), the
    CSRF token and, for changes, the request's Origin."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key
        self._secret = secrets.token_bytes(32)  # a restart asks open pages to reload
        self._sessions: dict[str, float] = {}  # token -> when it expires (_clock)
        self._failures = 0  # wrong keys in a row
        self._wait_until = 0.0  # no sign-in before this (_clock)

    # -- signing in -------------------------------------------------------------------------

    def sign_in(self, key: str) -> str | None:
        """A new session token for the right key; None for a wrong one (which makes the
        next try wait). SignInRefused while an earlier failure's wait runs."""
        now = _clock()
        if now < self._wait_until:
            raise SignInRefused(self._wait_until - now)
        if not self.api_key or not same_key(key, self.api_key):
            self._failures += 1
            delay = min(FAILURE_DELAY * 2 ** (self._failures - 1), MAX_FAILURE_DELAY)
            self._wait_until = now + delay
            return None
        self._failures = 0
        self._sessions = {t: end for t, end in self._sessions.items() if end > now}
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[min(self._sessions, key=self._sessions.__getitem__)]
        token = secrets.token_urlsafe(32)
        self._sessions[token] = now + SESSION_LIFETIME
        return token

    def signed_in(self, request: Request) -> bool:
        if not self.api_key:
            return True
        if same_key(bearer_token(request), self.api_key):
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        expires = self._sessions.get(cookie)
        if expires is None:
            return False
        if _clock() >= expires:
            del self._sessions[cookie]
            return False
        return True

    # -- every request ----------------------------------------------------------------------

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
                401,
                "Sign in with the server's API key (the sign-in may have expired): reload "
                "the page.",
                code="invalid_api_key",
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
