"""Work in a web chat (a reply, or reading an attachment), streamed to the page as
server-sent events.

A turn holds its chat (`WebChats.begin`: a second tab is told what runs and since when)
and goes in three steps, so that the model thread, which every API client waits on, only
runs the model: the chat's session is fetched on the model thread (its saved KV cache is
MLX arrays), the turn is tokenized and the context policy applied on a preparation
thread (`ChatSession.prepare`; what cannot fit is refused there, as an HTTP error), then
the model thread reads the prompt and streams the reply.

The page hears, as events: `progress` while the prompt is read (tokens in the cache of
the prompt's total, with an estimate of the time left: a long re-read after the context
policy left turns out, or a big attachment), `notice` for what the context policy did,
as soon as it is decided, `reply` for the reply so far (the HTML of the blocks completed
since the last event, `append`, and of the block still open, `tail`: a long reply costs
time linear in its length, see markdown.MarkdownStream), then `done` (the conversation
and the turn's figures) or `error`. A tab that goes away stops its turn, whether it is
waiting for the model thread, reading or writing: its disconnect is watched throughout.
The server logs a line when a turn starts and when it ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from ...chat.chat_store import DEFAULT_TITLE, Chat, title_from
from ...chat.session import ChatSession
from ...errors import ContextOverflowError
from ...runtime import Message
from ...runtime.thread import model_thread, on_model_thread
from ..errors import APIError
from ..relay import streaming, watch
from .chats import Turn, WebChats
from .markdown import MarkdownStream, message_views

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.05  # seconds of tokens batched into one streamed update
PROGRESS_INTERVAL = 0.25  # seconds between progress events while the prompt is read


@dataclass(frozen=True)
class Ask:
    """What a turn was asked for: "send" (text), "regenerate", "edit" (index, text), or
    "attach" (the file's `name`, and `text`, the message that attaches it)."""

    kind: str
    text: str | None = None
    index: int | None = None
    name: str | None = None
    data: bytes | None = field(default=None, repr=False)  # the attached file, until read

    def what(self) -> str:
        """What the turn does, for the busy message and the log."""
        if self.kind == "attach":
            return f"reading {self.name}"
        if self.kind == "regenerate":
            return "writing a new reply"
        edited = "the edited message " if self.kind == "edit" else ""
        return f"replying to {edited}“{title_from(self.text or '')}”"

    def messages(self, history: list[Message]) -> list[Message]:
        """The conversation the turn reads (as the session will make it)."""
        if self.kind in ("send", "attach"):
            return [*history, Message("user", self.text or "")]
        if self.kind == "edit":
            return [*history[: self.index], Message("user", self.text or "")]
        last = max((i for i, m in enumerate(history) if m.role == "user"), default=-1)
        return history[: last + 1]


@dataclass
class _Progress:
    done: int  # tokens of the prompt in the cache
    total: int
    start: int  # in the cache when the read began (reused)
    eta: float | None  # seconds left, once there is a rate to tell


@dataclass
class _Notice:
    text: str


@dataclass
class _Done:
    messages: list[Message]
    session: ChatSession  # its context is counted off the model thread, as the end is sent
    stats: dict[str, Any] | None
    notices: list[str]
    read: int | None = None  # an attachment's tokens read
    complete: bool = True  # all of it (a stop leaves the rest for the next reply)


_Item = str | _Progress | _Notice | _Done | BaseException  # what the model thread sends


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _as_api_error(e: BaseException) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, ContextOverflowError):
        return APIError(400, str(e), code="context_length_exceeded")
    if isinstance(e, ValueError | TypeError | IndexError):
        return APIError(400, str(e))
    logger.error("web chat turn failed", exc_info=e)
    return APIError(500, "The server had an error while replying.", type="server_error")


async def stream_reply(chats: WebChats, chat: Chat, ask: Ask, request: Request) -> Response:
    """Run a turn (see the module docstring); once the model thread has started it (or it
    failed), answer with its stream of events."""
    turn = chats.begin(chat.id, ask.what())
    logger.info("web chat %s: %s: started", chat.id, turn.what)

    def gone() -> None:  # the tab was closed, reloaded, or navigated elsewhere
        logger.info("web chat %s: the tab went away; stopping %s", turn.chat_id, turn.what)
        turn.request_stop()

    watcher = asyncio.create_task(watch(request, lambda: turn.ended or turn.stop.is_set(), gone))
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
            _run_turn(chats, chat, turn, ask, emit, release)
        except BaseException as e:  # anything the turn did not report itself
            release()
            emit(e)

    try:
        if ask.data is not None:  # an attachment: parsed off the model thread, bounded
            message = await chats.off_model_thread(chats.read_attachment, ask.name, ask.data)
            ask = replace(ask, text=message, data=None)
        turn.session = session = await on_model_thread(chats.session, chat)
        if ask.kind == "attach":
            await chats.off_model_thread(chats.check_attachment, session, ask.name, ask.text)
        else:
            await chats.off_model_thread(_prepare, session, ask)
    except BaseException as e:
        chats.end(turn)
        logger.info("web chat %s: %s: refused (%s)", chat.id, turn.what, e)
        raise _as_api_error(e) from None
    model_thread().submit(job)  # followed through the queue
    first = await queue.get()
    if isinstance(first, BaseException):
        watcher.cancel()
        raise _as_api_error(first)
    return streaming(_events(chats, first, queue, turn))


def _prepare(session: ChatSession, ask: Ask) -> None:
    """On a preparation thread: tokenize the turn and apply the context policy, so the
    model thread finds the work done; a refusal is raised here, before the model."""
    history = session.history
    if ask.kind == "edit":
        if ask.index is not None and ask.index >= len(history):
            raise IndexError(f"No message {ask.index}; the conversation has {len(history)}.")
        role = history[ask.index].role if ask.index is not None else "user"
        if role != "user":
            raise ValueError(
                f"index: message {ask.index} is the {role}'s; only your own messages can be "
                "edited and sent again."
            )
    if ask.kind == "regenerate" and not any(m.role == "user" for m in history):
        raise ValueError("There is no message to reply to yet.")
    session.prepare(ask.messages(history))


class _Reporter:
    """The session's `prefill_progress` for a turn: progress events, at most one per
    PROGRESS_INTERVAL, with the time left from the rate so far; and the turn's stop flag
    passed on to the session between chunks (a stop may come before the session has
    started the turn, which clears its own flag)."""

    def __init__(self, turn: Turn, session: ChatSession, emit: Callable[[_Item], None]) -> None:
        self.turn, self.session, self.emit = turn, session, emit
        self.began: tuple[float, int] | None = None
        self.sent = 0.0
        self.finished = False  # the whole prompt was read

    def __call__(self, done: int, total: int) -> None:
        if self.turn.stop.is_set():
            self.session.stop()
        self.finished = done >= total
        now = time.monotonic()
        if self.began is None:
            self.began = (now, done)
        elif done < total and now - self.sent < PROGRESS_INTERVAL:
            return
        self.sent = now
        began, start = self.began
        rate = (done - start) / (now - began) if now > began and done > start else 0.0
        eta = (total - done) / rate if rate > 0 else None
        self.emit(_Progress(done, total, start, eta))


def _run_turn(
    chats: WebChats,
    chat: Chat,
    turn: Turn,
    ask: Ask,
    emit: Callable[[_Item], None],
    release: Callable[[], None],
) -> None:
    """On the model thread: read the prompt and stream the reply (or read the attachment),
    save the messages, report, then save the KV cache."""
    began = time.monotonic()
    session = chats.session(chat)  # the same one, unless the chat changed on disk since
    turn.session = session
    before = len(session.history)
    session.prefill_progress = reporter = _Reporter(turn, session, emit)
    session.on_notice = lambda text: emit(_Notice(text))
    read = None
    try:
        # A stop that came before this (or a tab gone meanwhile) ends the turn at its
        # first chunk, through the reporter: the question is kept, marked stopped.
        if ask.kind == "attach":
            stream = iter(())
            read = chats.attach(chat, session, ask.name or "", ask.text or "", turn.stop.is_set)
        elif ask.kind == "send":
            stream = session.send(ask.text)
            if chat.title == DEFAULT_TITLE:
                chat.title = title_from(ask.text or "")
                chats.store.rename(chat.id, chat.title)
            chats.save(chat, session, cache=False)  # the question survives a crash
        elif ask.kind == "regenerate":
            stream = session.regenerate()
        else:
            stream = session.edit(ask.index, ask.text)
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
        if ask.kind == "send" and len(session.history) > before and not session.busy:
            session.undo()  # the question goes back to the page's input
        chats.save(chat, session, cache=False)
        release()  # first: a tab that sees the end may start the next turn at once
        logger.info("web chat %s: %s: failed (%s)", chat.id, turn.what, e)
        emit(e)
        return
    finally:
        session.prefill_progress = session.on_notice = None
    chats.save(chat, session, cache=False)
    done = _summary(session, ask, read)
    done.complete = reporter.began is None or reporter.finished  # nothing to read, or all
    logger.info("web chat %s: %s: ended (%s)", chat.id, turn.what, _log_line(done, began))
    release()  # before the end is seen; the next turn queues behind the cache save
    emit(done)
    if ask.kind == "attach":
        return  # its cache was saved with it
    try:
        chats.save(chat, session, cache=True)
    except Exception as e:  # a full disk, say: the next reply reads the history again
        logger.warning("chat %s: the KV cache was not saved (%s)", chat.id, e)


def _summary(session: ChatSession, ask: Ask, read: int | None) -> _Done:
    """The end of a turn as the page sees it."""
    s = session.last_stats if ask.kind != "attach" else None
    stats = None
    if s is not None:
        stats = {
            "ttft_ms": round(s.time_to_first_token * 1000, 1),
            "tokens_per_second": round(s.tokens_per_second, 1),
            "generated": s.generation_tokens,
            "prompt_tokens": s.prompt_tokens,
            "prefilled_tokens": s.prefilled_tokens,
            "dropped_messages": s.dropped_messages,
            "finish_reason": s.finish_reason,
        }
    notices = list(s.notices) if s is not None else []
    return _Done(session.history, session, stats, notices, read)


def _log_line(done: _Done, began: float) -> str:
    took = time.monotonic() - began
    if done.read is not None:
        return f"read {done.read:,} tokens in {took:.1f} s"
    s = done.stats or {}
    if "prompt_tokens" not in s:
        return f"no reply, in {took:.1f} s"
    return (
        f"{s['finish_reason']}: read {s['prefilled_tokens']:,} of {s['prompt_tokens']:,} "
        f"prompt tokens, wrote {s['generated']:,} in {took:.1f} s"
    )


async def _events(
    chats: WebChats, first: _Item, queue: asyncio.Queue[_Item], turn: Turn
) -> AsyncIterator[str]:
    markdown, item, finished = MarkdownStream(), first, False
    try:
        while True:
            if isinstance(item, str):
                done, tail = markdown.feed(item)
                yield _sse("reply", {"append": done, "tail": tail})
            elif isinstance(item, _Progress):
                yield _sse(
                    "progress",
                    {"done": item.done, "total": item.total, "start": item.start, "eta": item.eta},
                )
            elif isinstance(item, _Notice):
                yield _sse("notice", {"text": item.text})
            elif isinstance(item, _Done):
                finished = True
                context = await chats.off_model_thread(chats.context, item.session)
                yield _sse(
                    "done",
                    {
                        "messages": message_views(item.messages),
                        "context": context,
                        "stats": item.stats,
                        "notices": item.notices,
                        "read_tokens": item.read,
                        "complete": item.complete,
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
        if not finished and not turn.stop.is_set():  # the tab went away: stop for nobody
            logger.info("web chat %s: the tab went away; stopping %s", turn.chat_id, turn.what)
            turn.request_stop()
