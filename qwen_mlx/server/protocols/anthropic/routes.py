"""Anthropic's Messages API routes: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

A request's body is read by the guard, translated into the shared request (translate.py)
and prepared by the same `prepare_chat` as every protocol's, so templates, tool schemas,
forced calls and context checks behave exactly as on `/v1/chat/completions`; the reply
comes back whole or as Anthropic's event stream (encode.py). A token count renders the
same prompt and counts it, however long it is.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request

from ... import relay
from ...engine import Engine
from ...guard import bearer_token
from ...prepare import Prepared, count_chat, prepare_chat
from ...protocol import ServerContext
from .encode import MessageEvents, message
from .schemas import CountRequest, MessagesRequest
from .translate import chat_prompt

PREFIX = "/v1/messages"


def install(router: APIRouter, ctx: ServerContext) -> None:
    """The Messages API's routes over `ctx`'s engine."""
    engine, guard = ctx.engine, ctx.guard

    @router.post(PREFIX)
    async def messages(request: Request) -> Any:
        req = await guard.read(request, MessagesRequest)
        engine.check_model(req.model)
        prepared = await engine.prepare(_prepare, engine, req)
        job, reply = prepared.job, prepared.reply
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        if req.stream:
            events = MessageEvents(engine, job, message_id)
            return relay.stream(engine, job, request, events, reply)
        return message(engine, message_id, await relay.whole(engine, job, request, reply))

    @router.post(PREFIX + "/count_tokens")
    async def count_tokens(request: Request) -> dict[str, int]:
        req = await guard.read(request, CountRequest)
        engine.check_model(req.model)
        return {"input_tokens": await engine.prepare(_count, engine, req, queue=False)}


def _prepare(engine: Engine, req: CountRequest) -> Prepared:
    """On a preparation thread: the request's job, and the reply that shapes its text."""
    return prepare_chat(engine, chat_prompt(req))


def _count(engine: Engine, req: CountRequest) -> int:
    """On a preparation thread: the request's prompt tokens, however many (a count is
    never refused for being over the context: that is what a client asks it to tell)."""
    return count_chat(engine, chat_prompt(req))


def x_api_key_or_bearer(request: Request) -> str | None:
    """The key as Anthropic's SDKs and Claude Code send it (`x-api-key`), or as a Bearer."""
    given = request.headers.get("x-api-key")
    return given if given is not None else bearer_token(request)
