"""A KV cache split across ranks, put together and split again, so that a split model's
saved caches are ordinary whole caches: a chat saved on two Macs resumes on one, and
the other way round.

Tensor parallel ranks each hold some KV heads of every layer; pipeline ranks hold all
heads of their block of layers. `gather` collects every rank's share on rank 0 (one
all_gather per array of a layer), `scatter` sends rank 0's whole cache to every rank,
each keeping its share (a layer at a time, so no rank holds more than its share and one
whole layer). Every rank calls them at the same point (see `mirror.py`).
"""

from __future__ import annotations

from typing import Any

from .distributed import PIPELINE


def _arrays(layer: Any) -> list[Any]:
    """A layer cache's arrays, cut to the tokens it holds: keys and values (bf16) or
    their packed values, scales and biases (quantized)."""
    keys, values = layer.keys_and_values()
    if isinstance(keys, tuple | list):  # a loaded cache holds lists
        return [*keys, *values]
    return [keys, values]


def _build(arrays: list[Any], offset: int, bits: int | None, group_size: int | None) -> Any:
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    if bits is None:
        layer = KVCache()
        layer.keys, layer.values = arrays
    else:
        layer = QuantizedKVCache(group_size=group_size or 64, bits=bits)
        layer.keys, layer.values = tuple(arrays[:3]), tuple(arrays[3:])
    layer.offset = offset
    return layer


def describe(cache: list[Any]) -> dict[str, Any]:
    """The shape of a whole cache, for ranks that receive it (`scatter`)."""
    first = cache[0]
    return {
        "layers": len(cache),
        "offset": first.offset,
        "bits": getattr(first, "bits", None),
        "group_size": getattr(first, "group_size", None),
        "arrays": [[list(a.shape), str(a.dtype).rsplit(".", 1)[-1]] for a in _arrays(first)],
    }


def gather(model: Any, cache: list[Any]) -> list[Any] | None:
    """The whole cache on rank 0 (None on the others)."""
    import mlx.core as mx

    from .distributed import control_stream

    shard = model.shard
    group, size, rank = shard.group, shard.size, shard.rank
    bits = getattr(cache[0], "bits", None)
    group_size = getattr(cache[0], "group_size", None)
    offset = cache[0].offset

    def collect(arrays: list[Any]) -> list[Any]:
        out = []
        with mx.stream(control_stream()):
            for a in arrays:
                g = mx.distributed.all_gather(a, group=group)  # (size * B, ...)
                mx.eval(g)
                out.append(g)
        return out

    if shard.mode != PIPELINE:
        whole = []
        for layer in cache:
            parts = collect(_arrays(layer))
            if rank == 0:
                merged = []
                for g in parts:
                    b = g.shape[0] // size
                    g = g.reshape(size, b, *g.shape[1:]).swapaxes(0, 1)
                    merged.append(mx.contiguous(g.reshape(b, -1, *g.shape[3:])))
                mx.eval(merged)
                whole.append(_build(merged, offset, bits, group_size))
        return whole if rank == 0 else None
    # Pipeline: slot j is each rank's j-th layer; rank N-1 holds the first layers.
    counts = [info.layers for info in shard.ranks]
    per_rank: list[list[Any]] = [[] for _ in range(size)]
    template = _arrays(cache[0])
    for j in range(max(counts)):
        mine = _arrays(cache[j]) if j < len(cache) else [mx.zeros_like(a) for a in template]
        parts = collect(mine)
        if rank == 0:
            for r in range(size):
                if j < counts[r]:
                    b = parts[0].shape[0] // size
                    arrays = [mx.contiguous(g[r * b : (r + 1) * b]) for g in parts]
                    mx.eval(arrays)
                    per_rank[r].append(_build(arrays, offset, bits, group_size))
    if rank != 0:
        return None
    return [layer for r in reversed(range(size)) for layer in per_rank[r]]


def scatter(model: Any, cache: list[Any] | None, *, layout: dict[str, Any] | None = None) -> list:
    """This rank's share of rank 0's whole `cache` (the others pass None and `layout`,
    rank 0's `describe(cache)`)."""
    import mlx.core as mx

    from .distributed import broadcast
    from .split import rank_layers

    shard = model.shard
    size, rank = shard.size, shard.rank
    layout = layout or describe(cache)
    n = layout["layers"]
    keep = rank_layers(n, rank, size, shard.mode)
    share = []
    for i in range(n):
        if cache is not None:
            arrays = _arrays(cache[i])
        else:
            arrays = [mx.zeros(shape, getattr(mx, dtype)) for shape, dtype in layout["arrays"]]
        whole = [broadcast(shard.group, a) for a in arrays]
        if shard.mode == PIPELINE:
            if i in keep:
                share.append(_build(whole, layout["offset"], layout["bits"], layout["group_size"]))
            continue
        mine = []
        for a in whole:
            heads = a.shape[1] // size
            mine.append(mx.contiguous(a[:, rank * heads : (rank + 1) * heads]))
        mx.eval(mine)
        share.append(_build(mine, layout["offset"], layout["bits"], layout["group_size"]))
    return share
