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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request

from ..chat.tools import ToolCall
from ..runtime import Model
from . import anthropic, metrics, ollama, relay, responses
from .connections import BodyLimit, RequestLimit, default_max_connections
from .defaults import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES
from .engine import Engine
from .errors import APIError, Errors, ErrorShapes, install_error_handlers, openai_error
from .jobs import Finished, Job
from .limits import body_check
from .logprobs import chat_logprobs, completion_logprobs, scored
from .net import AllowedHosts
from .prepare import prepare_chat, prepare_completion
from .reply import Outcome
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
    shapes = ErrorShapes(
        {anthropic.PREFIX: anthropic.anthropic_error, "/api/": ollama.ollama_error}
    )
    install_error_handlers(app, shapes)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout=body_timeout)
    if allowed_hosts is not None:
        app.add_middleware(AllowedHosts, hosts=allowed_hosts)
    if max_connections is None:
        max_connections = default_max_connections(engine.max_batch, engine.max_queue)
    app.add_middleware(RequestLimit, limit=max_connections)
    app.add_middleware(Errors, shapes=shapes)
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
        prepared = await engine.prepare(prepare_chat, engine, req)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        frame = _Frame(engine, "chat.completion.chunk", "chatcmpl", include_usage)
        job, reply = prepared.job, prepared.reply
        if req.stream:
            return relay.stream(engine, job, request, _ChatChunks(engine, job, frame), reply)
        whole = await relay.whole(engine, job, request, reply)
        end = whole.outcome
        message: dict[str, Any] = {"role": "assistant", "content": end.content}
        if end.calls:
            message["tool_calls"] = _tool_call_entries(end.calls)
        logprobs = chat_logprobs(engine.model, scored(whole.parts)) if req.logprobs else None
        choice = {
            "index": 0,
            "message": message,
            "finish_reason": end.finish_reason,
            "logprobs": logprobs,
        }
        return frame.body("chat.completion", choice, whole.done)

    @router.post("/v1/completions", dependencies=[checked])
    async def completions(req: CompletionRequest, request: Request) -> Any:
        engine.check_model(req.model)
        job = await engine.prepare(prepare_completion, engine, req)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        frame = _Frame(engine, "text_completion", "cmpl", include_usage)
        if req.stream:
            return relay.stream(engine, job, request, _CompletionChunks(engine, job, frame))
        whole = await relay.whole(engine, job, request)
        logprobs = None
        if req.logprobs is not None:
            logprobs = completion_logprobs(engine.model, scored(whole.parts))
        choice = {
            "index": 0,
            "text": whole.text,
            "finish_reason": whole.done.finish_reason,
            "logprobs": logprobs,
        }
        return frame.body("text_completion", choice, whole.done)

    metrics.install(app, engine, router)
    app.state.responses = responses.install(router, engine, body_check=checked)
    anthropic.install(app, engine, api_key, body_check=checked)
    app.include_router(router)
    app.include_router(ollama.ollama_router(engine, api_key=api_key, body_checks=[checked]))
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

    def _head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }

    def body(self, obj: str, choice: dict[str, Any], done: Finished) -> dict[str, Any]:
        """A whole response, of its one choice."""
        return {**self._head(obj), "choices": [choice], "usage": _usage(done)}

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        data = {**self._head(self.obj), "choices": choices}
        if self.include_usage:
            data["usage"] = usage
        return _sse(data)

    def closing(self, done: Finished) -> list[str]:
        """The stream's last chunks: the usage (when asked for) and `[DONE]`."""
        usage = [self.chunk([], _usage(done))] if self.include_usage else []
        return [*usage, _sse("[DONE]")]


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class _Chunks(relay.Encoder):
    """OpenAI's stream: `data: {...}` chunks, then `data: [DONE]`; an error arrives as a
    `data: {"error": ...}` chunk before `[DONE]`."""

    def __init__(self, engine: Engine, job: Job, frame: _Frame) -> None:
        self.model = engine.model
        self.job = job
        self.frame = frame

    def error(self, error: APIError) -> list[str]:
        return [_sse(openai_error(error)), _sse("[DONE]")]


class _ChatChunks(_Chunks):
    def delta(self, d: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> str:
        choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": logprobs}
        return self.frame.chunk([choice])

    def start(self) -> list[str]:
        return [self.delta({"role": "assistant", "content": ""})]

    def text(self, piece: str, shown: str) -> list[str]:
        logprobs = scored([piece]) if self.job.logprobs is not None else []
        if logprobs:
            return [self.delta({"content": shown}, None, chat_logprobs(self.model, logprobs))]
        return [self.delta({"content": shown})] if shown else []

    def end(self, done: Finished, outcome: Outcome) -> list[str]:
        chunks = [self.delta({"content": outcome.tail})] if outcome.tail else []
        if outcome.calls:
            calls = _tool_call_entries(outcome.calls, indexed=True)
            chunks.append(self.delta({"tool_calls": calls}))
        chunks.append(self.delta({}, outcome.finish_reason))
        return chunks + self.frame.closing(done)


class _CompletionChunks(_Chunks):
    offset = 0  # where the next piece starts in the reply (the logprobs' text_offset)

    def choice(self, text: str, finish: str | None = None, logprobs: Any = None) -> str:
        entry = {"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}
        return self.frame.chunk([entry])

    def text(self, piece: str, shown: str) -> list[str]:
        if self.job.logprobs is None:
            return [self.choice(piece)]
        logprobs = completion_logprobs(self.model, scored([piece]), offset=self.offset)
        self.offset += len(piece)
        return [self.choice(piece, None, logprobs)]

    def end(self, done: Finished, outcome: Outcome) -> list[str]:
        return [self.choice("", done.finish_reason), *self.frame.closing(done)]
