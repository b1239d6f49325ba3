"""A prototype for speculation inside the batch (issue 24, phase 2; nothing uses it yet):
a batch KV cache whose rows end at different positions (`RaggedKVCache`), and one greedy
verify round over every sequence's draft (`verify_round`).

The hard part of batched speculation is the cache. Each sequence keeps its accepted draft
tokens plus one, so after a round the rows hold different numbers of new tokens. mlx-lm's
`BatchKVCache` keeps every row's contents ending at one shared position (left padding
makes the rows line up), and its `trim` drops the same count from every row; a per-row
trim there means rolling each row right by its surplus (rewriting the whole cache every
round) or leaving holes that a mask must skip. Here each row has its own end instead:
the new keys and values of a forward pass are written at each row's own end (one
scatter), a trim per row only moves that row's end back (no data moves), and the next
pass overwrites what was trimmed. The mask is per row: query t of row i sits at position
end[i] + t and sees keys left[i] .. end[i] + t; RoPE positions are end - left per row,
as `BatchKVCache.offset` gives them. Rows waste only the gap between their end and the
longest row's, which `filter` gives back when the longest leaves.

A verify pass of a batch whose drafts have different lengths pads each row's input at
the end to the longest (1 + D tokens); the padding is written, never accepted, and
trimmed with the rejected drafts.

bf16 (parts: one array) and quantized (parts: packed values, scales, biases; the model
then uses mlx-lm's quantized attention, picked by the `bits` attribute).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class RaggedKVCache:
    """One layer's keys and values for a batch of rows, each ending where it ends."""

    step = 256

    def __init__(self, parts: int = 1) -> None:
        self.parts = parts
        self.keys: tuple[Any, ...] | None = None
        self.values: tuple[Any, ...] | None = None
        self.left: list[int] = []  # first valid position of each row
        self.end: list[int] = []  # each row's next write position

    @classmethod
    def from_caches(cls, caches: Sequence[Any]) -> RaggedKVCache:
        """One row per sequence's `KVCache` (or `QuantizedKVCache`, same bits), each left
        padded to the longest."""
        import mlx.core as mx

        quantized = hasattr(caches[0], "bits")
        self = RaggedQuantizedKVCache(caches[0].group_size, caches[0].bits) if quantized else cls()
        lengths = [c.offset if c.keys is not None else 0 for c in caches]
        longest = max(lengths)
        self.left = [longest - n for n in lengths]
        self.end = [longest] * len(caches)
        if longest == 0:
            return self
        some = next(c for c in caches if c.keys is not None and c.offset)

        def split(x: Any) -> tuple[Any, ...]:
            return x if isinstance(x, tuple) else (x,)

        rows = len(caches)
        keys = [
            mx.zeros((rows, p.shape[1], longest, p.shape[3]), p.dtype) for p in split(some.keys)
        ]
        values = [
            mx.zeros((rows, p.shape[1], longest, p.shape[3]), p.dtype) for p in split(some.values)
        ]
        for i, c in enumerate(caches):
            if not lengths[i]:
                continue
            for j, (k, v) in enumerate(zip(split(c.keys), split(c.values), strict=True)):
                keys[j][i : i + 1, :, self.left[i] :] = k[..., : lengths[i], :]
                values[j][i : i + 1, :, self.left[i] :] = v[..., : lengths[i], :]
        self.keys, self.values = tuple(keys), tuple(values)
        return self

    # -- what the model calls --------------------------------------------------------

    @property
    def offset(self) -> Any:
        """Each row's RoPE position for its next token: its own length."""
        import mlx.core as mx

        return mx.array([e - lp for e, lp in zip(self.end, self.left, strict=True)])

    def make_mask(self, N: int, **kwargs: Any) -> Any:
        """(rows, 1, N, max end + N): query t of row i sees keys left[i] .. end[i] + t."""
        import mlx.core as mx

        end = mx.array(self.end)[:, None, None]
        left = mx.array(self.left)[:, None, None]
        keys = mx.arange(max(self.end) + N)[None, None, :]
        queries = end + mx.arange(N)[None, :, None]
        return ((keys <= queries) & (keys >= left))[:, None]

    def _quantize(self, x: Any) -> tuple[Any, ...]:
        return (x,)

    def update_and_fetch(self, keys: Any, values: Any) -> tuple[Any, Any]:
        import mlx.core as mx

        rows, heads, n, _ = keys.shape
        new_k, new_v = self._quantize(keys), self._quantize(values)
        need = max(self.end) + n
        if self.keys is None or need > self.keys[0].shape[2]:
            size = (need + self.step - 1) // self.step * self.step

            def grown(old: tuple[Any, ...] | None, new: tuple[Any, ...]) -> tuple[Any, ...]:
                out = []
                for j, p in enumerate(new):
                    buf = mx.zeros((rows, heads, size, p.shape[3]), p.dtype)
                    if old is not None:
                        have = min(old[j].shape[2], size)
                        buf[..., :have, :] = old[j][..., :have, :]
                    out.append(buf)
                return tuple(out)

            self.keys, self.values = grown(self.keys, new_k), grown(self.values, new_v)
        where = (mx.array(self.end)[:, None] + mx.arange(n)[None, :])[:, None, :, None]

        def put(buf: tuple[Any, ...], new: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(
                mx.put_along_axis(b, mx.broadcast_to(where, p.shape), p, axis=2)
                for b, p in zip(buf, new, strict=True)
            )

        self.keys, self.values = put(self.keys, new_k), put(self.values, new_v)
        self.end = [e + n for e in self.end]
        return self._fetch(max(self.end))

    def _fetch(self, n: int) -> tuple[Any, Any]:
        k, v = (tuple(p[..., :n, :] for p in t) for t in (self.keys, self.values))
        return k[0], v[0]

    # -- per row ---------------------------------------------------------------------

    def trim_rows(self, counts: Sequence[int]) -> None:
        """Drop the last `counts[i]` positions of row i (its end moves back; nothing moves)."""
        self.end = [max(e - c, lp) for e, c, lp in zip(self.end, counts, self.left, strict=True)]

    def trim(self, n: int) -> int:
        self.trim_rows([n] * len(self.end))
        return n

    def is_trimmable(self) -> bool:
        return True

    def filter(self, rows: Sequence[int]) -> None:
        """Keep these rows; drop the positions before every kept row's start and after
        every kept row's end."""
        import mlx.core as mx

        rows = list(rows)
        self.left = [self.left[i] for i in rows]
        self.end = [self.end[i] for i in rows]
        if self.keys is None or not rows:
            return
        start, stop = min(self.left), max(self.end)
        index = mx.array(rows)
        self.keys, self.values = (
            tuple(p[index][..., start:stop, :] for p in t) for t in (self.keys, self.values)
        )
        self.left = [lp - start for lp in self.left]
        self.end = [e - start for e in self.end]

    def extract(self, i: int) -> Any:
        """Row i as one sequence's cache (KVCache, or QuantizedKVCache)."""
        import mlx.core as mx
        from mlx_lm.models.cache import KVCache

        cache = self._single()
        if self.keys is not None and self.end[i] > self.left[i]:
            k, v = (
                tuple(mx.contiguous(p[i : i + 1, :, self.left[i] : self.end[i]]) for p in t)
                for t in (self.keys, self.values)
            )
            cache.keys, cache.values = (k[0], v[0]) if isinstance(cache, KVCache) else (k, v)
            cache.offset = self.end[i] - self.left[i]
        return cache

    def _single(self) -> Any:
        from mlx_lm.models.cache import KVCache

        return KVCache()

    @property
    def state(self) -> tuple[Any, ...]:
        return self.keys, self.values


class RaggedQuantizedKVCache(RaggedKVCache):
    """The same, quantized: each tensor is (packed values, scales, biases)."""

    def __init__(self, group_size: int = 64, bits: int = 8) -> None:
        super().__init__(parts=3)
        self.group_size = group_size
        self.bits = bits

    def _quantize(self, x: Any) -> tuple[Any, ...]:
        import mlx.core as mx

        return tuple(mx.quantize(x, group_size=self.group_size, bits=self.bits))

    def _fetch(self, n: int) -> tuple[Any, Any]:
        return tuple(tuple(p[..., :n, :] for p in t) for t in (self.keys, self.values))

    def _single(self) -> Any:
        from mlx_lm.models.cache import QuantizedKVCache

        return QuantizedKVCache(group_size=self.group_size, bits=self.bits)


def verify_round(
    model: Any, cache: list[RaggedKVCache], last: Sequence[int], drafts: Sequence[Sequence[int]]
) -> list[list[int]]:
    """One greedy round for the whole batch: row i feeds its last token (not yet in the
    cache) and its draft, padded at the end to the longest draft; keeps the draft tokens
    that equal the model's argmax, then the model's own token. Each row's cache is
    trimmed to what it kept (its last new token stays out, as `last` was). Returns each
    row's new tokens."""
    import mlx.core as mx

    width = 1 + max((len(d) for d in drafts), default=0)
    rows = [[t, *d] + [0] * (width - 1 - len(d)) for t, d in zip(last, drafts, strict=True)]
    logits = model(mx.array(rows), cache=cache)
    # As mlx-lm's greedy sampler picks: the argmax of the log-softmax, in the model's dtype.
    best = mx.argmax(logits - mx.logsumexp(logits, axis=-1, keepdims=True), axis=-1).tolist()
    out, surplus = [], []
    for i, draft in enumerate(drafts):
        n = 0
        while n < len(draft) and best[i][n] == draft[n]:
            n += 1
        out.append([*draft[:n], best[i][n]])
        surplus.append(width - 1 - n)  # rejected drafts and padding
    for layer in cache:
        layer.trim_rows(surplus)
    return out


__all__ = ["RaggedKVCache", "RaggedQuantizedKVCache", "verify_round"]
