"""Prompt lookup inside the continuous batch (`BatchDecoder(draft="lookup")`): every
sequence's greedy tokens are the ones it decodes alone, with bf16 or quantized KV, while
rows keep different numbers of drafted tokens per round (per-row cache trimming); stop
tokens and max_tokens inside an accepted run end a sequence exactly there, its cache
holding exactly its tokens; sampled sequences follow the model's distribution (chi-square);
sequences with logits processors decode without drafting."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_sampler

from qwen_mlx import load
from qwen_mlx.runtime import SamplingParams, make_cache
from qwen_mlx.runtime.batch import BatchDecoder
from qwen_mlx.runtime.cache import cache_length
from qwen_mlx.runtime.kv_batch import trim_rows

from .helpers import TRAINED_DRAFT, chi2_critical, pair_distribution, topk_probs

# Replies that repeat their prompts (lookup drafts often) and ones that do not.
PROMPTS = [
    "def parse(self, text):\n    return text\n\ndef parse(self, text):\n    return",
    "a b c d a b c d a b c d a b",
    "import os\nimport sys\n\ndef main():\n    print(os.getcwd())\n",
    "class Queue:\n",
    "x = [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2,",
]


@pytest.fixture(scope="module")
def trained(trained_mlx):
    """The trained target, bf16: it has learned to repeat, so drafts are accepted."""
    return load(trained_mlx)


@pytest.fixture(scope="module")
def trained_draft(trained, tmp_path_factory):
    """The trained pair's draft model, bf16 (same tokenizer as the target)."""
    from qwen_mlx.convert import convert

    root = tmp_path_factory.mktemp("trained-draft")
    return load(convert(str(TRAINED_DRAFT), mlx_path=root / "d", quantize=False).path)


@pytest.fixture(scope="module")
def tiny_bf16(tiny_hf):
    """The tiny checkpoint unquantized (its logits are what the chi-square test reads)."""
    return load(tiny_hf)


def _alone(model, tokens, bits, n):
    """Greedy ids of one sequence decoded by itself (mlx-lm's generate_step), stopping
    after an end-of-turn token as the batch does."""
    steps = generate_step(
        mx.array(tokens),
        model.model,
        max_tokens=n,
        sampler=make_sampler(0.0),
        prompt_cache=make_cache(model, bits),
    )
    out = []
    for t, _ in steps:
        out.append(int(t))
        if t in model.tokenizer.eos_token_ids:
            break
    return out


def _decode(model, prompts, *, bits=None, draft="lookup", n=40, params=None, later=()):
    """Each prompt's reply ids and finishing event, decoded together (the `later` ones
    joining after three steps)."""
    # Not adaptive: every match is drafted, whatever a round costs on this machine (the
    # method is under test here, not when it pays).
    decoder = BatchDecoder(
        model, max_batch=8, prefill_step_size=64, kv_bits=bits, draft=draft, adaptive=False
    )
    params = params or SamplingParams(temperature=0.0, max_tokens=n)
    uids = [decoder.add(p, params) for p in prompts]
    events, steps = {}, 0
    try:
        while len(decoder) or later:
            steps += 1
            if steps == 3:
                uids += [decoder.add(p, params) for p in later]
                later = ()
            for event in decoder.step():
                if event.finish_reason is not None:
                    events[event.uid] = event
    finally:
        decoder.close()
    return [events[u] for u in uids]


@pytest.mark.parametrize("bits", [None, 8])
def test_each_sequence_drafting_in_a_batch_decodes_its_greedy_tokens_alone(trained, bits):
    prompts = [trained.encode(p) for p in PROMPTS]
    alone = [_alone(trained, p, bits, 40) for p in prompts]
    events = _decode(trained, prompts[:3], bits=bits, later=prompts[3:])
    assert [list(e.reply_tokens) for e in events] == alone
    assert sum(e.accepted for e in events) > 0  # drafts were kept, by some rows more
    assert len({e.accepted for e in events}) > 1
    for e, p in zip(events, prompts, strict=True):
        # The cache handed back holds exactly the prompt and the reply's ids.
        assert e.cache_tokens == p + list(e.reply_tokens)[: len(e.cache_tokens) - len(p)]
        assert cache_length(e.cache) == len(e.cache_tokens)


def test_a_random_model_in_a_drafting_batch_decodes_as_alone(tiny_model):
    prompts = [tiny_model.encode(p) for p in PROMPTS]
    alone = [_alone(tiny_model, p, None, 24) for p in prompts]
    events = _decode(tiny_model, prompts, n=24)
    assert [list(e.reply_tokens) for e in events] == alone


def test_max_tokens_inside_an_accepted_run_ends_the_sequence_there(trained):
    prompts = [trained.encode(p) for p in PROMPTS[:2]]
    for n in (5, 9):
        events = _decode(trained, prompts, n=n)
        plain = _decode(trained, prompts, n=n, draft=None)
        assert [e.reply_tokens for e in events] == [e.reply_tokens for e in plain]
        assert [len(e.reply_tokens) for e in events] == [n, n]
        assert [e.finish_reason for e in events] == ["length", "length"]
        assert sum(e.accepted for e in events) > 0
        for e, p in zip(events, prompts, strict=True):
            # As without drafting: the prompt and every reply token, and nothing more.
            assert e.cache_tokens == p + list(e.reply_tokens)
            assert cache_length(e.cache) == len(p) + n


def _texts(model, prompts, params, draft, logprobs=None):
    """Each prompt's text, finishing event and scored tokens, decoded together."""
    decoder = BatchDecoder(model, max_batch=8, prefill_step_size=64, draft=draft, adaptive=False)
    uids = [decoder.add(p, params, logprobs=logprobs) for p in prompts]
    texts = {u: "" for u in uids}
    scored: dict = {u: [] for u in uids}
    ends = {}
    try:
        while len(decoder):
            for event in decoder.step():
                texts[event.uid] += event.text
                scored[event.uid] += event.logprobs
                if event.finish_reason is not None:
                    ends[event.uid] = event
    finally:
        decoder.close()
    return [(texts[u], ends[u], scored[u]) for u in uids]


def test_stop_strings_inside_accepted_runs_end_the_text_where_they_do_alone(trained):
    prompts = [trained.encode(p) for p in PROMPTS[:3]]
    params = SamplingParams(temperature=0.0, max_tokens=40)
    plain = _texts(trained, prompts, params, None)
    # A stop string from the middle of each reply (one is enough for a row to stop on).
    stops = [text[len(text) // 2 : len(text) // 2 + 3] for text, _, _ in plain]
    stops = [s for s in stops if s.strip()]
    params = SamplingParams(temperature=0.0, max_tokens=40, stop=stops)
    plain = _texts(trained, prompts, params, None)
    drafted = _texts(trained, prompts, params, "lookup")
    assert [(t, e.finish_reason, e.stop_string) for t, e, _ in drafted] == [
        (t, e.finish_reason, e.stop_string) for t, e, _ in plain
    ]
    assert any(e.finish_reason == "stop" for _, e, _ in drafted)
    assert sum(e.accepted for _, e, _ in drafted) > 0
    for (_, e, _), p in zip(drafted, prompts, strict=True):
        assert e.cache_tokens[: len(p)] == p
        assert cache_length(e.cache) == len(e.cache_tokens)


def test_logprobs_of_drafted_tokens_are_the_ones_decoding_alone_gives(trained):
    prompts = [trained.encode(p) for p in PROMPTS[:3]]
    params = SamplingParams(temperature=0.0, max_tokens=32)
    plain = _texts(trained, prompts, params, None, logprobs=2)
    drafted = _texts(trained, prompts, params, "lookup", logprobs=2)
    assert sum(e.accepted for _, e, _ in drafted) > 0
    for (_, _, mine), (_, _, theirs) in zip(drafted, plain, strict=True):
        assert [s.token for s in mine] == [s.token for s in theirs]
        assert [[t for t, _ in s.top] for s in mine] == [[t for t, _ in s.top] for s in theirs]
        assert [s.logprob for s in mine] == pytest.approx([s.logprob for s in theirs], abs=0.05)


def test_sequences_with_logits_processors_decode_without_drafting(trained):
    prompts = [trained.encode(p) for p in PROMPTS[:2]]
    penalty = SamplingParams(temperature=0.0, max_tokens=24, repetition_penalty=1.3)
    events = _decode(trained, prompts, params=penalty)
    assert all(e.drafted == 0 for e in events)
    plain = _decode(trained, prompts, params=penalty, draft=None)
    assert [e.reply_tokens for e in events] == [e.reply_tokens for e in plain]


def _clear_cut(model, tokens, k):
    """Whether the model's top k after `tokens` are ahead of the rest by two bf16 steps,
    so the batch's arithmetic cannot move a token across the cut."""
    import numpy as np

    logits = np.array(model.model(mx.array(tokens)[None])[0, -1].astype(mx.float32))
    top = np.sort(logits)[::-1]
    return top[k - 1] - top[k] >= 0.02


def _judged_prompt(model, k):
    """A prompt x y b x y whose reply, if it starts with b, has the lookup draft x (after
    the 2-gram y b) for its second token, x being among that token's top k: both the
    accept and the reject paths run. Every top-k cut is clear (`_clear_cut`)."""
    import numpy as np

    bs = list(range(42, 300))
    for x in range(40, 400):
        y = x + 1
        # One batched pass over every b first: only the b among its prompt's top k (with
        # a margin for the batch's arithmetic) are checked one by one.
        rows = mx.array([[x, y, b, x, y] for b in bs])
        logits = np.array(model.model(rows)[:, -1].astype(mx.float32))
        kth = np.sort(logits, axis=-1)[:, -k]
        near = [b for i, b in enumerate(bs) if logits[i, b] >= kth[i] - 0.05]
        for b in near:
            prompt = [x, y, b, x, y]
            firsts = topk_probs(model, prompt, k)
            if b not in firsts or x not in topk_probs(model, [*prompt, b], k):
                continue
            if _clear_cut(model, prompt, k) and all(
                _clear_cut(model, [*prompt, a], k) for a in firsts
            ):
                return prompt
    raise AssertionError("no prompt with a judged draft in this model")


def _cut_prompt(model, k):
    """A prompt x x+1 x+2 whose top-k cuts, for the first token and each second one,
    are all clear."""
    for x in range(40, 400):
        prompt = [x, x + 1, x + 2]
        if _clear_cut(model, prompt, k) and all(
            _clear_cut(model, [*prompt, a], k) for a in topk_probs(model, prompt, k)
        ):
            return prompt
    raise AssertionError("no prompt with clear top-k cuts in this model")


def _follows_the_distribution(model, prompt, k, n, *, draft):
    """`n` sampled rows (top-k, temperature 1, two tokens each, each its own seed, 24 to a
    batch) drafting with `draft`: their first two tokens pass a chi-square test against
    the exact distribution, and drafts were both kept and rejected."""
    exact = pair_distribution(model, prompt, k)
    eos = model.tokenizer.eos_token_ids
    counts: dict = {}
    drafted = accepted = 0
    for start in range(0, n, 24):
        decoder = BatchDecoder(model, max_batch=24, draft=draft, adaptive=False)
        for seed in range(start, start + 24):
            params = SamplingParams(temperature=1.0, top_k=k, top_p=1.0, max_tokens=2, seed=seed)
            decoder.add(prompt, params)
        try:
            while len(decoder):
                for event in decoder.step():
                    if event.finish_reason is None:
                        continue
                    pair = tuple("end" if t in eos else t for t in event.reply_tokens)
                    counts[pair] = counts.get(pair, 0) + 1
                    drafted += event.drafted
                    accepted += event.accepted
        finally:
            decoder.close()
    chi2 = sum((counts.get(c, 0) - n * p) ** 2 / (n * p) for c, p in exact.items())
    assert chi2 < chi2_critical(len(exact) - 1), (chi2, counts)
    assert set(counts) <= set(exact)
    assert 0 < accepted < drafted


def test_sampled_sequences_drafting_in_a_batch_follow_the_models_distribution(tiny_bf16):
    k, n = 3, 240
    prompt = _judged_prompt(tiny_bf16, k)
    _follows_the_distribution(tiny_bf16, prompt, k, n, draft="lookup")


def test_rows_trimmed_by_different_counts_keep_their_own_contents(tiny_model):
    from mlx_lm.models.cache import BatchKVCache

    keys = mx.arange(2 * 1 * 6 * 2, dtype=mx.float32).reshape(2, 1, 6, 2)
    layer = BatchKVCache([0, 0])
    layer.update_and_fetch(keys, keys + 100)
    trim_rows([layer], [1, 3])
    # Row 0 keeps 5 positions, row 1 three: both now end at the shared position 5.
    assert layer._idx == 5 and layer.offset.tolist() == [5, 3]
    assert layer.left_padding.tolist() == [0, 2]
    k, _ = layer.keys_and_values()
    assert k[0, 0].tolist() == keys[0, 0, :5].tolist()
    assert k[1, 0, 2:].tolist() == keys[1, 0, :3].tolist()
    one = layer.extract(1)
    assert one.offset == 3 and one.keys[0, 0].tolist() == keys[1, 0, :3].tolist()


# -- a draft model shared by the batch -----------------------------------------------------


@pytest.mark.parametrize("bits", [None, 8])
def test_a_draft_model_in_a_batch_keeps_each_sequences_greedy_tokens(trained, trained_draft, bits):
    prompts = [trained.encode(p) for p in PROMPTS]
    alone = [_alone(trained, p, bits, 40) for p in prompts]
    # Two rows join after three steps: their draft caches join the draft's batch cache.
    events = _decode(trained, prompts[:3], bits=bits, draft=trained_draft, later=prompts[3:])
    assert [list(e.reply_tokens) for e in events] == alone
    assert all(e.drafted > 0 for e in events)
    assert sum(e.accepted for e in events) > 0
    assert len({e.accepted for e in events}) > 1  # rows kept different counts
    for e, p in zip(events, prompts, strict=True):
        assert e.cache_tokens == p + list(e.reply_tokens)[: len(e.cache_tokens) - len(p)]
        assert cache_length(e.cache) == len(e.cache_tokens)


def test_an_adaptive_draft_model_batch_writes_what_plain_batching_writes(trained, trained_draft):
    prompts = [trained.encode(p) for p in PROMPTS[:4]]
    params = SamplingParams(temperature=0.0, max_tokens=32)
    plain = _texts(trained, prompts, params, None)
    decoder = BatchDecoder(trained, max_batch=8, prefill_step_size=64, draft=trained_draft)
    uids = [decoder.add(p, params) for p in prompts]
    texts = dict.fromkeys(uids, "")
    try:
        while len(decoder):
            for event in decoder.step():
                texts[event.uid] += event.text
    finally:
        decoder.close()
    assert [texts[u] for u in uids] == [t for t, _, _ in plain]


def test_a_draft_model_batch_leaves_sequences_with_logits_processors_undrafted(
    trained, trained_draft
):
    prompts = [trained.encode(p) for p in PROMPTS[:2]]
    penalty = SamplingParams(temperature=0.0, max_tokens=24, repetition_penalty=1.3)
    greedy = SamplingParams(temperature=0.0, max_tokens=24)
    decoder = BatchDecoder(trained, max_batch=8, draft=trained_draft, adaptive=False)
    uids = [decoder.add(prompts[0], penalty), decoder.add(prompts[1], greedy)]
    assert [decoder.drafting(u) for u in uids] == [False, True]
    events = {}
    try:
        while len(decoder):
            for event in decoder.step():
                if event.finish_reason is not None:
                    events[event.uid] = event
    finally:
        decoder.close()
    assert events[uids[0]].drafted == 0 and events[uids[1]].drafted > 0
    plain = _decode(trained, prompts[:1], params=penalty, draft=None)
    assert events[uids[0]].reply_tokens == plain[0].reply_tokens
    assert list(events[uids[1]].reply_tokens) == _alone(trained, prompts[1], None, 24)


def test_a_draft_with_another_tokenizer_cannot_join_a_batch(tiny_model, tmp_path):
    from qwen_mlx.convert.tiny import build_tiny_checkpoint
    from qwen_mlx.errors import TokenizerMismatchError

    foreign = load(build_tiny_checkpoint(tmp_path / "Qwen3-Foreign", tokenizer_vocab_size=400))
    with pytest.raises(TokenizerMismatchError, match="tokenizer"):
        BatchDecoder(tiny_model, draft=foreign)


def test_sampled_sequences_with_a_draft_model_in_a_batch_follow_the_models_distribution(
    tiny_bf16, tiny_model
):
    # The 4-bit copy drafts for the bf16 checkpoint: its top 3 overlap the target's in
    # part, so both the accept and the reject paths run.
    k, n = 3, 240
    prompt = _cut_prompt(tiny_bf16, k)
    _follows_the_distribution(tiny_bf16, prompt, k, n, draft=tiny_model)


def test_a_draft_model_catches_up_after_plain_steps(trained, trained_draft, monkeypatch):
    # Drafting one round in five (as a batch where drafting rarely pays does): the
    # draft's rows fall behind by different counts and read them in one padded pass.
    from qwen_mlx.runtime.batch_speculative import SpeculativeBatch

    plan = SpeculativeBatch._model_plan
    rounds = iter(range(10**6))

    def every_fifth(self, costs):
        k, caps = plan(self, costs)
        return (k if next(rounds) % 5 == 4 else 0), caps

    monkeypatch.setattr(SpeculativeBatch, "_model_plan", every_fifth)
    prompts = [trained.encode(p) for p in PROMPTS]
    alone = [_alone(trained, p, 8, 40) for p in prompts]
    events = _decode(trained, prompts[:2], bits=8, draft=trained_draft, later=prompts[2:])
    assert [list(e.reply_tokens) for e in events] == alone
    assert sum(e.accepted for e in events) > 0


@pytest.mark.parametrize("bits", [None, 8])
def test_a_draft_model_reads_only_what_is_new_of_a_conversations_next_turn(
    trained, trained_draft, bits
):
    decoder = BatchDecoder(trained, max_batch=4, draft=trained_draft, kv_bits=bits, adaptive=False)
    first = trained.encode(PROMPTS[0])
    params = SamplingParams(temperature=0.0, max_tokens=16)

    def run(tokens):
        uid = decoder.add(tokens, params)
        while True:
            for event in decoder.step():
                if event.uid == uid and event.finish_reason is not None:
                    return event

    try:
        one = run(first)
        read = decoder._spec.draft_read
        assert read == len(first)
        # The next turn: the first, its reply, and more (as an agent's client resends).
        second = first + list(one.reply_tokens) + trained.encode("\ndef parse(self,")
        two = run(second)
        new = decoder._spec.draft_read - read
        assert new <= len(second) - len(first)  # the draft read only what follows its cache
        assert list(two.reply_tokens) == _alone(trained, second, bits, 16)
        assert two.accepted > 0
    finally:
        decoder.close()


def test_the_kept_draft_caches_stay_within_their_bytes(trained, trained_draft):
    params = SamplingParams(temperature=0.0, max_tokens=8)
    prompts = [trained.encode(p) for p in (PROMPTS[0], PROMPTS[2])]

    def run(decoder, tokens):
        uid = decoder.add(tokens, params)
        while True:
            for event in decoder.step():
                if event.uid == uid and event.finish_reason is not None:
                    return event

    def turns(keep_bytes):
        """Two conversations' first turns, then the first one's next turn: the kept
        bytes after each, and what the draft read of that next turn."""
        decoder = BatchDecoder(
            trained, draft=trained_draft, draft_keep_bytes=keep_bytes, adaptive=False
        )
        try:
            kept, ones = [], []
            for tokens in prompts:
                ones.append(run(decoder, tokens))
                kept.append(decoder.draft_kept_bytes)
            again = prompts[0] + list(ones[0].reply_tokens) + trained.encode("\nx = 1")
            read = decoder._spec.draft_read
            run(decoder, again)
            return kept, decoder._spec.draft_read - read, len(again)
        finally:
            decoder.close()

    kept, read, length = turns(None)  # no byte bound: both kept
    first, both = kept
    assert 0 < first < both
    assert read <= length - len(prompts[0])  # the next turn reads only what is new
    kept, read, length = turns(both - 1)  # no room for both: the oldest goes
    assert kept == [first, both - first]
    assert read == length  # its next turn's prompt is read whole again
    kept, read, length = turns(0)  # no room: none kept
    assert kept == [0, 0] and read == length


def test_batch_generate_drafts_with_a_draft_model_named_by_its_reference(tiny_model, tiny_mlx):
    from qwen_mlx.runtime import batch_generate

    prompts = PROMPTS[:3]
    plain = batch_generate(tiny_model, prompts, progress=False, temperature=0, max_tokens=12)
    drafted = batch_generate(
        tiny_model, prompts, progress=False, temperature=0, max_tokens=12, draft=str(tiny_mlx)
    )
    assert [r.text for r in drafted] == [r.text for r in plain]
