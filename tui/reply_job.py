"""A reply of the open chat on the model thread, and what it tells the screen.

`run_reply` streams a reply out of a ChatSession and posts its text in batches
(`ReplyText`), then `ReplyDone`, then, once the KV cache is saved, `CacheSaved`: every
message goes out from the model thread, in that order, so the screen never waits for the
model and never sees the end before the last text. The chat is saved as the reply goes
(the question at once, the messages when it ends, the KV cache last).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from qwen_mlx.chat.chat_store import Chat, ChatStore
    from qwen_mlx.chat.session import ChatSession


class ReplyText(Message, bubble=False):
    """A batch of the reply's text, for the screen."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ReplyDone(Message, bubble=False):
    """The reply is over: how (an error or None), the context used, and whether the KV
    cache is being saved next (CacheSaved follows)."""

    def __init__(self, error: BaseException | None, context: tuple[int, int], saving: bool) -> None:
        super().__init__()
        self.error = error
        self.context = context
        self.saving = saving


class CacheSaved(Message, bubble=False):
    """The chat's KV cache is saved (or why not)."""

    def __init__(self, error: BaseException | None) -> None:
        super().__init__()
        self.error = error


class PolicyNotice(Message, bubble=False):
    """What the context policy did, as soon as it is decided (before the long re-read it
    may cause)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


def save_chat(store: ChatStore, chat: Chat | None, session: ChatSession, *, cache: bool) -> None:
    """Save the messages of `chat`, and with `cache` its KV cache beside them (on the model
    thread: the chat the job started with, whatever the screen shows now). Nothing for a
    chat not saved yet (None)."""
    if chat is None:
        return
    store.save_messages(chat.id, session.history)
    if cache:
        session.save(store.session_path(chat.id))


def run_reply(
    session: ChatSession,
    kind: str,
    text: str | None,
    *,
    chat: Chat | None,
    store: ChatStore,
    post: Callable[[Message], Any],
    progress: Callable[[int, int], None] | None = None,
    flush_interval: float = 0.08,
) -> None:
    """On the model thread: the reply to `text` (`kind` "send") or a new last reply
    ("regenerate"), its text posted in batches `flush_interval` seconds apart. Saves the
    messages, posts ReplyDone, then saves the KV cache (which takes a while for a long
    chat; the next model job waits for it) and posts CacheSaved. A failed send takes its
    question back out of the session (the screen puts it back in the input). `progress`
    follows a long read of the prompt (a chat re-read after the context policy left
    turns out)."""
    error: BaseException | None = None
    before = len(session.messages)
    session.prefill_progress = progress
    session.on_notice = lambda notice: post(PolicyNotice(notice))
    try:
        if kind == "send":
            stream = session.send(text)
            save_chat(store, chat, session, cache=False)  # the question survives a crash
        else:
            stream = session.regenerate()
        pending: list[str] = []
        flushed = time.monotonic()
        for chunk in stream:
            if chunk.text:
                pending.append(chunk.text)
            now = time.monotonic()
            if pending and now - flushed >= flush_interval:
                post(ReplyText("".join(pending)))
                pending.clear()
                flushed = now
        if pending:
            post(ReplyText("".join(pending)))
    except Exception as e:
        error = e
        if kind == "send" and len(session.messages) > before:
            session.undo()  # the question goes back to the input (unless never added)
    finally:
        session.prefill_progress = session.on_notice = None
    try:
        save_chat(store, chat, session, cache=False)
    except Exception as e:  # a full disk, say: the reply is on screen, say so
        error = error or e
    saving = error is None and chat is not None
    post(ReplyDone(error, (session.context_tokens, session.context_limit), saving))
    if saving:
        problem = None
        try:
            session.save(store.session_path(chat.id))
        except Exception as e:
            problem = e
        post(CacheSaved(problem))
