"""Replies: sending a message, streaming the reply into the view in batches, saving it
(messages at once, the KV cache after), stop, regenerate, edit the last message, copy.
The model work runs on the process's model thread; text comes back as messages.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from textual import work
from textual.message import Message
from textual.widgets import Markdown

from qwen_mlx.chat.chat_store import Chat
from qwen_mlx.chat.policy import ContextPolicy

from .screens import (
    ConfirmScreen,
    NoModelScreen,
)
from .state import AppState, PolicyNotice, Reply, on_model_thread
from .widgets import MessageView, PromptInput, StatusBar, WorkProgress

SAVING = "saving the chat"
READ_QUIETLY = 0.5  # seconds a reply's prompt may read before the progress bar shows


class ReplyText(Message):
    """A batch of the reply's text, for the screen."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ReplyDone(Message):
    """The reply is over: how (an error or None), the context used, and whether the
    KV cache is being saved next (CacheSaved follows)."""

    def __init__(self, error: BaseException | None, context: tuple[int, int], saving: bool) -> None:
        super().__init__()
        self.error = error
        self.context = context
        self.saving = saving  # the KV cache is being saved next; CacheSaved follows


class CacheSaved(Message):
    """The chat's KV cache is saved (or why not)."""

    def __init__(self, error: BaseException | None) -> None:
        super().__init__()
        self.error = error


class Replies(AppState):
    """The conversation's replies (a part of ChatApp)."""

    @work(exclusive=True, group="submit")
    async def _check_and_send(self, text: str) -> None:
        """Warn before a message that will not fit, then send it. A worker: measuring
        the text waits for the model thread, and the app's own messages (keys) must not."""
        session = self.session
        # Tokenizing only: not on the UI, nor in the model thread's way.
        warning = await asyncio.to_thread(session.fit_report, text)
        if session is not self.session or not self._can_reply():
            return  # the chat changed while the text was measured
        if warning is None:
            self._send(text)
        elif self.session.policy is ContextPolicy.ERROR:
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
        self._reply = Reply(view, Markdown.get_stream(view), user_view, text)
        self.streaming = True
        bar = self.query_one("#progress", WorkProgress)
        bar.start("Reading the prompt", " · Esc stops", quiet_for=READ_QUIETLY)
        self._generate(kind, text, bar)

    @work(group="reply")
    async def _generate(self, kind: str, text: str | None, bar: WorkProgress) -> None:
        await on_model_thread(self._reply_job, self.chat, self.session, kind, text, bar)

    def _reply_job(
        self, chat: Chat | None, session: Any, kind: str, text: str | None, bar: WorkProgress
    ) -> None:
        """On the model thread: stream the reply to the UI in batches, save the messages,
        report done, then save the KV cache (which can take a while for a long chat; the
        next model job waits for it). Every message goes out from this thread, so
        ReplyDone arrives after the last text. A long read of the prompt (a chat re-read
        after the context policy left turns out) moves the progress bar."""
        error: BaseException | None = None
        before = len(session.messages)
        session.prefill_progress = bar.report
        session.on_notice = lambda notice: self.post_message(PolicyNotice(notice))
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
                    self.post_message(ReplyText("".join(pending)))
                    pending.clear()
                    flushed = now
            if pending:
                self.post_message(ReplyText("".join(pending)))
        except Exception as e:
            error = e
            if kind == "send" and len(session.messages) > before:
                session.undo()  # the question goes back to the input (unless never added)
        finally:
            session.prefill_progress = session.on_notice = None
        try:
            self._persist(chat, session, cache=False)
        except Exception as e:  # a full disk, say: the reply is on screen, say so
            error = error or e
        saving = error is None and chat is not None
        context = (session.context_tokens, session.context_limit)
        self.post_message(ReplyDone(error, context, saving))
        if saving:
            problem = None
            try:
                self._save_cache(chat, session)
            except Exception as e:
                problem = e
            self.post_message(CacheSaved(problem))

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

    async def on_reply_text(self, message: ReplyText) -> None:
        self.query_one("#progress", WorkProgress).stop()  # read: the reply is coming
        if self._reply is not None:
            self._reply.view.content += message.text
            await self._reply.stream.write(message.text)

    def on_policy_notice(self, message: PolicyNotice) -> None:
        self.notify(message.text, title="Context policy", severity="warning", timeout=15)

    async def on_reply_done(self, message: ReplyDone) -> None:
        self.query_one("#progress", WorkProgress).stop()
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

    def on_cache_saved(self, message: CacheSaved) -> None:
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
        if stats.kv_bits:
            self.query_one(StatusBar).speed += f" · KV {stats.kv_bits}-bit"
        # The policy's own notices were shown as it decided (PolicyNotice); the status line
        # keeps what stays true for the next turns.
        warnings = []
        if stats.dropped_messages:
            warnings.append(
                f"{stats.dropped_messages} oldest messages not in the prompt (context policy)"
            )
        self.query_one(StatusBar).warning = "\n".join(warnings)

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
