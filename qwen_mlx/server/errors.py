"""Errors, one mechanism for every protocol: whatever goes wrong is an `APIError` (raised as
one, or made one from a domain error, an HTTP error such as 404 or 405, a validation
error, or an unexpected exception, which becomes a generic 500 and leaves its traceback
in the server log), and the protocol whose path the request took writes it in its own
shape (`ErrorShapes`: OpenAI's `{"error": {"message", "type", "param", "code"}}` by
default, Anthropic's under /v1/messages, Ollama's under /api/), with its headers
(Retry-After) kept.

Two places shape errors, both through `ErrorShapes`: the app's exception handlers, for
what routes raise, and `Errors`, the middleware around the request guards (the body's
size and time, the Host header, the request limit) and around everything else, for what
they raise or what nothing caught.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import ContextOverflowError, ModelNotFoundError, QwenMLXError, RankFailedError

logger = logging.getLogger(__name__)

Shape = Callable[["APIError"], dict[str, Any]]  # an error as a protocol writes it


class APIError(Exception):
    """An error response, in no protocol's shape yet: its status, message, OpenAI's type,
    param and code (OpenAI's error carries the most; the others show part of it), and any
    headers (Retry-After on a 503). Raised anywhere in the server; the protocol whose
    path the request took shapes it (`ErrorShapes`)."""

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


class ContextLengthError(APIError):
    """The 400 for a prompt that leaves no room for a reply: its `tokens` (at least that
    many, with `at_least`) against the context's `limit`, kept as numbers so each
    protocol can say it in its clients' words (Anthropic's: `prompt is too long`)."""

    def __init__(self, tokens: int, limit: int, *, param: str | None, at_least: bool) -> None:
        has = f"at least {tokens:,}" if at_least else f"{tokens:,}"
        super().__init__(
            400,
            f"This model's maximum context length is {limit:,} tokens, but the prompt has "
            f"{has}. Shorten it, or leave out old turns.",
            param=param,
            code="context_length_exceeded",
        )
        self.tokens, self.limit, self.at_least = tokens, limit, at_least


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


def as_api_error(e: BaseException) -> APIError:
    """Any error as the APIError a client is told: API errors as they are; domain, HTTP
    and validation errors as what they mean; anything else a generic 500, its details
    left to the server log."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, QwenMLXError):
        return rank_failure(e) or _from_domain_error(e)
    if isinstance(e, HTTPException):
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return APIError(e.status_code, str(e.detail), type=kind, code=code)
    if isinstance(e, RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        if first.get("type") == "json_invalid":
            detail = first.get("ctx", {}).get("error", "parse error")
            return not_json(detail)
        return invalid(list(e.errors()))
    return APIError(500, "The server had an error processing the request.", type="server_error")


def not_json(detail: str) -> APIError:
    """The 400 for a body that is not JSON."""
    return APIError(400, f"The request body is not valid JSON ({detail}).", code="invalid_json")


def _from_domain_error(e: QwenMLXError) -> APIError:
    if isinstance(e, ContextOverflowError):
        return APIError(400, str(e), param="messages", code="context_length_exceeded")
    if isinstance(e, ModelNotFoundError):
        return APIError(404, str(e), code="model_not_found")
    if isinstance(e, ValueError):
        return APIError(400, str(e))
    return APIError(500, str(e), type="server_error")


_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list"}


def invalid(errors: list[dict[str, Any]]) -> APIError:
    """The 400 for pydantic's refusal of a body (`errors`), naming the first field that
    is wrong. For a union, pydantic names each member that failed inside `loc`: those
    become "expected A or B" instead of a path."""

    def split(loc: tuple[Any, ...]) -> tuple[str, str | None]:
        path = [p for p in loc if p != "body"]
        for i, p in enumerate(path):
            if isinstance(p, str) and (not p.isidentifier() or p[0].isupper() or p in _TYPE_NAMES):
                return ".".join(map(str, path[:i])), p
        return ".".join(map(str, path)), None

    if not errors:
        return APIError(400, "The request is invalid.", code="invalid_value")
    param, tag = split(tuple(errors[0].get("loc", ())))
    if tag is None:
        message = str(errors[0].get("msg", "invalid value"))
    else:
        options = [t for p, t in map(split, (x.get("loc", ()) for x in errors)) if p == param]
        message = "expected " + " or ".join(dict.fromkeys(t for t in options if t))
    if not param:
        message = f"The request body must be a JSON object ({message})."
        return APIError(400, message, code="invalid_value")
    return APIError(400, f"{param}: {message}", param=param, code="invalid_value")


class ErrorShapes:
    """Which protocol's shape an error takes, by the request's path: the longest of
    `shapes`' path prefixes that the path starts with, else `default`. Routing plays no
    part, so a request refused before any route ran (404, 405, 413, 408, 503) gets its
    protocol's shape too."""

    def __init__(self, shapes: Mapping[str, Shape], default: Shape = openai_error) -> None:
        self._shapes = sorted(shapes.items(), key=lambda item: -len(item[0]))
        self._default = default

    def shape(self, path: str) -> Shape:
        return next((s for prefix, s in self._shapes if path.startswith(prefix)), self._default)

    def response(self, path: str, error: BaseException) -> JSONResponse:
        """The response telling `error` on `path`."""
        e = as_api_error(error)
        return JSONResponse(self.shape(path)(e), status_code=e.status, headers=e.headers)


def install_error_handlers(app: FastAPI, shapes: ErrorShapes) -> None:
    """Answer what routes raise (API, domain, HTTP and validation errors) through `shapes`."""

    async def handle(request: Request, e: Exception) -> JSONResponse:
        return shapes.response(request.url.path, e)

    for kind in (APIError, QwenMLXError, HTTPException, RequestValidationError):
        app.add_exception_handler(kind, handle)


class Errors:
    """ASGI middleware: what the middlewares inside it raise (an APIError: the body
    limit's 413, the Host check's 400, the request limit's 503) and anything unexpected
    (a generic 500, its traceback in the server log only), answered through `shapes`;
    nothing, when the response has already begun."""

    def __init__(self, app: Any, shapes: ErrorShapes) -> None:
        self.app = app
        self.shapes = shapes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:
            if not isinstance(e, APIError):
                logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if scope["type"] == "http" and not started:
                await self.shapes.response(scope.get("path", ""), e)(scope, receive, send)
