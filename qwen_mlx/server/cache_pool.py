"""An LRU of KV caches keyed by the token ids they hold, for a server's many conversations.

Clients of an HTTP API resend the whole conversation every request. Each finished request
leaves its cache here, holding its prompt and the reply it generated; the next request
takes the entry sharing the longest prefix with its prompt and prefills only the rest, so
an agent that resends a growing conversation pays for the new tokens only.

The pool is bounded in bytes, the bytes each cache's arrays really hold (MLX grows a KV
cache in steps of 256 tokens and a trimmed cache keeps its buffers); the least recently
used entries go first. An entry whose prompt the new
request contains in full (it diverges at most inside the reply the entry generated) is a
conversation moving on: it is taken out and trimmed. An entry that diverges inside its
prompt is another conversation sharing a beginning (a system prompt, say): it stays, and
the request gets a trimmed copy of it.

A client echoes each reply back as text or as parsed tool calls, and the chat template
renders that to ids other than those the model sampled (BPE merges the text otherwise,
tool arguments come back re-serialized): from there the prefix would be lost, every turn.
So an entry also remembers its assistant turns as the model wrote them (`Turn`), and
when a prompt differs from an entry inside one of them, a `Matcher` is asked whether the
prompt's turn says the same (the same text, or the same tool calls with equal
arguments); if it does, the prompt gets the model's own ids there, and matching goes on.

With a disk tier (`cache_disk.py`, `serve --cache-dir`), an entry evicted from memory is
written there instead of being lost, every entry still in memory is written when the
server stops (`persist`), and a checkout whose longest prefix is on disk reads it back.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..runtime import cache_length, cache_nbytes, common_prefix, trim_cache
from .jobs import Turn

if TYPE_CHECKING:
    from .cache_disk import DiskCache

logger = logging.getLogger(__name__)


class Matcher(Protocol):
    """Tells whether an echoed assistant turn says what the model wrote (`turns.py`)."""

    end_of_turn: int  # the id that ends a turn (`<|im_end|>`)

    def same(self, echoed: Sequence[int], written: Sequence[int]) -> bool: ...


@dataclass
class CacheEntry:
    """A KV cache and the exact token ids it holds; the first `prompt_tokens` were the prompt
    of the request that produced it, the rest its reply."""

    cache: list[Any]
    tokens: list[int]
    prompt_tokens: int
    nbytes: int
    turns: tuple[Turn, ...] = ()


@dataclass
class Checkout:
    """What a request starts from: a cache holding `tokens[:reused]` of its prompt.
    `tokens` is the prompt to read: the one asked for, with the model's own ids swapped
    in for the echoed replies in `turns`."""

    cache: list[Any]
    reused: int
    tokens: list[int]
    turns: tuple[Turn, ...] = ()
    from_disk: bool = False  # the reused prefix was read from the disk tier


class PromptCachePool:
    """KV caches of recent requests, least recently used first out, within `max_bytes`.

    `checkout(tokens)` hands out a cache for a prompt; `checkin(...)` returns it with what
    it now holds. Both are safe from any thread; a checked-out cache belongs to its caller.
    """

    def __init__(
        self,
        make_cache: Callable[[], list[Any]],
        max_bytes: int,
        measure: Callable[[list[Any]], int] = cache_nbytes,
        matcher: Matcher | None = None,
        disk: DiskCache | None = None,
    ) -> None:
        self._make_cache = make_cache
        self._measure = measure
        self._matcher = matcher
        self.disk = disk
        self._evicted: list[CacheEntry] = []  # on their way to disk (`spill`)
        self.disk_reads = 0  # checkouts that read their prefix from disk
        self.disk_read_tokens = 0
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()
        self._next_key = 0
        self._lock = threading.Lock()

    @property
    def tokens(self) -> int:
        """Tokens held by all entries."""
        with self._lock:
            return sum(len(e.tokens) for e in self._entries.values())

    @property
    def bytes(self) -> int:
        """Bytes held by all entries' arrays."""
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def peek(self, tokens: Sequence[int]) -> int:
        """How many of `tokens` a checkout now would reuse (nothing is taken)."""
        tokens = list(tokens)
        with self._lock:
            held = [(e.tokens, e.turns) for e in self._entries.values()]
        if self.disk is not None:
            held += [(e.tokens, e.turns) for e in self.disk.entries]
        best = max((self._align(tokens, *h)[2] for h in held), default=0)
        return max(min(best, len(tokens) - 1), 0)

    def checkout(self, tokens: Sequence[int]) -> Checkout:
        """A cache for `tokens`, holding the longest prefix of them any entry has, in
        memory or on disk (always leaving at least one token to prefill: the model must
        see something new)."""
        tokens = list(tokens)
        with self._lock:
            best_key, best, best_tokens, best_turns = None, 0, tokens, ()
            for key, entry in self._entries.items():
                aligned, turns, shared = self._align(tokens, entry.tokens, entry.turns)
                if shared > best:
                    best_key, best, best_tokens, best_turns = key, shared, aligned, turns
        # read outside the lock (seconds for a long conversation): only the model thread
        # takes and returns entries, so the one found in memory is still there after
        found = self._from_disk(tokens, best) if self.disk is not None else None
        if found is None and best_key is not None and min(best, len(best_tokens) - 1) > 0:
            with self._lock:
                entry = self._entries.get(best_key)  # None: the pool was cleared meanwhile
                if entry is not None and best >= entry.prompt_tokens:  # the same conversation
                    del self._entries[best_key]
                    cache = entry.cache
                elif entry is not None:  # another conversation with the same beginning
                    self._entries.move_to_end(best_key)
                    cache = None
            if entry is not None:
                cache = cache if cache is not None else copy.deepcopy(entry.cache)
                found = cache, best, best_tokens, best_turns, False
        if found is None:
            return Checkout(self._make_cache(), 0, tokens)
        cache, shared, tokens, turns, from_disk = found
        reused = min(shared, len(tokens) - 1)
        if from_disk:
            self.disk_reads += 1
            self.disk_read_tokens += reused
        trim_cache(cache, cache_length(cache) - reused)
        return Checkout(cache, reused, tokens, turns, from_disk)

    def _from_disk(self, tokens: list[int], best: int) -> tuple | None:
        """The disk entry sharing more of `tokens` than `best`, read, or None. A damaged
        one is dropped (`DiskCache.load`) and the next best tried."""
        assert self.disk is not None
        ranked = []
        for entry in self.disk.entries:
            aligned, turns, shared = self._align(tokens, entry.tokens, entry.turns)
            if min(shared, len(aligned) - 1) > best:
                ranked.append((shared, aligned, turns, entry))
        for shared, aligned, turns, entry in sorted(ranked, key=lambda r: -r[0]):
            cache = self.disk.load(entry)
            if cache is not None:
                return cache, shared, aligned, turns, True
        return None

    def persist(self) -> None:
        """Write every entry in memory to the disk tier (when the server stops)."""
        if self.disk is None:
            return
        with self._lock:
            entries = list(self._entries.values())
        for entry in reversed(entries):  # the most recent first: kept if space runs out
            self._spill(entry)

    def _spill(self, entry: CacheEntry) -> None:
        if self.disk is None:
            return
        try:
            self.disk.save(entry.cache, entry.tokens, entry.prompt_tokens, entry.turns)
        except Exception:  # a full or read-only disk costs time later, never a reply
            logger.exception("prompt cache: could not write an entry to the cache folder")

    def _align(
        self, tokens: list[int], held: list[int], held_turns: Sequence[Turn]
    ) -> tuple[list[int], tuple[Turn, ...], int]:
        """`tokens` with an entry's turns swapped in where they echo them, the turns
        that now stand in it, and how many leading ids it shares with the entry's `held`."""
        shared = common_prefix(tokens, held)
        if self._matcher is None:
            return tokens, (), shared
        kept: list[Turn] = []
        for turn in held_turns:
            if shared < turn.start:
                break
            end = _index(tokens, self._matcher.end_of_turn, turn.start)
            if end is None:
                break
            echoed = tokens[turn.start : end]
            if echoed != list(turn.ids):
                if not self._matcher.same(echoed, turn.ids):
                    break
                tokens = tokens[: turn.start] + list(turn.ids) + tokens[end:]
                shared = turn.start + common_prefix(tokens[turn.start :], held[turn.start :])
            kept.append(turn)
        return tokens, tuple(kept), shared

    def checkin(
        self,
        cache: list[Any],
        tokens: Sequence[int],
        prompt_tokens: int,
        turns: Sequence[Turn] = (),
    ) -> None:
        """Keep `cache`, which holds `tokens`, as the most recent entry; evict the least
        recently used entries beyond the byte budget, and any entry it makes redundant.
        `turns` are the assistant turns in it as the model wrote them (the last may run
        past `tokens`: the cache never holds the last token sampled)."""
        tokens = list(tokens)
        nbytes = self._measure(cache)
        if not tokens:
            return
        if nbytes > self.max_bytes:  # larger than memory allows: the disk may keep it
            self._spill(CacheEntry(cache, tokens, prompt_tokens, nbytes, tuple(turns)))
            return
        with self._lock:
            for key in [
                k
                for k, e in self._entries.items()
                if common_prefix(tokens, e.tokens) == len(e.tokens)
            ]:
                del self._entries[key]  # everything it holds, the new entry holds too
            entry = CacheEntry(cache, tokens, prompt_tokens, nbytes, tuple(turns))
            self._entries[self._next_key] = entry
            self._next_key += 1
        self.shrink(self.max_bytes)

    def shrink(self, max_bytes: int, *, defer: bool = False) -> None:
        """Evict the least recently used entries until the pool holds at most `max_bytes`
        (a request about to run needs the memory more than old conversations do); with
        a disk tier they are written there, now or, with `defer` (a caller holding a
        lock others wait on), at the next `spill`."""
        with self._lock:
            held = sum(e.nbytes for e in self._entries.values())
            while held > max_bytes and self._entries:
                _, old = self._entries.popitem(last=False)
                held -= old.nbytes
                if self.disk is not None:
                    self._evicted.append(old)
        if not defer:
            self.spill()

    def spill(self) -> None:
        """Write the entries evicted since the last call to the disk tier."""
        with self._lock:
            evicted, self._evicted = self._evicted, []
        for entry in evicted:
            self._spill(entry)


def _index(tokens: Sequence[int], token: int, start: int) -> int | None:
    """Where `token` first appears in `tokens` from `start`, or None."""
    try:
        return tokens.index(token, start)
    except ValueError:
        return None
