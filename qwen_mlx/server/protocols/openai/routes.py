"""OpenAI's chat completions (`POST /v1/chat/completions`), completions (`POST
/v1/completions`) and models (`GET /v1/models`, `GET /v1/models/{id}`).

A request's body is read by the guard (the caps, valid Unicode, then the schema:
schemas.py), translated into the shared request (translate.py) and prepared into a job
on the engine's preparation threads (template, tokens, tools, response format,
sampling), and its reply relayed whole or as server-sent events (encode.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ... import relay
from ...engine import Engine
from ...jobs import Job
from ...prepare import Prepared, prepare_chat, prepare_completion
from ...protocol import ServerContext
from .encode import ChatChunks, CompletionChunks, Frame, model_card
from .schemas import ChatRequest, CompletionRequest
from .translate import chat_prompt, text_prompt


def install(router: APIRouter, ctx: ServerContext) -> None:
    """OpenAI's routes over `ctx`'s engine."""
    engine, guard = ctx.engine, ctx.guard

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(engine.model)]}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        engine.check_model(model_id)
        return model_card(engine.model)

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req = await guard.read(request, ChatRequest)
        engine.check_model(req.model)
        prepared = await engine.prepare(_prepare_chat, engine, req)
        job, reply = prepared.job, prepared.reply
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        frame = Frame(engine, "chat.completion.chunk", "chatcmpl", include_usage)
        if req.stream:
            return relay.stream(engine, job, request, ChatChunks(engine, job, frame), reply)
        whole = await relay.whole(engine, job, request, reply)
        return frame.chat(whole, logprobs=bool(req.logprobs))

    @router.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = await guard.read(request, CompletionRequest)
        engine.check_model(req.model)
        job = await engine.prepare(_prepare_completion, engine, req)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        frame = Frame(engine, "text_completion", "cmpl", include_usage)
        if req.stream:
            return relay.stream(engine, job, request, CompletionChunks(engine, job, frame))
        whole = await relay.whole(engine, job, request)
        return frame.completion(whole, logprobs=req.logprobs is not None)


def _prepare_chat(engine: Engine, req: ChatRequest) -> Prepared:
    """On a preparation thread: the request's job, and the reply that shapes its text."""
    return prepare_chat(engine, chat_prompt(req))


def _prepare_completion(engine: Engine, req: CompletionRequest) -> Job:
    return prepare_completion(engine, text_prompt(req))
