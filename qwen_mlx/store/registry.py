"""`registry.sqlite`: the store's models, their files and sha256, and an event log.

Schema upgrades are append-only named migrations (see migrations.py).
Writers take SQLite's write lock up front (`BEGIN IMMEDIATE`) and wait for each other,
so two conversions finishing at once both land and the file never tears.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import InsufficientDiskError, RegistryError
from ..fileio import disk_full, now_iso
from .manifest import Manifest
from .migrations import Migrations, is_full, is_locked, migrate

MIGRATIONS: Migrations = [
    (
        "create models, files, events, families",
        """
        CREATE TABLE models (
            name TEXT PRIMARY KEY,
            family TEXT NOT NULL,
            release TEXT NOT NULL,
            format TEXT NOT NULL,
            path TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            manifest_sha256 TEXT,
            source_repo TEXT,
            source_revision TEXT,
            created_at TEXT NOT NULL,
            last_verified_at TEXT,
            last_verify_ok INTEGER
        );
        CREATE TABLE files (
            model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
            path TEXT NOT NULL,
            size INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            PRIMARY KEY (model, path)
        );
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            family TEXT NOT NULL,
            model TEXT,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX events_family ON events(family, id);
        CREATE TABLE families (
            family TEXT PRIMARY KEY,
            policy TEXT NOT NULL DEFAULT 'notify',
            pinned INTEGER NOT NULL DEFAULT 0
        );
        """,
    ),
    (
        # The models used as a speculative-decoding draft (`--draft NAME`), so that no
        # command picks a draft as the model to chat with when none is named. Kept apart
        # from `models`, whose row a conversion with --force replaces.
        "create drafts",
        """
        CREATE TABLE drafts (
            model TEXT PRIMARY KEY,
            last_used_at TEXT NOT NULL
        );
        """,
    ),
]
EVENT_KINDS = (
    "converted",
    "imported",
    "verified",
    "set-latest",
    "pinned",
    "unpinned",
    "policy",
    "rolled-back",
    "removed",
    "repaired",
    "recovered",  # an interrupted conversion or import, finished by a later command
    "exported",  # a GGUF copy of a stored model (`models export`)
)
POLICIES = ("auto", "notify", "frozen")


@dataclass(frozen=True)
class ModelRow:
    name: str
    family: str
    release: str
    format: str
    path: str
    size_bytes: int
    manifest_sha256: str | None
    source_repo: str | None
    source_revision: str | None
    created_at: str
    last_verified_at: str | None
    last_verify_ok: bool | None


@dataclass(frozen=True)
class Event:
    id: int
    at: str
    family: str
    model: str | None
    kind: str
    detail: str


LOCK_WAIT = 60.0  # seconds to wait for another process's write to finish


class Registry:
    """A connection to `registry.sqlite`; open it with `Registry.open(path)`."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    @classmethod
    def open(cls, path: str | Path) -> Registry:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, timeout=LOCK_WAIT, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            registry = cls(path, conn)
            registry._migrate()
        except sqlite3.DatabaseError as e:
            raise _damaged(path, e) from e
        return registry

    def close(self) -> None:
        self._conn.close()

    def _migrate(self) -> None:
        migrate(self._conn, MIGRATIONS, self.path, too_new=RegistryError)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's lock from the start (BEGIN IMMEDIATE).

        SQLite errors inside it or at COMMIT (a full disk, a damaged page) become
        RegistryError or InsufficientDiskError, like every other registry error."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as e:
            raise _damaged(self.path, e) from e
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            self._rollback()
            raise _damaged(self.path, e) from e
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self._conn.in_transaction:  # SQLite may have rolled back already (disk full)
            # The error that brought us here is the one to report, not a failed ROLLBACK.
            with contextlib.suppress(sqlite3.DatabaseError):
                self._conn.execute("ROLLBACK")

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        try:
            cur = self._conn.execute(sql, args)
            cur.row_factory = sqlite3.Row
            return cur.fetchall()
        except sqlite3.DatabaseError as e:
            raise _damaged(self.path, e) from e

    # -- writes (call inside `transaction()`) -------------------------------------------

    def upsert_model(
        self, conn: sqlite3.Connection, manifest: Manifest, path: Path, manifest_sha256: str
    ) -> None:
        from .naming import parse

        name = parse(manifest.name)
        conn.execute("DELETE FROM models WHERE name = ?", (manifest.name,))
        conn.execute(
            "INSERT INTO models (name, family, release, format, path, size_bytes, "
            "manifest_sha256, source_repo, source_revision, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                manifest.name,
                name.family_id,
                name.release,
                name.format_dir,
                str(path),
                manifest.size,
                manifest_sha256,
                manifest.source.repo,
                manifest.source.revision,
                manifest.created_at or now_iso(),
            ),
        )
        conn.executemany(
            "INSERT INTO files (model, path, size, sha256) VALUES (?, ?, ?, ?)",
            [(manifest.name, f.path, f.size, f.sha256) for f in manifest.files],
        )
        conn.execute("INSERT OR IGNORE INTO families (family) VALUES (?)", (name.family_id,))

    @staticmethod
    def delete_model(conn: sqlite3.Connection, name: str) -> None:
        conn.execute("DELETE FROM models WHERE name = ?", (name,))

    @staticmethod
    def delete_family_if_empty(conn: sqlite3.Connection, family: str) -> bool:
        """Forget a family's pin and update policy once it has no model left; whether it
        had none."""
        if conn.execute("SELECT 1 FROM models WHERE family = ?", (family,)).fetchone():
            return False
        conn.execute("DELETE FROM families WHERE family = ?", (family,))
        return True

    @staticmethod
    def record_verify(conn: sqlite3.Connection, name: str, ok: bool) -> None:
        conn.execute(
            "UPDATE models SET last_verified_at = ?, last_verify_ok = ? WHERE name = ?",
            (now_iso(), int(ok), name),
        )

    @staticmethod
    def set_pinned(conn: sqlite3.Connection, family: str, pinned: bool) -> None:
        conn.execute(
            "INSERT INTO families (family, pinned) VALUES (?, ?) "
            "ON CONFLICT(family) DO UPDATE SET pinned = excluded.pinned",
            (family, int(pinned)),
        )

    @staticmethod
    def set_policy(conn: sqlite3.Connection, family: str, policy: str) -> None:
        conn.execute(
            "INSERT INTO families (family, policy) VALUES (?, ?) "
            "ON CONFLICT(family) DO UPDATE SET policy = excluded.policy",
            (family, policy),
        )

    @staticmethod
    def record_draft(conn: sqlite3.Connection, name: str) -> None:
        conn.execute(
            "INSERT INTO drafts (model, last_used_at) VALUES (?, ?) "
            "ON CONFLICT(model) DO UPDATE SET last_used_at = excluded.last_used_at",
            (name, now_iso()),
        )

    @staticmethod
    def log(
        conn: sqlite3.Connection, family: str, kind: str, model: str | None = None, detail: str = ""
    ) -> None:
        assert kind in EVENT_KINDS, kind
        conn.execute(
            "INSERT INTO events (at, family, model, kind, detail) VALUES (?, ?, ?, ?, ?)",
            (now_iso(), family, model, kind, detail),
        )

    # -- reads ---------------------------------------------------------------------------

    def models(self, family: str | None = None) -> list[ModelRow]:
        sql = "SELECT * FROM models"
        args: tuple = ()
        if family:
            sql += " WHERE family = ?"
            args = (family,)
        rows = self._query(sql + " ORDER BY family, release, format", args)
        return [_model_row(r) for r in rows]

    def model(self, name: str) -> ModelRow | None:
        """The row of the model called `name`, if it is registered."""
        rows = self._query("SELECT * FROM models WHERE name = ?", (name,))
        return _model_row(rows[0]) if rows else None

    def events(self, family: str | None = None) -> list[Event]:
        sql = "SELECT * FROM events"
        args: tuple = ()
        if family:
            sql += " WHERE family = ?"
            args = (family,)
        return [Event(**dict(r)) for r in self._query(sql + " ORDER BY id", args)]

    def family(self, family: str) -> tuple[str, bool]:
        """(policy, pinned) of a family; the defaults if it has no row yet."""
        rows = self._query("SELECT policy, pinned FROM families WHERE family = ?", (family,))
        return (rows[0]["policy"], bool(rows[0]["pinned"])) if rows else ("notify", False)

    def registrations(self) -> dict[str, int]:
        """Each model's last registration (converted, imported, recovered, repaired) as an
        event id: a larger id is a later one, to the event, not to the second."""
        rows = self._query(
            "SELECT model, MAX(id) AS last FROM events WHERE model IS NOT NULL AND kind IN "
            "('converted', 'imported', 'recovered', 'repaired') GROUP BY model"
        )
        return {r["model"]: r["last"] for r in rows}

    def drafts(self) -> set[str]:
        """The names of the models that were used as a draft."""
        return {r["model"] for r in self._query("SELECT model FROM drafts")}

    def families(self) -> list[str]:
        return [r["family"] for r in self._query("SELECT family FROM families ORDER BY family")]

    def integrity_ok(self) -> bool:
        return self._query("PRAGMA integrity_check")[0][0] == "ok"


def _model_row(row: sqlite3.Row) -> ModelRow:
    data = dict(row)
    ok = data["last_verify_ok"]
    data["last_verify_ok"] = None if ok is None else bool(ok)
    return ModelRow(**data)


def _damaged(path: Path, e: Exception) -> RegistryError | InsufficientDiskError:
    """The error to raise for a SQLite error on the registry: locked, disk full, damaged."""
    if is_full(e):
        return disk_full(path)
    if is_locked(e):
        return RegistryError(
            f"The registry {path} stayed locked by another process for {LOCK_WAIT:g} s "
            f"({e}). Wait for other qwen-mlx commands to finish, then try again."
        )
    return RegistryError(
        f"The registry {path} is damaged or unreadable ({e}). Your models are untouched; "
        "run `qwen-mlx models repair` to rebuild the registry from their manifests."
    )
