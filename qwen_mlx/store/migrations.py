"""Schema upgrades of the SQLite files (the store's registry, the chat app's chats).

Each file's schema is a list of named migrations that only ever grows; `PRAGMA
user_version` records how many a file has had. Opening a file applies the missing ones in
one write transaction, so two processes opening an old file at once upgrade it once.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from ..errors import SchemaTooNewError

Migrations = list[tuple[str, str]]  # (name, SQL statements separated by ";")


def migrate(
    conn: sqlite3.Connection,
    migrations: Migrations,
    path: Path,
    too_new: type[Exception] = SchemaTooNewError,
) -> None:
    """Bring the file behind `conn` (autocommit mode) to the newest schema; raise
    `too_new` if a newer qwen-mlx wrote it."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        raise too_new(
            f"{path} was written by a newer qwen-mlx (schema {version}); upgrade qwen-mlx."
        )
    if version == len(migrations):
        return
    if version == 0:
        _use_wal(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, (_name, sql) in enumerate(migrations[version:], start=version + 1):
            for statement in filter(str.strip, sql.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite rolls back by itself on some errors (disk full)
            conn.execute("ROLLBACK")
        raise


def is_locked(error: BaseException) -> bool:
    """Whether a SQLite error means another connection holds the lock (busy, not damaged)."""
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


def is_full(error: BaseException) -> bool:
    """Whether a SQLite error means the disk (or quota) is full: SQLITE_FULL, "database or
    disk is full", not a damaged file."""
    if not isinstance(error, sqlite3.DatabaseError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_FULL  # extended codes keep the primary below
    return "disk is full" in str(error)


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch a new file to write-ahead logging. SQLite answers "database is locked" at
    once, without its busy timeout, when another connection is switching the same file at
    that moment (several processes opening a new store together), so wait here instead,
    as long as the connection's busy timeout."""
    wait = conn.execute("PRAGMA busy_timeout").fetchone()[0] / 1000
    deadline = time.monotonic() + wait
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if not is_locked(e) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
