"""Errors in OpenAI's shape, and the middlewares that guard every request.

Every error, including malformed JSON, bad fields, oversized bodies and unexpected
exceptions, comes back as `{"error": {"message", "type", "param", "code"}}`, never as a
traceback (that stays in the server log). The protocols with a shape of their own
(Anthropic's under /v1/messages, Ollama's under /api/) have those responses rewritten by
`ReshapedErrors`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import ContextOverflowError, ModelNotFoundError, QwenMLXError, RankFailedError

logger = logging.getLogger(__name__)

_DRAIN_LIMIT = 64 << 20  # an oversized body is read and dropped up to here, then cut off


class APIError(Exception):
    """An error response in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )
        self.headers = headers  # e.g. Retry-After on a 503

    def response(self) -> JSONResponse:
        return JSONResponse(openai_error(self), status_code=self.status, headers=self.headers)


def openai_error(e: APIError) -> dict[str, Any]:
    """An error in OpenAI's shape (the server's default)."""
    return {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}


def rank_failure(error: BaseException) -> APIError | None:
    """The answer to a request that a rank's failure ended (a model split across Macs):
    503, naming the rank and what happened to it. None for any other error."""
    if not isinstance(error, RankFailedError):
        return None
    return APIError(
        503,
        f"{error} Generation is unavailable until the group of ranks restarts.",
        type="server_error",
        code="rank_failed",
        headers={"Retry-After": "10"},
    )


def _from_domain_error(e: QwenMLXError) -> APIError:
    if isinstance(e, ContextOverflowError):
        return APIError(400, str(e), param="messages", code="context_length_exceeded")
    if isinstance(e, ModelNotFoundError):
        return APIError(404, str(e), code="model_not_found")
    if isinstance(e, ValueError):
        return APIError(400, str(e))
    return APIError(500, str(e), type="server_error")


def install_error_handlers(app: FastAPI) -> None:
    """Answer API, domain, HTTP and validation errors in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(QwenMLXError)
    async def domain_error(request: Request, e: QwenMLXError) -> JSONResponse:
        return _from_domain_error(e).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return APIError(e.status_code, str(e.detail), type=kind, code=code).response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        if first.get("type") == "json_invalid":
            return APIError(
                400,
                "The request body is not valid JSON "
                f"({first.get('ctx', {}).get('error', 'parse error')}).",
                code="invalid_json",
            ).response()
        param, message = _describe_invalid(e.errors())
        return APIError(400, message, param=param, code="invalid_value").response()


_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list"}


def _describe_invalid(errors: list[dict[str, Any]]) -> tuple[str | None, str]:
    """(param, message) for pydantic's errors. For a union, pydantic names each member
    that failed inside `loc`: those become "expected A or B" instead of a path."""

    def split(loc: tuple[Any, ...]) -> tuple[str, str | None]:
        path = [p for p in loc if p != "body"]
        for i, p in enumerate(path):
            if isinstance(p, str) and (not p.isidentifier() or p[0].isupper() or p in _TYPE_NAMES):
                return ".".join(map(str, path[:i])), p
        return ".".join(map(str, path)), None

    if not errors:
        return None, "The request is invalid."
    param, tag = split(tuple(errors[0].get("loc", ())))
    if tag is None:
        message = str(errors[0].get("msg", "invalid value"))
    else:
        options = [t for p, t in map(split, (x.get("loc", ()) for x in errors)) if p == param]
        message = "expected " + " or ".join(dict.fromkeys(t for t in options if t))
    if not param:
        return None, f"The request body must be a JSON object ({message})."
    return param, f"{param}: {message}"


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413 before any route parses them, and
    bodies that have not arrived `timeout` seconds after their headers with 408 (a slow
    client must not hold a connection for ever)."""

    def __init__(self, app: Any, max_bytes: int, timeout: float = 60.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import asyncio

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
                await APIError(
                    408,
                    f"The request body did not arrive within {self.timeout:g} seconds.",
                    code="request_timeout",
                ).response()(scope, receive, send)
                return
        if total > self.max_bytes:
            await APIError(
                413,
                f"The request body is larger than this server accepts ({self.max_bytes:,} "
                "bytes; see `qwen-mlx serve --max-body-bytes`).",
                code="request_too_large",
            ).response()(scope, receive, send)
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()  # later calls: disconnect notices
            replayed = True
            return {"type": "http.request", "body": b"".join(body), "more_body": False}

        await self.app(scope, replay, send)


class CatchAll:
    """Log an unexpected exception and answer a generic 500 in OpenAI's shape, without the
    traceback (which stays in the server log)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if scope["type"] == "http" and not started:
                error = APIError(
                    500, "The server had an error processing the request.", type="server_error"
                )
                await error.response()(scope, receive, send)


class ReshapedErrors:
    """ASGI middleware: the JSON error responses (status 400 and up) on the paths under
    `prefix`, which the rest of the server writes in OpenAI's shape, rewritten by
    `reshape(status, message)` into another protocol's shape (its other headers, such
    as Retry-After, kept)."""

    def __init__(self, app: Any, prefix: str, reshape: Callable[[int, str], bytes]) -> None:
        self.app = app
        self.prefix = prefix
        self.reshape = reshape

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] | None = None
        body: list[bytes] = []

        async def rewrite(message: Any) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                is_json = headers.get(b"content-type", b"").startswith(b"application/json")
                if message["status"] >= 400 and is_json:
                    start = message
                    return
            elif message["type"] == "http.response.body" and start is not None:
                body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                data = self.reshape(start["status"], error_message(b"".join(body)))
                headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                headers.append((b"content-length", str(len(data)).encode()))
                await send(dict(start, headers=headers))
                await send({"type": "http.response.body", "body": data})
                return
            await send(message)

        await self.app(scope, receive, rewrite)


def error_message(body: bytes) -> str:
    """The message of an error response in OpenAI's shape, or in one that is already
    Ollama's (`{"error": "..."}`), or else the body as text."""
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        error = None
    message = error.get("message") if isinstance(error, dict) else error
    if isinstance(message, str):
        return message
    return body.decode("utf-8", errors="replace") or "The request failed."
