"""The qwen-mlx chat app: Textual on top of ChatSession, model in-process.

Model work (loading, replies, reading attachments, saving caches) runs on the process's
model thread; text reaches the screen in batches through messages and a MarkdownStream,
so the UI never blocks and Esc stops a reply. Settings, attachments, export and the slash
commands are in commands.py. Chats live in SQLite under $QWEN_MLX_HOME with their KV
caches beside them, so reopening a long chat starts its next reply at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Footer, Header, Input, LoadingIndicator, Markdown

from qwen_mlx.chat.chats import Chat, ChatStore, title_from
from qwen_mlx.runtime import Message as ChatMessage

from .commands import ChatCommands, on_model_thread
from .screens import ConfirmScreen, NoModelScreen
from .widgets import ChatList, MessageView, PromptInput, StatusBar, WorkProgress

UNMOUNT_WAIT = 3.0  # seconds to let the model thread finish saving at exit
SAVING = "saving the chat"

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


@dataclass
class _Reply:
    """The reply being streamed: its view, its Markdown stream and what to restore."""

    view: MessageView
    stream: Any
    user_view: MessageView | None
    text: str | None


class ChatApp(ChatCommands, App[None]):
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

    class ReplyText(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class ReplyDone(Message):
        def __init__(
            self, error: BaseException | None, context: tuple[int, int], saving: bool
        ) -> None:
            super().__init__()
            self.error = error
            self.context = context
            self.saving = saving  # the KV cache is being saved next; CacheSaved follows

    class CacheSaved(Message):
        def __init__(self, error: BaseException | None) -> None:
            super().__init__()
            self.error = error

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
    ) -> None:
        """Open the chat `chat_id`; without one, with `resume` the most recent chat, else
        a new one."""
        super().__init__()
        from qwen_mlx.store import home as store_home

        self.home = Path(home) if home is not None else store_home()
        self.model_ref = model
        self.flush_interval = flush_interval
        self.model: Any = None
        self.session: Any = None
        self.chat: Chat | None = None
        self.store = ChatStore(self.home)  # here, so an unreadable file stops the start
        if chat_id is None and resume:
            recent = self.store.list()
            chat_id = recent[0].id if recent else None
        self.initial_chat = chat_id
        self._reply: _Reply | None = None
        self._stop_busy: Any = None  # stops the busy work, if it can be stopped
        self._busy_locks_input = True
        self.overrides: dict[str, Any] = {}  # this chat's sampling parameters
        # Speculative decoding for every chat: "lookup", a draft model's reference, or None;
        # `draft` is what sessions get ("lookup" or the loaded draft Model).
        self.draft_ref = draft
        self.draft: Any = None
        self.num_draft_tokens = num_draft_tokens

    # -- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="body"):
            yield ChatList(id="sidebar")
            with Vertical(id="main"):
                yield VerticalScroll(id="messages")
                yield LoadingIndicator(id="loading")
                yield WorkProgress(id="progress", show_eta=False)
                yield StatusBar(id="status")
                yield PromptInput(id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#progress").display = False
        self.query_one("#messages", VerticalScroll).anchor()
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

    def _default_model(self) -> str | None:
        """The chat's model if it is still here, else qwen3-4b-instruct's latest, else any
        latest in the store."""
        from qwen_mlx.store import Store

        chat = self.store.get(self.initial_chat) if self.initial_chat else None
        store = Store(self.home)
        try:
            if chat is not None and chat.model:
                if Path(chat.model).expanduser().is_dir():
                    return chat.model
                with suppress(Exception):  # removed, or a name this version does not know
                    if store.models_dir.is_dir() and store.find(chat.model) is not None:
                        return chat.model
            if store.latest("qwen3-4b-instruct") is not None:
                return "qwen3-4b-instruct"
            latest = [m.name for m in store.list() if m.latest] if store.models_dir.is_dir() else []
        except Exception:
            latest = []
        finally:
            store.close()
        return latest[0] if latest else None

    def _after_no_model(self, built: bool | None) -> None:
        if not built:
            self.exit()
            return
        from qwen_mlx.convert.demo import DEMO_MODEL

        self.query_one("#loading").display = True
        self._load_model(DEMO_MODEL)

    # -- model -----------------------------------------------------------------------------

    @work(exclusive=True, group="load")
    async def _load_model(self, ref: str) -> None:
        from qwen_mlx.runtime import load

        self._status_text(f"loading {ref}…")
        self._begin_busy(f"loading {ref}", lock_input=False)  # typing goes on meanwhile
        try:
            model = await on_model_thread(load, ref)
        except Exception as e:
            self._model_failed(ref, e)
            return
        finally:
            self._end_busy()
        if self.draft_ref:
            self.draft = await self._load_draft(model, self.draft_ref)
        self._model_ready(model)

    async def _load_draft(self, model: Any, ref: str) -> Any:
        """ "lookup", or the draft model for `ref` (None, with a notice, if it is unusable)."""
        if ref == "lookup":
            return "lookup"
        from qwen_mlx.runtime import check_tokenizers, load

        def job() -> Any:
            draft = load(ref)
            check_tokenizers(model, draft)
            return draft

        self._begin_busy(f"loading the draft {ref}", lock_input=False)
        try:
            return await on_model_thread(job)
        except Exception as e:
            self.notify(f"No speculative decoding: {e}", severity="error", timeout=10)
            self.draft_ref = None
            return None
        finally:
            self._end_busy()

    def _with_draft(self, session: Any) -> Any:
        if self.draft is not None:
            session.set_draft(self.draft, self.num_draft_tokens)
        return session

    def _model_failed(self, ref: str, error: Exception) -> None:
        self.query_one("#loading").display = False
        self._status_text(f"no model ({ref} failed to load)")
        self.notify(f"Could not load {ref}: {error}", severity="error", timeout=10)

    def _model_ready(self, model: Any) -> None:
        self.model = model
        self.query_one("#loading").display = False
        self.query_one(StatusBar).model_label = f"{model.name} · {model.quantization_label}"
        self.sub_title = model.name
        initial, self.initial_chat = self.initial_chat, None  # only for the first model
        if self.chat is not None:
            self.chat.model = model.ref
            self.store.update(self.chat)
            self._open_chat(self.chat.id)
        elif initial:
            self._open_chat(initial)  # says so, and starts a new chat, if there is none
        else:
            self._start_new_chat()
        self.query_one(PromptInput).focus()

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

    # -- chats -----------------------------------------------------------------------------

    def _refresh_chats(self, search: str | None = None) -> None:
        if search is None:
            search = self.query_one("#chat-search", Input).value
        chats = self.store.list(search)
        self.query_one(ChatList).show(chats, self.chat.id if self.chat else None)
        if self.model is not None:
            chat = f" · chat {self.chat.id}" if self.chat else " · new chat"
            self.sub_title = f"{self.model.name}{chat}"

    def _start_new_chat(self) -> None:
        from qwen_mlx.chat.session import ChatSession

        self.chat = None
        self.overrides = {}
        self.session = self._with_draft(ChatSession(self.model))
        self.query_one("#messages").remove_children()
        self._update_context(0, self.session.context_limit)
        self._refresh_chats()

    def _ensure_chat(self, first_text: str) -> Chat:
        if self.chat is None:
            s = self.session
            self.chat = self.store.create(
                model=self.model.ref,  # loads it again, from the store or its folder
                system=s.system,
                params=dict(self.overrides),
                policy=s.policy.value,
            )
            self.store.rename(self.chat.id, title_from(first_text))
            self.chat.title = title_from(first_text)
            self._refresh_chats()
        return self.chat

    @work(exclusive=True, group="open")
    async def _open_chat(self, chat_id: str) -> None:
        chat = self.store.get(chat_id)
        if chat is None:
            self.notify(
                f"No saved chat {chat_id} (the sidebar lists them); starting a new one.",
                severity="error",
            )
            if self.session is None:
                self._start_new_chat()
            return
        messages = self.store.messages(chat_id)

        def job() -> tuple[Any, tuple[int, int]]:
            session = self._session_for(chat, messages)
            return session, (session.context_tokens, session.context_limit)

        self._begin_busy(f"opening “{chat.title}”", lock_input=False)  # keys are not lost
        try:
            session, context = await on_model_thread(job)
        finally:
            self._end_busy()
        self._show_chat(chat, session, context)
        self.query_one(PromptInput).focus()

    def _session_for(self, chat: Chat, messages: list[ChatMessage]) -> Any:
        """A ChatSession for a stored chat, with its saved KV cache when it still fits."""
        from qwen_mlx.chat.session import ChatSession

        params = self.model.default_params.replace(**chat.params)
        path = self.store.session_path(chat.id)
        if path.is_file():
            try:
                session = ChatSession.load(path, self.model, policy=chat.policy, messages=messages)
                session.params = params
                return self._with_draft(session)
            except ValueError:
                pass  # an unreadable session file: the messages are in SQLite anyway
        session = ChatSession(self.model, params=params, policy=chat.policy)
        for message in messages:
            session.add_message(message)
        return self._with_draft(session)

    def _show_chat(self, chat: Chat, session: Any, context: tuple[int, int]) -> None:
        self.chat, self.session = chat, session
        self.overrides = dict(chat.params)
        container = self.query_one("#messages")
        container.remove_children()
        views = [
            MessageView(m.role, m.content, stopped=m.stopped)
            for m in session.history
            if m.role != "system"
        ]
        container.mount_all(views)
        container.scroll_end(animate=False)
        self._update_context(*context)
        for notice in session.notices:
            self.notify(notice, severity="warning", timeout=8)
        self._refresh_chats()

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

    @work(exclusive=True, group="submit")
    async def _check_and_send(self, text: str) -> None:
        """Warn before a message that will not fit, then send it. A worker: measuring
        the text waits for the model thread, and the app's own messages (keys) must not."""
        session = self.session
        warning = await on_model_thread(session.fit_report, text)  # tokenizes: not on the UI
        if session is not self.session or not self._can_reply():
            return  # the chat changed while the text was measured
        if warning is None:
            self._send(text)
        elif self.session.policy.value == "error":
            self.notify(warning, severity="error", timeout=10)
        else:
            self.push_screen(
                ConfirmScreen(f"{warning}\nSend anyway?", "Send", "Cancel"),
                lambda ok: self._send(text) if ok else None,
            )

    def _send(self, text: str) -> None:
        self.query_one(PromptInput).clear()
        self._ensure_chat(text)
        user_view = MessageView("user", text)
        self.query_one("#messages").mount(user_view)
        self._start_reply("send", text, user_view)

    def _start_reply(self, kind: str, text: str | None = None, user_view=None) -> None:
        view = MessageView("assistant")
        self.query_one("#messages").mount(view)
        self._reply = _Reply(view, Markdown.get_stream(view), user_view, text)
        self.streaming = True
        self._generate(kind, text)

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

    @work(group="reply")
    async def _generate(self, kind: str, text: str | None) -> None:
        await on_model_thread(self._reply_job, self.chat, self.session, kind, text)

    def _reply_job(self, chat: Chat | None, session: Any, kind: str, text: str | None) -> None:
        """On the model thread: stream the reply to the UI in batches, save the messages,
        report done, then save the KV cache (which can take a while for a long chat; the
        next model job waits for it). Every message goes out from this thread, so
        ReplyDone arrives after the last text."""
        error: BaseException | None = None
        before = len(session.messages)
        try:
            if kind == "send":
                stream = session.send(text)
                self._persist(chat, session, cache=False)  # the question survives a crash
            else:
                stream = session.regenerate()
            pending: list[str] = []
            flushed = time.monotonic()
            for chunk in stream:
                if chunk.text:
                    pending.append(chunk.text)
                now = time.monotonic()
                if pending and now - flushed >= self.flush_interval:
                    self.post_message(self.ReplyText("".join(pending)))
                    pending.clear()
                    flushed = now
            if pending:
                self.post_message(self.ReplyText("".join(pending)))
        except Exception as e:
            error = e
            if kind == "send" and len(session.messages) > before:
                session.undo()  # the question goes back to the input (unless never added)
        try:
            self._persist(chat, session, cache=False)
        except Exception as e:  # a full disk, say: the reply is on screen, say so
            error = error or e
        saving = error is None and chat is not None
        context = (session.context_tokens, session.context_limit)
        self.post_message(self.ReplyDone(error, context, saving))
        if saving:
            problem = None
            try:
                self._save_cache(chat, session)
            except Exception as e:
                problem = e
            self.post_message(self.CacheSaved(problem))

    def _persist(self, chat: Chat | None, session: Any, *, cache: bool) -> None:
        """Save the messages, and with `cache` the KV cache, of `chat` (on the model
        thread: the chat the job started with, whatever the screen shows now)."""
        if chat is None:
            return
        self.store.save_messages(chat.id, session.history)
        if cache:
            self._save_cache(chat, session)

    def _save_cache(self, chat: Chat, session: Any) -> None:
        """Save the KV cache of `chat` beside its messages (on the model thread)."""
        session.save(self.store.session_path(chat.id))

    async def on_chat_app_reply_text(self, message: ReplyText) -> None:
        if self._reply is not None:
            self._reply.view.content += message.text
            await self._reply.stream.write(message.text)

    async def on_chat_app_reply_done(self, message: ReplyDone) -> None:
        reply, self._reply = self._reply, None
        if message.saving:  # the chat stays put until its cache is saved; typing is fine
            self._begin_busy(SAVING, lock_input=False)
        self.streaming = False
        if reply is not None:
            await reply.stream.stop()
        prompt = self.query_one(PromptInput)
        if message.error is not None:
            if reply is not None:
                await reply.view.remove()
                if reply.user_view is not None:
                    await reply.user_view.remove()
                if reply.text:  # back in the input, before what was typed meanwhile
                    typed = prompt.text
                    prompt.load_text(f"{reply.text}\n\n{typed}" if typed.strip() else reply.text)
            self.notify(
                str(message.error), title="The model could not reply", severity="error", timeout=10
            )
        else:
            history = self.session.history
            if reply is not None and history and history[-1].stopped:
                reply.view.mark_stopped()
            self._show_stats()
        self._update_context(*message.context)
        self._refresh_chats()
        if message.error is not None or self.focused is None:
            prompt.focus()  # else the user went elsewhere meanwhile (the sidebar, say)

    def on_chat_app_cache_saved(self, message: CacheSaved) -> None:
        if self.busy == SAVING:
            self._end_busy()
        if message.error is not None:
            self.notify(
                f"The chat's KV cache was not saved ({message.error}); its next reply reads "
                "the history again.",
                severity="warning",
            )

    def _show_stats(self) -> None:
        from qwen_mlx.fileio import human_bytes

        stats = self.session.last_stats
        if stats is None:
            return
        self.query_one(StatusBar).speed = (
            f"first token {stats.time_to_first_token * 1000:.0f} ms · "
            f"{stats.tokens_per_second:.1f} tok/s · peak {human_bytes(stats.peak_memory * 1e9)} · "
            f"read {stats.prefilled_tokens:,} of {stats.prompt_tokens:,}"
        )
        if stats.drafted:
            self.query_one(StatusBar).speed += f" · draft {stats.acceptance_rate:.0%} accepted"

        warnings = list(stats.notices)
        if stats.dropped_messages:
            warnings.append(f"{stats.dropped_messages} oldest messages left out of the prompt")
        self.query_one(StatusBar).warning = "; ".join(warnings)

    def _update_context(self, used: int, limit: int) -> None:
        self.query_one(StatusBar).context = (used, limit)

    def _status_text(self, text: str) -> None:
        self.query_one(StatusBar).model_label = text

    # -- actions ---------------------------------------------------------------------------

    def action_stop(self) -> None:
        if self.streaming and self.session is not None:
            self.session.stop()
        elif self._stop_busy is not None:
            self._stop_busy()
        elif isinstance(self.screen, NoModelScreen):
            self.screen.dismiss(False)

    def action_regenerate(self) -> None:
        if not self._can_reply() or not any(m.role == "user" for m in self.session.history):
            return
        views = list(self.query(MessageView))
        if views and views[-1].role == "assistant":
            views[-1].remove()
        self._start_reply("regenerate")

    def action_edit_last(self) -> None:
        """Take the last message back into the input to edit and send again."""
        if not self._can_reply():
            return
        text = self.session.undo()
        if text is None:
            return
        views = list(self.query(MessageView))
        last_user = max((i for i, v in enumerate(views) if v.role == "user"), default=None)
        if last_user is not None:
            for view in views[last_user:]:
                view.remove()
        prompt = self.query_one(PromptInput)
        prompt.load_text(text)
        prompt.focus()
        if self.chat is not None:
            self.store.save_messages(self.chat.id, self.session.history)

    def action_copy_reply(self) -> None:
        replies = [
            m for m in (self.session.history if self.session else []) if m.role == "assistant"
        ]
        if not replies:
            self.notify("No reply to copy yet.")
            return
        self.copy_to_clipboard(replies[-1].content)
        self.notify("Copied the last reply.")

    def action_new_chat(self) -> None:
        if self._can_reply():
            self._start_new_chat()
            self.query_one(PromptInput).focus()

    def action_search(self) -> None:
        self.query_one("#sidebar").display = True
        self.query_one("#chat-search", Input).focus()

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one("#sidebar")
        sidebar.display = not sidebar.display


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="qwen-mlx chat",
        description="Chat with a local Qwen3 model in the terminal. Chats are saved under "
        "$QWEN_MLX_HOME and resume with their KV cache.",
    )
    p.add_argument(
        "--model",
        "-m",
        help="store name, family, folder or repo id "
        "(default: the chat's model, else qwen3-4b-instruct, else the store's)",
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


def main(argv: list[str] | None = None) -> int:
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
    )
    app.run()
    if app.chat is not None:
        print(f"Chat {app.chat.id} saved. Resume it with: qwen-mlx chat --session {app.chat.id}")
    return app.return_code or 0
