"""The FastAPI app: OpenAI's routes over one engine, the API key check, and the responses.
The other protocols live in their own modules and are registered here: the Responses API
(`responses.py`), Anthropic's Messages API (`anthropic.py`) and `/metrics` (`metrics.py`).

The event loop only parses requests, hands preparation to the engine's preparation
threads, and relays the text the model thread generates, whole or as server-sent events
(`data: {...}` chunks ending with `data: [DONE]`); finding tool calls in that text runs
on a worker thread too. An error during a stream arrives as a `data: {"error": ...}`
chunk before `[DONE]`, since the status line has already gone out.

A generating route's body is checked before it is validated (`limits.py`): how many
messages, content blocks and tools it has, that its text is valid Unicode, and that it has
no more characters than the context could hold.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse

from ..chat.tools import ToolCall
from ..runtime import Model
from . import anthropic, metrics, ollama, responses
from .collect import collect as _collect
from .collect import off_loop as _off_loop
from .collect import whole_reply as _whole
from .connections import RequestLimit, default_max_connections
from .defaults import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES
from .engine import Engine
from .errors import APIError, BodyLimit, CatchAll, ReshapedErrors, install_error_handlers
from .jobs import Finished, Job
from .limits import body_check
from .logprobs import chat_logprobs, completion_logprobs, scored
from .net import AllowedHosts
from .prepare import Reply, prepare_chat, prepare_completion
from .schemas import ChatRequest, CompletionRequest
from .web import mount_web

logger = logging.getLogger(__name__)


def create_app(
    engine: Engine,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allowed_hosts: Sequence[str] | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    web_home: str | Path | None = None,
    max_connections: int | None = None,
) -> FastAPI:
    """The FastAPI app serving `engine`. With `api_key`, every route but /health needs
    `Authorization: Bearer <api_key>`. With `allowed_hosts`, a request whose Host header
    names another host is refused: a web page cannot reach a loopback server by pointing
    its own domain at 127.0.0.1 (DNS rebinding). A body that has not arrived
    `body_timeout` seconds after its headers gets 408. At most `max_connections` requests
    are in progress at once (default: what the engine runs and queues, and a margin; see
    `connections.py`). The web chat (web.py) answers `/`, with the chats under `web_home`
    (default: the store's)."""
    app = FastAPI(title="qwen-mlx", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout=body_timeout)
    if allowed_hosts is not None:
        app.add_middleware(AllowedHosts, hosts=allowed_hosts)
    app.add_middleware(CatchAll)
    if max_connections is None:
        max_connections = default_max_connections(engine.max_batch, engine.max_queue)
    app.add_middleware(RequestLimit, limit=max_connections)
    app.state.max_connections = max_connections  # server_config bounds the sockets by it
    router = APIRouter(dependencies=[Depends(_bearer(api_key))] if api_key else [])
    checked = Depends(body_check(engine))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.model.name, **engine.status()}

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(engine.model)]}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        engine.check_model(model_id)
        return _model_card(engine.model)

    @router.post("/v1/chat/completions", dependencies=[checked])
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        engine.check_model(req.model)
        job, reply = await engine.prepare(prepare_chat, engine, req)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        frame = _Frame(engine, "chat.completion.chunk", "chatcmpl", include_usage)
        if req.stream:
            return _event_stream(_chat_chunks(engine, job, reply, request, frame))
        parts, done = await _collect(engine, job, request)

        _, content, calls, reason = await _whole(reply, parts, done)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = _tool_call_entries(calls)
        logprobs = chat_logprobs(engine.model, scored(parts)) if req.logprobs else None
        return {
            "id": frame.id,
            "object": "chat.completion",
            "created": frame.created,
            "model": frame.model,
            "system_fingerprint": frame.fingerprint,
            "choices": [
                {"index": 0, "message": message, "finish_reason": reason, "logprobs": logprobs}
            ],
            "usage": _usage(done),
        }

    @router.post("/v1/completions", dependencies=[checked])
    async def completions(req: CompletionRequest, request: Request) -> Any:
        engine.check_model(req.model)
        job = await engine.prepare(prepare_completion, engine, req)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        frame = _Frame(engine, "text_completion", "cmpl", include_usage)
        if req.stream:
            return _event_stream(_completion_chunks(engine, job, request, frame))
        parts, done = await _collect(engine, job, request)
        logprobs = None
        if req.logprobs is not None:
            logprobs = completion_logprobs(engine.model, scored(parts))
        return {
            "id": frame.id,
            "object": "text_completion",
            "created": frame.created,
            "model": frame.model,
            "system_fingerprint": frame.fingerprint,
            "choices": [
                {
                    "index": 0,
                    "text": "".join(parts),
                    "finish_reason": done.finish_reason,
                    "logprobs": logprobs,
                }
            ],
            "usage": _usage(done),
        }

    metrics.install(app, engine, router)
    app.state.responses = responses.install(router, engine, body_check=checked)
    anthropic.install(app, engine, api_key, body_check=checked)
    app.include_router(router)
    app.include_router(ollama.ollama_router(engine, api_key=api_key, body_checks=[checked]))
    app.add_middleware(ReshapedErrors, prefix=ollama.PREFIX, reshape=ollama.error_body)
    app.state.web = mount_web(app, engine, api_key=api_key, home=web_home)
    return app


def _bearer(api_key: str) -> Callable[[Request], Any]:
    expected = api_key.encode()

    async def check(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), expected
        ):
            raise APIError(
                401,
                "Incorrect or missing API key. Send it as `Authorization: Bearer <key>`.",
                code="invalid_api_key",
            )

    return check


def _model_card(model: Model) -> dict[str, Any]:
    from datetime import datetime

    try:
        stamp = int(datetime.fromisoformat(model.manifest.created_at).timestamp())
    except (AttributeError, ValueError):  # no manifest, or no date in it
        stamp = 0
    return {"id": model.name, "object": "model", "created": stamp, "owned_by": "qwen-mlx"}


def _usage(done: Finished) -> dict[str, Any]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
    }


def _tool_call_entries(calls: list[ToolCall], *, indexed: bool = False) -> list[dict[str, Any]]:
    return [
        dict(c.to_message(), index=i) if indexed else c.to_message() for i, c in enumerate(calls)
    ]


# -- server-sent events ----------------------------------------------------------------------


class _Frame:
    """What every response and stream chunk of one request repeats: id, time, model."""

    def __init__(self, engine: Engine, obj: str, prefix: str, include_usage: bool) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.obj = obj
        self.model = engine.model.name
        self.fingerprint = f"fp_{engine.model.fingerprint[:10]}"
        self.include_usage = include_usage

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        data = {
            "id": self.id,
            "object": self.obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        }
        if self.include_usage:
            data["usage"] = usage
        return _sse(data)


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _stream_error(e: Exception) -> str:
    if not isinstance(e, APIError):
        logger.exception("generation failed", exc_info=e)
        e = APIError(500, "The server had an error while generating.", type="server_error")
    return _sse({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}})


def _event_stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)


async def _chat_chunks(
    engine: Engine, job: Job, reply: Reply, request: Request, frame: _Frame
) -> AsyncIterator[str]:
    def delta(d: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> str:
        choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": logprobs}
        return frame.chunk([choice])

    try:
        yield delta({"role": "assistant", "content": ""})
        done: Finished | None = None
        async with aclosing(engine.events(job, request)) as events:
            async for item in events:
                if isinstance(item, Finished):
                    done = item
                else:
                    text = await _off_loop(reply, lambda item=item: reply.feed(item))
                    logprobs = scored([item]) if job.logprobs is not None else []
                    if logprobs:
                        yield delta({"content": text}, None, chat_logprobs(engine.model, logprobs))
                    elif text:
                        yield delta({"content": text})
        if done is None or done.finish_reason == "cancelled":
            return
        reason = done.finish_reason
        tail, _, calls, reason = await _off_loop(reply, lambda: reply.finish(reason))
        if tail:
            yield delta({"content": tail})
        if calls:
            yield delta({"tool_calls": _tool_call_entries(calls, indexed=True)})
        yield delta({}, reason)
        if frame.include_usage:
            yield frame.chunk([], _usage(done))
    except Exception as e:
        yield _stream_error(e)
    yield _sse("[DONE]")


async def _completion_chunks(
    engine: Engine, job: Job, request: Request, frame: _Frame
) -> AsyncIterator[str]:
    def choice(text: str, finish: str | None = None, logprobs: Any = None) -> str:
        entry = {"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}
        return frame.chunk([entry])

    try:
        done: Finished | None = None
        offset = 0
        async with aclosing(engine.events(job, request)) as events:
            async for item in events:
                if isinstance(item, Finished):
                    done = item
                elif job.logprobs is not None:
                    tokens = scored([item])
                    yield choice(
                        item, None, completion_logprobs(engine.model, tokens, offset=offset)
                    )
                    offset += len(item)
                else:
                    yield choice(item)
        if done is None or done.finish_reason == "cancelled":
            return
        yield choice("", done.finish_reason)
        if frame.include_usage:
            yield frame.chunk([], _usage(done))
    except Exception as e:
        yield _stream_error(e)
    yield _sse("[DONE]")
