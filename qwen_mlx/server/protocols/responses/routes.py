"""The Responses API's routes: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`.

A request's body is read by the guard, its conversation found (a stored response it
continues) and translated into the shared request (translate.py), prepared by the same
`prepare_chat` as every protocol's, and the response comes back whole or as the
Responses event stream (encode.py), stored when asked to (store.py). Hosted tools a
request lists (web search, ...) are left out of its prompt and named in the log, once
each while the server runs (Codex lists web search in every request).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ... import relay
from ...engine import Engine
from ...errors import APIError
from ...prepare import Prepared, prepare_chat
from ...protocol import ServerContext
from .encode import ResponseEvents, ResponseWriter
from .schemas import ResponsesRequest, check_metadata
from .store import ResponseStore, Stored
from .translate import chat_prompt, conversation, hosted

logger = logging.getLogger(__name__)


def install(router: APIRouter, ctx: ServerContext) -> None:
    """The Responses API's routes over `ctx`'s engine; its store is `ctx.state.responses`."""
    engine, guard = ctx.engine, ctx.guard
    store = ctx.state.responses = ResponseStore()
    told: set[str] = set()  # the hosted tools named in the log so far

    @router.post("/v1/responses")
    async def create(request: Request) -> Any:
        req = await guard.read(request, ResponsesRequest)
        engine.check_model(req.model)
        check_metadata(req.metadata)
        for kind in dict.fromkeys(hosted(req.tools)):
            if kind not in told:
                told.add(kind)
                logger.warning(
                    "left the hosted tool %r out of the prompt: it does not run on this "
                    "server (named once)",
                    kind,
                )
        previous = _previous(store, req.previous_response_id)
        writer = ResponseWriter(engine, store, req)
        prepared = await engine.prepare(_prepare, engine, req, previous, writer)
        job, reply = prepared.job, prepared.reply
        if req.stream:
            return relay.stream(engine, job, request, ResponseEvents(writer), reply)
        whole = await relay.whole(engine, job, request, reply)
        writer.logprobs += writer.entries(whole.parts)
        return writer.complete(whole.done, whole.outcome)

    @router.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str) -> Response:
        stored = store.get(response_id)
        if stored is None:
            raise _not_found(response_id)
        return Response(stored.response, media_type="application/json")

    @router.delete("/v1/responses/{response_id}")
    async def delete(response_id: str) -> dict[str, Any]:
        if not store.delete(response_id):
            raise _not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}


def _not_found(response_id: str) -> APIError:
    return APIError(
        404,
        f"No stored response has the id {response_id!r} (it was not stored, was deleted, "
        "was dropped to make room for newer ones, or the server restarted).",
        code="not_found",
    )


def _previous(store: ResponseStore, response_id: str | None) -> Stored | None:
    """The stored response a request continues, or a 400 when it is not stored."""
    if response_id is None:
        return None
    previous = store.get(response_id)
    if previous is None:
        raise APIError(
            400,
            f"Previous response with id {response_id!r} not found "
            "(send `store: true` on the request that made it).",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return previous


def _prepare(
    engine: Engine, req: ResponsesRequest, previous: Stored | None, writer: ResponseWriter
) -> Prepared:
    """On a preparation thread: the conversation (kept for storing the response), and
    the job with the reply that shapes its text."""
    writer.conversation = conversation(req, previous)
    prompt = chat_prompt(req, writer.conversation, logprobs=writer.wants_logprobs)
    return prepare_chat(engine, prompt)
