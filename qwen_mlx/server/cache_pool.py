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
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..runtime import cache_length, cache_nbytes, common_prefix, trim_cache


@dataclass
class CacheEntry:
    """A KV cache and the exact token ids it holds; the first `prompt_tokens` were the prompt
    of the request that produced it, the rest its reply."""

    cache: list[Any]
    tokens: list[int]
    prompt_tokens: int
    nbytes: int


@dataclass
class Checkout:
    """What a request starts from: a cache holding `tokens[:reused]` of its prompt."""

    cache: list[Any]
    reused: int


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
    ) -> None:
        self._make_cache = make_cache
        self._measure = measure
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

    def checkout(self, tokens: Sequence[int]) -> Checkout:
        """A cache for `tokens`, holding the longest prefix of them any entry has (always
        leaving at least one token to prefill: the model must see something new)."""
        tokens = list(tokens)
        with self._lock:
            best_key, best = None, 0
            for key, entry in self._entries.items():
                shared = common_prefix(tokens, entry.tokens)
                if shared > best:
                    best_key, best = key, shared
            reused = min(best, len(tokens) - 1)
            if best_key is None or reused <= 0:
                return Checkout(self._make_cache(), 0)
            entry = self._entries[best_key]
            if reused >= entry.prompt_tokens:  # the same conversation, moving on
                del self._entries[best_key]
                cache = entry.cache
            else:  # another conversation with the same beginning: leave it be
                self._entries.move_to_end(best_key)
                cache = copy.deepcopy(entry.cache)
        trim_cache(cache, cache_length(cache) - reused)
        return Checkout(cache, reused)

    def checkin(self, cache: list[Any], tokens: Sequence[int], prompt_tokens: int) -> None:
        """Keep `cache`, which holds `tokens`, as the most recent entry; evict the least
        recently used entries beyond the byte budget, and any entry it makes redundant."""
        tokens = list(tokens)
        nbytes = self._measure(cache)
        if not tokens or nbytes > self.max_bytes:
            return
        with self._lock:
            for key in [
                k
                for k, e in self._entries.items()
                if common_prefix(tokens, e.tokens) == len(e.tokens)
            ]:
                del self._entries[key]  # everything it holds, the new entry holds too
            self._entries[self._next_key] = CacheEntry(cache, tokens, prompt_tokens, nbytes)
            self._next_key += 1
        self.shrink(self.max_bytes)

    def shrink(self, max_bytes: int) -> None:
        """Evict the least recently used entries until the pool holds at most `max_bytes`
        (a request about to run needs the memory more than old conversations do)."""
        with self._lock:
            held = sum(e.nbytes for e in self._entries.values())
            while held > max_bytes and self._entries:
                _, old = self._entries.popitem(last=False)
                held -= old.nbytes
