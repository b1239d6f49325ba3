"""What every part of ChatApp shares: the typed state (declared here, set in
ChatApp.__init__), the guards that say whether model work may start, the busy state,
and the status bar.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.message import Message

from qwen_mlx.chat.chat_store import Chat, ChatStore

from .widgets import MessageView, StatusBar

if TYPE_CHECKING:
    from qwen_mlx.chat.session import ChatSession
    from qwen_mlx.runtime import Model


def on_model_thread(fn, /, *args, **kwargs):
    """Await `fn(*args)` run on the process's model thread (see qwen_mlx.runtime.thread)."""
    from qwen_mlx.runtime.thread import model_thread

    return asyncio.wrap_future(model_thread().submit(fn, *args, **kwargs))


class PolicyNotice(Message):
    """What the context policy did, as soon as it is decided (before the long re-read
    it may cause): sent from the model thread, shown by the app."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


@dataclass
class Reply:
    """The reply being streamed: its view, its Markdown stream and what to restore."""

    view: MessageView
    stream: Any
    user_view: MessageView | None
    text: str | None


class AppState:
    """The state and guards the parts of ChatApp share (mixed into ChatApp, an App)."""

    home: Path  # $QWEN_MLX_HOME: the model store and the chats
    store: ChatStore  # the saved chats (SQLite) and their KV caches
    model_ref: str | None  # the model asked for on the command line
    model: Model | None  # the loaded model; None while it loads
    session: ChatSession | None  # the conversation on screen; None until the model loads
    chat: Chat | None  # its saved chat; None until the first message is sent
    overrides: dict[str, Any]  # this chat's sampling parameters that differ from the model's
    initial_chat: str | None  # the chat to open once the model is loaded
    flush_interval: float  # seconds between batches of reply text sent to the screen
    # Speculative decoding for every chat: the user's choice ("lookup", a draft model's
    # reference, or None), what sessions get ("lookup" or the loaded draft Model), and k.
    draft_ref: str | None
    draft: Any
    num_draft_tokens: int | None
    _reply: Reply | None  # the reply being streamed
    _stop_busy: Callable[[], None] | None  # stops the busy work, if it can be stopped
    _busy_locks_input: bool  # the busy work holds the chat: the input is read-only
    # Reactives of ChatApp: a reply is being generated; other model work ("loading …").
    streaming: bool
    busy: str

    def _idle(self) -> bool:
        """True when no model work runs for this chat; else say what does."""
        if self.streaming:
            self.notify("A reply is still streaming (Esc stops it).", severity="warning")
            return False
        if self.busy:
            stop = " (Esc stops it)" if self._stop_busy is not None else ""
            self.notify(f"Still {self.busy}{stop}.", severity="warning")
            return False
        return True

    def _can_change(self) -> bool:
        """True when this chat's session exists and nothing is using it."""
        if self.session is None:
            self.notify("The model is still loading.", severity="warning")
            return False
        return self._idle()

    def _can_reply(self) -> bool:
        return self.model is not None and self._can_change()

    def _begin_busy(self, what: str, stop: Any = None, *, lock_input: bool = True) -> None:
        self._stop_busy = stop
        self._busy_locks_input = lock_input
        self.busy = what

    def _end_busy(self) -> None:
        self._stop_busy = None
        self.busy = ""

    def _update_context(self, used: int, limit: int) -> None:
        self.query_one(StatusBar).context = (used, limit)

    def _status_text(self, text: str) -> None:
        self.query_one(StatusBar).model_label = text
