"""`logprobs` / `top_logprobs` on chat completions and completions, in OpenAI's shapes,
through real HTTP with the official `openai` client, checked against the model's own
log-softmax."""

from __future__ import annotations

import math

import openai
import pytest

from qwen_mlx.server.logprobs import token_bytes

from .served import CONTEXT, MAX_TOKENS_CAP, MODEL, Served, user


@pytest.fixture(scope="module")
def served(module_server) -> Served:
    # No prompt cache: each request prefills its whole prompt, as the reference does.
    return module_server(max_context=CONTEXT, max_tokens_cap=MAX_TOKENS_CAP, cache_bytes=0)


@pytest.fixture
def client(served) -> openai.OpenAI:
    return served.client()


def first_step(model, tokens: list[int]) -> list[float]:
    """The model's log-softmax over the vocabulary after `tokens`, computed directly."""
    import mlx.core as mx

    logits = model.model(mx.array([tokens]))[0, -1].astype(mx.float32)
    return (logits - mx.logsumexp(logits)).tolist()


def test_chat_logprobs_are_the_models_and_top_logprobs_rank_them(client, tiny_model):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=user("Tell me"),
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = reply.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    reference = first_step(tiny_model, tiny_model.prompt_tokens(user("Tell me")))
    # Greedy: the first token is the reference's best, at its logprob (bfloat16's step
    # there is 1/32; the runner-up is further off).
    best = max(range(len(reference)), key=reference.__getitem__)
    assert entries[0].bytes == list(token_bytes(tiny_model, best))
    assert math.isclose(entries[0].logprob, reference[best], abs_tol=0.04)
    for entry in entries:
        top = entry.top_logprobs
        assert len(top) == 3
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert (top[0].token, top[0].logprob) == (entry.token, entry.logprob)
        assert sum(math.exp(t.logprob) for t in top) <= 1.0 + 1e-6
        assert entry.token == bytes(entry.bytes).decode("utf-8", errors="replace")
    whole = b"".join(bytes(e.bytes) for e in entries).decode("utf-8", errors="replace")
    assert whole == choice.message.content


def test_streamed_chat_logprobs_match_the_whole_reply(client):
    args = dict(model=MODEL, messages=user("Stream"), max_tokens=8, temperature=0, logprobs=True)
    whole = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True))
    streamed = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    expected = whole.choices[0].logprobs.content
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in expected]
    assert all(e.top_logprobs == [] for e in streamed)  # top_logprobs not asked for


def test_completion_logprobs_come_as_parallel_lists(client, tiny_model):
    reply = client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=5, temperature=0, logprobs=2
    )
    lp = reply.choices[0].logprobs
    n = reply.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(n)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) <= 2 and max(top.values()) == logprob and top[token] == logprob
    reference = first_step(tiny_model, tiny_model.encode("Once upon"))
    assert math.isclose(lp.token_logprobs[0], max(reference), abs_tol=0.04)
    stream = list(
        client.completions.create(
            model=MODEL, prompt="Once upon", max_tokens=5, temperature=0, logprobs=2, stream=True
        )
    )
    tokens = [t for c in stream if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == lp.tokens


def test_without_logprobs_there_are_none(client):
    reply = client.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=2)
    assert reply.choices[0].logprobs is None
    reply = client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert reply.choices[0].logprobs is None


def test_a_token_a_schema_rules_out_is_minus_9999_not_infinity(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=user("JSON"),
        max_tokens=6,
        logprobs=True,
        top_logprobs=20,
        response_format={"type": "json_object"},
    )
    values = [t.logprob for e in reply.choices[0].logprobs.content for t in e.top_logprobs]
    assert all(math.isfinite(v) for v in values) and -9999.0 in values


def test_text_that_piles_up_keeps_its_tokens_logprobs(served, script):
    # A client slower than the model gets the text that waited as one piece: each of its
    # tokens' logprobs must come with it (a plain `str + Text` dropped them).
    import asyncio

    from qwen_mlx.server import Job

    text = "Piled up, one token after another."
    script.reply(text)
    model = served.engine.model
    ids = model.encode(text)

    async def slow_client() -> list:
        params = model.default_params.replace(temperature=0, max_tokens=len(ids) + 1)
        job = Job(model.prompt_tokens(user("Pile it up")), params, logprobs=0)
        got = []
        async for item in served.engine.events(job):
            got.append(item)
            await asyncio.sleep(0.3)  # the rest of the reply piles up meanwhile
        return got

    got = asyncio.run(slow_client())
    pieces = got[:-1]
    assert len(pieces) < len(ids)  # some did pile up
    assert "".join(pieces) == text
    assert [t.token for p in pieces for t in p.logprobs] == ids


def test_a_greedy_replys_logprobs_do_not_depend_on_its_batch_or_the_pool(tiny_model):
    # The streamed and whole replies of the same greedy request differed (the flaky
    # comparisons above): text that piled up lost its logprobs (the test before this one).
    # The numbers themselves do not depend on the path the reply takes: alone, beside
    # longer and shorter prompts (left-padded in the batch, one read in chunks), joining
    # a batch mid-decode, from a pooled prefix, or one job at a time through
    # stream_tokens, each token and logprob is the same.
    import asyncio

    from qwen_mlx.runtime import stream_tokens
    from qwen_mlx.server import Engine, Job

    params = tiny_model.default_params.replace(temperature=0, max_tokens=8)
    short = tiny_model.prompt_tokens(user("Stream"))
    others = [tiny_model.prompt_tokens(user("word " * n)) for n in (40, 3)]

    def scored(item) -> list:
        return [(t.token, t.logprob) for t in getattr(item, "logprobs", ())]

    async def run(engine, prompts, *, staggered: bool = False) -> list:
        """Each prompt's (token, logprob) pairs and Finished record; `staggered`: each
        starts once the one before it has written its first text (it joins a batch that
        is decoding)."""
        started = [asyncio.Event() for _ in prompts]

        async def one(i, tokens):
            if staggered and i:
                await started[i - 1].wait()
            job = Job(tokens, params.replace(max_tokens=8 if tokens is short else 200))
            job.logprobs = 0
            got, finished = [], None
            async for item in engine.events(job):
                got += scored(item)
                finished = item
                started[i].set()
            return got, finished

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))

    engine = Engine(tiny_model, max_context=2048, cache_bytes=16 << 20, prefill_step_size=16)
    try:
        ((alone, first),) = asyncio.run(run(engine, [short]))
        ((pooled, again),) = asyncio.run(run(engine, [short]))
        assert first.cached_tokens == 0 and again.cached_tokens == len(short) - 1
        engine.cache.clear()
        beside = asyncio.run(run(engine, [others[0], short, others[1]]))
        engine.cache.clear()
        joining = asyncio.run(run(engine, [others[0], short], staggered=True))
    finally:
        engine.close()
    assert max(f.batch_size for _, f in beside) == 3 and joining[1][1].batch_size == 2
    lone = [
        (t.token, t.logprob)
        for c in stream_tokens(tiny_model, short, params, logprobs=0)
        for t in c.logprobs
    ]
    assert len(alone) == 8
    assert pooled == beside[1][0] == joining[1][0] == lone == alone
