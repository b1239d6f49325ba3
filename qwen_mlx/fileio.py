"""Atomic writes and file hashing, shared by the store, convert and saved sessions."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import InsufficientDiskError

_CHUNK = 8 << 20


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never half.

    A full disk raises InsufficientDiskError (an OSError) that says so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path) from e
        raise
    fsync_dir(path.parent)


def disk_full(path: str | os.PathLike) -> InsufficientDiskError:
    """The error for a write that found the disk (or the user's quota) full."""
    error = InsufficientDiskError(
        f"The disk is full: could not write {path}. Nothing was changed; free some space "
        "and try again."
    )
    error.errno = errno.ENOSPC  # still reads as ENOSPC to callers that check
    return error


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie counts until its parent reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry so a rename survives a power cut (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file; `progress` is called with the bytes read by each chunk."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def read_utf8(path: str | os.PathLike, missing: str, hint: str) -> tuple[Path, bytes, str]:
    """A user's text file: (path, bytes, text). FileNotFoundError "No {missing} at ...;
    {hint}." when it is not a file, ValueError when it is not UTF-8."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"No {missing} at {file}; {hint}.")
    data = file.read_bytes()
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise ValueError(f"{file} is not UTF-8 text; {hint}.") from e
    return file, data, text


def tree_size(path: str | os.PathLike) -> int:
    """Total bytes of the regular files below `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def now_iso() -> str:
    """Now, in UTC, to the second: what the store and the chat store record."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def human_bytes(n: float) -> str:
    """Bytes for people: `512 B`, `2.3 GB` (decimal units, as macOS shows sizes)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
