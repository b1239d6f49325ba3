"""The qwen-mlx chat app: Textual on top of ChatSession, model in-process.

ChatApp is put together from one part per job, each a module of this package:
`replies.py` (send, stream, stop, regenerate, edit), `chats.py` (the sidebar, open, new,
rename, delete, export), `attachments.py` (files into the conversation), `settings.py`
(sampling, system prompt, policy, the model), `commands.py` (the slash-command table,
/help, /info); `state.py` declares the state they share. This module holds the layout,
the keys, the app's life (mount, unmount) and `main`.

Model work (loading, replies, reading attachments, saving caches) runs on the process's
model thread; text reaches the screen in batches through messages and a MarkdownStream,
so the UI never blocks and Esc stops a reply. Chats live in SQLite under $QWEN_MLX_HOME
with their KV caches beside them, so reopening a long chat starts its next reply at once.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Footer, Header, Input, LoadingIndicator

from qwen_mlx.chat.chat_store import ChatStore

from .attachments import Attachments
from .chats import Chats
from .commands import Commands
from .mcp import MCPCommands
from .replies import Replies
from .screens import NoModelScreen
from .settings import Settings
from .state import AppState
from .widgets import ChatList, PromptInput, StatusBar, WorkProgress

UNMOUNT_WAIT = 3.0  # seconds to let the model thread finish saving at exit

_OWN_ACTIONS = {
    "stop",
    "regenerate",
    "edit_last",
    "copy_reply",
    "new_chat",
    "attach",
    "settings",
    "search",
    "toggle_sidebar",
    "help",
    "rename",
    "export",
    "pick_model",
    "delete_chat",
}


class ChatApp(Replies, Chats, Attachments, Settings, Commands, MCPCommands, AppState, App[None]):
    """Chat with a local Qwen3 model."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "qwen-mlx"
    AUTO_FOCUS = "#prompt"
    BINDINGS = [
        Binding("escape", "stop", "Stop", priority=True),
        Binding("ctrl+r", "regenerate", "Regenerate", priority=True),
        Binding("ctrl+t", "edit_last", "Edit last", priority=True),
        Binding("ctrl+g", "copy_reply", "Copy reply", priority=True),
        Binding("ctrl+n", "new_chat", "New chat", priority=True),
        Binding("ctrl+o", "attach", "Attach", priority=True),
        Binding("ctrl+s", "settings", "Settings", priority=True),
        Binding("ctrl+f", "search", "Search", priority=True),
        Binding("ctrl+b", "toggle_sidebar", "Sidebar", priority=True),
        Binding("f1", "help", "Help"),
        Binding("f2", "rename", "Rename"),
        Binding("f3", "export", "Export"),
        Binding("f4", "pick_model", "Model"),
        Binding("f8", "delete_chat", "Delete chat"),
    ]

    streaming: reactive[bool] = reactive(False)  # a reply is being generated
    busy: reactive[str] = reactive("")  # other model work: "loading …", "reading notes.md"

    def __init__(
        self,
        *,
        model: str | None = None,
        chat_id: str | None = None,
        resume: bool = False,
        home: str | Path | None = None,
        flush_interval: float = 0.08,
        draft: str | None = None,
        num_draft_tokens: int | None = None,
        load_options: dict[str, Any] | None = None,
    ) -> None:
        """Open the chat `chat_id`; without one, with `resume` the most recent chat, else
        a new one. `load_options` go to every `load` (a group of ranks to split across)."""
        super().__init__()
        self.load_options = dict(load_options or {})
        from qwen_mlx.store import home as store_home

        self.home = Path(home) if home is not None else store_home()
        self.model_ref = model
        self.flush_interval = flush_interval
        self.model = None
        self.session = None
        self.chat = None
        self.store = ChatStore(self.home)  # here, so an unreadable file stops the start
        if chat_id is None and resume:
            recent = self.store.list()
            chat_id = recent[0].id if recent else None
        self.initial_chat = chat_id
        self._reply = None
        self._stop_busy = None
        self._busy_locks_input = True
        self.overrides = {}
        # Speculative decoding for every chat: "lookup", a draft model's reference, or None
        # (--draft, else what /draft saved last time); `draft` is what sessions get
        # ("lookup" or the loaded draft Model).
        self.draft_ref = draft if draft is not None else self.store.setting("draft")
        self.draft = None
        self.num_draft_tokens = num_draft_tokens

    # -- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="body"):
            yield ChatList(id="sidebar")
            with Vertical(id="main"):
                yield VerticalScroll(id="messages")
                yield LoadingIndicator(id="loading")
                yield WorkProgress(id="progress")
                yield StatusBar(id="status")
                yield PromptInput(id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#messages", VerticalScroll).anchor()
        group = self.load_options.get("group")
        if group is not None:  # a lost rank left the model thread blocked: quit, naming it
            group.on_stuck(
                lambda failure: self.call_from_thread(
                    self.exit, return_code=1, message=f"error: {failure}"
                )
            )
        self._refresh_chats()
        ref = self.model_ref or self._default_model()
        if ref is None:
            self.query_one("#loading").display = False
            self.push_screen(NoModelScreen(), self._after_no_model)
        else:
            self._load_model(ref)

    def on_unmount(self) -> None:
        """Stop a reply or a reading, and give the model thread a moment to save them."""
        if self.session is not None:
            self.session.stop()
        if self._stop_busy is not None:
            self._stop_busy()
        from concurrent.futures import TimeoutError as Timeout

        from qwen_mlx.runtime.thread import model_thread

        # The jobs ahead of this one save the messages, then the KV cache; a huge cache
        # still being written after that is rewritten next time.
        with suppress(Timeout):
            model_thread().submit(lambda: None).result(timeout=UNMOUNT_WAIT)
        self.store.close()

    # -- the sidebar and the input (Textual's @on handlers must live on the App class) -------

    @on(ChatList.Selected)
    def _chat_picked(self, event: ChatList.Selected) -> None:
        if not self._idle() or self.model is None:
            return
        self.query_one(PromptInput).focus()  # at once: what is typed next is not lost
        if self.chat is None or event.chat_id != self.chat.id:
            self._open_chat(event.chat_id)

    @on(Input.Changed, "#chat-search")
    def _search(self, event: Input.Changed) -> None:
        self._refresh_chats(event.value)

    # -- sending and streaming -------------------------------------------------------------

    @on(PromptInput.Submitted)
    def _submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text
        if text.startswith("/"):
            self.query_one(PromptInput).clear()
            self.run_command(text)
            return
        if self._can_reply():
            self._check_and_send(text)

    def watch_streaming(self) -> None:
        self._lock_input()

    def watch_busy(self) -> None:
        self._lock_input()

    def _lock_input(self) -> None:
        """Lock the input while an attachment is read (the chat is held). While a reply
        streams it stays open: the next message can be written meanwhile (Enter says
        the reply is still streaming and keeps the text)."""
        locked = bool(self.busy) and self._busy_locks_input
        for prompt in self.query(PromptInput):  # none while the app shuts down
            prompt.read_only = locked
            prompt.set_class(locked, "locked")
        if self.screen_stack:  # empty while the app shuts down
            self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in _OWN_ACTIONS and len(self.screen_stack) > 1:
            return False  # a dialog is open: its own keys apply
        if action == "stop":
            return self.streaming or self._stop_busy is not None
        return True

    # -- actions ---------------------------------------------------------------------------


def build_parser(
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """`qwen-mlx chat`'s flags; `qwen-mlx chat` passes its parser class (which suggests
    the flag a mistyped one meant)."""
    p = parser_class(
        allow_abbrev=False,
        prog="qwen-mlx chat",
        description="Chat with a local Qwen3 model in the terminal. Chats are saved under "
        "$QWEN_MLX_HOME and resume with their KV cache.",
    )
    p.add_argument(
        "--model",
        "-m",
        help="store name, family, folder or repo id "
        "(default: the chat's model, else the last chat's, else the most recently converted "
        "one that never served as a --draft)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--session", metavar="ID", help="open a saved chat by its id (default: the most recent)"
    )
    which.add_argument("--new", action="store_true", help="start a new chat")
    p.add_argument(
        "--draft",
        metavar="lookup|REF",
        help="speculative decoding (same replies, faster): 'lookup' drafts from the chat "
        "itself, a model reference drafts with that small model (same tokenizer)",
    )
    p.add_argument("--num-draft-tokens", type=int, metavar="K", help="most tokens drafted per step")
    return p


def not_a_terminal() -> str | None:
    """Why the app cannot run here (stdin or stdout is not a terminal), or None."""
    pipes = [name for name, f in (("stdin", sys.stdin), ("stdout", sys.stdout)) if not _tty(f)]
    if not pipes:
        return None
    return (
        f"qwen-mlx chat needs a terminal, but its {' and '.join(pipes)} "
        f"{'is' if len(pipes) == 1 else 'are'} not one (a pipe or a file). Run it in a "
        "terminal; for a reply in a script use `qwen-mlx generate --prompt TEXT` "
        "(`--prompt -` reads stdin)."
    )


def _tty(stream: Any) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a file at all
        return False


def main(argv: list[str] | None = None, load_options: dict[str, Any] | None = None) -> int:
    """Run the app; on quit, say which chat was saved and how to resume it. Exit status 2
    when there is no terminal to draw in (the app would draw into a pipe and wait)."""
    args = build_parser().parse_args(argv)
    problem = not_a_terminal()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    app = ChatApp(
        model=args.model,
        chat_id=args.session,
        resume=not args.new,
        draft=args.draft,
        num_draft_tokens=args.num_draft_tokens,
        load_options=load_options,
    )
    app.run()
    if app.chat is not None:
        print(f"Chat {app.chat.id} saved. Resume it with: qwen-mlx chat --session {app.chat.id}")
    return app.return_code or 0
