"""The qwen-mlx chat app: Textual on top of ChatSession, model in-process.

`ChatApp` puts the parts together and runs the app's life: the layout and the keys, the
model it runs (and the draft for speculative decoding), which chat is open, and the
slash commands (`commands.py`). The parts are widgets that say what happened with
messages, and the app calls their methods:

- `ChatView` (`chat_view.py`): the open chat, its replies streamed from the model thread,
  the progress of long reads, the status line and the input;
- `Sidebar` (`sidebar.py`): the saved chats and their search;
- `ToolServers` (`tool_servers.py`): the MCP servers, their tools and calls;
- `attachments.py`: a file read into the open chat; `model_choice.py`: which model and
  draft to load; `screens.py`: the dialogs.

Model work (loading, replies, reading attachments, saving caches) runs on the process's
model thread, so the UI never blocks and Esc stops a reply. Chats live in SQLite under
$QWEN_MLX_HOME with their KV caches beside them, so reopening a long chat starts its next
reply at once.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Header

from qwen_mlx.chat.chat_store import ChatStore
from qwen_mlx.runtime.thread import on_model_thread

from .attachments import attach_file
from .chat_view import ChatView
from .commands import help_text, run_command
from .model_choice import default_model, load_draft, load_model, stored_models
from .screens import (
    ConfirmScreen,
    FilePicker,
    HelpScreen,
    ModelPicker,
    NoModelScreen,
    SettingsScreen,
    TextPrompt,
)
from .sidebar import Sidebar
from .tool_servers import ToolServers
from .widgets import PromptInput

if TYPE_CHECKING:
    from qwen_mlx.chat.chat_store import Chat
    from qwen_mlx.chat.session import ChatSession
    from qwen_mlx.runtime import Model

UNMOUNT_WAIT = 3.0  # seconds to let the model thread finish saving at exit
EQUIP_RETRY = 0.5  # seconds before giving a busy chat the MCP tools again

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


class ChatApp(App[None]):
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
        from qwen_mlx.store import home as store_home

        self.home = Path(home) if home is not None else store_home()
        self.load_options = dict(load_options or {})
        self.model_ref = model  # the model asked for on the command line
        self.model: Model | None = None  # the loaded model; None while it loads
        self.store = ChatStore(self.home)  # here, so an unreadable file stops the start
        if chat_id is None and resume:
            recent = self.store.list()
            chat_id = recent[0].id if recent else None
        self.initial_chat = chat_id  # opened once the model is loaded
        # Speculative decoding for every chat: the user's choice ("lookup", a draft model's
        # reference, or None: --draft, else what /draft saved last time), what sessions get
        # ("lookup" or the loaded draft Model), and how many tokens a step drafts.
        self.draft_ref = draft if draft is not None else self.store.setting("draft")
        self.draft: Any = None
        self.num_draft_tokens = num_draft_tokens
        # The parts, kept here: what they hold is read after the app has quit too.
        self.sidebar = Sidebar(self.store, id="sidebar")
        self.chat_view = ChatView(self.store, flush_interval=flush_interval, id="main")
        self.tool_servers = ToolServers(self.home)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="body"):
            yield self.sidebar
            yield self.chat_view
        yield Footer()
        yield self.tool_servers

    # What the open chat holds, for a script or a test that drives the app.
    @property
    def session(self) -> ChatSession | None:
        return self.chat_view.session

    @property
    def chat(self) -> Chat | None:
        return self.chat_view.chat

    @property
    def streaming(self) -> bool:
        return self.chat_view.streaming

    @property
    def busy(self) -> str:
        return self.chat_view.busy

    # -- the app's life ----------------------------------------------------------------------

    def on_mount(self) -> None:
        group = self.load_options.get("group")
        if group is not None:  # a lost rank left the model thread blocked: quit, naming it
            group.on_stuck(
                lambda failure: self.call_from_thread(
                    self.exit, return_code=1, message=f"error: {failure}"
                )
            )
        self.sidebar.list_chats(None)
        ref = self.model_ref or default_model(
            self.home, self.store, opened=self.initial_chat, draft=self.draft_ref
        )
        if ref is None:
            self.chat_view.show_loading(False)
            self.push_screen(NoModelScreen(), self._after_no_model)
        else:
            self._load_model(ref)

    def on_unmount(self) -> None:
        """Stop a reply or a reading, and give the model thread a moment to save them."""
        from concurrent.futures import TimeoutError as Timeout

        from qwen_mlx.runtime.thread import model_thread

        if self.session is not None:
            self.session.stop()  # a reply, or an attachment being read
        self.chat_view.stop()  # other work that can be stopped
        # The jobs ahead of this one save the messages, then the KV cache; a huge cache
        # still being written after that is rewritten next time.
        with suppress(Timeout):
            model_thread().submit(lambda: None).result(timeout=UNMOUNT_WAIT)
        self.store.close()

    def can_reply(self) -> bool:
        """True when a model is loaded and the open chat is idle (else, once it has a
        session, say why not)."""
        return self.model is not None and self.chat_view.can_change()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in _OWN_ACTIONS and len(self.screen_stack) > 1:
            return False  # a dialog is open: its own keys apply
        if action == "stop":
            return self.chat_view.can_stop
        return True

    # -- what the parts say ------------------------------------------------------------------

    def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text
        if text.startswith("/"):
            self.chat_view.prompt.clear()
            self.run_command(text)
        elif self.can_reply():
            self.chat_view.check_and_send(text)

    def on_sidebar_selected(self, event: Sidebar.Selected) -> None:
        if not self.chat_view.idle() or self.model is None:
            return
        self.chat_view.prompt.focus()  # at once: what is typed next is not lost
        if self.chat is None or event.chat_id != self.chat.id:
            self.open_chat(event.chat_id)

    def on_chat_view_chat_changed(self, event: ChatView.ChatChanged) -> None:
        self.sidebar.list_chats(event.chat.id if event.chat else None)
        if self.model is not None:
            chat = f" · chat {event.chat.id}" if event.chat else " · new chat"
            self.sub_title = f"{self.model.name}{chat}"

    def on_chat_view_work_changed(self, event: ChatView.WorkChanged) -> None:
        if self.screen_stack:  # empty while the app shuts down
            self.refresh_bindings()

    def on_tool_servers_tools_changed(self, event: ToolServers.ToolsChanged) -> None:
        self._equip_session()

    def on_tool_servers_called(self, event: ToolServers.Called) -> None:
        self.chat_view.show_tool_call(event.server, event.name, event.arguments, event.result)

    def _equip_session(self) -> None:
        """Give the open chat the MCP servers' tools (once it is idle)."""
        session = self.session
        if session is None:
            return
        if session.busy:
            self.set_timer(EQUIP_RETRY, self._equip_session)
            return
        self.tool_servers.equip(session)

    def run_command(self, line: str) -> None:
        """Run a slash command line, as typed in the input."""
        run_command(self, line)

    # -- which chat is open -----------------------------------------------------------------

    def _new_session(self) -> ChatSession:
        from qwen_mlx.chat.session import ChatSession

        return self._with_draft(self.tool_servers.equip(ChatSession(self.model)))

    def _with_draft(self, session: ChatSession) -> ChatSession:
        if self.draft is not None:
            session.set_draft(self.draft, self.num_draft_tokens)
        return session

    def start_new_chat(self) -> None:
        self.chat_view.new_chat(self._new_session())

    @work(exclusive=True, group="open")
    async def open_chat(self, chat_id: str) -> None:
        """Open a saved chat with its KV cache (on the model thread: it loads arrays)."""
        from qwen_mlx.chat.stored_chat import resume

        view = self.chat_view
        chat = self.store.get(chat_id)
        if chat is None:
            self.notify(
                f"No saved chat {chat_id} (the sidebar lists them); starting a new one.",
                severity="error",
            )
            if view.session is None:
                self.start_new_chat()
            return
        messages = self.store.messages(chat_id)

        def job() -> tuple[ChatSession, tuple[int, int]]:
            session = self._with_draft(resume(self.store, chat, self.model, messages=messages))
            return session, (session.context_tokens, session.context_limit)

        view.begin_busy(f"opening “{chat.title}”", lock_input=False)  # keys are not lost
        try:
            session, context = await on_model_thread(job)
        finally:
            view.end_busy()
        view.show_chat(chat, self.tool_servers.equip(session), context)
        view.prompt.focus()

    # -- the model and its draft --------------------------------------------------------------

    def _after_no_model(self, built: bool | None) -> None:
        if not built:
            self.exit()
            return
        from qwen_mlx.convert.demo import DEMO_MODEL

        self.chat_view.show_loading(True)
        self._load_model(DEMO_MODEL)

    @work(exclusive=True, group="load")
    async def _load_model(self, ref: str) -> None:
        view = self.chat_view
        view.status.model_label = f"loading {ref}…"
        view.begin_busy(f"loading {ref}", lock_input=False)  # typing goes on meanwhile
        try:
            model = await on_model_thread(load_model, ref, self.load_options)
        except Exception as e:
            view.show_loading(False)
            view.status.model_label = f"no model ({ref} failed to load)"
            self.notify(f"Could not load {ref}: {e}", severity="error", timeout=10)
            return
        finally:
            view.end_busy()
        if self.draft_ref:
            self.draft = await self._load_draft(model, self.draft_ref)
        self._model_ready(model)

    def _model_ready(self, model: Model) -> None:
        self.model = model
        view = self.chat_view
        view.show_loading(False)
        view.status.model_label = f"{model.name} · {model.quantization_label}"
        self.sub_title = model.name
        initial, self.initial_chat = self.initial_chat, None  # only for the first model
        if self.chat is not None:
            self.chat.model = model.ref
            self.store.update(self.chat)
            self.open_chat(self.chat.id)
        elif initial:
            self.open_chat(initial)  # says so, and starts a new chat, if there is none
        else:
            self.start_new_chat()
        view.prompt.focus()

    async def _load_draft(self, model: Model, ref: str) -> Any:
        """ "lookup", or the draft model for `ref` (None, with a notice, if it is unusable)."""
        if ref == "lookup":
            return "lookup"
        view = self.chat_view
        view.begin_busy(f"loading the draft {ref}", lock_input=False)
        try:
            return await on_model_thread(load_draft, model, ref, self.home)
        except Exception as e:
            saved = self.store.setting("draft") == ref
            if saved:  # gone from the store, say: not tried again at every start
                self.store.set_setting("draft", None)
            forgot = " (the saved /draft setting is cleared)" if saved else ""
            self.notify(f"No speculative decoding: {e}{forgot}", severity="error", timeout=10)
            self.draft_ref = None
            return None
        finally:
            view.end_busy()

    @work(exclusive=True, group="draft")
    async def set_draft(self, arg: str) -> None:
        """/draft lookup|REF|off: speculative decoding for this chat and the next ones,
        kept as an app setting for the next start of the app (--draft overrides it)."""
        if not arg:
            self.notify(f"Draft: {self.draft_ref or 'off'} (/draft lookup, a model, or off).")
            return
        ref = None if arg == "off" else arg
        draft = await self._load_draft(self.model, ref) if ref else None
        if ref and draft is None:
            return
        self.draft_ref, self.draft = ref, draft
        self.session.set_draft(draft, self.num_draft_tokens)
        self.store.set_setting("draft", ref)
        self.notify(
            f"Draft: {ref} (kept for the next start)."
            if ref
            else "Speculative decoding off (kept for the next start)."
        )

    # -- actions (keys and commands) ---------------------------------------------------------

    def action_stop(self) -> None:
        if not self.chat_view.stop() and isinstance(self.screen, NoModelScreen):
            self.screen.dismiss(False)

    def action_regenerate(self) -> None:
        if self.can_reply() and any(m.role == "user" for m in self.session.history):
            self.chat_view.regenerate()

    def action_edit_last(self) -> None:
        if self.can_reply():
            self.chat_view.edit_last()

    def action_copy_reply(self) -> None:
        self.chat_view.copy_reply()

    def action_new_chat(self) -> None:
        if self.can_reply():
            self.start_new_chat()
            self.chat_view.prompt.focus()

    def action_attach(self, path: str | None = None) -> None:
        if not self.can_reply():
            return
        if path:
            self._attach_file(Path(path).expanduser())
        else:
            self.push_screen(FilePicker(Path.cwd()), lambda p: self._attach_file(p) if p else None)

    @work(group="attach")
    async def _attach_file(self, path: Path) -> None:
        if self.can_reply():
            await attach_file(self.chat_view, path)

    def action_settings(self) -> None:
        if not self.can_reply():
            return
        session = self.session
        params = {key: getattr(session.params, key) for key, _, _ in SettingsScreen.FIELDS}
        self.push_screen(
            SettingsScreen(
                session.system or "",
                params,
                session.policy.value,
                check=self.chat_view.sampling_with,
            ),
            self.apply_settings,
        )

    def apply_settings(self, values: dict[str, Any] | None) -> None:
        """The settings dialog's answer: all of it, or nothing (said) if any is refused."""
        if not values or not self.chat_view.can_change():
            return
        try:
            self.chat_view.apply_settings(values["system"], values["params"], values["policy"])
        except ValueError as e:
            self.notify(f"Settings not saved: {e}", severity="error")
            return
        self.notify("Settings saved for this chat.")

    def action_search(self) -> None:
        self.sidebar.focus_search()

    def action_toggle_sidebar(self) -> None:
        self.sidebar.display = not self.sidebar.display

    def action_help(self) -> None:
        self.push_screen(HelpScreen(help_text(self.BINDINGS)))

    def action_rename(self) -> None:
        chat = self.chat
        if chat is None:
            self.notify("Send a message first: the chat is saved then.")
            return
        self.push_screen(TextPrompt("Rename chat", chat.title), self._renamed)

    def _renamed(self, title: str | None) -> None:
        if title:
            self.chat_view.rename(title)

    def action_export(self, path: str | None = None) -> None:
        self.chat_view.export(path)

    def action_pick_model(self, name: str | None = None) -> None:
        if not self.chat_view.idle():
            return
        if name:
            self._load_model(name)
            return
        names = stored_models(self.home)
        if not names:
            self.notify("The store has no models (see `qwen-mlx models list`).")
            return
        current = self.model.name if self.model else None
        self.push_screen(ModelPicker(names, current), lambda n: self._load_model(n) if n else None)

    def action_delete_chat(self) -> None:
        chat = self.chat
        if chat is None or not self.chat_view.idle():
            return
        self.push_screen(
            ConfirmScreen(f"Delete the chat “{chat.title}”?", "Delete", "Keep", default=False),
            lambda ok: self._delete(chat) if ok else None,
        )

    def _delete(self, chat: Chat) -> None:
        self.store.delete(chat.id)
        self.start_new_chat()


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
