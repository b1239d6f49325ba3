"""OpenAI's chat completions (`POST /v1/chat/completions`), completions (`POST
/v1/completions`) and models (`GET /v1/models`, `GET /v1/models/{id}`).

A request's body is read by the guard (the caps, valid Unicode, then the schema:
schemas.py), prepared into a job on the engine's preparation threads (`prepare.py`:
template, tokens, tools, response format, sampling), and its reply relayed whole or as
server-sent events (encode.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ... import relay
from ...logprobs import chat_logprobs, completion_logprobs, scored
from ...prepare import prepare_chat, prepare_completion
from ...protocol import ServerContext
from ...schemas import ChatRequest, CompletionRequest
from .encode import ChatChunks, CompletionChunks, Frame, model_card, tool_call_entries


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
        prepared = await engine.prepare(prepare_chat, engine, req)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        frame = Frame(engine, "chat.completion.chunk", "chatcmpl", include_usage)
        job, reply = prepared.job, prepared.reply
        if req.stream:
            return relay.stream(engine, job, request, ChatChunks(engine, job, frame), reply)
        whole = await relay.whole(engine, job, request, reply)
        end = whole.outcome
        message: dict[str, Any] = {"role": "assistant", "content": end.content}
        if end.calls:
            message["tool_calls"] = tool_call_entries(end.calls)
        logprobs = chat_logprobs(engine.model, scored(whole.parts)) if req.logprobs else None
        choice = {
            "index": 0,
            "message": message,
            "finish_reason": end.finish_reason,
            "logprobs": logprobs,
        }
        return frame.body("chat.completion", choice, whole.done)

    @router.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = await guard.read(request, CompletionRequest)
        engine.check_model(req.model)
        job = await engine.prepare(prepare_completion, engine, req)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        frame = Frame(engine, "text_completion", "cmpl", include_usage)
        if req.stream:
            return relay.stream(engine, job, request, CompletionChunks(engine, job, frame))
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
