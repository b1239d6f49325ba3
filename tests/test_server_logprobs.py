"""`logprobs` / `top_logprobs` on chat completions and completions, in OpenAI's shapes,
through real HTTP with the official `openai` client, checked against the model's own
log-softmax."""

from __future__ import annotations

import math
from collections.abc import Iterator

import openai
import pytest

from qwen_mlx.server import Engine, create_app
from qwen_mlx.server.logprobs import token_bytes

from .test_server import CONTEXT, KEY, MAX_TOKENS_CAP, MODEL, start_server, user


@pytest.fixture(scope="module")
def served(tiny_model) -> Iterator[Engine]:
    # No prompt cache: each request prefills its whole prompt, as the reference does.
    engine = Engine(tiny_model, max_context=CONTEXT, max_tokens_cap=MAX_TOKENS_CAP, cache_bytes=0)
    server, thread, port = start_server(create_app(engine, api_key=KEY))
    engine.url = f"http://127.0.0.1:{port}/v1"
    yield engine
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url, api_key=KEY, max_retries=0, timeout=60)


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


def test_text_that_piles_up_keeps_its_tokens_logprobs(served):
    # A client slower than the model gets the text that waited as one piece: each of its
    # tokens' logprobs must come with it (a plain `str + Text` dropped them).
    import asyncio

    from qwen_mlx.runtime import GenerationChunk, TokenLogprob
    from qwen_mlx.server import Job

    def scored(model, tokens, params, **kwargs):
        for n in range(1, 7):
            lp = (TokenLogprob(n, -0.5 * n),)
            yield GenerationChunk("ab", n, len(tokens), 0.0, n, 0.0, 0.0, 0.0, logprobs=lp)
        yield GenerationChunk("", None, len(tokens), 0.0, 6, 0.0, 0.0, 0.0, "stop")

    async def slow_client() -> list:
        job = Job([1, 2, 3], served.model.default_params.replace(max_tokens=6), logprobs=0)
        got = []
        async for item in served.events(job):
            got.append(item)
            await asyncio.sleep(0.3)  # the rest of the reply piles up meanwhile
        return got

    served.stream_tokens = scored
    try:
        got = asyncio.run(slow_client())
    finally:
        from qwen_mlx.runtime import stream_tokens

        served.stream_tokens = stream_tokens
    pieces = got[:-1]
    assert len(pieces) < 6  # some did pile up
    assert "".join(pieces) == "ab" * 6
    assert [t.token for p in pieces for t in p.logprobs] == [1, 2, 3, 4, 5, 6]
