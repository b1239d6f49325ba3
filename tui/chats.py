"""Chats: the sidebar's list and search, a new chat, opening a saved chat with its KV
cache, rename, delete, export to Markdown. The chats themselves live in
qwen_mlx.chat.chat_store (the SQLite store the web chat shares).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import work
from textual.widgets import Input

from qwen_mlx.chat.chat_store import DEFAULT_TITLE, Chat, title_from
from qwen_mlx.chat.export import default_export_path, to_markdown
from qwen_mlx.runtime import Message as ChatMessage

from .screens import (
    SAMPLING_FIELDS,
    ConfirmScreen,
    TextPrompt,
)
from .state import AppState, on_model_thread
from .widgets import ChatList, MessageView, PromptInput, StatusBar


class Chats(AppState):
    """The saved chats (a part of ChatApp)."""

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
        self.session = self._with_draft(self.with_mcp_tools(ChatSession(self.model)))
        self.query_one("#messages").remove_children()
        self.query_one(StatusBar).clear_turn()  # the last chat's figures are not this one's
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
        self.chat, self.session = chat, self.with_mcp_tools(session)
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
        self.query_one(StatusBar).clear_turn()  # the last chat's figures are not this one's
        self._update_context(*context)
        for notice in session.notices:
            self.notify(notice, severity="warning", timeout=8)
        self._refresh_chats()

    def action_rename(self) -> None:
        if self.chat is None:
            self.notify("Send a message first: the chat is saved then.")
            return
        self.push_screen(TextPrompt("Rename chat", self.chat.title), self._rename)

    def _rename(self, title: str | None) -> None:
        if title and self.chat is not None:
            self.store.rename(self.chat.id, title)
            self.chat.title = title
            self._refresh_chats()

    def action_delete_chat(self) -> None:
        if self.chat is None or not self._idle():
            return
        chat = self.chat
        self.push_screen(
            ConfirmScreen(f"Delete the chat “{chat.title}”?", "Delete", "Keep", default=False),
            lambda ok: self._delete(chat) if ok else None,
        )

    def _delete(self, chat: Chat) -> None:
        self.store.delete(chat.id)
        self._start_new_chat()

    def action_export(self, path: str | None = None) -> None:
        if self.session is None or not self.session.messages:
            self.notify("Nothing to export yet.")
            return
        title = self.chat.title if self.chat else DEFAULT_TITLE
        target = Path(path).expanduser() if path else default_export_path(title)
        params = self.session.params
        text = to_markdown(
            title=title,
            model=self.model.name,
            params={key: getattr(params, key) for key, *_ in SAMPLING_FIELDS},
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
