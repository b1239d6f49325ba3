"""The saved-session format: a JSON file and, beside it, its KV cache.

    chat.json                        messages, parameters, the token ids the cache holds,
                                     the model's fingerprint, the cache file's name and sha256
    chat.json.<sha12>.kv.safetensors the KV cache (mlx-lm's prompt-cache format), named
                                     after the start of its own sha256

The new cache file is written first, under a new name, then the JSON that names it, each
atomically; only then is the previous cache file deleted. A crash at any point leaves a
JSON and the very cache it names: the previous save, or the new one. Reading checks the
fingerprint, the checksum and the token count, and explains why a cache cannot be used;
the messages always come back.
"""

from __future__ import annotations

import glob
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fileio import atomic_write_json, fsync_dir, sha256_file
from .runtime import Model, cache_length, load_cache, save_cache

SESSION_FORMAT = 1
CACHE_SUFFIX = ".kv.safetensors"


@dataclass
class SavedCache:
    cache: list[Any]
    tokens: list[int]
    kv_bits: int | None


def write_session(
    path: Path,
    state: dict[str, Any],
    *,
    cache: list[Any] | None,
    cache_tokens: list[int],
    kv_bits: int | None,
) -> Path:
    """Write `state` (messages, parameters, ...) and the cache, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cache_info = None
    if cache is not None and cache_tokens:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{CACHE_SUFFIX}")
        try:
            save_cache(tmp, cache, {"session": state["id"], "tokens": str(len(cache_tokens))})
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            digest = sha256_file(tmp)
            cache_file = path.with_name(f"{path.name}.{digest[:12]}{CACHE_SUFFIX}")
            fresh = not cache_file.exists()  # else the same cache was saved before
            os.replace(tmp, cache_file)
            fsync_dir(cache_file.parent)
        finally:
            tmp.unlink(missing_ok=True)
        cache_info = {
            "file": cache_file.name,
            "sha256": digest,
            "tokens": cache_tokens,
            "kv_bits": kv_bits,
        }
    try:
        atomic_write_json(path, {"format": SESSION_FORMAT, **state, "cache": cache_info})
    except BaseException:
        if cache_info is not None and fresh:
            cache_file.unlink(missing_ok=True)  # no JSON names it
        raise
    for old in cache_files(path):  # earlier saves' caches, or all of them when there is none
        if cache_info is None or old.name != cache_info["file"]:
            old.unlink(missing_ok=True)
    return path


def cache_files(path: Path) -> list[Path]:
    """The cache files of the session file `path` (normally one): `<name>.<sha12>` and the
    unhashed `<name>` of earlier versions, never another session's."""
    own = re.compile(rf"^{re.escape(path.name)}(\.[0-9a-f]{{12}})?{re.escape(CACHE_SUFFIX)}$")
    return sorted(
        p for p in path.parent.glob(f"{glob.escape(path.name)}*{CACHE_SUFFIX}") if own.match(p.name)
    )


def read_session(path: Path) -> dict[str, Any]:
    """The saved state; ValueError if the file is not a session we can read."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != SESSION_FORMAT:
            raise ValueError(
                f"unknown format {data.get('format') if isinstance(data, dict) else data!r}"
            )
        for key in ("id", "messages", "params"):
            if key not in data:
                raise ValueError(f"no {key!r}")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable qwen-mlx session ({e}).") from e
    return data


def read_cache(path: Path, data: dict[str, Any], model: Model) -> SavedCache | str:
    """The saved KV cache (`data` has one) if it belongs to `model` and is intact, else
    why it is not."""
    info = data["cache"]
    saved = data.get("model", {})
    if saved.get("fingerprint") != model.fingerprint:
        return (
            f"The saved cache belongs to {saved.get('name', 'another model')}, not "
            f"{model.name} (or the model changed): discarded; the history will be read "
            "again on the next turn."
        )
    file = path.with_name(info["file"])
    problem = None
    if not file.is_file():
        problem = "is missing"
    elif sha256_file(file) != info["sha256"]:
        problem = "does not match its checksum"
    else:
        try:
            cache, _ = load_cache(file)
            if cache_length(cache) != len(info["tokens"]):
                problem = "holds a different number of tokens than the session"
        except Exception as e:  # a damaged file can fail in many ways inside MLX
            problem = f"cannot be read ({e})"
    if problem is not None:
        return (
            f"The cache file {file.name} {problem}: discarded; the history will be read "
            "again on the next turn (the messages are intact)."
        )
    return SavedCache(cache, list(info["tokens"]), info.get("kv_bits"))
