"""Ollama's routes: `/api/chat` and `/api/generate` (streamed unless `"stream": false`),
`/api/tags`, `/api/show`, `/api/ps` and `/api/version`."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, Request

from ... import relay
from ...protocol import ServerContext
from .encode import ChatLines, GenerateLines, assistant_message, final, head, loaded, stamp
from .models import model_entry, show
from .schemas import ModelRequest, OllamaChatRequest, OllamaGenerateRequest
from .translate import chat_job, generate_job

# The Ollama API version these routes follow; apps check it before using newer features
# (tools need 0.3, JSON-schema formats 0.5).
OLLAMA_API_VERSION = "0.12.0"
_FOREVER = timedelta(days=365 * 10)  # keep_alive: the model is never unloaded


def install(router: APIRouter, ctx: ServerContext) -> None:
    """The /api routes over `ctx`'s engine."""
    engine, guard = ctx.engine, ctx.guard

    @router.get("/api/version")
    async def version() -> dict[str, Any]:
        return {"version": OLLAMA_API_VERSION}

    @router.get("/api/tags")
    async def tags() -> dict[str, Any]:
        return {"models": [model_entry(engine)]}

    @router.get("/api/ps")
    async def ps() -> dict[str, Any]:
        entry = model_entry(engine)
        entry.pop("modified_at")
        entry["expires_at"] = stamp(datetime.now(timezone.utc) + _FOREVER)
        entry["size_vram"] = entry["size"]  # unified memory: it all is
        entry["context_length"] = engine.context_limit
        return {"models": [entry]}

    @router.post("/api/show")
    async def show_model(request: Request) -> dict[str, Any]:
        req = await guard.read(request, ModelRequest)
        engine.check_model(req.model or req.name)
        return show(engine)

    @router.post("/api/chat")
    async def chat(request: Request) -> Any:
        req = await guard.read(request, OllamaChatRequest)
        engine.check_model(req.model)
        started = time.perf_counter()
        if not req.messages:  # how Ollama apps load (or unload) a model ahead of use
            return loaded(engine, req, "message", {"role": "assistant", "content": ""})
        prepared = await engine.prepare(chat_job, engine, req)
        job, reply = prepared.job, prepared.reply
        if req.stream:
            return relay.stream(engine, job, request, ChatLines(engine, started), reply)
        whole = await relay.whole(engine, job, request, reply)
        message = assistant_message(whole.outcome.content or "", whole.outcome.calls)
        return {**head(engine), "message": message, **final(whole.done, started)}

    @router.post("/api/generate")
    async def generate(request: Request) -> Any:
        req = await guard.read(request, OllamaGenerateRequest)
        engine.check_model(req.model)
        started = time.perf_counter()
        if not req.prompt and not req.system:
            return loaded(engine, req, "response", "")
        job = await engine.prepare(generate_job, engine, req)
        if req.stream:
            return relay.stream(engine, job, request, GenerateLines(engine, started))
        whole = await relay.whole(engine, job, request)
        return {**head(engine), "response": whole.text, **final(whole.done, started)}
