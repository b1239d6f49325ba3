"""The web chat at `/`: a page served by us, its JSON API under `/web/api`, replies as SSE.

Why this shape: the page is one HTML file, one hand-written script and one stylesheet,
shipped as package data (no CDN, no JavaScript build step, nothing to install but this
package). Markdown is rendered on the server (markdown.py: markdown-it-py and
Pygments, which Textual already brings), so the browser never parses model text: each
reply streams as server-sent events carrying the HTML of the reply so far, which the
script puts in place. The model runs through `ChatSession` on the model thread
(chats.py), not through the OpenAI route's engine jobs, because that is what keeps a
chat's KV cache on disk beside the terminal app's: the same chats continue in either
without re-reading their history.

Safety, on top of the app's loopback binding and Host check: the API key asked once and
kept as a session cookie, a CSRF token and an Origin check (auth.py), and a
Content-Security-Policy allowing only our own script and styles, so even a mistake in
escaping could not run injected code. Replies stream from replies.py.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import math
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ...chat.chat_store import Chat, title_from
from ...chat.export import default_export_path
from ...chat.policy import ContextPolicy
from ...chat.stored_chat import SAMPLING_KEYS, chat_sampling
from ...errors import ContextOverflowError
from ...runtime import Message
from ...runtime.memory import MemoryPlanner
from ...runtime.thread import on_model_thread
from ..engine import Engine
from ..errors import APIError
from ..guard import parse_json
from ..protocol import ServerContext
from .auth import SESSION_COOKIE, SESSION_LIFETIME, SignInRefused, WebGuard
from .chats import WebChats
from .markdown import code_css, message_views
from .replies import Ask, stream_reply

logger = logging.getLogger(__name__)

STATIC = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make forms send `Origin: null`
    "Cache-Control": "no-store",
}


def install(router: APIRouter, ctx: ServerContext) -> None:
    """Serve the web chat on `ctx`'s model, with the chats under `ctx.web_home` (default:
    the store's, `$QWEN_MLX_HOME`); its chats are `ctx.state.web`."""
    engine, home = ctx.engine, ctx.web_home
    if home is None:
        from ...store import home as store_home

        home = store_home()
    chats = ctx.state.web = WebChats(
        engine.model,
        home,
        planner=_capped(engine),
        kv_bits=engine.kv_bits,
        max_tokens_cap=engine.max_tokens_cap,
    )
    router.include_router(_router(chats, WebGuard(ctx.guard.api_key)))


def _capped(engine: Engine) -> MemoryPlanner:
    """The engine's planner, its context capped at the server's `--max-context` if one
    was given (chats then apply their context policy there)."""
    planner = engine.planner
    memory = min(engine.model.context_length, planner.max_context(engine.kv_bits))
    if engine.context_limit >= memory:
        return planner
    shape = dataclasses.replace(planner.shape, context_length=engine.context_limit)
    return MemoryPlanner(shape, planner.weights, planner.budget, dtype_bytes=planner.dtype_bytes)


def _router(chats: WebChats, guard: WebGuard) -> APIRouter:
    router = APIRouter()
    api = APIRouter(prefix="/web/api", dependencies=[Depends(guard.api)])
    model = chats.model

    @router.get("/", include_in_schema=False)
    async def page(request: Request) -> Response:
        if not guard.signed_in(request):
            return _page("login.html", error="")
        return _page("index.html", csrf=guard.csrf_token(request), model=model.name)

    @router.post("/web/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        guard.check_origin(request)  # no signing in from another site (login CSRF)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0]
        try:
            token = guard.sign_in(key)
        except SignInRefused as e:
            response = _page("login.html", error=str(e), status=429)
            response.headers["Retry-After"] = str(math.ceil(e.wait))
            return response
        if token is None:
            logger.warning("web chat: a sign-in with a wrong key")
            return _page("login.html", error="That is not the API key of this server.", status=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=SESSION_LIFETIME,
            httponly=True,
            samesite="strict",
            path="/",
        )
        return response

    @router.get("/web/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name == "code.css":
            body = code_css()
            kind = "text/css"
        elif name in STATIC:
            body = _asset(name)
            kind = STATIC[name]
        else:
            raise APIError(404, f"No web asset {name}.", code="not_found")
        return Response(body, media_type=kind, headers=SECURITY_HEADERS)

    @api.get("/info")
    async def info() -> dict[str, Any]:
        defaults = model.default_params
        return {
            "model": model.name,
            "defaults": {key: getattr(defaults, key) for key in SAMPLING_KEYS},
            "policies": list(ContextPolicy.names()),
            "max_tokens": min(chats.max_tokens_cap, max(chats.context_limit - 1, 1)),
        }

    @api.get("/chats")
    async def list_chats() -> dict[str, Any]:
        return {
            "chats": [
                {"id": c.id, "title": c.title, "updated_at": c.updated_at, "busy": chats.busy(c.id)}
                for c in chats.store.list()
            ]
        }

    @api.post("/chats")
    async def create_chat(request: Request) -> dict[str, Any]:
        body = await _json(request)
        title = body.get("title")
        if title is not None and not isinstance(title, str):
            raise APIError(400, "title: expected text.", param="title")
        settings = body.get("settings") or {}
        system = chats.check_settings(settings).system
        await chats.off_model_thread(chats.check_system, system)
        chat = chats.create(settings)
        if title and title.strip():
            chats.store.rename(chat.id, title_from(title))
        return await _chat_view(chats, chats.chat(chat.id))

    @api.get("/chats/{chat_id}")
    async def get_chat(chat_id: str) -> dict[str, Any]:
        return await _chat_view(chats, chats.chat(chat_id))

    @api.post("/chats/{chat_id}/settings")
    async def settings(chat_id: str, request: Request) -> dict[str, Any]:
        chat = chats.chat(chat_id)
        body = await _json(request)
        system = chats.check_settings(body).system  # a 400 before queuing behind model work
        await chats.off_model_thread(chats.check_system, system)
        turn = chats.begin(chat_id, "saving its settings")
        try:
            await on_model_thread(chats.apply_settings, chat, body)
        finally:
            chats.end(turn)
        return await _chat_view(chats, chats.chat(chat_id))

    @api.post("/chats/{chat_id}/send")
    async def send(chat_id: str, request: Request) -> Response:
        chat = chats.chat(chat_id)
        text = _text(await _json(request), "write a message to send")
        chats.check_length(text, "text: the message", "text")
        return await stream_reply(chats, chat, Ask("send", text), request)

    @api.post("/chats/{chat_id}/regenerate")
    async def regenerate(chat_id: str, request: Request) -> Response:
        return await stream_reply(chats, chats.chat(chat_id), Ask("regenerate"), request)

    @api.post("/chats/{chat_id}/edit")
    async def edit(chat_id: str, request: Request) -> Response:
        chat = chats.chat(chat_id)
        body = await _json(request)
        text, index = _text(body, "write the message to send"), body.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise APIError(400, "index: expected the message's number (0 or more).", param="index")
        chats.check_length(text, "text: the message", "text")
        return await stream_reply(chats, chat, Ask("edit", text, index), request)

    @api.post("/chats/{chat_id}/stop")
    async def stop(chat_id: str) -> dict[str, Any]:
        chats.chat(chat_id)
        return {"stopped": chats.stop(chat_id)}

    @api.post("/chats/{chat_id}/attach")
    async def attach(chat_id: str, request: Request, name: str) -> Response:
        chat = chats.chat(chat_id)
        data = await request.body()
        ask = Ask("attach", name=Path(name).name or "attachment", data=data)
        return await stream_reply(chats, chat, ask, request)

    @api.get("/chats/{chat_id}/export")
    async def export(chat_id: str) -> Response:
        chat = chats.chat(chat_id)
        filename = default_export_path(chat.title, Path(".")).name
        return Response(
            chats.export(chat),
            media_type="text/markdown; charset=utf-8",
            headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}"},
        )

    @api.post("/chats/{chat_id}/delete")
    async def delete(chat_id: str) -> dict[str, Any]:
        chats.chat(chat_id)
        turn = chats.begin(chat_id, "being deleted")
        try:
            await on_model_thread(chats.forget, chat_id)
            chats.store.delete(chat_id)
        finally:
            chats.end(turn)
        return {"deleted": chat_id}

    router.include_router(api)
    return router


# -- pages ------------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def _page(name: str, *, status: int = 200, **values: str) -> HTMLResponse:
    """A page from web/, its `{{name}}` slots filled with escaped values."""
    text = _asset(name)
    for slot, value in values.items():
        text = text.replace("{{" + slot + "}}", html.escape(value))
    headers = dict(SECURITY_HEADERS, **{"X-Frame-Options": "DENY"})
    return HTMLResponse(text, status_code=status, headers=headers)


async def _json(request: Request) -> dict[str, Any]:
    body = parse_json(await request.body() or b"{}")
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return body


def _text(body: dict[str, Any], what: str) -> str:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise APIError(400, f"text: {what}.", param="text")
    return text


async def _chat_view(chats: WebChats, chat: Chat) -> dict[str, Any]:
    """What the page shows of a chat. A busy chat's session is at work on the model
    thread: its messages come from the store, and its context figures later. Otherwise
    the session is fetched on the model thread (its KV cache is MLX arrays) and the
    conversation counted on a preparation thread; one too long to count (a huge system
    prompt, say) shows no figure but a notice saying so."""
    params = chat_sampling(chats.model, chat.params)
    view: dict[str, Any] = {
        "id": chat.id,
        "title": chat.title,
        "model": chat.model,
        "settings": {
            "params": {key: getattr(params, key) for key in SAMPLING_KEYS},
            "system": chat.system or "",
            "policy": chat.policy,
        },
        "busy": chats.busy(chat.id),
        "context": None,
        "notices": [],
    }
    if view["busy"]:
        messages = chats.store.messages(chat.id)
    else:
        session = await on_model_thread(chats.session, chat)

        def count() -> tuple[list[Message], dict[str, int | None], list[str]]:
            notices, session.notices[:] = list(session.notices), []
            limit = session.context_limit
            try:
                session.prepare(add_generation_prompt=False, reserve=0)
            except ContextOverflowError as e:
                return session.history, {"used": None, "limit": limit}, [*notices, str(e)]
            return session.history, {"used": session.context_tokens, "limit": limit}, notices

        messages, view["context"], view["notices"] = await chats.off_model_thread(count)
    view["messages"] = message_views(messages)
    return view
