"""A web chat reply: run on the model thread, streamed to the page as server-sent events.

The model thread runs the chat's `ChatSession` turn and hands its text, in batches of
`FLUSH_INTERVAL`, to the event loop, which sends the page the reply so far rendered as
HTML (`reply` events), then the whole conversation with the turn's figures (`done`), or
what went wrong (`error`). A `reply` event carries the HTML of the blocks completed
since the last one (`append`) and of the block still open (`tail`, replaced each time),
so a long reply costs time linear in its length (markdown.MarkdownStream). The
response starts once the first text (or a failure) is in, so a refused turn is an HTTP
error, not a stream. A tab that goes away stops its reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from fastapi.responses import Response, StreamingResponse

from ...chat.chats import DEFAULT_TITLE, Chat, title_from
from ...errors import ContextOverflowError
from ...runtime import Message
from ...runtime.thread import model_thread
from ..errors import APIError
from .chats import ChatBusy, Turn, WebChats
from .markdown import MarkdownStream, message_views

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.05  # seconds of tokens batched into one streamed update


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


async def stream_reply(
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
            history = session.history
            if index < len(history) and history[index].role != "user":
                raise ValueError(
                    f"index: message {index} is the {history[index].role}'s; only your own "
                    "messages can be edited and sent again."
                )
            stream = session.edit(index, text)
        pending: list[str] = []
        flushed = 0.0  # the first text goes out at once: it is the time to first token
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
    markdown, item, finished = MarkdownStream(), first, False
    try:
        while True:
            if isinstance(item, str):
                done, tail = markdown.feed(item)
                yield _sse("reply", {"append": done, "tail": tail})
            elif isinstance(item, _Done):
                finished = True
                yield _sse(
                    "done",
                    {
                        "messages": message_views(item.messages),
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
