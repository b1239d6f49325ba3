"""The saved-session format: a JSON file and, beside it, its KV cache.

    chat.json                        messages, parameters, the token ids the cache holds,
                                     the model's fingerprint, the cache file's name and sha256
    chat.json.<sha12>.kv.safetensors the KV cache (mlx-lm's prompt-cache format), named
                                     after the start of its own sha256

The two travel together: `copy_session` and `move_session` copy or move a saved session
with its cache. Both files are private to their owner (0600): they hold the conversation.

The new cache file is written first, under a new name, then the JSON that names it, each
atomically; only then is the previous cache file deleted. A crash at any point leaves a
JSON and the very cache it names: the previous save, or the new one (and maybe a hidden
temporary cache file, deleted by the next save or load). Reading checks the fingerprint,
the checksum and the token count, and explains why a cache cannot be used; the messages
always come back.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputExistsError
from ..fileio import atomic_write_json, fsync_dir, process_alive, sha256_file
from ..runtime import Model, cache_length, load_cache, save_cache
from ..runtime.memory import KV_BITS
from ..runtime.messages import ROLES, Message

SESSION_FORMAT = 1
CACHE_SUFFIX = ".kv.safetensors"
PRIVATE = 0o600  # what atomic_write_json gives the JSON; its cache gets the same


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
    clean_temp_files(path)
    cache_info = None
    if cache is not None and cache_tokens:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{CACHE_SUFFIX}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE))
            # mlx writes into the file as it is, so the cache is private from the start
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
    own = _own_cache_name(path)
    return sorted(
        p for p in path.parent.glob(f"{glob.escape(path.name)}*{CACHE_SUFFIX}") if own.match(p.name)
    )


def _own_cache_name(path: Path) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(path.name)}(\.[0-9a-f]{{12}})?{re.escape(CACHE_SUFFIX)}$")


def clean_temp_files(path: Path) -> None:
    """Delete the temporary cache files that saves of `path` killed half-way left behind
    (`.<name>.<pid>-<hex>.kv.safetensors`, as big as a whole cache), unless their process
    still runs. Earlier versions named them without the pid."""
    temp = re.compile(
        rf"^\.{re.escape(path.name)}\.(?:(\d+)-)?[0-9a-f]{{8}}{re.escape(CACHE_SUFFIX)}$"
    )
    for p in path.parent.glob(f".{glob.escape(path.name)}.*{CACHE_SUFFIX}"):
        match = temp.match(p.name)
        if match and (match[1] is None or not process_alive(int(match[1]))):
            p.unlink(missing_ok=True)


def read_session(path: Path) -> dict[str, Any]:
    """The saved state, its messages checked; ValueError if the file is not a session we
    can read. (A malformed cache entry is not an error: `read_cache` discards it.)"""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != SESSION_FORMAT:
            raise ValueError(
                f"unknown format {data.get('format') if isinstance(data, dict) else data!r}"
            )
        for key in ("id", "messages", "params"):
            if key not in data:
                raise ValueError(f"no {key!r}")
        data["messages"] = check_messages(data["messages"])
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable qwen-mlx session ({e}).") from e
    clean_temp_files(path)
    return data


def check_messages(messages: Any) -> list[Message]:
    """`messages` (dicts or Messages) as Messages; ValueError naming the first one that is
    not a message (a known role and text content, in valid Unicode)."""
    if not isinstance(messages, list):
        raise ValueError(f"the messages are a JSON {type(messages).__name__}, not a list")
    checked = []
    for i, message in enumerate(messages):
        try:
            checked.append(Message.of(message))
        except (TypeError, ValueError):
            shown = json.dumps(message, ensure_ascii=False, default=str)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise ValueError(
                f"message {i} is not a message: {shown} (each needs a role, one of "
                f"{', '.join(ROLES)}, and a text content)"
            ) from None
        try:
            checked[-1].content.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate: it can be neither read nor saved
            raise ValueError(
                f"message {i} is not valid Unicode (a lone surrogate at character {e.start:,})"
            ) from None
    return checked


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _cache_entry_problem(path: Path, info: Any) -> str | None:
    """Why the session's `cache` entry cannot be used as it is, or None."""
    if not isinstance(info, dict):
        return f"is a JSON {type(info).__name__}, not an object"
    file = info.get("file")
    if not isinstance(file, str) or not _own_cache_name(path).match(file):
        return f"names {file!r}, not a cache file of {path.name}"
    digest = info.get("sha256")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        return "has no sha256"
    if not _int_list(info.get("tokens")):
        return "has no token list"
    if info.get("kv_bits") not in KV_BITS:
        return f"has an unknown kv_bits {info.get('kv_bits')!r}"
    return None


def read_cache(path: Path, data: dict[str, Any], model: Model) -> SavedCache | str:
    """The saved KV cache (`data` has one) if it belongs to `model` and is intact, else
    why it is not."""
    info = data["cache"]
    malformed = _cache_entry_problem(path, info)
    if malformed is not None:
        return (
            f"The session's cache entry {malformed}: discarded; the history will be read "
            "again on the next turn (the messages are intact)."
        )
    saved = data.get("model")
    saved = saved if isinstance(saved, dict) else {}
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


def copy_session(
    src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Copy the saved session `src` to `dst` with its KV cache, so the copy resumes
    without re-reading its history. The cache file is named after its JSON, so copying
    `chat.json` by hand would leave the copy without one. The copy gets its own id."""
    return _transfer(Path(src), Path(dst), move=False, overwrite=overwrite)


def move_session(
    src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Move (rename) the saved session `src` to `dst`, its KV cache with it."""
    return _transfer(Path(src), Path(dst), move=True, overwrite=overwrite)


def _transfer(src: Path, dst: Path, *, move: bool, overwrite: bool) -> Path:
    """Write `dst` whole (its cache first, then its JSON) before `src` goes, so a crash
    leaves at least one complete session."""
    data = read_session(src)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{src} and {dst} are the same file.")
    if dst.exists() and not overwrite:
        raise OutputExistsError(f"{dst} already exists; choose another name or overwrite it.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    info = data.get("cache")
    new_info = None
    if info and _cache_entry_problem(src, info) is None and src.with_name(info["file"]).is_file():
        target = dst.with_name(f"{dst.name}.{info['sha256'][:12]}{CACHE_SUFFIX}")
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{CACHE_SUFFIX}")
        try:
            _link_or_copy(src.with_name(info["file"]), tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(target.parent)
        new_info = {**info, "file": target.name}
    state = {**data, "messages": [m.to_dict() for m in data["messages"]], "cache": new_info}
    if not move:
        state["id"] = uuid.uuid4().hex
    atomic_write_json(dst, state)
    for old in cache_files(dst):  # the caches of a session that dst replaced
        if new_info is None or old.name != new_info["file"]:
            old.unlink(missing_ok=True)
    if move:
        src.unlink()
        for old in cache_files(src):
            old.unlink(missing_ok=True)
        fsync_dir(src.parent)
    return dst


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows one (a cache file never changes once
    written, and can be gigabytes), else a private copy."""
    try:
        os.link(src, dst)
    except OSError:
        os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE))
        shutil.copyfile(src, dst)
