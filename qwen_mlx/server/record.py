"""`serve --record FILE`: every API request appended to FILE as one JSON line, so a user
can capture an agent's session and replay it (`qwen-mlx replay FILE --url URL`) against
this server or another, to measure what each turn prefills.

A line holds the request's method, path and query, the headers a protocol reads
(content type, Anthropic's version and betas, OpenAI's beta, the client's user agent),
its body (`body`, when it is JSON; else `text`) and the seconds since the first one.
Never the API key, nor any header that may carry a credential: headers are kept by name
from a short list, not dropped from one. Only the API routes (`/v1/...`, `/api/...`)
are recorded, in the order their bodies arrive; a line is written and flushed whole, so
a crash loses at most the request being read.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

RECORDED_HEADERS = (
    "content-type",
    "accept",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    "user-agent",
)
RECORDED_PREFIXES = ("/v1/", "/api/")


class Recorder:
    """ASGI middleware appending each API request to `path` (see the module docstring)."""

    def __init__(self, app: Any, path: str | Path) -> None:
        self.app = app
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (lives with the app)
        self._lock = threading.Lock()
        self._started: float | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(RECORDED_PREFIXES):
            await self.app(scope, receive, send)
            return
        parts: list[bytes] = []
        written = False

        async def recording() -> Any:
            nonlocal written
            message = await receive()
            if message["type"] == "http.request" and not written:
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    written = True
                    self.write(scope, b"".join(parts))
            return message

        await self.app(scope, recording, send)
        if not written and scope.get("method") in ("GET", "HEAD", "DELETE"):
            self.write(scope, b"")  # a request without a body the app never read

    def write(self, scope: Any, body: bytes) -> None:
        """Append one request's line."""
        headers = {}
        for raw_name, raw_value in scope.get("headers", []):
            name = raw_name.decode("latin-1").lower()
            if name in RECORDED_HEADERS:
                headers[name] = raw_value.decode("latin-1")
        now = time.monotonic()
        with self._lock:
            if self._started is None:
                self._started = now
            line = {
                "t": round(now - self._started, 3),
                "method": scope.get("method", ""),
                "path": scope["path"],
                "query": scope.get("query_string", b"").decode("latin-1"),
                "headers": headers,
                **_body(body),
            }
            self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
            self._file.flush()


def _body(raw: bytes) -> dict[str, Any]:
    """`{"body": value}` for a JSON body, `{"text": ...}` for any other, `{}` for none."""
    if not raw:
        return {}
    text = raw.decode("utf-8", errors="replace")
    try:
        return {"body": json.loads(text)}
    except ValueError:
        return {"text": text}
