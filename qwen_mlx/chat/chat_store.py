"""Saved chats: SQLite under $QWEN_MLX_HOME (`chats.sqlite`), KV caches beside it, and the
chat app's settings that outlive a chat (the draft for speculative decoding, say).

Every completed message is written at once, so a crash or a kill loses at most the reply
in flight. Each chat's KV cache lives in `sessions/<chat id>.json` and the cache file it
names, written by ChatSession.save after each reply; reopening a chat restores it, so the
next reply reads only the new message. Schema upgrades are append-only migrations
(qwen_mlx/migrations.py).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ChatStoreError
from ..fileio import now_iso
from ..runtime.messages import Message
from ..store.migrations import Migrations, migrate
from .policy import ContextPolicy

MIGRATIONS: Migrations = [
    (
        "chats and messages",
        """
        CREATE TABLE chats (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            model TEXT,
            system TEXT,
            params TEXT NOT NULL DEFAULT '{}',
            policy TEXT NOT NULL DEFAULT 'truncate',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE messages (
            chat_id TEXT NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            extra TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            PRIMARY KEY (chat_id, position)
        );
        CREATE INDEX chats_updated ON chats(updated_at);
        """,
    ),
    (
        "app settings",
        """
        CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """,
    ),
]
DEFAULT_TITLE = "New chat"


def _locked(method):
    """The UI thread and the model thread share one connection: one call at a time."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


@dataclass
class Chat:
    id: str
    title: str
    model: str | None = None
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    policy: str = ContextPolicy.TRUNCATE.value
    created_at: str = ""
    updated_at: str = ""


class ChatStore:
    """Chats and their messages in `chats.sqlite`; session files in `sessions/`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "chats.sqlite"
        self.sessions = self.root / "sessions"
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute("PRAGMA foreign_keys = ON")
            migrate(self._conn, MIGRATIONS, self.path)
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise ChatStoreError(
                f"{self.path} cannot be read ({e}). Move it aside to start with no saved "
                "chats; the models are not affected."
            ) from e

    @_locked
    def close(self) -> None:
        self._conn.close()

    # -- chats -----------------------------------------------------------------------------

    @_locked
    def create(
        self,
        *,
        model: str | None = None,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        policy: str = ContextPolicy.TRUNCATE.value,
    ) -> Chat:
        now = now_iso()
        chat = Chat(
            uuid.uuid4().hex[:12], DEFAULT_TITLE, model, system, params or {}, policy, now, now
        )
        self._conn.execute(
            "INSERT INTO chats (id, title, model, system, params, policy, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (chat.id, chat.title, model, system, json.dumps(chat.params), policy, now, now),
        )
        return chat

    @_locked
    def get(self, chat_id: str) -> Chat | None:
        row = self._conn.execute("SELECT * FROM chats WHERE id = ?", (chat_id,)).fetchone()
        return _chat(row) if row else None

    @_locked
    def list(self, search: str = "") -> list[Chat]:
        """Most recently used first; `search` matches titles (case-insensitive)."""
        rows = self._conn.execute(
            "SELECT * FROM chats WHERE title LIKE ? ESCAPE '\\' "
            "ORDER BY updated_at DESC, rowid DESC",
            (f"%{_escape_like(search)}%",),
        ).fetchall()
        return [_chat(r) for r in rows]

    @_locked
    def update(self, chat: Chat) -> None:
        chat.updated_at = now_iso()
        self._conn.execute(
            "UPDATE chats SET title = ?, model = ?, system = ?, params = ?, policy = ?, "
            "updated_at = ? WHERE id = ?",
            (
                chat.title,
                chat.model,
                chat.system,
                json.dumps(chat.params),
                chat.policy,
                chat.updated_at,
                chat.id,
            ),
        )

    @_locked
    def rename(self, chat_id: str, title: str) -> None:
        title = " ".join(title.split())[:120] or DEFAULT_TITLE
        self._conn.execute("UPDATE chats SET title = ? WHERE id = ?", (title, chat_id))

    @_locked
    def delete(self, chat_id: str) -> None:
        self._conn.execute("DELETE FROM chats WHERE id = ?", (chat_id,))
        for file in self.sessions.glob(f"{chat_id}.json*"):
            file.unlink(missing_ok=True)

    # -- messages --------------------------------------------------------------------------

    @_locked
    def messages(self, chat_id: str) -> list[Message]:
        rows = self._conn.execute(
            "SELECT role, content, extra FROM messages WHERE chat_id = ? ORDER BY position",
            (chat_id,),
        ).fetchall()
        return [
            Message.from_dict(
                {**json.loads(r["extra"]), "role": r["role"], "content": r["content"]}
            )
            for r in rows
        ]

    @_locked
    def save_messages(self, chat_id: str, messages: Sequence[Message]) -> None:
        """Make the stored messages equal `messages` (one transaction): each reply with
        its token ids and sampling, so a reopened chat reads only what is new."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute("DELETE FROM messages WHERE chat_id = ?", (chat_id,))
            now = now_iso()
            self._conn.executemany(
                "INSERT INTO messages (chat_id, position, role, content, extra, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (chat_id, i, m.role, m.content, json.dumps(_extra(m)), now)
                    for i, m in enumerate(messages)
                ],
            )
            self._conn.execute("UPDATE chats SET updated_at = ? WHERE id = ?", (now, chat_id))
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- app settings (what the chat app keeps from one start to the next) ------------------

    @_locked
    def setting(self, key: str) -> Any:
        """An app setting as it was saved (JSON), or None."""
        row = self._conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else None

    @_locked
    def set_setting(self, key: str, value: Any) -> None:
        """Save an app setting (None removes it)."""
        if value is None:
            self._conn.execute("DELETE FROM settings WHERE key = ?", (key,))
        else:
            self._conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    def session_path(self, chat_id: str) -> Path:
        return self.sessions / f"{chat_id}.json"


def _role_content(row: sqlite3.Row) -> dict[str, str]:
    return {"role": row["role"], "content": row["content"]}


def _extra(message: Message) -> dict[str, Any]:
    """What the `extra` column keeps of a message: all but its role and content."""
    data = message.to_dict()
    del data["role"], data["content"]
    return data


def _chat(row: sqlite3.Row) -> Chat:
    return Chat(
        id=row["id"],
        title=row["title"],
        model=row["model"],
        system=row["system"],
        params=json.loads(row["params"] or "{}"),
        policy=row["policy"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def title_from(text: str) -> str:
    """A chat title from its first message: the first line, shortened."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return (line[:48] + "…") if len(line) > 48 else (line or DEFAULT_TITLE)
