"""The prompt-cache pool's disk tier (`serve --cache-dir`): KV caches that leave memory,
and every cache the server holds when it stops, as files, so a conversation idle long
enough to be pushed out, or a server restarted under it, resumes by reading its prefix
from disk instead of prefilling it again.

One entry is one file, mlx-lm's prompt-cache format (safetensors: `save_prompt_cache`),
named by its own sha256 and written to a temporary name first, then renamed: a crash
leaves at most a temporary file, removed at the next start, never a half-written entry.
Its metadata holds the token ids it holds, its assistant turns (`jobs.Turn`) and the
fingerprint of the model and settings that wrote it. At start the folder is indexed from
the files' headers alone; an entry is read whole only when a request needs it, and its
sha256 is checked then. A damaged entry (a sha256 that differs, a header that does not
parse) or a foreign one (another model, another KV precision, another format) is dropped
with a log line and never served. The folder is bounded in bytes: the least recently
used entries (by file time, which survives restarts) go first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime import common_prefix, load_cache, save_cache
from .jobs import Turn

logger = logging.getLogger(__name__)

FORMAT = "qwen-mlx-prompt-cache/1"
_SUFFIX = ".safetensors"
_TEMP = ".writing-"  # a file being written; left over only by a crash
_READ = 1 << 20


@dataclass
class DiskEntry:
    """An entry on disk, as its header describes it."""

    path: Path
    tokens: list[int]
    prompt_tokens: int
    turns: tuple[Turn, ...]
    nbytes: int


class DiskCache:
    """KV caches in `folder`, at most `max_bytes` of files, written by a model whose
    fingerprint is `fingerprint` (see the module docstring). Safe from any thread, but
    `save` and `load` touch MLX arrays: call them on the model thread."""

    def __init__(self, folder: str | Path, max_bytes: int, fingerprint: str) -> None:
        self.folder = Path(folder).expanduser()
        self.max_bytes = max_bytes
        self.fingerprint = fingerprint
        self._lock = threading.Lock()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._entries: dict[Path, DiskEntry] = {}
        self._index()
        self._bound(self.max_bytes)

    @property
    def entries(self) -> list[DiskEntry]:
        with self._lock:
            return list(self._entries.values())

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def holds(self, tokens: Sequence[int]) -> bool:
        """Whether an entry already holds all of `tokens` (saving them adds nothing)."""
        with self._lock:
            return any(
                len(e.tokens) >= len(tokens) and common_prefix(tokens, e.tokens) == len(tokens)
                for e in self._entries.values()
            )

    def save(
        self, cache: list[Any], tokens: Sequence[int], prompt_tokens: int, turns: Sequence[Turn]
    ) -> None:
        """Write an entry (unless one holds these tokens already), drop those it makes
        redundant, and keep the folder within its bound."""
        tokens = list(tokens)
        if not tokens or self.holds(tokens):
            return
        metadata = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "tokens": json.dumps(tokens),
            "prompt_tokens": str(prompt_tokens),
            "turns": json.dumps([[t.start, list(t.ids)] for t in turns]),
        }
        temp = self.folder / f"{_TEMP}{uuid.uuid4().hex}{_SUFFIX}"
        try:
            save_cache(temp, cache, metadata)
            digest = _sha256(temp)
            path = self.folder / f"{digest}{_SUFFIX}"
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        nbytes = path.stat().st_size
        entry = DiskEntry(path, tokens, prompt_tokens, tuple(turns), nbytes)
        with self._lock:
            redundant = [
                e
                for e in self._entries.values()
                if common_prefix(tokens, e.tokens) == len(e.tokens) and e.path != path
            ]
            for old in redundant:
                self._drop(old)
            self._entries[path] = entry
        self._bound(self.max_bytes)

    def load(self, entry: DiskEntry) -> list[Any] | None:
        """The cache `entry` holds, or None when its file is gone or damaged (then it is
        dropped, with a log line)."""
        from ..runtime.kv_batch import batchable

        try:
            digest = _sha256(entry.path)
        except OSError as e:
            self._forget(entry, f"it cannot be read ({e})")
            return None
        if entry.path.name != f"{digest}{_SUFFIX}":
            self._forget(entry, "its sha256 does not match (the file is damaged)")
            return None
        try:
            cache, _ = load_cache(entry.path)
        except Exception as e:  # a file whose sha256 matches but MLX cannot read
            self._forget(entry, f"it cannot be loaded ({e})")
            return None
        os.utime(entry.path)  # most recently used: the last to go
        return batchable(cache)

    def _index(self) -> None:
        """Read every entry's header; remove leftovers of a crash, drop damaged and
        foreign entries (with a log line)."""
        for path in sorted(self.folder.iterdir()):
            if path.name.startswith(_TEMP):
                logger.info("prompt cache: removing %s, left half-written", path.name)
                path.unlink(missing_ok=True)
                continue
            if not path.name.endswith(_SUFFIX) or not path.is_file():
                continue
            try:
                meta = _header_metadata(path)
            except (OSError, ValueError) as e:
                self._remove(path, f"its header cannot be read ({e})")
                continue
            if meta.get("format") != FORMAT or meta.get("fingerprint") != self.fingerprint:
                self._remove(path, "another model or other settings wrote it")
                continue
            try:
                tokens = json.loads(meta["tokens"])
                turns = tuple(Turn(int(s), tuple(ids)) for s, ids in json.loads(meta["turns"]))
                entry = DiskEntry(
                    path, list(tokens), int(meta["prompt_tokens"]), turns, path.stat().st_size
                )
            except (KeyError, TypeError, ValueError) as e:
                self._remove(path, f"its metadata is damaged ({e})")
                continue
            self._entries[path] = entry

    def _bound(self, max_bytes: int) -> None:
        """Drop the least recently used entries until the files hold at most `max_bytes`."""
        with self._lock:
            by_age = sorted(self._entries.values(), key=lambda e: _mtime(e.path))
            held = sum(e.nbytes for e in by_age)
            for entry in by_age:
                if held <= max_bytes:
                    break
                held -= entry.nbytes
                self._drop(entry)

    def _forget(self, entry: DiskEntry, why: str) -> None:
        with self._lock:
            self._entries.pop(entry.path, None)
        self._remove(entry.path, why)

    def _drop(self, entry: DiskEntry) -> None:
        """Remove an entry that is no longer wanted (called holding the lock)."""
        del self._entries[entry.path]
        entry.path.unlink(missing_ok=True)

    @staticmethod
    def _remove(path: Path, why: str) -> None:
        logger.warning("prompt cache: dropping %s from the cache folder: %s", path.name, why)
        path.unlink(missing_ok=True)


def fingerprint(model: Any, kv_bits: int | None) -> str:
    """What a cache on disk must have been written by to be read here: the model (its
    name, its config, the sha256 of its weight files when its manifest has them) and the
    KV precision."""
    manifest = getattr(model, "manifest", None)
    files = getattr(manifest, "files", None) or []
    sums = sorted(str(getattr(f, "sha256", f)) for f in files)
    config = json.dumps(model.config, sort_keys=True, default=str)
    parts = [model.name, config, json.dumps(sums), f"kv_bits={kv_bits}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _header_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's metadata, read from its header alone (mlx-lm nests ours
    under "0.")."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("the file is too short")
        (size,) = struct.unpack("<Q", raw)
        if size > 1 << 30:
            raise ValueError("the header is too large")
        header = json.loads(f.read(size))
    meta = header.get("__metadata__") or {}
    return {k[2:]: v for k, v in meta.items() if k.startswith("0.")}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            digest.update(chunk)
    return digest.hexdigest()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
