"""Driving the chat app, or one of its parts alone, with Textual's Pilot.

`running(home, ...)` starts the whole app (`ChatApp`) with its model loaded; `hosted(...)`
mounts a `ChatView` alone in a small host app on a session of the shared tiny model, as
oterm tests its chat widget. Both count the replies that finish (the view's ReplyDone,
seen through Textual's message hook), so `reply` waits for the end of the reply to the
message just sent, never for a state that a send still being measured also shows.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from textual.app import App, ComposeResult
from textual.message import Message

from tui.app import ChatApp
from tui.chat_view import ChatView
from tui.reply_job import ReplyDone
from tui.widgets import MessageView

SIZE = (110, 36)


async def wait_for(pilot, condition, timeout: float = 60.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError("timed out waiting for the app")


class _Replies:
    """Counts the replies that finish in an app (done or failed)."""

    def __init__(self) -> None:
        self.done = 0
        self.sent_at = 0  # `done` when the last message was sent

    def __call__(self, message: Message) -> None:
        if isinstance(message, ReplyDone):
            self.done += 1


_counters: dict[int, _Replies] = {}


def _counter(app: App) -> _Replies:
    return _counters.setdefault(id(app), _Replies())


@contextlib.asynccontextmanager
async def driving(app: App, size: tuple[int, int] = SIZE) -> AsyncIterator[Any]:
    """`app` in a test terminal, its finished replies counted; yields the pilot."""
    counter = _counter(app)
    try:
        async with app.run_test(size=size, message_hook=counter) as pilot:
            yield pilot
    finally:
        _counters.pop(id(app), None)


def view_of(app: App) -> ChatView:
    return app.query_one(ChatView)


async def ready(pilot) -> ChatApp:
    """The app, once its model is loaded and a chat is open."""
    app = pilot.app
    await wait_for(pilot, lambda: view_of(app).session is not None)
    return app


@contextlib.asynccontextmanager
async def running(home: Path, **kwargs: Any) -> AsyncIterator[tuple[ChatApp, Any]]:
    """The whole app in a test terminal, with its model loaded."""
    app = ChatApp(home=home, **kwargs)
    async with driving(app) as pilot:
        await ready(pilot)
        yield app, pilot


class ViewHost(App[None]):
    """A ChatView alone, on `session`, with what the chat app gives it (its store, its
    styles) and the app's one duty towards it: a message entered goes to the view."""

    CSS_PATH = ChatApp.CSS_PATH

    def __init__(self, store: Any, session: Any, view: type[ChatView] = ChatView, **kw) -> None:
        super().__init__()
        self.view = view(store, id="main", **kw)
        self.session = session

    def compose(self) -> ComposeResult:
        yield self.view

    def on_mount(self) -> None:
        self.view.show_loading(False)
        self.view.new_chat(self.session)
        self.view.prompt.focus()

    def on_prompt_input_submitted(self, event: Any) -> None:
        if self.view.can_change():
            self.view.check_and_send(event.text)


@contextlib.asynccontextmanager
async def hosted(
    home: Path, model: Any, *, view: type[ChatView] = ChatView, **kwargs: Any
) -> AsyncIterator[tuple[ChatView, Any]]:
    """A ChatView alone on a new ChatSession of `model` (a chats store in `home`)."""
    from qwen_mlx.chat.chat_store import ChatStore
    from qwen_mlx.chat.session import ChatSession

    store = ChatStore(home)
    host = ViewHost(store, ChatSession(model), view, **kwargs)
    try:
        async with driving(host) as pilot:
            await wait_for(pilot, lambda: host.view.session is not None)
            yield host.view, pilot
    finally:
        store.close()


def held_saves(monkeypatch) -> threading.Event:
    """Make every ChatSession.save wait until the returned event is set (at most 30 s): a
    long chat's KV cache on a slow disk."""
    import qwen_mlx.chat.session as session_module

    saving = threading.Event()
    real_save = session_module.ChatSession.save

    def slow_save(self, path):
        saving.wait(30)
        return real_save(self, path)

    monkeypatch.setattr(session_module.ChatSession, "save", slow_save)
    return saving


def replies(app: App) -> int:
    session = view_of(app).session
    return sum(m["role"] == "assistant" for m in session.messages) if session else 0


def views(app: App) -> list[tuple[str, str]]:
    return [(v.role, v.content) for v in app.query(MessageView)]


def notices(app: App) -> list[str]:
    return [n.message for n in app._notifications]


def key_names(text: str) -> list[str]:
    """The keys that type `text`."""
    names = {" ": "space", "/": "slash", ".": "full_stop", "_": "underscore"}
    return [names.get(c, c) for c in text]


async def type_keys(pilot, text: str) -> None:
    await pilot.press(*key_names(text))


async def type_and_send(pilot, text: str) -> None:
    """Type `text` key by key, then Enter."""
    _counter(pilot.app).sent_at = _counter(pilot.app).done
    await type_keys(pilot, text)
    await pilot.press("enter")


async def send(pilot, text: str) -> None:
    """Put `text` in the input and press Enter (for a test not about typing: a long text
    typed key by key takes minutes on a loaded machine)."""
    _counter(pilot.app).sent_at = _counter(pilot.app).done
    view_of(pilot.app).prompt.load_text(text)
    await pilot.press("enter")


async def reply(pilot, *, send_anyway: bool = False) -> None:
    """Wait for the reply to the last message sent to finish (or fail), and its save.
    With `send_anyway`, say yes when asked whether to send a message that will not fit."""
    from tui.screens import ConfirmScreen

    app, counter = pilot.app, _counter(pilot.app)
    view = view_of(app)

    def done() -> bool:
        if send_anyway and isinstance(app.screen, ConfirmScreen):
            app.screen.dismiss(True)
        return counter.done > counter.sent_at and not view.streaming and not view.busy

    await wait_for(pilot, done)


async def exchange(pilot, text: str, *, send_anyway: bool = False) -> None:
    """Send `text` and wait for the reply to it."""
    await send(pilot, text)
    await reply(pilot, send_anyway=send_anyway)


def slow_prefill(model, tokens, params, *, should_stop, prompt_progress=None, **kwargs):
    """A stand-in for ChatSession's model step that reads its prompt slowly (reporting
    progress) until stopped: a long re-read on a slow machine, which the app must show and
    stop. Gives up after 60 s, so a regression fails a test rather than hanging it."""
    import time

    from qwen_mlx.runtime import GenerationChunk

    give_up = time.monotonic() + 60
    done = 0
    while time.monotonic() < give_up:
        if prompt_progress is not None:
            prompt_progress(min(done, len(tokens) - 1), len(tokens))
        if should_stop():
            yield GenerationChunk("", None, len(tokens), 0.0, 0, 0.0, 0.0, 0.0, "cancelled")
            return
        done += 1
        time.sleep(0.02)
    yield GenerationChunk("", None, len(tokens), 0.0, 0, 0.0, 0.0, 0.0, "length")
