"""The phase-2 prototype of speculation in a batch: one verify pass over drafts of
different lengths (left-padded prompts, right-padded drafts) gives each sequence its greedy
tokens alone, and each row's cache is trimmed to what that row kept."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_sampler

from qwen_mlx.runtime import make_cache
from qwen_mlx.runtime.cache import cache_length, prefill
from qwen_mlx.runtime.ragged import RaggedKVCache, verify_round
from qwen_mlx.runtime.speculative import LookupDrafter

PROMPTS = [
    "def parse(self, text):\n    return",
    "a b c d a b c d a b c d a b",
    "import os\nimport sys\n\ndef main():\n    print(os.getcwd())\n",
    "class Queue:\n",
]


def _alone(model, tokens, n):
    steps = generate_step(mx.array(tokens), model.model, max_tokens=n, sampler=make_sampler(0.0))
    return [t for t, _ in steps]


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_a_batched_verify_round_gives_each_row_its_greedy_tokens_and_trims_per_row(
    tiny_model, bits
):
    prompts = [tiny_model.encode(p) for p in PROMPTS]
    n = 24
    # What each sequence decodes alone, with the same KV precision.
    alone = []
    for p in prompts:
        cache = make_cache(tiny_model, bits)
        steps = generate_step(
            mx.array(p),
            tiny_model.model,
            max_tokens=n,
            sampler=make_sampler(0.0),
            prompt_cache=cache,
        )
        alone.append([t for t, _ in steps])
    caches = []
    for p in prompts:  # every prompt token but the last, read alone (lengths differ)
        cache = make_cache(tiny_model, bits)
        prefill(tiny_model, p[:-1], cache)
        caches.append(cache)
    layers = len(caches[0])
    batch = [RaggedKVCache.from_caches([c[i] for c in caches]) for i in range(layers)]
    assert batch[0].left == [max(map(len, prompts)) - len(p) for p in prompts]
    out = [[] for _ in prompts]
    last = [p[-1] for p in prompts]
    lookups = [LookupDrafter() for _ in prompts]
    kept = drafted = 0
    while min(len(o) for o in out) < n:
        drafts = []
        for i, p in enumerate(prompts):
            left = n - len(out[i])
            if i == 0 or left <= 1:
                drafts.append([])  # no draft: a plain step inside the verify pass
            elif i == 1:
                drafts.append(lookups[i].propose(p + out[i], min(4, left - 1))[0])
            elif i == 2:  # right for a while, then wrong: accepted up to the first miss
                drafts.append(alone[i][len(out[i]) : len(out[i]) + 2] + [7, 8][: left - 3])
            else:  # wrong from the first token: nothing kept
                drafts.append([(alone[i][len(out[i])] + 1) % 500][: left - 1])
        new = verify_round(tiny_model.model, batch, last, drafts)
        for i, toks in enumerate(new):
            drafted += len(drafts[i])
            kept += len(toks) - 1
            out[i].extend(toks)
            last[i] = toks[-1]
        # Each row holds its prompt and its reply but the last token, whatever it kept.
        lengths = [e - lp for e, lp in zip(batch[0].end, batch[0].left, strict=True)]
        assert lengths == [len(p) + len(o) - 1 for p, o in zip(prompts, out, strict=True)]
    assert [o[:n] for o in out] == alone
    assert 0 < kept < drafted  # rows kept some drafts and rejected others
    # A row extracted is the cache the sequence would hold alone.
    for i, p in enumerate(prompts):
        row = [layer.extract(i) for layer in batch]
        assert cache_length(row) == len(p) + len(out[i]) - 1
        more = _continue(tiny_model, row, out[i][-1], 6)
        ref = make_cache(tiny_model, bits)
        prefill(tiny_model, p + out[i][:-1], ref)
        assert more == _continue(tiny_model, ref, out[i][-1], 6)


def _continue(model, cache, token, n):
    steps = generate_step(
        mx.array([token]),
        model.model,
        max_tokens=n,
        sampler=make_sampler(0.0),
        prompt_cache=cache,
    )
    return [t for t, _ in steps]


def test_rows_leave_and_the_space_only_they_needed_goes(tiny_model):
    prompts = [tiny_model.encode(p) for p in PROMPTS]
    caches = []
    for p in prompts:
        cache = make_cache(tiny_model)
        prefill(tiny_model, p, cache)
        caches.append(cache)
    layer = RaggedKVCache.from_caches([c[0] for c in caches])
    longest = max(map(len, prompts))
    assert longest > max(len(prompts[1]), len(prompts[3]))
    layer.trim_rows([0, 3, 0, 1])
    layer.filter([3, 1])  # the longest prompt's row leaves: its padding goes with it
    # Kept: from the earliest start of a kept row to the latest end of one (row 3's, all
    # rows ending together until trimmed): the longest kept prompt less row 3's one.
    assert layer.keys[0].shape[2] == max(len(prompts[3]), len(prompts[1])) - 1 < longest
    for row, (i, cut) in enumerate(((3, 1), (1, 3))):
        got = layer.extract(row)
        assert got.offset == len(prompts[i]) - cut
        assert mx.array_equal(got.keys, caches[i][0].keys[..., : got.offset, :]).item()
