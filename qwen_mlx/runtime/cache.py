"""KV caches: make one, reuse its longest prefix, trim, requantize, prefill, save and
load (mlx-lm's cache classes and prompt-cache format underneath)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import GenerationCancelled
from .distributed import leader_of
from .memory import kv_group_size
from .model import Model


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reuse_cache(cache: list[Any], held: list[int], tokens: Sequence[int], *, keep_one: bool) -> int:
    """Trim `cache` (and `held`, the ids it holds, in place) to the longest prefix it
    shares with `tokens`; return that length. With `keep_one`, at least one token is left
    for the model to read (generation needs something new to start from)."""
    reuse = common_prefix(tokens, held)
    if keep_one:
        reuse = min(reuse, len(tokens) - 1)
    trim_cache(cache, len(held) - reuse)
    del held[reuse:]
    return reuse


def make_cache(model: Model, kv_bits: int | None = None) -> list[Any]:
    """An empty KV cache for `model`: bf16, or quantized to `kv_bits` from the first token
    (so a long prefill never holds a bf16 copy of the cache). Either kind can join a
    batch (`kv_batch.batchable`)."""
    from mlx_lm.models.cache import QuantizedKVCache, make_prompt_cache

    from .kv_batch import batchable

    if kv_bits is None:
        cache = make_prompt_cache(model.model)
    else:
        group = kv_group_size(model.model.args.head_dim)
        cache = batchable(
            [QuantizedKVCache(group_size=group, bits=kv_bits) for _ in model.model.layers]
        )
    leader = leader_of(model)
    return cache if leader is None else leader.wrap(cache)  # split like the model


def cache_length(cache: list[Any]) -> int:
    return cache[0].offset if cache else 0


def cache_nbytes(cache: list[Any]) -> int:
    """Bytes the cache's arrays hold, spare capacity included."""
    return sum(c.nbytes for c in cache)


def trim_cache(cache: list[Any], n: int) -> None:
    """Drop the last `n` tokens from the cache, in place."""
    from mlx_lm.models.cache import trim_prompt_cache

    if n > 0:
        trim_prompt_cache(cache, n)


def requantize_cache(model: Model, cache: list[Any], kv_bits: int) -> list[Any]:
    """The same cache at a lower precision (bf16 -> 8/4-bit, or 8-bit -> 4-bit)."""
    import mlx.core as mx

    leader = leader_of(model)
    if leader is not None:  # every rank requantizes its share
        return leader.requantize(cache, kv_bits)
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    from .kv_batch import batchable

    group_size = kv_group_size(model.model.args.head_dim)
    out = []
    for c in cache:
        if isinstance(c, KVCache):
            out.append(c.to_quantized(group_size=group_size, bits=kv_bits))
            continue
        assert isinstance(c, QuantizedKVCache)
        q = QuantizedKVCache(group_size=group_size, bits=kv_bits)
        q.offset = c.offset
        if c.keys is not None:
            keys, values = c.keys_and_values() if c.offset else (c.keys, c.values)
            dense = [
                mx.dequantize(*t, group_size=c.group_size, bits=c.bits) for t in (keys, values)
            ]
            q.keys, q.values = (mx.quantize(d, group_size=group_size, bits=kv_bits) for d in dense)
        out.append(q)
    return batchable(out)


def save_cache(path: str | Path, cache: list[Any], metadata: dict[str, str]) -> None:
    """Write `cache` to `path`. A cache split across ranks is put together first: the
    file is a whole cache, valid on one Mac or on any split (see `cachesplit.py`)."""
    from mlx_lm.models.cache import save_prompt_cache

    from .mirror import owner

    leader = owner(cache)
    if leader is not None:
        cache = leader.gather(cache)
    save_prompt_cache(str(path), cache, metadata)


def load_cache(path: str | Path) -> tuple[list[Any], dict[str, str]]:
    from mlx_lm.models.cache import load_prompt_cache

    return load_prompt_cache(str(path), return_metadata=True)


def prefill(
    model: Model,
    tokens: Sequence[int],
    cache: list[Any],
    *,
    cache_tokens: list[int] | None = None,
    step: int = 2048,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Run the model over `tokens` into `cache`, in chunks of `step`, without sampling.

    `cache_tokens` (the ids the cache holds) grows chunk by chunk; `progress(done, total)`
    follows each chunk; `should_stop` ends the work between chunks (GenerationCancelled).
    """
    import mlx.core as mx
    from mlx_lm.generate import generation_stream, wired_limit

    leader = leader_of(model)
    if leader is not None:  # every rank reads the tokens into its share
        kw = {"cache_tokens": cache_tokens, "step": step, "progress": progress}
        leader.prefill(tokens, cache, should_stop=should_stop, **kw)
        return
    total = len(tokens)
    done = 0
    with wired_limit(model.model, [generation_stream]), mx.stream(generation_stream):
        while done < total:
            n = min(step, total - done)
            model.model(mx.array(list(tokens[done : done + n]))[None], cache=cache)
            mx.eval([c.state for c in cache])
            if cache_tokens is not None:
                cache_tokens.extend(tokens[done : done + n])
            done += n
            if progress is not None:
                progress(done, total)
            mx.clear_cache()
            if should_stop is not None and should_stop() and done < total:
                raise GenerationCancelled("Stopped while reading.")
