"""The web chat at `/`: a page served by us, its JSON API under `/web/api`, replies as SSE.

Why this shape: the page is one HTML file, one hand-written script and one stylesheet,
shipped as package data (no CDN, no JavaScript build step, nothing to install but this
package). Markdown is rendered on the server (web_markdown.py: markdown-it-py and
Pygments, which Textual already brings), so the browser never parses model text: each
reply streams as server-sent events carrying the HTML of the reply so far, which the
script puts in place. The model runs through `ChatSession` on the model thread
(web_chats.py), not through the OpenAI route's engine jobs, because that is what keeps a
chat's KV cache on disk beside the terminal app's: the same chats continue in either
without re-reading their history.

Safety, on top of the app's loopback binding and Host check:
- With an API key, the page asks for it once (a form) and keeps an HttpOnly,
  SameSite=Strict session cookie derived from it; `Authorization: Bearer` works too.
- Every `/web/api` request carries the page's CSRF token (a header a cross-site page can
  neither read nor set), and every state-changing one an `Origin` equal to the server's.
- The page sends a Content-Security-Policy allowing only our own script and styles, so
  even a mistake in escaping could not run injected code.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from ..chat.chats import DEFAULT_TITLE, Chat, title_from
from ..chat.export import default_export_path
from ..chat.policy import ContextPolicy
from ..errors import ContextOverflowError
from ..runtime import Message
from ..runtime.thread import model_thread
from .engine import Engine
from .errors import APIError
from .web_chats import SAMPLING_KEYS, ChatBusy, Turn, WebChats, on_model_thread
from .web_markdown import code_css, render_markdown, render_plain

logger = logging.getLogger(__name__)

SESSION_COOKIE = "qwen_mlx_session"
FLUSH_INTERVAL = 0.05  # seconds of tokens batched into one streamed update
STATIC = {"app.js": "text/javascript", "app.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make forms send `Origin: null`
    "Cache-Control": "no-store",
}


def mount_web(
    app: FastAPI, engine: Engine, *, api_key: str | None, home: str | Path | None = None
) -> WebChats:
    """Serve the web chat from `app` on `engine`'s model, with the chats under `home`
    (default: the store's, `$QWEN_MLX_HOME`)."""
    if home is None:
        from ..store import home as store_home

        home = store_home()
    chats = WebChats(engine.model, home, planner=engine.planner, kv_bits=engine.kv_bits)
    app.include_router(_router(chats, _Guard(api_key)))
    return chats


class _Guard:
    """Who may use the page: the API key (as a cookie or a bearer header), the CSRF token
    and, for changes, the request's Origin."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key
        self._secret = secrets.token_bytes(32)  # a restart asks open pages to reload
        self.cookie = (
            hmac.new(api_key.encode(), b"qwen-mlx web session", hashlib.sha256).hexdigest()
            if api_key
            else ""
        )

    def signed_in(self, request: Request) -> bool:
        if not self.api_key:
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        bearer = scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )
        return bearer or hmac.compare_digest(cookie.encode(), self.cookie.encode())

    def csrf_token(self, request: Request) -> str:
        session = request.cookies.get(SESSION_COOKIE, "").encode()
        return hmac.new(self._secret, b"csrf:" + session, hashlib.sha256).hexdigest()

    def check_origin(self, request: Request) -> None:
        """Refuse a change that does not come from a page of this very server."""
        origin = request.headers.get("origin")
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin is None or origin.lower() != expected.lower():
            raise APIError(
                403,
                "Cross-site request refused: changes must come from this server's own page "
                f"(Origin {origin or 'missing'}, expected {expected}).",
                code="cross_site",
            )

    async def api(self, request: Request) -> None:
        """The check on every /web/api route."""
        if not self.signed_in(request):
            raise APIError(
                401, "Sign in with the server's API key: reload the page.", code="invalid_api_key"
            )
        token = request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(token.encode(), self.csrf_token(request).encode()):
            raise APIError(
                403,
                "Missing or stale CSRF token (the server restarted?): reload the page.",
                code="csrf",
            )
        if request.method not in ("GET", "HEAD"):
            self.check_origin(request)


def _router(chats: WebChats, guard: _Guard) -> APIRouter:
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
        if not guard.api_key or not hmac.compare_digest(key.encode(), guard.api_key.encode()):
            return _page("login.html", error="That is not the API key of this server.", status=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, guard.cookie, httponly=True, samesite="strict", path="/"
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
        chat = chats.create(body.get("settings") or {})
        title = body.get("title")
        if isinstance(title, str) and title.strip():
            chats.store.rename(chat.id, title_from(title))
        return await _chat_view(chats, chats.chat(chat.id))

    @api.get("/chats/{chat_id}")
    async def get_chat(chat_id: str) -> dict[str, Any]:
        return await _chat_view(chats, chats.chat(chat_id))

    @api.post("/chats/{chat_id}/settings")
    async def settings(chat_id: str, request: Request) -> dict[str, Any]:
        chat = chats.chat(chat_id)
        body = await _json(request)
        if chats.busy(chat_id):
            raise ChatBusy()
        chats.check_settings(body)  # a 400 before queuing behind other model work
        await on_model_thread(chats.apply_settings, chat, body)
        return await _chat_view(chats, chats.chat(chat_id))

    @api.post("/chats/{chat_id}/send")
    async def send(chat_id: str, request: Request) -> Response:
        body = await _json(request)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise APIError(400, "text: write a message to send.", param="text")
        return await _reply(chats, chats.chat(chat_id), "send", text=text)

    @api.post("/chats/{chat_id}/regenerate")
    async def regenerate(chat_id: str) -> Response:
        return await _reply(chats, chats.chat(chat_id), "regenerate")

    @api.post("/chats/{chat_id}/edit")
    async def edit(chat_id: str, request: Request) -> Response:
        body = await _json(request)
        text, index = body.get("text"), body.get("index")
        if not isinstance(text, str) or not text.strip():
            raise APIError(400, "text: write the message to send.", param="text")
        if not isinstance(index, int) or isinstance(index, bool):
            raise APIError(400, "index: expected the message's number.", param="index")
        return await _reply(chats, chats.chat(chat_id), "edit", text=text, index=index)

    @api.post("/chats/{chat_id}/stop")
    async def stop(chat_id: str) -> dict[str, Any]:
        chats.chat(chat_id)
        return {"stopped": chats.stop(chat_id)}

    @api.post("/chats/{chat_id}/attach")
    async def attach(chat_id: str, request: Request, name: str) -> dict[str, Any]:
        chat = chats.chat(chat_id)
        data = await request.body()
        turn = chats.begin(chat_id)
        try:
            read = await on_model_thread(
                chats.attach, chat, Path(name).name, data, turn.stop.is_set
            )
        except (OSError, ValueError) as e:
            raise APIError(400, str(e)) from e
        finally:
            chats.end(turn)
        view = await _chat_view(chats, chats.chat(chat_id))
        return {**view, "read_tokens": read}

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
        if chats.busy(chat_id):
            raise ChatBusy()
        await on_model_thread(chats.forget, chat_id)
        chats.store.delete(chat_id)
        return {"deleted": chat_id}

    router.include_router(api)
    return router


# -- pages ------------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("web", name).read_text(encoding="utf-8")


def _page(name: str, *, status: int = 200, **values: str) -> HTMLResponse:
    """A page from web/, its `{{name}}` slots filled with escaped values."""
    text = _asset(name)
    for slot, value in values.items():
        text = text.replace("{{" + slot + "}}", html.escape(value))
    headers = dict(SECURITY_HEADERS, **{"X-Frame-Options": "DENY"})
    return HTMLResponse(text, status_code=status, headers=headers)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise APIError(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return body


def _message_view(index: int, message: Message) -> dict[str, Any]:
    shown = render_markdown if message.role == "assistant" else render_plain
    return {
        "index": index,
        "role": message.role,
        "html": shown(message.content),
        "stopped": message.stopped,
    }


def _messages_view(messages: list[Message]) -> list[dict[str, Any]]:
    return [_message_view(i, m) for i, m in enumerate(messages) if m.role != "system"]


async def _chat_view(chats: WebChats, chat: Chat) -> dict[str, Any]:
    """What the page shows of a chat. A busy chat's session is streaming on the model
    thread: its messages come from the store, and its context figures later."""
    params = chats.model.default_params.replace(**chat.params)
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

        def job() -> tuple[list[Message], dict[str, int], list[str]]:
            session = chats.session(chat)
            notices, session.notices[:] = list(session.notices), []
            context = {"used": session.context_tokens, "limit": session.context_limit}
            return session.history, context, notices

        messages, view["context"], view["notices"] = await on_model_thread(job)
    view["messages"] = _messages_view(messages)
    return view


# -- replies ----------------------------------------------------------------------------------


@dataclass
class _Done:
    messages: list[Message]
    context: dict[str, int]
    stats: dict[str, Any] | None
    notices: list[str]


_Item = str | _Done | BaseException  # what the model thread sends the stream: text, end, failure


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _as_api_error(e: BaseException) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, ContextOverflowError):
        return APIError(400, str(e), code="context_length_exceeded")
    if isinstance(e, ValueError | TypeError | IndexError):
        return APIError(400, str(e))
    if isinstance(e, RuntimeError) and "being generated" in str(e):
        return ChatBusy()
    logger.error("web chat reply failed", exc_info=e)
    return APIError(500, "The server had an error while replying.", type="server_error")


async def _reply(
    chats: WebChats, chat: Chat, kind: str, *, text: str | None = None, index: int | None = None
) -> Response:
    """Start a reply on the model thread; once its first text (or its failure) is in,
    answer with its stream: `reply` events with the HTML so far, then `done` (or `error`)."""
    turn = chats.begin(chat.id)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[_Item] = asyncio.Queue()

    def emit(item: _Item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (shutdown)
            turn.request_stop()

    def release() -> None:
        with suppress(RuntimeError):  # the loop is gone: nobody waits for the chat
            loop.call_soon_threadsafe(chats.end, turn)

    def job() -> None:
        try:
            _run_turn(chats, chat, turn, _Ask(kind, text, index), emit, release)
        except BaseException as e:  # anything the turn did not report itself
            release()
            emit(e)

    model_thread().submit(job)  # followed through the queue
    first = await queue.get()
    if isinstance(first, BaseException):
        raise _as_api_error(first)
    return StreamingResponse(
        _reply_events(first, queue, turn),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@dataclass(frozen=True)
class _Ask:
    """What a turn was asked for: "send" (text), "regenerate", or "edit" (index, text)."""

    kind: str
    text: str | None = None
    index: int | None = None


def _run_turn(
    chats: WebChats,
    chat: Chat,
    turn: Turn,
    ask: _Ask,
    emit: Callable[[_Item], None],
    release: Callable[[], None],
) -> None:
    """On the model thread: stream one reply, save the messages, report, save the cache."""
    kind, text, index = ask.kind, ask.text, ask.index
    session = chats.session(chat)
    turn.session = session
    before = len(session.history)
    try:
        if kind == "send":
            stream = session.send(text)
            if chat.title == DEFAULT_TITLE:
                chat.title = title_from(text)
                chats.store.rename(chat.id, chat.title)
            chats.save(chat, session, cache=False)  # the question survives a crash
        elif kind == "regenerate":
            stream = session.regenerate()
        else:
            stream = session.edit(index, text)
        pending: list[str] = []
        flushed = time.monotonic()
        for chunk in stream:
            if turn.stop.is_set():
                session.stop()
            if chunk.text:
                pending.append(chunk.text)
            now = time.monotonic()
            if pending and now - flushed >= FLUSH_INTERVAL:
                emit("".join(pending))
                pending.clear()
                flushed = now
        if pending:
            emit("".join(pending))
    except BaseException as e:
        if kind == "send" and len(session.history) > before and not session.busy:
            session.undo()  # the question goes back to the page's input
        chats.save(chat, session, cache=False)
        release()  # first: a tab that sees the end may start the next turn at once
        emit(e)
        return
    chats.save(chat, session, cache=False)
    s = session.last_stats
    stats = None
    if s is not None:
        stats = {
            "ttft_ms": round(s.time_to_first_token * 1000, 1),
            "tokens_per_second": round(s.tokens_per_second, 1),
            "generated": s.generation_tokens,
            "prompt_tokens": s.prompt_tokens,
            "prefilled_tokens": s.prefilled_tokens,
            "finish_reason": s.finish_reason,
        }
    notices = list(s.notices) if s is not None else []
    if s is not None and s.dropped_messages:
        notices.append(f"{s.dropped_messages} oldest messages left out of the prompt")
    context = {"used": session.context_tokens, "limit": session.context_limit}
    release()  # before the end is seen; the next turn queues behind the cache save
    emit(_Done(session.history, context, stats, notices))
    try:
        chats.save(chat, session, cache=True)
    except Exception as e:  # a full disk, say: the next reply reads the history again
        logger.warning("chat %s: the KV cache was not saved (%s)", chat.id, e)


async def _reply_events(
    first: str | _Done, queue: asyncio.Queue[_Item], turn: Turn
) -> AsyncIterator[str]:
    text, item, finished = "", first, False
    try:
        while True:
            if isinstance(item, str):
                text += item
                yield _sse("reply", {"html": render_markdown(text)})
            elif isinstance(item, _Done):
                finished = True
                yield _sse(
                    "done",
                    {
                        "messages": _messages_view(item.messages),
                        "context": item.context,
                        "stats": item.stats,
                        "notices": item.notices,
                    },
                )
                return
            else:
                finished = True
                error = _as_api_error(item)
                yield _sse("error", {"message": error.message, "code": error.code})
                return
            item = await queue.get()
    finally:
        if not finished:  # the tab went away mid-reply: stop generating for nobody
            turn.request_stop()
