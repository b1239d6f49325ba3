"""Continuous batching in the server, through real HTTP with the official `openai` client:
requests decoding together, joining a running batch, the queue limit, memory admission,
disconnects, /health and a crash inside the generation loop."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

from qwen_mlx.runtime import batch
from qwen_mlx.runtime.memory import Budget, MemoryPlanner
from qwen_mlx.server import Engine

from .helpers import TRAINED_TARGET, run_script
from .served import KEY, MODEL, Served, all_at_once, user


@pytest.fixture(scope="module")
def served(module_server) -> Served:
    return module_server(max_context=2048, max_batch=4, max_queue=8, prefill_step_size=16)


@pytest.fixture(scope="module")
def single(module_server) -> Served:
    """Room for one request running and none waiting."""
    return module_server(max_context=2048, max_batch=1, max_queue=0)


def health(served: Served) -> dict:
    return served.get("/health", timeout=10).json()


def idle(engine: Engine) -> None:
    """Wait until no job is running or waiting (a closed stream ends at the next step)."""
    for _ in range(400):
        if engine.queued == 0:
            return
        threading.Event().wait(0.05)
    raise AssertionError("the engine did not go idle")


def first_chunks(stream, n: int) -> list:
    """The first `n` content chunks of a chat stream (leaving the stream open)."""
    got = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got.append(chunk)
            if len(got) == n:
                break
    return got


def test_concurrent_requests_decode_together_and_answer_as_alone(served):
    def ask(i: int) -> str:
        reply = served.client().completions.create(
            model=MODEL, prompt=f"{i} pears and " * (i + 1), max_tokens=16, temperature=0
        )
        return reply.choices[0].text

    alone = [ask(i) for i in range(4)]
    assert [f.batch_size for f in list(served.engine.finished)[-4:]] == [1, 1, 1, 1]
    assert all_at_once(ask, 4) == alone
    assert max(f.batch_size for f in list(served.engine.finished)[-4:]) > 1


def test_a_short_request_behind_a_long_prompt_starts_before_it_is_read(served):
    client = served.client()
    long = client.completions.create(
        model=MODEL, prompt="a long prompt " * 300, max_tokens=4, temperature=0, stream=True
    )
    order: list[str] = []
    reader = threading.Thread(target=lambda: (list(long), order.append("long")))
    reader.start()
    short = client.chat.completions.create(
        model=MODEL, messages=user("short"), max_tokens=2, temperature=0, stream=True
    )
    list(short)
    order.append("short")
    reader.join(timeout=120)
    assert order == ["short", "long"]  # it did not wait for the long prompt's prefill


def test_a_short_request_beside_eight_long_prompts_answers_before_any_of_them(serve):
    # Eight long prompts being read at once took every prefill slot of mlx-lm's batch
    # until each was read to its end; a short request then waited for whole prefills.
    served = serve(max_context=2048, max_batch=12, prefill_step_size=16)
    engine = served.engine
    client = served.client()
    prompt = "the sea and the sky " * 240  # about 1,900 tokens, 120 chunks

    def long(i: int) -> None:
        client.completions.create(model=MODEL, prompt=f"{i} {prompt}", max_tokens=1)

    readers = [threading.Thread(target=long, args=(i,)) for i in range(8)]
    for t in readers:
        t.start()
    for _ in range(600):  # until all eight are in the batch, being read
        if engine.scheduler.batch_size == 8:
            break
        threading.Event().wait(0.01)
    assert engine.scheduler.batch_size == 8
    short = client.completions.create(model=MODEL, prompt="hi", max_tokens=1)
    for t in readers:
        t.join(timeout=120)
    done = list(engine.finished)[-9:]
    assert done[0].prompt_tokens == short.usage.prompt_tokens
    assert all(f.prompt_tokens > 1000 for f in done[1:])  # the long ones came after


def test_health_reports_the_batch_and_the_queue(served):
    idle(served.engine)
    before = health(served)
    assert before["batch_size"] == 0 and before["queue_depth"] == 0
    assert before["max_batch"] == 4 and before["max_queue"] == 8
    stream = served.client().chat.completions.create(
        model=MODEL, messages=user("go"), max_tokens=200, temperature=1.0, stream=True
    )
    first_chunks(stream, 1)
    during = health(served)
    stream.close()
    assert during["batch_size"] == 1 and during["queued"] == 1


def test_a_client_leaving_mid_stream_leaves_the_batch_and_gives_its_cache_back(served, script):
    pool = served.engine.cache
    idle(served.engine)
    pool.clear()
    # A reply that never ends by itself: only the client leaving can end it (a random
    # model at temperature 1 sometimes ended first, and the test read "stop").
    script.reply("on and on ", when="I will leave", repeat=True)
    client = served.client()
    leaving = client.chat.completions.create(
        model=MODEL, messages=user("I will leave"), max_tokens=2000, temperature=1.0, stream=True
    )
    first_chunks(leaving, 2)
    staying = client.chat.completions.create(
        model=MODEL, messages=user("I will stay"), max_tokens=12, temperature=0
    )
    leaving.close()
    assert staying.choices[0].finish_reason in ("stop", "length")
    idle(served.engine)
    ends = {f.finish_reason for f in list(served.engine.finished)[-2:]}
    assert "cancelled" in ends and served.engine.queued == 0
    assert len(pool) == 2  # both sequences' caches came back


def test_a_batched_conversation_reuses_its_cached_prefix(served):
    client = served.client()
    first = user("Name three rivers.")
    r1 = client.chat.completions.create(model=MODEL, messages=first, max_tokens=8, temperature=0)
    second = [
        *first,
        {"role": "assistant", "content": r1.choices[0].message.content},
        *user("And three mountains?"),
    ]
    r2 = client.chat.completions.create(model=MODEL, messages=second, max_tokens=8, temperature=0)
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens


def test_a_full_queue_gets_503_with_retry_after_in_openai_shape(single):
    client = single.client()
    running = client.chat.completions.create(
        model=MODEL, messages=user("busy"), max_tokens=300, temperature=1.0, stream=True
    )
    first_chunks(running, 1)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model=MODEL, messages=user("me too"), max_tokens=4)
    running.close()
    response = refused.value.response
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "server_busy"


def test_a_simultaneous_burst_gets_no_more_places_than_the_queue_has(serve, monkeypatch):
    # Room for 2 running and 2 waiting. Preparations are held until the refusals are in,
    # so a check made before any job was counted would let all 12 through.
    from qwen_mlx.server.protocols.openai import routes as openai_routes

    gate = threading.Event()
    real_prepare = openai_routes.prepare_chat

    def held(*args, **kwargs):
        gate.wait(60)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(openai_routes, "prepare_chat", held)
    served = serve(max_context=2048, max_batch=2, max_queue=2, cache_bytes=0)
    engine = served.engine
    refused: list[httpx.Response] = []

    def ask(i: int) -> int:
        body = {"messages": user(f"burst {i}"), "max_tokens": 2}
        response = served.post("/chat/completions", json=body)
        if response.status_code == 503:
            refused.append(response)
            if len(refused) == 8:
                gate.set()
        return response.status_code

    statuses = all_at_once(ask, 12)
    gate.set()
    assert sorted(statuses) == [200] * 4 + [503] * 8
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert refused[0].json()["error"]["code"] == "server_busy"
    idle(engine)
    # Every way out gives the place back: a preparation that fails, a stream whose
    # client leaves before it starts, a token count (which takes no place at all).
    bad = {"messages": user("x"), "tools": [], "tool_choice": "required"}
    assert all(served.post("/chat/completions", json=bad).status_code == 400 for _ in range(6))
    for _ in range(6):
        with httpx.stream(
            "POST",
            served.url + "/chat/completions",
            json={"messages": user("gone"), "max_tokens": 50, "stream": True},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        ):
            pass  # closed before reading a byte
    idle(engine)
    assert engine.queued == 0 and health(served)["queued"] == 0


def test_a_place_given_back_by_the_garbage_collector_mid_queueing_does_not_deadlock(
    tiny_model, monkeypatch
):
    # A job dropped without being queued gives its place back from a finalizer, which the
    # collector may run anywhere: here inside another job's queueing, under the lock.
    import asyncio
    import gc

    from qwen_mlx.server import Job

    engine = Engine(tiny_model, max_context=2048, max_batch=2, max_queue=2)
    params = tiny_model.default_params.replace(temperature=0, max_tokens=2)
    real_submit = engine.scheduler.submit

    def submit(*args):
        gc.collect()
        return real_submit(*args)

    monkeypatch.setattr(engine.scheduler, "submit", submit)

    async def scenario() -> None:
        dropped = await engine.prepare(lambda: Job([1, 2, 3], params))
        loop = [dropped]
        loop.append(loop)  # freed only by the collector
        del dropped, loop
        kept = await engine.prepare(lambda: Job([4, 5, 6], params))
        async for _ in engine.events(kept):
            pass

    done = threading.Thread(target=lambda: asyncio.run(scenario()), daemon=True)
    gc.disable()  # the collector runs where the test says
    try:
        done.start()
        done.join(timeout=60)
    finally:
        gc.enable()
    try:
        assert not done.is_alive(), "queueing a job deadlocked on its own lock"
        assert engine.queued == 0
    finally:
        engine.close()


def test_a_request_that_does_not_fit_beside_the_batch_waits_for_room(serve, tiny_model):
    # Memory for one sequence of this size at a time: the second waits, then runs alone.
    planner = MemoryPlanner.for_model(tiny_model)
    room = planner.plan(80)  # each request reserves its prompt (8+) and max_tokens (40)
    budget = Budget(room.total, room.total, "test")
    served = serve(
        max_context=64,
        max_batch=4,
        planner=MemoryPlanner(planner.shape, planner.weights, budget),
        cache_bytes=0,
    )
    engine = served.engine

    def ask(i: int):
        return served.client().completions.create(
            model=MODEL, prompt=f"{i} apples " * 8, max_tokens=40, temperature=0
        )

    replies = all_at_once(ask, 2)
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in replies)
    assert [f.batch_size for f in list(engine.finished)[-2:]] == [1, 1]


def test_a_crash_in_the_generation_loop_fails_its_requests_and_the_loop_goes_on(
    served, monkeypatch
):
    real_step = batch.BatchDecoder.step
    crashed = threading.Event()

    def crash_once(self):
        if not crashed.is_set():
            crashed.set()
            raise RuntimeError("secret internals: the Metal command buffer failed")
        return real_step(self)

    monkeypatch.setattr(batch.BatchDecoder, "step", crash_once)
    restarts = served.engine.scheduler.restarts
    client = served.client()
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=4)
    assert failed.value.status_code == 500 and "secret" not in failed.value.response.text
    assert failed.value.response.json()["error"]["type"] == "server_error"
    assert served.engine.scheduler.restarts == restarts + 1
    crashed.clear()  # the next step crashes again: this time mid-stream
    stream = served.post(
        "/chat/completions", json={"messages": user("hi"), "max_tokens": 4, "stream": True}
    )
    assert '"server_error"' in stream.text and "secret" not in stream.text
    assert stream.text.rstrip().endswith("data: [DONE]")
    reply = client.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=4)
    assert reply.choices[0].finish_reason in ("stop", "length")  # generating again
    assert health(served)["restarts"] == restarts + 2 and served.engine.queued == 0


def test_the_default_batch_is_what_memory_holds_and_the_flags_are_checked(capsys):
    from qwen_mlx.cli.serve import main
    from qwen_mlx.runtime.memory import ModelShape
    from qwen_mlx.server.scheduler import default_max_batch, default_max_queue

    qwen3_4b = ModelShape(36, 32, 8, 128, 2560, 262144)
    weights = 2_262_920_192  # 4-bit
    budgets = [Budget((gib << 30) * 2 // 3, gib << 30, "mac") for gib in (8, 16, 32)]
    sizes = [default_max_batch(MemoryPlanner(qwen3_4b, weights, b)) for b in budgets]
    assert sizes == [5, 15, 32]  # 4,096-token sequences beside the weights, at most 32
    assert default_max_queue(15) == 60
    assert main(["--max-batch", "0"]) == 1
    assert "--max-batch must be positive" in capsys.readouterr().err
    assert main(["--max-queue", "-1"]) == 1
    assert "--max-queue" in capsys.readouterr().err


@pytest.mark.interop
def test_the_server_benchmark_runs_against_mlx_lm_server():

    if not (TRAINED_TARGET / "model.safetensors").is_file():
        pytest.skip(f"the trained tiny Qwen3 is not at {TRAINED_TARGET}")
    args = ["--clients", "1,2", "--max-tokens", "4", "--rounds", "1", "--long-words", "60"]
    out = run_script("bench_server.py", *args)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.strip().startswith(("1 |", "2 |"))]
    assert len(rows) == 2 and all("x |" in row for row in rows)
    assert "mlx_lm server: a short request's TTFT" in out.stdout


@pytest.mark.interop
def test_the_agent_workload_benchmark_runs_in_smoke_mode():
    if not (TRAINED_TARGET / "model.safetensors").is_file():
        pytest.skip(f"the trained tiny Qwen3 is not at {TRAINED_TARGET}")
    out = run_script("bench_server.py", "--workload", "agent", "--smoke")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line.strip() for line in out.stdout.splitlines()]
    for kind in ("copying", "other"):
        rows = [line for line in lines if line.startswith(kind)]
        # Two tables (tokens/s, ratios), one row per concurrency (1 and 2 clients).
        assert [row.split()[2] for row in rows] == ["1", "2", "1", "2"], rows
        assert all(row.count("x (") == 7 for row in rows[2:])
    assert "drafted tokens accepted" in out.stdout and "kv_bits 8" in out.stdout
    header = next(line for line in lines if line.startswith("workload") and "/" in line)
    assert "draft model/mlx_lm draft" in header  # against mlx_lm's own speculative decoding
    # The draft model's server batches, and drafts.
    (line,) = [line for line in lines if line.startswith("draft model over the run")]
    assert "batched True" in line and "of 0 drafted" not in line


# -- a quantized KV cache and prompt lookup in the batch -------------------------------------


def test_a_quantized_kv_cache_batches_and_answers_as_alone(serve, tiny_model):
    from mlx_lm.models.cache import QuantizedKVCache

    served = serve(tiny_model, kv_bits=8, max_context=2048, max_batch=4, prefill_step_size=16)
    engine = served.engine
    state = health(served)
    assert state["max_batch"] == 4 and state["kv_bits"] == 8

    def ask(i: int) -> str:
        reply = served.client().completions.create(
            model=MODEL, prompt=f"{i} plums or " * (i + 2), max_tokens=16, temperature=0
        )
        return reply.choices[0].text

    alone = [ask(i) for i in range(4)]
    engine.cache.clear()  # each starts from nothing again, as it did alone
    assert all_at_once(ask, 4) == alone
    assert max(f.batch_size for f in list(engine.finished)[-4:]) > 1
    # The pool keeps the batch's caches quantized, and they hold what was read.
    entries = list(engine.cache._entries.values())
    assert entries and all(isinstance(c, QuantizedKVCache) for e in entries for c in e.cache)
    assert all(e.cache[0].offset == len(e.tokens) for e in entries)
    # A conversation moving on starts from its quantized entry.
    again = served.client().completions.create(
        model=MODEL, prompt="3 plums or " * 5 + "more", max_tokens=4, temperature=0
    )
    assert again.usage.prompt_tokens_details.cached_tokens > 0


def test_the_batch_admits_by_quantized_kv_bytes(serve, tiny_model):
    # A planner given to the engine plans bf16 by default; admission asks it for plans at
    # the engine's KV precision (the tiny model's workspace, not its KV, decides whether
    # these fit, so what is checked is the precision each admission is planned at).
    asked: list = []

    class Recording(MemoryPlanner):
        def plan(self, context_tokens, kv_bits=None):
            asked.append(kv_bits)
            return super().plan(context_tokens, kv_bits)

    base = MemoryPlanner.for_model(tiny_model)
    planner = Recording(base.shape, base.weights, base.budget)
    served = serve(tiny_model, kv_bits=4, max_context=2048, max_batch=4, planner=planner)
    asked.clear()
    all_at_once(
        lambda i: served.client().completions.create(
            model=MODEL, prompt=f"{i} figs", max_tokens=4, temperature=0
        ),
        2,
    )
    assert asked and set(asked) == {4}
    assert MemoryPlanner.for_model(tiny_model, kv_bits=4).kv_per_token() < base.kv_per_token()


def _together_as_alone(engine, ask, alone: list[str]) -> list:
    """`ask(i, temperature=0)` for i in 0..3 at once: each reply is the text it had alone,
    they decoded together, and their usage counts each finished job's drafts (kept and
    rejected). Returns the four finished jobs."""
    replies = all_at_once(lambda i: ask(i, temperature=0), 4)
    assert [r.choices[0].text for r in replies] == alone
    done = list(engine.finished)[-4:]
    assert max(f.batch_size for f in done) > 1
    details = [r.usage.completion_tokens_details for r in replies]
    assert sum(d.accepted_prediction_tokens for d in details) == sum(f.accepted for f in done)
    assert sum(d.rejected_prediction_tokens for d in details) == sum(
        f.drafted - f.accepted for f in done
    )
    return done


def test_prompt_lookup_drafts_inside_the_batch_and_counts_its_drafts(serve, tiny_model):
    served = serve(
        tiny_model, draft="lookup", kv_bits=8, max_context=2048, max_batch=4, prefill_step_size=16
    )
    engine = served.engine
    assert engine.batched
    state = health(served)
    assert state["max_batch"] == 4 and state["speculative"]["batched"] is True

    def ask(i: int, **extra):
        return served.client().completions.create(
            model=MODEL, prompt="a b c a b c " * (i + 1), max_tokens=24, **extra
        )

    alone = [ask(i, temperature=0).choices[0].text for i in range(4)]
    assert sum(f.accepted for f in list(engine.finished)[-4:]) > 0  # a batch of one drafts
    # Together: the batch drafts where it pays at its size; the text is the same.
    _together_as_alone(engine, ask, alone)
    # Beside them: one that turned speculation off (it does not draft), one sampled.
    mixed = all_at_once(
        lambda i: [
            ask(0, temperature=0),
            ask(1, temperature=0, extra_body={"speculative": False}),
            ask(2, temperature=0.9, seed=4),
        ][i],
        3,
    )
    assert mixed[1].usage.completion_tokens_details.accepted_prediction_tokens == 0
    assert mixed[1].usage.completion_tokens_details.rejected_prediction_tokens == 0
    assert mixed[1].choices[0].text == alone[1]
    assert mixed[2].choices[0].finish_reason in ("stop", "length")
    state = health(served)["speculative"]
    assert state["drafted_tokens"] == engine.drafted > 0
    assert state["accepted_tokens"] == engine.accepted > 0
    metrics = served.get("/metrics", timeout=10).text
    assert f"qwen_mlx_draft_accepted_tokens_total {float(engine.accepted)}" in metrics
    assert f"qwen_mlx_draft_tokens_total {float(engine.drafted)}" in metrics


def test_a_draft_models_kept_caches_take_their_share_of_the_cache_budget(serve, tiny_model):
    budget = 2_000_000
    served = serve(tiny_model, draft=tiny_model, cache_bytes=budget, max_batch=4)
    engine = served.engine
    # The model drafts for itself: half of each token's KV is the draft's.
    assert engine.planner.draft_kv_share() == pytest.approx(0.5)
    spec = health(served)["speculative"]
    assert spec["kept_draft_max_bytes"] == budget // 2 and spec["kept_draft_bytes"] == 0
    assert engine.cache.max_bytes == budget - budget // 2  # the pool keeps the rest

    def ask(server, i: int) -> int:
        server.client().completions.create(
            model=MODEL, prompt=f"{i} pears and " * 30, max_tokens=8, temperature=0
        )
        return health(server)["speculative"]["kept_draft_bytes"]

    one = ask(served, 0)  # one conversation's draft cache
    assert 0 < one <= budget // 2
    # Room for one and a half: the oldest goes as the next ones finish.
    tight = serve(tiny_model, draft=tiny_model, cache_bytes=3 * one, max_batch=4)
    for i in range(3):
        assert 0 < ask(tight, i) <= 3 * one // 2
    # Lookup keeps no draft caches: the pool has all of it.
    lookup = serve(tiny_model, draft="lookup", cache_bytes=budget)
    assert lookup.engine.cache.max_bytes == budget
    assert health(lookup)["speculative"]["kept_draft_max_bytes"] is None


def test_a_draft_model_drafts_inside_the_batch_and_counts_its_drafts(serve, tiny_model):
    # The model drafts for itself: its drafts are kept, so a batch of four drafts too.
    served = serve(
        tiny_model, draft=tiny_model, max_context=2048, max_batch=4, prefill_step_size=16
    )
    engine = served.engine
    assert engine.batched
    state = health(served)
    assert state["max_batch"] == 4
    assert state["speculative"]["batched"] is True and state["speculative"]["draft"] == "model"

    def ask(i: int, **extra):
        return served.client().completions.create(
            model=MODEL, prompt=f"{i} plums and " * (i + 1), max_tokens=20, **extra
        )

    alone = [ask(i, temperature=0).choices[0].text for i in range(4)]
    assert all(f.accepted > 0 for f in list(engine.finished)[-4:])
    done = _together_as_alone(engine, ask, alone)
    assert sum(f.accepted for f in done) > 0
    # Beside them: one with a penalty (it does not draft), one sampled.
    mixed = all_at_once(
        lambda i: [
            ask(0, temperature=0),
            ask(1, temperature=0, frequency_penalty=0.5),
            ask(2, temperature=0.9, seed=4),
        ][i],
        3,
    )
    assert mixed[0].choices[0].text == alone[0]
    assert mixed[1].usage.completion_tokens_details.accepted_prediction_tokens == 0
    assert mixed[1].usage.completion_tokens_details.rejected_prediction_tokens == 0
    assert mixed[2].choices[0].finish_reason in ("stop", "length")
    state = health(served)["speculative"]
    assert state["drafted_tokens"] == engine.drafted > 0
    assert state["accepted_tokens"] == engine.accepted > 0
    metrics = served.get("/metrics", timeout=10).text
    assert f"qwen_mlx_draft_accepted_tokens_total {float(engine.accepted)}" in metrics
    assert f"qwen_mlx_draft_tokens_total {float(engine.drafted)}" in metrics


def test_every_protocol_reports_a_requests_drafts_in_its_usage(serve, tiny_model):
    served = serve(tiny_model, draft=tiny_model, max_context=2048, max_batch=4)
    engine = served.engine
    prompt = "1 plums and 2 plums and"
    message = served.anthropic().messages.create(model=MODEL, max_tokens=12, messages=user(prompt))
    done = engine.finished[-1]
    assert done.drafted > 0
    usage = message.usage.model_dump()
    assert (usage["draft_tokens"], usage["draft_accepted_tokens"]) == (done.drafted, done.accepted)
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == done.prompt_tokens

    response = served.client().responses.create(
        model=MODEL, input=prompt, max_output_tokens=12, temperature=0
    )
    done = engine.finished[-1]
    details = response.usage.output_tokens_details.model_dump()
    assert details["accepted_prediction_tokens"] == done.accepted
    assert details["rejected_prediction_tokens"] == done.drafted - done.accepted
    assert details["reasoning_tokens"] == 0

    # Ollama's client reads the reply (and leaves out fields it does not know)...
    options = {"temperature": 0, "num_predict": 12}
    chat = served.ollama().chat(model=MODEL, messages=user(prompt), options=options)
    assert chat["eval_count"] == engine.finished[-1].completion_tokens
    # ...which are in the JSON, as llama.cpp's server counts drafts.
    body = {"model": MODEL, "messages": user(prompt), "options": options, "stream": False}
    raw = httpx.post(f"{served.base}/api/chat", json=body, headers=served.auth, timeout=60).json()
    done = engine.finished[-1]
    assert (raw["draft_count"], raw["draft_accepted_count"]) == (done.drafted, done.accepted)

    # A server that does not draft adds no such fields.
    plain = serve(tiny_model, max_context=2048, max_batch=2)
    message = plain.anthropic().messages.create(model=MODEL, max_tokens=4, messages=user(prompt))
    assert "draft_tokens" not in message.usage.model_dump()
