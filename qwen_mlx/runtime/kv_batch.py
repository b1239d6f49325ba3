"""A quantized KV cache for a batch: `BatchQuantizedKVCache`, what mlx-lm's
`BatchKVCache` is to `KVCache`, for `QuantizedKVCache` (8 or 4 bits, a scale and a bias
per group of 64 values).

mlx-lm's `BatchGenerator` keeps one batch cache per layer and drives it through a small
protocol: `merge` (the per-sequence caches of the sequences starting together, left
padded to one length), `prepare` / `finalize` (a prefill chunk whose prompts end at
different places is right padded, then rolled so the padding sits on the left),
`update_and_fetch` and `make_mask` (in the model), `filter` (sequences leaving),
`extend` (sequences joining a running batch), `extract` (one sequence's cache, handed
back when it ends) and `trim`. This class follows `BatchKVCache` step for step with the
three arrays of a quantized tensor (packed values, scales, biases) in place of one; the
attention itself is mlx-lm's `quantized_scaled_dot_product_attention`, which the model
picks for any cache with `bits`.

`BatchGenerator` merges a sequence's cache through the cache's own `merge` (KVCache has
one, QuantizedKVCache none): `batchable` gives each quantized layer that attribute. The
objects stay mlx-lm's class, so `save_prompt_cache` and `load_prompt_cache` still name
them. One batch holds one precision: every sequence's cache has the same bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_PARTS = 3  # a quantized tensor: packed values, scales, biases


def batchable(cache: list[Any]) -> list[Any]:
    """`cache` (one sequence's per-layer caches, as `make_cache` gives), each quantized
    layer made mergeable by `BatchGenerator`; returned for chaining, changed in place."""
    from mlx_lm.models.cache import QuantizedKVCache

    for layer in cache:
        if isinstance(layer, QuantizedKVCache):
            layer.merge = BatchQuantizedKVCache.merge
    return cache


def trim_rows(cache: list[Any], surplus: Sequence[int]) -> None:
    """Drop the last `surplus[i]` positions of row i in every layer of a batch cache
    (`BatchKVCache` or `BatchQuantizedKVCache`): what a speculative round does after
    each row kept a different number of its drafted tokens.

    These caches keep every row's contents ending at one shared position, so a row that
    drops more than the least is rolled right by the difference (the dropped positions
    wrap round into its left padding) and its padding grows by as much; then every row
    drops the least. Only the used positions move, and nothing at all where every row
    drops the same number.
    """
    import mlx.core as mx
    from mlx_lm.models.cache import dynamic_roll

    least = min(surplus, default=0)
    shifts = [s - least for s in surplus]
    moved = any(shifts)
    shift = mx.array(shifts)
    for layer in cache:
        if moved and layer.keys is not None:
            used = layer._idx

            def roll(x: Any, used: int = used) -> Any:
                x[..., :used, :] = dynamic_roll(x[..., :used, :], shift[:, None], axis=2)
                return x

            if isinstance(layer.keys, tuple):
                layer.keys, layer.values = _map(roll, layer.keys), _map(roll, layer.values)
            else:
                layer.keys, layer.values = roll(layer.keys), roll(layer.values)
            layer.left_padding = layer.left_padding + shift
            layer.offset = layer.offset - shift
        if least:
            layer.trim(least)


def _map(fn: Any, *tensors: tuple[Any, ...]) -> tuple[Any, ...]:
    """`fn` applied part by part to one or more quantized tensors."""
    return tuple(fn(*parts) for parts in zip(*tensors, strict=True))


class BatchQuantizedKVCache:
    """Keys and values of a batch of sequences, quantized, left padded to one length.

    `left_padding[i]` slots at the start of row i are padding; `offset[i]` is the
    position of row i's next token (its own length), `_idx` the shared write position.
    The quantized tensors are (data, scales, biases) triples of (B, heads, capacity, .)
    arrays, grown in steps of 256 positions as `QuantizedKVCache` grows.
    """

    step = 256

    def __init__(self, left_padding: Sequence[int], *, group_size: int = 64, bits: int = 8):
        import mlx.core as mx

        self.group_size = group_size
        self.bits = bits
        self.keys: tuple[Any, ...] | None = None
        self.values: tuple[Any, ...] | None = None
        self.left_padding = mx.array(list(left_padding))
        self.offset = mx.array([-p for p in left_padding])
        self._idx = 0
        self._right_padding = None

    # -- what the model calls --------------------------------------------------------

    def update_and_fetch(self, keys: Any, values: Any) -> tuple[Any, Any]:
        import mlx.core as mx

        batch, heads, steps, k_dim = keys.shape
        v_dim = values.shape[-1]
        prev = self._idx
        if self.keys is None or prev + steps > self.keys[0].shape[2]:
            per_int = 32 // self.bits
            grow = (self.step + steps - 1) // self.step * self.step
            shape = (batch, heads, grow)

            def empty(dim: int) -> tuple[Any, ...]:
                return (
                    mx.zeros((*shape, dim // per_int), dtype=mx.uint32),
                    mx.zeros((*shape, dim // self.group_size), dtype=keys.dtype),
                    mx.zeros((*shape, dim // self.group_size), dtype=keys.dtype),
                )

            if self.keys is None:
                self.keys, self.values = empty(k_dim), empty(v_dim)
            else:
                if prev % self.step:
                    self.keys, self.values = (
                        _map(lambda x: x[..., :prev, :], t) for t in (self.keys, self.values)
                    )
                self.keys = _map(
                    lambda x, z: mx.concatenate([x, z], axis=2), self.keys, empty(k_dim)
                )
                self.values = _map(
                    lambda x, z: mx.concatenate([x, z], axis=2), self.values, empty(v_dim)
                )
        self.offset = self.offset + steps
        self._idx += steps
        new_keys = mx.quantize(keys, group_size=self.group_size, bits=self.bits)
        new_values = mx.quantize(values, group_size=self.group_size, bits=self.bits)
        for i in range(_PARTS):
            self.keys[i][..., prev : self._idx, :] = new_keys[i]
            self.values[i][..., prev : self._idx, :] = new_values[i]
        return self.keys_and_values()

    def keys_and_values(self) -> tuple[Any, Any]:
        idx = self._idx
        return tuple(_map(lambda x: x[..., :idx, :], t) for t in (self.keys, self.values))

    def make_mask(self, N: int, return_array: bool = False, **kwargs: Any) -> Any:
        from mlx_lm.models.base import create_causal_mask

        return create_causal_mask(N, offset=self._idx, left_padding=self.left_padding, **kwargs)

    # -- what BatchGenerator calls ---------------------------------------------------

    def prepare(self, *, left_padding=None, lengths=None, right_padding=None) -> None:
        """Before a prefill chunk: more left padding (an empty cache only), or the right
        padding of prompts shorter than the chunk (rolled away by `finalize`)."""
        import mlx.core as mx

        if left_padding is not None:
            if self.keys is not None:
                raise ValueError("Left padding can only be added to an empty batch cache.")
            left_padding = mx.array(list(left_padding))
            self.left_padding = self.left_padding + left_padding
            self.offset = self.offset - left_padding
        if right_padding is not None and max(right_padding) > 0:
            self._right_padding = mx.array(list(right_padding))

    def finalize(self) -> None:
        """After a right-padded chunk: roll each row so its padding moves to the left."""
        from mlx_lm.models.cache import dynamic_roll

        if self._right_padding is None:
            return
        shift = self._right_padding[:, None]
        self.keys, self.values = (
            _map(lambda x: dynamic_roll(x, shift, axis=2), t) for t in (self.keys, self.values)
        )
        self.offset = self.offset - self._right_padding
        self.left_padding = self.left_padding + self._right_padding
        self._right_padding = None

    def filter(self, batch_indices: Sequence[int] | Any) -> None:
        """Keep only these rows (in this order), and drop the left padding they all share."""
        if self.keys is not None:
            self.keys, self.values = (
                _map(lambda x: x[batch_indices], t) for t in (self.keys, self.values)
            )
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]
        shared = min(self.left_padding.tolist()) if self.left_padding.size else 0
        if shared > 0:
            if self.keys is not None:
                self.keys, self.values = (
                    _map(lambda x: x[..., shared:, :], t) for t in (self.keys, self.values)
                )
            self._idx -= shared
            self.left_padding = self.left_padding - shared

    def extend(self, other: BatchQuantizedKVCache) -> None:
        """Append `other`'s rows: both are padded so their contents end at one position."""
        import mlx.core as mx

        self._check_same(other)
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        idx = max(self._idx, other._idx)
        some = self if self.keys is not None else other
        size = max(c.keys[0].shape[2] for c in (self, other) if c.keys is not None)

        def aligned(c: BatchQuantizedKVCache) -> tuple[Any, Any, Any, Any]:
            keys, values = c.keys, c.values
            if keys is None:  # rows with nothing yet: empty parts of the right widths
                rows = c.offset.shape[0]
                keys, values = (
                    _map(lambda x: mx.zeros((rows, *x.shape[1:2], 0, x.shape[3]), x.dtype), t)
                    for t in (some.keys, some.values)
                )
            left = idx - c._idx
            right = size - keys[0].shape[2] - left
            if right < 0:
                keys, values = (_map(lambda x: x[..., :right, :], t) for t in (keys, values))
                right = 0
            if left or right:
                pad = [(0, 0), (0, 0), (left, right), (0, 0)]
                keys, values = (_map(lambda x: mx.pad(x, pad), t) for t in (keys, values))
            return keys, values, c.offset, c.left_padding + left

        mine, theirs = aligned(self), aligned(other)
        self.keys = _map(lambda a, b: mx.concatenate([a, b]), mine[0], theirs[0])
        self.values = _map(lambda a, b: mx.concatenate([a, b]), mine[1], theirs[1])
        self.offset = mx.concatenate([mine[2], theirs[2]])
        self.left_padding = mx.concatenate([mine[3], theirs[3]])
        self._idx = idx

    def extract(self, idx: int) -> Any:
        """Row `idx` as one sequence's `QuantizedKVCache` (its padding left out)."""
        import mlx.core as mx
        from mlx_lm.models.cache import QuantizedKVCache

        cache = QuantizedKVCache(group_size=self.group_size, bits=self.bits)
        padding = self.left_padding.tolist()[idx]
        if self.keys is not None and self._idx > padding:
            cache.keys, cache.values = (
                _map(lambda x: mx.contiguous(x[idx : idx + 1, :, padding : self._idx]), t)
                for t in (self.keys, self.values)
            )
            cache.offset = self._idx - padding
        return batchable([cache])[0]

    @classmethod
    def merge(cls, caches: Sequence[Any]) -> BatchQuantizedKVCache:
        """One batch cache from per-sequence `QuantizedKVCache`s (same bits), each row
        left padded to the longest."""
        import mlx.core as mx

        bits = {c.bits for c in caches}
        groups = {c.group_size for c in caches}
        if len(bits) != 1 or len(groups) != 1:
            raise ValueError(
                "A batch holds one KV precision: these caches are quantized at "
                f"{sorted(bits)} bits (group sizes {sorted(groups)})."
            )
        group_size, bits = groups.pop(), bits.pop()
        lengths = [c.offset if c.keys is not None else 0 for c in caches]
        longest = max(lengths)
        padding = [longest - n for n in lengths]
        batch = cls(padding, group_size=group_size, bits=bits)
        if longest == 0:
            return batch
        some = next(c for c in caches if c.keys is not None and c.offset)

        def zeros(t: tuple[Any, ...]) -> tuple[Any, ...]:
            return _map(
                lambda x: mx.zeros((len(caches), x.shape[1], longest, x.shape[3]), x.dtype), t
            )

        keys, values = zeros(some.keys), zeros(some.values)
        for i, (pad, c) in enumerate(zip(padding, caches, strict=True)):
            if not lengths[i]:
                continue
            for j in range(_PARTS):
                keys[j][i : i + 1, :, pad:] = c.keys[j][..., : c.offset, :]
                values[j][i : i + 1, :, pad:] = c.values[j][..., : c.offset, :]
        batch.keys, batch.values = keys, values
        batch.offset = batch.offset + longest
        batch._idx = longest
        return batch

    # -- the rest of mlx-lm's cache protocol ---------------------------------------------

    @property
    def state(self) -> tuple[Any, ...]:
        return self.keys, self.values, self.offset, self.left_padding

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        """Drop the last `n` positions of every row."""
        n = min(self._idx, n)
        self._idx -= n
        self.offset = self.offset - n
        return n

    def size(self) -> int:
        return self._idx

    def empty(self) -> bool:
        return self.keys is None

    @property
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return sum(x.nbytes for t in (self.keys, self.values) for x in t)

    def _check_same(self, other: Any) -> None:
        if not isinstance(other, BatchQuantizedKVCache) or (other.bits, other.group_size) != (
            self.bits,
            self.group_size,
        ):
            raise ValueError("A batch holds one KV precision: cannot join caches of another.")


__all__ = ["BatchQuantizedKVCache", "batchable", "trim_rows"]
