"""The sidebar: the saved chats, most recent first, and a search box that narrows them.

It reads the ChatStore itself and says which chat the user picked (`Sidebar.Selected`);
the app opens it. The app tells it which chat is open (`list_chats`) whenever the chats
change (one started, saved, renamed, deleted).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, ListItem, ListView

from qwen_mlx.chat.chat_store import Chat, ChatStore


class ChatRow(ListItem):
    """A chat in the list; a row can be reused for another chat."""

    def __init__(self, chat: Chat) -> None:
        self.title = Label(chat.title)  # kept: a row is updated before it is mounted too
        super().__init__(self.title)
        self.chat_id = chat.id


class Sidebar(Vertical):
    """A search box and the saved chats, most recent first. The list keeps a row
    highlighted (the open chat's, else the first), so Enter on it opens a chat; Down or
    Enter in the search box goes to the list."""

    BINDINGS = [Binding("down", "to_list", "Chats", show=False)]

    @dataclass
    class Selected(Message):
        """The user picked a chat (Enter on its row, or on the search box's first match)."""

        chat_id: str

    def __init__(self, store: ChatStore, **kwargs) -> None:
        super().__init__(**kwargs)
        self.store = store
        self.current: str | None = None  # the open chat's id, highlighted

    def compose(self) -> ComposeResult:
        yield Input(placeholder="Search chats", id="chat-search")
        yield ListView(id="chat-items")

    def list_chats(self, current: str | None) -> None:
        """List the chats that match the search, highlighting `current` (the open one)."""
        self.current = current
        search = self.query("#chat-search").results(Input)
        for box in search:  # none while the app shuts down
            self._show(self.store.list(box.value))

    def focus_search(self) -> None:
        self.display = True
        self.query_one("#chat-search", Input).focus()

    @on(Input.Changed, "#chat-search")
    def _search(self, event: Input.Changed) -> None:
        event.stop()
        self._show(self.store.list(event.value))

    def _show(self, chats: list[Chat]) -> None:
        """List `chats`, highlighting the current one. Rows are updated in place: a
        cleared ListView drops its rows only later, and a highlight set meanwhile lands on
        the wrong row (rows on their way out no longer display)."""
        current = self.current
        items = self.query_one("#chat-items", ListView)
        rows = [row for row in items.query(ChatRow) if row.display]
        for row, chat in zip(rows, chats, strict=False):
            row.chat_id = chat.id
            row.title.update(chat.title)
        for row in rows[len(chats) :]:
            row.remove()
        for chat in chats[len(rows) :]:
            row = ChatRow(chat)
            items.append(row)
            rows.append(row)
        rows = rows[: len(chats)]
        for row in rows:
            row.set_class(row.chat_id == current, "current")
        if not rows:
            items.index = None
            return
        ids = [c.id for c in chats]
        highlighted = items.highlighted_child
        if current in ids:
            target = rows[ids.index(current)]
        elif highlighted in rows:
            target = highlighted
        else:
            target = rows[0]
        items.index = list(items.children).index(target)

    def action_to_list(self) -> None:
        items = self.query_one("#chat-items", ListView)
        if items.children:
            items.focus()

    @on(Input.Submitted, "#chat-search")
    def _open_first(self, event: Input.Submitted) -> None:
        event.stop()
        rows = [r for r in self.query_one("#chat-items", ListView).query(ChatRow) if r.display]
        if rows:
            self.post_message(self.Selected(rows[0].chat_id))

    @on(ListView.Selected, "#chat-items")
    def _picked(self, event: ListView.Selected) -> None:
        event.stop()
        if isinstance(event.item, ChatRow):
            self.post_message(self.Selected(event.item.chat_id))
