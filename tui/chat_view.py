"""The open chat (`ChatView`): its messages, the reply streaming into them, the progress
of long reads, the status line and the input.

The view holds the conversation (`session`, a ChatSession), its saved chat (`chat`; None
until the first message is sent) and the chat's sampling overrides, and says what model
work holds the chat (`streaming`, `busy`): the app asks it (`idle`, `can_change`) before
starting any, and Esc stops it (`stop`). A reply runs on the process's model thread
(`reply_job.run_reply`), which sends its text back in batches as messages, so the
screen never waits for the model; the chat is saved as the reply goes (the messages at
once, the KV cache after). The view tells the app what it must follow with messages
(`ChatChanged`, `WorkChanged`); the app calls its methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import LoadingIndicator, Markdown

from qwen_mlx.chat.chat_store import DEFAULT_TITLE, Chat, ChatStore, title_from
from qwen_mlx.chat.policy import ContextPolicy
from qwen_mlx.chat.stored_chat import SAMPLING_KEYS, chat_sampling, overrides_after, settle
from qwen_mlx.runtime.thread import on_model_thread

from .reply_job import CacheSaved, PolicyNotice, ReplyDone, ReplyText, run_reply
from .screens import ConfirmScreen
from .widgets import MessageView, PromptInput, StatusBar, WorkProgress

if TYPE_CHECKING:
    from qwen_mlx.chat.session import ChatSession
    from qwen_mlx.runtime import SamplingParams

SAVING = "saving the chat"
READ_QUIETLY = 0.5  # seconds a reply's prompt may read before the progress bar shows
TOOL_RESULT_SHOWN = 600  # characters of a tool's result shown in the conversation


@dataclass
class _ReplyOnScreen:
    """The reply being streamed: its view, its Markdown stream, and what goes back if it
    fails (the question's view and text)."""

    view: MessageView
    stream: Any
    user_view: MessageView | None
    text: str | None


class ChatView(Vertical):
    """The open chat: messages, reply streaming, progress, status line, input."""

    streaming: reactive[bool] = reactive(False)  # a reply is being generated
    busy: reactive[str] = reactive("")  # other model work: "loading …", "reading notes.md"

    # -- what the view tells the app ---------------------------------------------------------

    @dataclass
    class ChatChanged(Message):
        """Another chat is on screen, or this one was created, renamed or replied to: the
        list of chats and the title follow. `chat` is None for a new, unsaved chat."""

        chat: Chat | None

    class WorkChanged(Message):
        """A reply or other model work began or ended: the keys that depend on it follow."""

    def __init__(self, store: ChatStore, *, flush_interval: float = 0.08, **kwargs: Any) -> None:
        """`store` keeps the chat; `flush_interval` is the seconds between batches of a
        reply's text sent to the screen."""
        super().__init__(**kwargs)
        self.store = store
        self.flush_interval = flush_interval
        self.session: ChatSession | None = None
        self.chat: Chat | None = None
        self.overrides: dict[str, Any] = {}  # sampling parameters set over the model's
        self._reply: _ReplyOnScreen | None = None
        self._stop_busy: Callable[[], None] | None = None  # stops the busy work, if it can
        self._busy_locks_input = True  # the busy work holds the chat: the input is read-only

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="messages")
        yield LoadingIndicator(id="loading")
        yield WorkProgress(id="progress")
        yield StatusBar(id="status")
        yield PromptInput(id="prompt")

    def on_mount(self) -> None:
        self.message_area.anchor()

    @property
    def message_area(self) -> VerticalScroll:
        return self.query_one("#messages", VerticalScroll)

    @property
    def progress(self) -> WorkProgress:
        return self.query_one("#progress", WorkProgress)

    @property
    def status(self) -> StatusBar:
        return self.query_one("#status", StatusBar)

    @property
    def prompt(self) -> PromptInput:
        return self.query_one("#prompt", PromptInput)

    def show_loading(self, loading: bool) -> None:
        """Show (or hide) that a model is being loaded."""
        self.query_one("#loading", LoadingIndicator).display = loading

    # -- what holds the chat ------------------------------------------------------------------

    def idle(self) -> bool:
        """True when no model work runs for this chat; else say what does."""
        if self.streaming:
            self.notify("A reply is still streaming (Esc stops it).", severity="warning")
            return False
        if self.busy:
            stop = " (Esc stops it)" if self._stop_busy is not None else ""
            self.notify(f"Still {self.busy}{stop}.", severity="warning")
            return False
        return True

    def can_change(self) -> bool:
        """True when the chat's session exists and nothing is using it; else say why."""
        if self.session is None:
            self.notify("The model is still loading.", severity="warning")
            return False
        return self.idle()

    def begin_busy(
        self, what: str, stop: Callable[[], None] | None = None, *, lock_input: bool = True
    ) -> None:
        """Hold the chat for model work described by `what` ("reading notes.md"); `stop`
        ends it early (Esc). With `lock_input`, the input is read-only meanwhile."""
        self._stop_busy = stop
        self._busy_locks_input = lock_input
        self.busy = what

    def end_busy(self) -> None:
        self._stop_busy = None
        self.busy = ""

    @property
    def can_stop(self) -> bool:
        return self.streaming or self._stop_busy is not None

    def stop(self) -> bool:
        """Stop the reply, or the busy work that can be stopped; False if there is none."""
        if self.streaming and self.session is not None:
            self.session.stop()
        elif self._stop_busy is not None:
            self._stop_busy()
        else:
            return False
        return True

    def watch_streaming(self) -> None:
        self._lock_input()

    def watch_busy(self) -> None:
        self._lock_input()

    def _lock_input(self) -> None:
        """Lock the input while busy work holds the chat (an attachment being read). While
        a reply streams it stays open: the next message can be written meanwhile (Enter
        says the reply is still streaming and keeps the text)."""
        locked = bool(self.busy) and self._busy_locks_input
        for prompt in self.query(PromptInput):  # none while the app shuts down
            prompt.read_only = locked
            prompt.set_class(locked, "locked")
        self.post_message(self.WorkChanged())

    # -- which chat is on screen ----------------------------------------------------------------

    def new_chat(self, session: ChatSession) -> None:
        """Show a new chat on `session`; it is saved when its first message is sent."""
        self.chat, self.session, self.overrides = None, session, {}
        self.message_area.remove_children()
        self.status.clear_turn()  # the last chat's figures are not this one's
        self.update_context(0, session.context_limit)
        self.post_message(self.ChatChanged(None))

    def show_chat(self, chat: Chat, session: ChatSession, context: tuple[int, int]) -> None:
        """Show the saved `chat` on `session` (its context figures measured already)."""
        self.chat, self.session, self.overrides = chat, session, dict(chat.params)
        area = self.message_area
        area.remove_children()
        area.mount_all(
            [
                MessageView(m.role, m.content, stopped=m.stopped)
                for m in session.history
                if m.role != "system"
            ]
        )
        area.scroll_end(animate=False)
        self.status.clear_turn()
        self.update_context(*context)
        for notice in session.notices:
            self.notify(notice, severity="warning", timeout=8)
        self.post_message(self.ChatChanged(chat))

    def ensure_chat(self, first_text: str) -> Chat:
        """The saved chat, created (titled after `first_text`) if this one is new."""
        if self.chat is None:
            s = self.session
            self.chat = self.store.create(
                model=s.model.ref,  # loads it again, from the store or its folder
                system=s.system,
                params=dict(self.overrides),
                policy=s.policy.value,
            )
            self.rename(title_from(first_text))
        return self.chat

    def rename(self, title: str) -> None:
        if title and self.chat is not None:
            self.store.rename(self.chat.id, title)
            self.chat.title = title
            self.post_message(self.ChatChanged(self.chat))

    def update_context(self, used: int, limit: int) -> None:
        self.status.context = (used, limit)

    def add_message(self, role: str, text: str) -> None:
        """Show a message that was added to the session (an attachment's, say)."""
        self.message_area.mount(MessageView(role, text))

    # -- replies -----------------------------------------------------------------------------------

    @work(exclusive=True, group="submit")
    async def check_and_send(self, text: str) -> None:
        """Warn before a message that will not fit, then send it. A worker: measuring the
        text takes a while for a long one, and the app's keys must not wait for it."""
        session = self.session
        # Tokenizing only: not on the UI, nor in the model thread's way.
        warning = await asyncio.to_thread(session.fit_report, text)
        if session is not self.session or not self.can_change():
            return  # the chat changed while the text was measured
        if warning is None:
            self.send(text)
        elif session.policy is ContextPolicy.ERROR:
            self.notify(warning, severity="error", timeout=10)
        else:
            self.app.push_screen(
                ConfirmScreen(f"{warning}\nSend anyway?", "Send", "Cancel"),
                lambda ok: self.send(text) if ok else None,
            )

    def send(self, text: str) -> None:
        """Send `text` and stream the reply (the chat must be idle)."""
        self.prompt.clear()
        self.ensure_chat(text)
        user_view = MessageView("user", text)
        self.message_area.mount(user_view)
        self._start_reply("send", text, user_view)

    def regenerate(self) -> None:
        """Replace the last reply with a new one (the chat must be idle)."""
        views = list(self.query(MessageView))
        if views and views[-1].role == "assistant":
            views[-1].remove()
        self._start_reply("regenerate")

    def _start_reply(
        self, kind: str, text: str | None = None, user_view: MessageView | None = None
    ) -> None:
        view = MessageView("assistant")
        self.message_area.mount(view)
        self._reply = _ReplyOnScreen(view, Markdown.get_stream(view), user_view, text)
        self.streaming = True
        bar = self.progress
        bar.start("Reading the prompt", " · Esc stops", quiet_for=READ_QUIETLY)
        self._generate(kind, text, bar)

    @work(group="reply")
    async def _generate(self, kind: str, text: str | None, bar: WorkProgress) -> None:
        await on_model_thread(
            run_reply,
            self.session,
            kind,
            text,
            chat=self.chat,
            store=self.store,
            post=self.post_message,
            progress=bar.report,
            flush_interval=self.flush_interval,
        )

    async def on_reply_text(self, message: ReplyText) -> None:
        self.progress.stop()  # read: the reply is coming
        if self._reply is not None:
            self._reply.view.content += message.text
            await self._reply.stream.write(message.text)

    def on_policy_notice(self, message: PolicyNotice) -> None:
        self.notify(message.text, title="Context policy", severity="warning", timeout=15)

    async def on_reply_done(self, message: ReplyDone) -> None:
        self.progress.stop()
        reply, self._reply = self._reply, None
        if message.saving:  # the chat stays put until its cache is saved; typing is fine
            self.begin_busy(SAVING, lock_input=False)
        self.streaming = False
        if reply is not None:
            await reply.stream.stop()
        prompt = self.prompt
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
            if self.session.last_stats is not None:
                self.status.show_turn(self.session.last_stats)
        self.update_context(*message.context)
        self.post_message(self.ChatChanged(self.chat))  # replied to: first in the list
        if message.error is not None or self.app.focused is None:
            prompt.focus()  # else the user went elsewhere meanwhile (the sidebar, say)

    def on_cache_saved(self, message: CacheSaved) -> None:
        if self.busy == SAVING:
            self.end_busy()
        if message.error is not None:
            self.notify(
                f"The chat's KV cache was not saved ({message.error}); its next reply reads "
                "the history again.",
                severity="warning",
            )

    def show_tool_call(self, server: str, name: str, arguments: Any, result: str) -> None:
        """A tool call and its result, above the reply being written."""
        import json

        where = f"{server}." if server else ""
        shown = json.dumps(arguments, ensure_ascii=False)
        if len(result) > TOOL_RESULT_SHOWN:
            result = result[:TOOL_RESULT_SHOWN] + "…"
        view = MessageView("tool", f"`{where}{name}` `{shown}`\n\n```\n{result}\n```")
        reply = self._reply.view if self._reply is not None else None
        for area in self.query("#messages"):  # none while the app shuts down
            if reply is not None and reply.parent is area:
                area.mount(view, before=reply)
            else:
                area.mount(view)

    # -- changing the conversation (the chat must be idle) -------------------------------------

    def edit_last(self) -> None:
        """Take the last message back into the input to edit and send again."""
        text = self.session.undo()
        if text is None:
            return
        views = list(self.query(MessageView))
        last_user = max((i for i, v in enumerate(views) if v.role == "user"), default=None)
        if last_user is not None:
            for view in views[last_user:]:
                view.remove()
        self.prompt.load_text(text)
        self.prompt.focus()
        if self.chat is not None:
            self.store.save_messages(self.chat.id, self.session.history)

    def clear(self) -> None:
        """Clear the messages (the system prompt stays)."""
        self.session.reset()
        self.message_area.remove_children()
        if self.chat is not None:
            self.store.save_messages(self.chat.id, self.session.history)

    def copy_reply(self) -> None:
        replies = [
            m for m in (self.session.history if self.session else []) if m.role == "assistant"
        ]
        if not replies:
            self.notify("No reply to copy yet.")
            return
        self.app.copy_to_clipboard(replies[-1].content)
        self.notify("Copied the last reply.")

    def export(self, path: str | None = None) -> None:
        """Save the conversation as Markdown (each reply with its sampling) at `path`, else
        in the default place; say where."""
        from qwen_mlx.chat.export import default_export_path, to_markdown

        if self.session is None or not self.session.messages:
            self.notify("Nothing to export yet.")
            return
        title = self.chat.title if self.chat else DEFAULT_TITLE
        target = Path(path).expanduser() if path else default_export_path(title)
        params = self.session.params
        text = to_markdown(
            title=title,
            model=self.session.model.name,
            params={key: getattr(params, key) for key in SAMPLING_KEYS},
            policy=self.session.policy.value,
            messages=self.session.history,  # with each reply's sampling
        )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        except OSError as e:
            self.notify(f"Could not write {target}: {e.strerror}", severity="error")
            return
        self.notify(f"Exported to {target}")

    # -- the chat's settings (saved with it) ------------------------------------------------------

    def sampling_with(self, changes: dict[str, Any]) -> SamplingParams:
        """The sampling parameters `changes` would give this chat (None: back to the
        model's default); ValueError if the sampler refuses them."""
        return chat_sampling(self.session.model, overrides_after(self.overrides, changes))

    def set_params(self, changes: dict[str, Any]) -> None:
        """Change sampling parameters of this chat; ValueError (nothing changes) if the
        sampler refuses them."""
        self.session.params = self.sampling_with(changes)
        self.overrides = overrides_after(self.overrides, changes)
        self._save_settings()

    def apply_settings(self, system: str, params: dict[str, Any], policy: str) -> None:
        """The settings dialog's values; ValueError (nothing changes) for what the sampler
        or the policy refuses."""
        settings = settle(
            self.session.model, params, system=system, policy=policy, overrides=self.overrides
        )
        self.session.system = settings.system
        self.session.policy = settings.policy
        self.session.params, self.overrides = settings.params, settings.overrides
        self._save_settings()

    def set_system(self, text: str | None) -> None:
        self.session.system = text or None
        self._save_settings()

    def set_policy(self, policy: ContextPolicy) -> None:
        self.session.policy = policy
        self._save_settings()

    def _save_settings(self) -> None:
        if self.chat is not None:
            self.chat.params = dict(self.overrides)
            self.chat.system = self.session.system
            self.chat.policy = self.session.policy.value
            self.store.update(self.chat)
