"""The batched quantized KV cache: mlx-lm's `BatchGenerator` decodes with it exactly
what each sequence decodes alone with a `QuantizedKVCache` of the same bits, and its
merge / extract / filter / extend / trim keep every row's keys and values."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import BatchGenerator, generate_step
from mlx_lm.models.cache import QuantizedKVCache
from mlx_lm.sample_utils import make_sampler

from qwen_mlx import load
from qwen_mlx.runtime import make_cache
from qwen_mlx.runtime.cache import cache_length, load_cache, prefill, save_cache
from qwen_mlx.runtime.kv_batch import BatchQuantizedKVCache, batchable

from .helpers import needs_trained, run_script

PROMPTS = [
    "def parse(self, text):\n    return",
    "import os\nimport sys\n\ndef main():\n    print(os.getcwd())\n",
    "class Queue:\n",
    "a b c d a b c d a b",
]


@pytest.fixture(scope="module")
def trained(trained_mlx):
    """The trained target (head_dim 64: group size 64, as for Qwen3-4B's 128), bf16."""
    return load(trained_mlx)


def _alone(model, tokens, bits, max_tokens, cache=None):
    """Greedy tokens of one sequence decoded by itself with a QuantizedKVCache."""
    cache = cache if cache is not None else make_cache(model, bits)
    steps = generate_step(
        mx.array(tokens),
        model.model,
        max_tokens=max_tokens,
        sampler=make_sampler(0.0),
        prompt_cache=cache,
    )
    return [t for t, _ in steps]


def _batched(model, prompts, bits, max_tokens, *, caches=None, later=(), step=16):
    """Greedy tokens of `prompts` decoded together (and `later` ones joining after two
    steps), and the caches handed back, by uid order."""
    eos = model.tokenizer.eos_token_ids
    gen = BatchGenerator(
        model.model,
        stop_tokens=[[t] for t in eos],
        completion_batch_size=8,
        prefill_batch_size=8,
        prefill_step_size=step,
    )
    caches = caches or [make_cache(model, bits) for _ in prompts]
    uids = gen.insert(
        prompts, max_tokens=[max_tokens] * len(prompts), caches=[batchable(c) for c in caches]
    )
    out: dict[int, list[int]] = {u: [] for u in uids}
    done: dict[int, list] = {}
    steps = 0
    try:
        while len(done) < len(out):
            for r in gen.next_generated():
                out[r.uid].append(r.token)
                if r.finish_reason:
                    done[r.uid] = r.prompt_cache
            steps += 1
            if steps == 2 and later:
                more = gen.insert(
                    list(later),
                    max_tokens=[max_tokens] * len(later),
                    caches=[batchable(make_cache(model, bits)) for _ in later],
                )
                out |= {u: [] for u in more}
                uids += more
    finally:
        gen.close()
    return [out[u] for u in uids], [done[u] for u in uids]


@pytest.mark.parametrize("bits", [8, 4])
def test_a_batch_decodes_each_sequences_greedy_tokens_alone(tiny_model, bits):
    prompts = [tiny_model.encode(p) for p in PROMPTS]
    alone = [_alone(tiny_model, p, bits, 20) for p in prompts]
    # Prompts of different lengths (left padding), prefill in chunks shorter than some of
    # them (right padding rolled to the left), and a sequence that joins a running batch.
    tokens, caches = _batched(tiny_model, prompts[:3], bits, 20, later=prompts[3:], step=8)
    assert tokens == alone
    for c, p, t in zip(caches, prompts, tokens, strict=True):
        assert all(type(layer) is QuantizedKVCache and layer.bits == bits for layer in c)
        # The prompt and every token decoded (each is read as the next step's input).
        assert cache_length(c) == len(p) + len(t)


@needs_trained
@pytest.mark.parametrize("bits", [8, 4])
def test_a_trained_model_batched_with_quantized_kv_writes_what_it_writes_alone(trained, bits):
    prompts = [trained.prompt_tokens([{"role": "user", "content": p}]) for p in PROMPTS]
    alone = [_alone(trained, p, bits, 24) for p in prompts]
    tokens, _ = _batched(trained, prompts, bits, 24)
    assert tokens == alone
    assert len({tuple(t) for t in alone}) == len(alone)  # distinct replies: a mix-up would show


@pytest.mark.parametrize("bits", [8, 4])
def test_sequences_with_cached_prefixes_continue_as_they_would_alone(tiny_model, bits):
    # A prompt-cache pool hands a sequence the cache of a prefix it has seen before.
    prompts = [tiny_model.encode(p) for p in PROMPTS]
    cut = [len(p) // 2 for p in prompts]

    def prefixed():
        out = []
        for p, n in zip(prompts, cut, strict=True):
            cache = make_cache(tiny_model, bits)
            prefill(tiny_model, p[:n], cache)
            out.append(cache)
        return out

    alone = [
        _alone(tiny_model, p[n:], bits, 12, cache=c)
        for p, n, c in zip(prompts, cut, prefixed(), strict=True)
    ]
    rest = [p[n:] for p, n in zip(prompts, cut, strict=True)]
    tokens, _ = _batched(tiny_model, rest, bits, 12, caches=prefixed())
    assert tokens == alone


def _filled(model, bits, lengths, seed=0):
    """Per-sequence QuantizedKVCaches holding `lengths` random tokens each."""
    rng = np.random.default_rng(seed)
    caches = []
    for n in lengths:
        cache = make_cache(model, bits)
        if n:
            prefill(model, rng.integers(10, 200, n).tolist(), cache)
        caches.append(cache)
    return caches


def _same(a: QuantizedKVCache, b: QuantizedKVCache) -> bool:
    ka, va = a.keys_and_values() if a.keys is not None else ((), ())
    kb, vb = b.keys_and_values() if b.keys is not None else ((), ())
    return (
        a.offset == b.offset
        and (a.bits, a.group_size) == (b.bits, b.group_size)
        and all(mx.array_equal(x, y).item() for x, y in zip((*ka, *va), (*kb, *vb), strict=True))
    )


@pytest.mark.parametrize("bits", [8, 4])
def test_merge_then_extract_gives_each_cache_back(tiny_model, bits):
    caches = _filled(tiny_model, bits, [5, 0, 17, 9])
    layer = 1
    batch = BatchQuantizedKVCache.merge([c[layer] for c in caches])
    assert batch.left_padding.tolist() == [12, 17, 0, 8]
    assert batch.offset.tolist() == [5, 0, 17, 9]
    for i, c in enumerate(caches):
        back = batch.extract(i)
        assert _same(back, c[layer])
        assert back.merge == BatchQuantizedKVCache.merge  # it can join a batch again


def test_filter_extend_and_trim_keep_each_rows_contents(tiny_model):
    bits = 4
    caches = _filled(tiny_model, bits, [5, 11, 3, 8], seed=1)
    a = BatchQuantizedKVCache.merge([c[0] for c in caches[:2]])
    b = BatchQuantizedKVCache.merge([c[0] for c in caches[2:]])
    a.extend(b)  # rows of 11 and 8 positions joined: padded to end together
    assert a.offset.tolist() == [5, 11, 3, 8]
    for i, c in enumerate(caches):
        assert _same(a.extract(i), c[0])
    a.filter([3, 1])  # the padding they share is dropped
    assert a.left_padding.tolist() == [3, 0] and a.size() == 11
    assert _same(a.extract(0), caches[3][0]) and _same(a.extract(1), caches[1][0])
    a.trim(2)
    assert a.offset.tolist() == [6, 9]
    caches[3][0].trim(2)
    caches[1][0].trim(2)
    assert _same(a.extract(0), caches[3][0]) and _same(a.extract(1), caches[1][0])


def test_a_batch_holds_one_precision(tiny_model):
    eight, four = _filled(tiny_model, 8, [3])[0][0], _filled(tiny_model, 4, [3])[0][0]
    with pytest.raises(ValueError, match="one KV precision"):
        BatchQuantizedKVCache.merge([eight, four])
    a = BatchQuantizedKVCache.merge([eight])
    with pytest.raises(ValueError, match="one KV precision"):
        a.extend(BatchQuantizedKVCache.merge([four]))


def _byte_share(model, bits) -> float:
    """Bytes of a batch of two 256-token rows at `bits` over bf16's."""
    from mlx_lm.models.cache import BatchKVCache

    plain, quant = _filled(model, None, [256, 256]), _filled(model, bits, [256, 256])
    layers = range(len(plain[0]))
    dense = sum(BatchKVCache.merge([c[i] for c in plain]).nbytes for i in layers)
    packed = sum(BatchQuantizedKVCache.merge([c[i] for c in quant]).nbytes for i in layers)
    return packed / dense


@needs_trained
@pytest.mark.parametrize(("bits", "share"), [(8, 0.53), (4, 0.28)])
def test_quantized_rows_take_about_half_or_a_quarter_of_the_bytes(trained, bits, share):
    # Group 64 (head_dim 64, and 128 for Qwen3-4B): `bits` plus a bf16 scale and bias
    # per 64 values, over 16 bits: 8.5/16 and 4.5/16.
    assert _byte_share(trained, bits) == pytest.approx((bits + 0.5) / 16, rel=1e-6)
    assert _byte_share(trained, bits) == pytest.approx(share, abs=0.01)


@pytest.mark.parametrize("bits", [8, 4])
def test_small_heads_quantize_in_groups_of_32(tiny_model, bits):
    # The tiny model's head_dim 32: twice the scales and biases of group 64.
    assert _byte_share(tiny_model, bits) == pytest.approx((bits + 1) / 16, rel=1e-6)


def test_an_extracted_cache_saves_loads_and_continues(tiny_model, tmp_path):
    prompts = [tiny_model.encode(p) for p in PROMPTS[:2]]
    tokens, caches = _batched(tiny_model, prompts, 8, 6)
    path = tmp_path / "cache.safetensors"
    save_cache(path, caches[0], {"kind": "test"})
    loaded, meta = load_cache(path)
    assert meta["kind"] == "test" and all(type(c) is QuantizedKVCache for c in loaded)
    # The next turn from the loaded cache equals the next turn from a cache built alone.
    held = prompts[0] + tokens[0]
    more = tiny_model.encode(" and then")
    alone_cache = make_cache(tiny_model, 8)
    prefill(tiny_model, held, alone_cache)
    assert _alone(tiny_model, more, 8, 8, cache=loaded) == _alone(
        tiny_model, more, 8, 8, cache=alone_cache
    )


@pytest.mark.interop  # a benchmark's smoke run: the interop tier runs them all
@needs_trained
def test_the_kv_quality_benchmark_runs_in_smoke_mode():

    done = run_script("bench_kv.py", "--smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split() for line in done.stdout.splitlines() if line.strip()]
    rows = {words[0]: words for words in lines}
    assert {"f32", "bf16", "8-bit", "4-bit"} <= rows.keys()
    # KL against bf16 KV grows as the bits fall; bytes per token are 0.531x and 0.281x.
    kl = [float(rows[k][1]) for k in ("bf16", "8-bit", "4-bit")]
    assert kl[0] == 0 < kl[1] < kl[2]
    assert [rows[k][-1] for k in ("8-bit", "4-bit")] == ["0.531", "0.281"]


def test_quantized_caches_made_copied_or_requantized_can_join_a_batch(tiny_model):
    import copy

    from qwen_mlx.runtime.cache import requantize_cache

    made = _filled(tiny_model, 8, [6])[0]
    copied = copy.deepcopy(made)  # a prompt-cache pool hands out copies of shared prefixes
    lowered = requantize_cache(tiny_model, _filled(tiny_model, None, [6])[0], 4)
    for cache in (made, copied, lowered):
        batch = cache[0].merge([cache[0]])
        assert isinstance(batch, BatchQuantizedKVCache) and _same(batch.extract(0), cache[0])
