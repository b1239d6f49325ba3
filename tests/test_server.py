"""The OpenAI-compatible server, through real HTTP: a uvicorn server on a free port in a
background thread, serving the tiny model, driven by the official `openai` client (and by
httpx where a test needs to send what that client never would)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import httpx
import jsonschema
import openai
import pytest

from qwen_mlx.runtime import stream_tokens
from qwen_mlx.server import Engine, create_app

from .helpers import SHARED_MODEL, child_env, needs_shared
from .served import (
    CALL_TEXT,
    CONTEXT,
    KEY,
    MAX_BODY,
    MAX_TOKENS_CAP,
    MODEL,
    WEATHER_TOOL,
    Served,
    all_at_once,
    user,
)


@pytest.fixture(scope="module")
def served(module_server) -> Served:
    return module_server(
        max_context=CONTEXT,
        max_tokens_cap=MAX_TOKENS_CAP,
        cache_bytes=64 << 20,
        app={"max_body_bytes": MAX_BODY},
    )


@pytest.fixture
def client(served) -> openai.OpenAI:
    return served.client()


@pytest.fixture
def no_reuse(served) -> Iterator[None]:
    """Every request prefills its whole prompt (the model then sees each one whole)."""
    pool = served.engine.cache
    budget, pool.max_bytes = pool.max_bytes, 0
    pool.clear()
    yield
    pool.max_bytes = budget


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    return error


# -- routes ----------------------------------------------------------------------------------


def test_models_lists_the_served_model(client, tiny_model):
    models = client.models.list()
    assert [m.id for m in models.data] == [tiny_model.name]
    assert client.models.retrieve(tiny_model.name).owned_by == "qwen-mlx"


def test_health_answers_without_a_key(served):
    response = httpx.get(served.url.removesuffix("/v1") + "/health", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_chat_completion_returns_a_reply_with_usage(client, tiny_model):
    reply = client.chat.completions.create(
        model=MODEL, messages=user("Hello there"), max_tokens=8, temperature=0
    )
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == tiny_model.name
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens == len(tiny_model.prompt_tokens(user("Hello there")))
    assert 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens


def test_chat_stream_matches_the_whole_reply_and_ends_with_usage(client, no_reuse):
    args = dict(
        model=MODEL, messages=user("Stream me a line"), max_tokens=12, temperature=1.0, seed=7
    )
    whole = client.chat.completions.create(**args)
    chunks = list(
        client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_completions_take_text_or_token_ids_and_stream(client, tiny_model, no_reuse):
    ids = tiny_model.encode("Once upon a time")
    by_text = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=1.0, seed=3
    )
    by_ids = client.completions.create(
        model=MODEL, prompt=ids, max_tokens=10, temperature=1.0, seed=3
    )
    assert by_text.object == "text_completion"
    assert by_text.choices[0].text == by_ids.choices[0].text
    assert by_text.usage.prompt_tokens == len(ids)
    streamed = list(
        client.completions.create(
            model=MODEL,
            prompt="Once upon a time",
            max_tokens=10,
            temperature=1.0,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == by_text.choices[0].text
    assert streamed[-1].usage.total_tokens == by_text.usage.total_tokens


def test_stop_strings_end_the_reply_before_them(client, no_reuse):
    args = dict(model=MODEL, prompt="Tell me", max_tokens=16, temperature=1.0, seed=5)
    text = client.completions.create(**args).choices[0].text
    stop = text[len(text) // 2 :][:3]
    reply = client.completions.create(**args, stop=[stop, "never there"])
    assert reply.choices[0].text == text[: text.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_sampling_fields_reach_the_model_and_max_tokens_is_capped(served, client, script):
    script.reply("ok")
    client.chat.completions.create(
        model=MODEL,
        messages=user("go"),
        max_tokens=100_000,
        temperature=0.3,
        top_p=0.5,
        seed=11,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        stop="END",
        extra_body={"top_k": 5},
    )
    client.chat.completions.create(model=MODEL, messages=user("go"), max_completion_tokens=7)
    params, second = (job.params for job in served.jobs[-2:])
    assert params.max_tokens == MAX_TOKENS_CAP
    assert (params.temperature, params.top_p, params.top_k, params.seed) == (0.3, 0.5, 5, 11)
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, 0.25)
    assert params.stop == ("END",)
    assert second.max_tokens == 7


# -- tools and JSON ---------------------------------------------------------------------------


def test_a_tool_call_in_the_reply_comes_back_as_tool_calls(client, script):
    script.reply(CALL_TEXT)
    reply = client.chat.completions.create(
        model=MODEL, messages=user("Weather in Paris?"), tools=[WEATHER_TOOL]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}


def test_a_streamed_tool_call_is_held_out_of_the_content(client, script):
    script.reply(CALL_TEXT)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=user("Weather in Paris?"), tools=[WEATHER_TOOL], stream=True
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content.strip() == "Let me check." and "tool_call" not in content
    calls = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    assert [(t.index, t.function.name) for t in calls] == [(0, "get_weather")]
    assert json.loads(calls[0].function.arguments)["city"] == "Paris"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tools_reach_the_prompt_unless_tool_choice_is_none(client, script):
    script.reply("fine")
    client.chat.completions.create(model=MODEL, messages=user("hi"), tools=[WEATHER_TOOL])
    client.chat.completions.create(
        model=MODEL, messages=user("hi"), tools=[WEATHER_TOOL], tool_choice="none"
    )
    with_tools, without = map(script.text, script.prompts)
    assert "<tools>" in with_tools and '"name": "get_weather"' in with_tools
    assert "get_weather" not in without


def test_a_client_tool_round_trip_renders_through_the_template_and_answers(client, script):
    script.reply("It is 18 degrees and sunny in Paris.", when="18 degrees")
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "unit": "celsius"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"},
    ]
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], max_tokens=32, temperature=0
    )
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == "It is 18 degrees and sunny in Paris."
    (prompt,) = map(script.text, script.prompts)
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
        "\n</tool_call>"
    ) in prompt
    assert "<tool_response>\n18 degrees, sunny\n</tool_response>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "choice", [{"type": "function", "function": {"name": "get_weather"}}, "required"]
)
def test_a_named_or_required_tool_choice_forces_a_schema_valid_call(client, choice):
    other = {"type": "function", "function": {"name": "get_time", "parameters": {}}}
    reply = client.chat.completions.create(
        model=MODEL,
        messages=user("Weather in Paris?"),
        tools=[WEATHER_TOOL] if isinstance(choice, dict) else [WEATHER_TOOL, other],
        tool_choice=choice,
        max_tokens=64,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])
    else:
        assert (call.function.name, arguments) == ("get_time", {})


@pytest.mark.parametrize("draft07", [False, True], ids=["$defs", "definitions"])
def test_a_forced_call_to_a_tool_with_schema_references_is_schema_valid(client, draft07):
    from .tool_cases import nested_parameters

    parameters = nested_parameters(draft07)
    tool = {"type": "function", "function": {"name": "order", "parameters": parameters}}
    for choice in ("required", {"type": "function", "function": {"name": "order"}}):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=user("Order tea."),
            tools=[tool, WEATHER_TOOL],
            tool_choice=choice,
            max_tokens=200,
            temperature=0,
        )
        (call,) = reply.choices[0].message.tool_calls
        if call.function.name == "order":
            jsonschema.validate(json.loads(call.function.arguments), parameters)


def test_a_tool_choice_naming_no_tool_is_400(served):
    response = served.post(
        "/chat/completions",
        json={
            "messages": user("hi"),
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "nope"}},
        },
    )
    assert assert_openai_error(response, 400)["param"] == "tool_choice"


def test_response_format_json_schema_gives_schema_valid_json(client):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 10},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=MODEL,
        messages=user("A person as JSON"),
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
        max_tokens=64,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_response_format_json_object_gives_a_json_object(client, script):
    # The model would go on writing after the object; the format ends the reply there.
    script.reply('{"name":"Ada","tags":["x"]} That is all I know.')
    reply = client.chat.completions.create(
        model=MODEL,
        messages=user("JSON please"),
        response_format={"type": "json_object"},
        max_tokens=64,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "stop"
    assert json.loads(reply.choices[0].message.content) == {"name": "Ada", "tags": ["x"]}


# -- security and limits ----------------------------------------------------------------------


def test_a_wrong_key_or_no_key_is_401(served):
    with pytest.raises(openai.AuthenticationError) as wrong:
        served.client(api_key="wrong").models.list()
    assert wrong.value.code == "invalid_api_key"
    response = httpx.get(served.url + "/models", timeout=10)
    assert_openai_error(response, 401, "invalid_api_key")
    response = served.post("/chat/completions", json={}, headers={"Authorization": "Bearer x"})
    assert_openai_error(response, 401)


def test_a_prompt_longer_than_the_context_is_400_context_length_exceeded(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=user("word " * (CONTEXT + 10)))
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=list(range(5)) * (CONTEXT // 5 + 1))
    assert e.value.code == "context_length_exceeded"


def test_malformed_json_is_400_in_openai_shape(served):
    response = served.post(
        "/chat/completions",
        content=b'{"messages": [{"role": "user", "content": "hi"}',
        headers={"Content-Type": "application/json"},
    )
    assert_openai_error(response, 400, "invalid_json")
    response = served.post("/chat/completions", json=[1, 2])
    assert "must be a JSON object" in assert_openai_error(response, 400)["message"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_json_body_is_read_whatever_its_content_type_says(served, content_type):
    # As OpenAI's, Anthropic's and Ollama's own servers read it (litellm sends none).
    headers = {"Content-Type": content_type} if content_type else {}
    ollama = {"messages": user("hi"), "stream": False, "options": {"num_predict": 2}}
    for path, body in (
        ("/v1/chat/completions", {"messages": user("hi"), "max_tokens": 2}),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 2}),
        ("/v1/responses", {"input": "hi", "max_output_tokens": 2}),
        ("/v1/messages", {"model": MODEL, "max_tokens": 2, "messages": user("hi")}),
        ("/api/chat", ollama),
    ):
        url = served.url.removesuffix("/v1") + path
        response = httpx.post(
            url, content=json.dumps(body), headers={"Authorization": f"Bearer {KEY}", **headers}
        )
        assert response.status_code == 200, (path, response.text)
    # A body that is not JSON is still a clear 400, whatever it claims to be.
    response = served.post("/chat/completions", content=b"messages=hi", headers=headers)
    assert "not valid JSON" in assert_openai_error(response, 400, "invalid_json")["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": user("hi"), "temperature": "hot"}, "temperature"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": user("hi"), "max_tokens": 0}, "max_tokens"),
        ({"messages": user("hi"), "n": 2}, "n"),
        ({"messages": user("hi"), "top_p": 1.5}, "top_p"),
        ({"messages": user("hi"), "stop": 5}, "stop"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content",
        ),
    ],
)
def test_bad_fields_are_400_in_openai_shape_naming_the_field(served, body, param):
    error = assert_openai_error(served.post("/chat/completions", json=body), 400)
    assert error["param"] == param


def test_an_invalid_json_schema_or_token_id_is_400(served):
    bad_schema = {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}
    response = served.post(
        "/chat/completions", json={"messages": user("hi"), "response_format": bad_schema}
    )
    assert_openai_error(response, 400)
    response = served.post("/completions", json={"prompt": [1, 10**9]})
    assert assert_openai_error(response, 400)["param"] == "prompt"


def test_a_body_over_the_limit_is_413(served):
    response = served.post("/chat/completions", json={"messages": user("x" * MAX_BODY)})
    assert_openai_error(response, 413, "request_too_large")

    def chunked():  # no Content-Length: counted as it arrives
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"x" * 1024
        yield b'"}]}'

    response = served.post("/chat/completions", content=chunked())
    assert_openai_error(response, 413, "request_too_large")


def test_an_unknown_route_is_404_in_openai_shape(served):
    assert_openai_error(served.post("/embeddings", json={}), 404)


def test_an_internal_error_is_a_generic_500_without_details(served, script):
    script.fail(RuntimeError("secret internals"))
    response = served.post("/chat/completions", json={"messages": user("hi")})
    error = assert_openai_error(response, 500)
    assert "secret" not in response.text and error["type"] == "server_error"
    stream = served.post("/chat/completions", json={"messages": user("hi"), "stream": True})
    assert '"server_error"' in stream.text and "secret" not in stream.text


# -- first contact: what a red-team run found -------------------------------------------------


def test_a_top_k_beyond_the_vocabulary_breaks_no_later_request(client, no_reuse):
    vocab = 100_000  # the tiny model has 576 tokens; mlx-lm refused this and broke sampling
    for api in ("chat", "completions"):
        if api == "chat":
            reply = client.chat.completions.create(
                model=MODEL,
                messages=user("Hello"),
                max_tokens=4,
                temperature=1.0,
                extra_body={"top_k": vocab},
            )
        else:
            reply = client.completions.create(
                model=MODEL,
                prompt="Hello",
                max_tokens=4,
                temperature=1.0,
                extra_body={"top_k": vocab},
            )
        assert reply.choices[0].finish_reason in ("stop", "length")
        # Sampled requests after it, unseeded, still work.
        for _ in range(2):
            later = client.chat.completions.create(
                model=MODEL, messages=user("Again"), max_tokens=4, temperature=1.0
            )
            assert later.usage.completion_tokens > 0


@pytest.fixture
def encoded(served, monkeypatch) -> list[str]:
    """Every text the model's tokenizer is asked to encode during the test."""
    model = served.engine.model
    texts: list[str] = []
    real = model.encode

    def spy(text: str) -> list[int]:
        texts.append(text)
        return real(text)

    monkeypatch.setattr(model, "encode", spy)
    return texts


def test_a_prompt_far_over_the_context_is_refused_without_tokenizing_it_whole(
    served, encoded, monkeypatch
):
    monkeypatch.setattr(served.engine, "context_limit", 256)
    # More characters than 256 tokens can spell: refused before any tokenizing.
    response = served.post("/chat/completions", json={"messages": user("word " * 12_000)})
    error = assert_openai_error(response, 400, "context_length_exceeded")
    assert "at least" in error["message"] and encoded == []
    response = served.post("/completions", json={"prompt": "word " * 12_000})
    assert_openai_error(response, 400, "context_length_exceeded")
    assert encoded == []
    # Fewer characters than that (512 tokens could spell 32k), but many per token of
    # context: counted piece by piece, refused once the count is over, never tokenized whole.
    monkeypatch.setattr(served.engine, "context_limit", 512)
    long = "word " * 6_000
    response = served.post("/chat/completions", json={"messages": user(long)})
    assert_openai_error(response, 400, "context_length_exceeded")
    assert encoded and max(map(len, encoded)) < len(long) // 2
    # A prompt that fits is still tokenized and answered.
    encoded.clear()
    reply = served.post("/chat/completions", json={"messages": user("short"), "max_tokens": 2})
    assert reply.status_code == 200 and encoded


def test_the_piece_count_is_the_whole_count_for_qwen_text(tiny_model):
    from qwen_mlx.server.prepare import _count_tokens

    text = tiny_model.render(user("The river Seine, 777 km long, flows   through Paris.\n" * 900))
    assert len(text) > 3 * 8192
    assert _count_tokens(tiny_model, text, 10**9) == len(tiny_model.encode(text))


def test_a_slow_preparation_does_not_hold_up_other_requests(served, client, monkeypatch):
    model = served.engine.model
    real = model.render_tokens
    entered, release = threading.Event(), threading.Event()

    def render_tokens(messages, **kwargs):
        if any("SLOW" in m["content"] for m in messages):
            entered.set()
            assert release.wait(timeout=60), "the slow preparation was never released"
        return real(messages, **kwargs)

    monkeypatch.setattr(model, "render_tokens", render_tokens)
    slow: list = []
    waiting = threading.Thread(
        target=lambda: slow.append(
            served.post("/chat/completions", json={"messages": user("SLOW"), "max_tokens": 2})
        )
    )
    waiting.start()
    try:
        assert entered.wait(timeout=30)
        quick = client.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=2)
        assert quick.usage.completion_tokens > 0
        assert not release.is_set() and not slow  # answered while the other was preparing
    finally:
        release.set()
        waiting.join(timeout=60)
    assert slow[0].status_code == 200


# Past the digits Python converts to an int (4,300 by default; lowered to its least, 640,
# while these tests run, so the model writes 700 digits rather than 5,000).
HUGE_INT = "1" + "0" * 700


@pytest.fixture
def few_int_digits() -> Iterator[None]:
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    yield
    sys.set_int_max_str_digits(before)


@pytest.mark.parametrize(
    "arguments",
    [f'{{"city": {HUGE_INT}}}', '{"city": NaN}', '{"city": "Oslo", "days": Infinity}'],
)
def test_a_call_with_numbers_json_cannot_carry_is_dropped_not_a_500(
    roomy, script, few_int_digits, arguments
):
    call = f'{{"name": "get_weather", "arguments": {arguments}}}'
    script.reply(f"Hm. <tool_call>\n{call}\n</tool_call>")  # whole: only its numbers are wrong
    body = {"messages": user("Weather?"), "tools": [WEATHER_TOOL], "max_tokens": 1000}
    response = roomy.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] == "stop"
    message = response.json()["choices"][0]["message"]
    assert message["content"] == "Hm." and "tool_calls" not in message
    assert "NaN" not in response.text and "Infinity" not in response.text
    stream = roomy.post("/chat/completions", json={**body, "stream": True})
    assert stream.status_code == 200 and '"error"' not in stream.text
    assert stream.text.rstrip().endswith("data: [DONE]")


def test_tool_calls_are_found_off_the_event_loop(served, client, script, monkeypatch):
    import qwen_mlx.server.reply as reply_module

    threads: set[str] = set()
    real_feed, real_parse = reply_module.CallFilter.feed, reply_module.parse_tool_calls

    def feed(self, text):
        threads.add(threading.current_thread().name)
        return real_feed(self, text)

    def parse(text):
        threads.add(threading.current_thread().name)
        return real_parse(text)

    monkeypatch.setattr(reply_module.CallFilter, "feed", feed)
    monkeypatch.setattr(reply_module, "parse_tool_calls", parse)
    script.reply(CALL_TEXT)
    for stream in (False, True):
        reply = client.chat.completions.create(
            model=MODEL, messages=user("Weather?"), tools=[WEATHER_TOOL], stream=stream
        )
        if stream:
            list(reply)
    assert threads and served.thread.name not in threads  # the server's thread runs the loop


def compact(arguments: str) -> str:
    """Arguments as the call's grammar has the model write them (compact JSON)."""
    return json.dumps(json.loads(arguments), separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("max_tokens", [3, 24])  # cut inside the name; inside the arguments
def test_a_forced_call_cut_off_by_max_tokens_comes_back_as_the_call_so_far(
    client, no_reuse, max_tokens
):
    # As OpenAI returns one: the tool call with its arguments as far as they were
    # written, finish_reason "length"; never our call wrapper as text.
    args = dict(
        model=MODEL,
        messages=user("Weather in Paris?"),
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
    )
    whole = client.chat.completions.create(**args, max_tokens=64).choices[0].message
    written = compact(whole.tool_calls[0].function.arguments)
    reply = client.chat.completions.create(**args, max_tokens=max_tokens)
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    partial = call.function.arguments
    assert written.startswith(partial) and len(partial) < len(written)
    assert bool(partial) == (max_tokens > 20)
    assert '"name"' not in partial and "tool_call" not in partial
    chunks = list(client.chat.completions.create(**args, max_tokens=max_tokens, stream=True))
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    (streamed,) = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert (streamed.function.name, streamed.function.arguments) == ("get_weather", partial)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_call_the_model_opens_and_max_tokens_cuts_is_content(served, script):
    written = script.model.encode('Checking. <tool_call>{"name": "get_w')
    script.reply(written + script.model.encode('eather", "arguments": {}}</tool_call>'))
    body = {"messages": user("Weather?"), "tools": [WEATHER_TOOL], "max_tokens": len(written)}
    choice = served.post("/chat/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == 'Checking. <tool_call>{"name": "get_w'
    stream = served.post("/chat/completions", json={**body, "stream": True}).text
    deltas = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: {")]
    text = "".join(d["choices"][0]["delta"].get("content") or "" for d in deltas)
    assert text == choice["message"]["content"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/chat/completions", '{"messages": [{"role": "user", "content": "a\\ud800"}]}', None),
        ("/completions", '{"prompt": "x\\udfff y"}', "prompt"),
        (
            "/chat/completions",
            '{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
            '"function": {"name": "f", "parameters": {"type": "object", "properties": '
            '{"\\udc80": {}}}}}]}',
            "tools.0.function.parameters.properties",
        ),
    ],
)
def test_text_that_is_not_valid_unicode_is_400(served, path, body, param):
    response = served.post(path, content=body, headers={"Content-Type": "application/json"})
    error = assert_openai_error(response, 400, "invalid_unicode")
    assert error["param"] == (param or "messages.0.content")
    assert "not valid Unicode" in error["message"]
    raw = '{"prompt": "a\xed\xa0\x80b"}'.encode("latin-1")  # a surrogate encoded in UTF-8 bytes
    response = served.post(
        "/completions", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400


@pytest.fixture(scope="module")
def roomy(module_server) -> Served:
    """A server taking bodies up to the default 16 MiB, for requests built to be slow."""
    return module_server(max_context=CONTEXT, cache_bytes=0)


def test_too_many_messages_blocks_or_tools_are_refused_before_any_work_on_every_protocol(
    roomy, tiny_model, monkeypatch
):
    import anthropic
    import ollama

    rendered: list = []
    real_render = type(tiny_model)._apply_template  # every render of a chat template
    monkeypatch.setattr(
        type(tiny_model),
        "_apply_template",
        lambda self, *a, **k: rendered.append(1) or real_render(self, *a, **k),
    )
    base = roomy.url.removesuffix("/v1")
    one = {"role": "user", "content": "x"}
    many = [one] * 10_001
    blocks = [{"role": "user", "content": [{"type": "text", "text": "x"}] * 10_001}]
    tools = [WEATHER_TOOL] * 1_001

    def refused(error, limit: str) -> None:
        message = str(error)
        assert "Expected a" in message and limit in message, message

    openai_client = roomy.client()
    anthropic_client = anthropic.Anthropic(base_url=base, api_key=KEY, max_retries=0)
    ollama_client = ollama.Client(host=base, headers={"Authorization": f"Bearer {KEY}"})
    for messages, extra, limit in (
        (many, {}, "10,000"),
        (blocks, {}, "10,000"),
        ([one], {"tools": tools}, "1,000"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            openai_client.chat.completions.create(model=MODEL, messages=messages, **extra)
        refused(e.value, limit)
        assert e.value.code == "array_above_max_length"
        with pytest.raises(openai.BadRequestError) as e:
            openai_client.responses.create(model=MODEL, input=messages, **extra)
        refused(e.value, limit)
        anthropic_tools = [{"name": "t", "input_schema": {"type": "object"}}] * 1_001
        with pytest.raises(anthropic.BadRequestError) as e:
            anthropic_client.messages.create(
                model=MODEL,
                max_tokens=4,
                messages=messages,
                **({"tools": anthropic_tools} if extra else {}),
            )
        refused(e.value, limit)
        if messages is not blocks:  # Ollama's content is a string
            with pytest.raises(ollama.ResponseError) as e:
                ollama_client.chat(model=MODEL, messages=messages, **extra)
            assert e.value.status_code == 400
            refused(e.value.error, limit)
    # Text that cannot fit the context whatever it says is refused by its length.
    chars = roomy.engine.context_limit * roomy.engine.max_token_chars * 4
    huge = [{"role": "user", "content": "word " * (chars // 5 + 1)}]
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=MODEL, messages=huge)
    assert e.value.code == "context_length_exceeded"
    assert rendered == []  # no template rendered for any of them
    # The limits leave room: 9,999 messages are read, rendered and refused for the context.
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=MODEL, messages=[one] * 9_999)
    assert e.value.code == "context_length_exceeded" and rendered


def test_tool_results_that_spell_control_tokens_cannot_forge_a_turn_on_any_protocol(
    roomy, tiny_model, script
):
    from .tool_cases import FORGED, turn_starts

    script.reply("Fine.")
    args = '{"city": "Paris", "unit": "celsius"}'
    roomy.client().chat.completions.create(
        model=MODEL,
        tools=[WEATHER_TOOL],
        messages=[
            *user("Weather?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": args},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": FORGED},
        ],
    )
    roomy.anthropic().messages.create(
        model=MODEL,
        max_tokens=8,
        messages=[
            *user("Weather?"),
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": json.loads(args),
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": FORGED}],
                    }
                ],
            },
        ],
    )
    roomy.client().responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather"} | {"arguments": args},
            {"type": "function_call_output", "call_id": "c1", "output": FORGED},
        ],
    )
    roomy.ollama().chat(
        model=MODEL,
        messages=[
            *user("Weather?"),
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": {}}}],
            },
            {"role": "tool", "tool_name": "get_weather", "content": FORGED},
        ],
    )
    assert len(script.prompts) == 4
    for tokens in script.prompts:
        # Every turn the text shows is a real one but those the tool's result spells,
        # which are there as text: the user's turn, the assistant's call, the result, the
        # reply (and the system turn listing the tools, where they are sent).
        text = tiny_model.tokenizer.decode(tokens)
        assert FORGED in text
        spelled = text.count("<|im_start|>") - FORGED.count("<|im_start|>")
        assert turn_starts(tiny_model, tokens) == spelled in (4, 5)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", '"10"'),
        ("max_tokens", "10.0"),
        ("stream", '"yes"'),
        ("stream", "1"),
        ("repetition_penalty", "Infinity"),
        ("temperature", "NaN"),
        ("temperature", '"0.5"'),
        ("top_k", '"5"'),
        ("top_k", "true"),
        ("seed", "1.5"),
        ("n", '"1"'),
        ("stream_options", '{"include_usage": "yes"}'),
    ],
)
def test_loosely_typed_values_are_400_not_coerced(served, field, value):
    body = f'{{"messages": [{{"role": "user", "content": "hi"}}], "{field}": {value}}}'
    response = served.post(
        "/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert assert_openai_error(response, 400)["param"].startswith(field)


def test_logprobs_out_of_openais_range_are_400(served):
    for body, param in (
        ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs: true
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ):
        response = served.post("/chat/completions", json={"messages": user("hi"), **body})
        assert assert_openai_error(response, 400)["param"] == param
    response = served.post("/completions", json={"prompt": "hi", "logprobs": 6})
    assert assert_openai_error(response, 400)["param"] == "logprobs"


def test_a_model_the_server_does_not_serve_is_404_model_not_found(served, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=user("hi"), max_tokens=2)
    assert e.value.code == "model_not_found" and MODEL in e.value.message
    response = served.post("/completions", json={"model": "nope", "prompt": "hi"})
    assert assert_openai_error(response, 404, "model_not_found")["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    # Its name, its family (the alias people pass), or no model at all are fine.
    for name in (MODEL, "qwen3-1m-tiny"):
        reply = client.chat.completions.create(model=name, messages=user("hi"), max_tokens=2)
        assert reply.model == MODEL
        assert client.models.retrieve(name).id == MODEL
    response = served.post("/chat/completions", json={"messages": user("hi"), "max_tokens": 2})
    assert response.status_code == 200


def test_the_engine_answers_to_the_reference_it_was_loaded_by(tiny_model):
    engine = Engine(tiny_model, aliases=["my-tiny", MODEL])
    try:
        assert engine.names == (MODEL, "qwen3-1m-tiny", "my-tiny")
        engine.check_model("my-tiny")
        engine.check_model(None)
    finally:
        engine.close()


# -- slow clients -------------------------------------------------------------------------------


@pytest.fixture
def limited(serve) -> Callable[..., int]:
    """Start a server with given connection limits; returns its port."""

    def start(*, body_timeout: float = 60.0, max_connections: int | None = None, **limits) -> int:
        app = {"body_timeout": body_timeout, "max_connections": max_connections}
        served = serve(key=None, app=app, limits=limits, max_context=CONTEXT, cache_bytes=0)
        return int(served.base.rsplit(":", 1)[1])

    return start


def closed_by_server(sock: socket.socket, within: float = 20.0) -> bytes:
    """Everything the server sends until it closes the connection (fails if it never does)."""
    sock.settimeout(within)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:  # closed with our unread request in its buffer
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {within} s")
    return received


def test_connections_that_never_finish_their_headers_are_closed(limited):
    port = limited(header_timeout=0.5)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    try:
        for i, sock in enumerate(socks):
            if i % 2:  # half send part of a request; the other half nothing at all
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ")
        for sock in socks:
            assert closed_by_server(sock) == b""
        # An answered connection kept alive, that starts its next request and stalls.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            sock.settimeout(20)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 1")
            closed_by_server(sock)
    finally:
        for sock in socks:
            sock.close()
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200


def test_a_body_that_never_arrives_is_408(limited):
    port = limited(body_timeout=0.5)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt": '
        )
        answer = closed_by_server(sock)
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer


def test_sockets_trickling_headers_never_lock_health_out(limited):
    # Far more half-open sockets than the server keeps: each new connection closes the
    # one that has waited longest for its headers, so /health always gets through.
    port = limited(max_connections=2, header_timeout=60)
    socks = []
    try:
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ")
            socks.append(sock)
        probes = [httpx.get(f"http://127.0.0.1:{port}/health", timeout=10) for _ in range(15)]
        assert [p.status_code for p in probes] == [200] * 15
        for sock in socks[:20]:  # the oldest were closed to make room, long before 60 s
            assert closed_by_server(sock, within=10) == b""
    finally:
        for sock in socks:
            sock.close()


def test_requests_past_the_limit_get_503_in_their_protocols_shape_and_reads_keep_a_reserve(
    serve, script
):
    import anthropic
    import ollama

    release = threading.Event()
    script.reply("wait for it", hold=release)  # a reply that waits to be released
    served = serve(key=None, app={"max_connections": 2}, max_context=CONTEXT, cache_bytes=0)
    base = served.base
    started = threading.Barrier(3)

    def stream() -> None:
        body = {"messages": user("hold"), "stream": True}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)  # the reply has begun: this request is in progress
            started.wait(30)
            list(lines)

    streams = [threading.Thread(target=stream) for _ in range(2)]
    try:
        for t in streams:
            t.start()
        started.wait(30)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model=MODEL, messages=user("me too"))
        assert e.value.status_code == 503 and e.value.code == "server_busy"
        assert int(e.value.response.headers["retry-after"]) >= 1
        with pytest.raises(anthropic.APIStatusError) as e:
            anthropic.Anthropic(base_url=base, api_key="x", max_retries=0).messages.create(
                model=MODEL, max_tokens=4, messages=user("me too")
            )
        assert e.value.status_code == 503 and e.value.body["error"]["type"] == "overloaded_error"
        assert int(e.value.response.headers["retry-after"]) >= 1
        with pytest.raises(ollama.ResponseError) as e:
            ollama.Client(host=base).chat(model=MODEL, messages=user("me too"))
        assert e.value.status_code == 503 and "busy" in e.value.error
        # Reads keep their reserve while generation is full.
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        assert httpx.get(f"{base}/v1/models", timeout=10).status_code == 200
    finally:
        release.set()
        for t in streams:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in streams)


def test_the_request_limit_defaults_to_what_the_engine_holds(tiny_model):
    from qwen_mlx.server.defaults import CONNECTION_HEADROOM

    engine = Engine(tiny_model, max_context=CONTEXT, max_batch=3, max_queue=5)
    try:
        app = create_app(engine)
        assert app.state.max_connections == 3 + 5 + CONNECTION_HEADROOM
        assert create_app(engine, max_connections=7).state.max_connections == 7
    finally:
        engine.close()


# -- the queue, disconnects and the prompt cache -----------------------------------------------


def test_concurrent_clients_get_the_answers_they_get_alone(served, no_reuse):
    # The random tiny model answers every greedy prompt with the same newlines, so seeded
    # sampling makes each client's answer its own: any mix-up would show.
    def ask(i: int) -> str:
        reply = served.client().chat.completions.create(
            model=MODEL, messages=user(f"Question {i}"), max_tokens=12, temperature=1.0, seed=i
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
        return reply.choices[0].message.content

    alone = [ask(i) for i in range(8)]
    assert len(set(alone)) > 4
    assert all_at_once(ask, 8) == alone


def test_greedy_answers_do_not_change_under_concurrency(served, no_reuse):
    def ask(i: int) -> str:
        return (
            served.client()
            .completions.create(model=MODEL, prompt=f"{i} apples", max_tokens=10, temperature=0)
            .choices[0]
            .text
        )

    alone = [ask(i) for i in range(4)]
    assert all_at_once(ask, 4) == alone


def endless(script) -> None:
    """A model that would write "tick " until max_tokens, 20 ms a token, unless stopped."""
    script.reply("tick ", repeat=True)
    script.delay = 0.02


def test_a_client_disconnecting_mid_stream_stops_its_generation(client, served, script):
    endless(script)
    before = len(served.engine.finished)
    stream = client.chat.completions.create(model=MODEL, messages=user("go on"), stream=True)
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    done = served.wait_for_finish(before)
    assert done.finish_reason == "cancelled"
    assert done.completion_tokens < MAX_TOKENS_CAP
    assert served.engine.queued == 0


def test_a_client_leaving_a_plain_request_stops_its_generation(served, script):
    endless(script)
    before = len(served.engine.finished)
    with pytest.raises(httpx.ReadTimeout):
        served.post("/chat/completions", json={"messages": user("go on")}, timeout=0.5)
    done = served.wait_for_finish(before)
    assert done.finish_reason == "cancelled" and done.completion_tokens < MAX_TOKENS_CAP


def test_a_growing_conversation_prefills_only_what_is_new(served, client, script):
    system = {"role": "system", "content": "You are a terse assistant for prefix tests."}
    first = [system, *user("Name three rivers.")]
    r1 = client.chat.completions.create(model=MODEL, messages=first, max_tokens=8, temperature=0)
    other = [system, *user("Something else entirely, please.")]  # shares only the system turn
    client.chat.completions.create(model=MODEL, messages=other, max_tokens=8, temperature=0)
    second = [
        *first,
        {"role": "assistant", "content": r1.choices[0].message.content},
        *user("And three mountains?"),
    ]
    script.reads.clear()
    r2 = client.chat.completions.create(model=MODEL, messages=second, max_tokens=8, temperature=0)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached >= r1.usage.prompt_tokens
    # What the model read of the prompt: only what the pooled cache did not hold.
    assert script.read_of(served.jobs[-1].tokens) == r2.usage.prompt_tokens - cached
    # Only the reply and the new user turn were read: less than the whole second prompt
    # minus the first one.
    assert r2.usage.prompt_tokens - cached <= r2.usage.prompt_tokens - r1.usage.prompt_tokens


def test_the_cache_pool_stays_within_its_byte_budget(served, client):
    pool = served.engine.cache
    budget = pool.max_bytes
    pool.clear()
    client.completions.create(model=MODEL, prompt="0 pears " * 5, max_tokens=10)
    one = pool.bytes  # what one short request's cache really holds
    assert len(pool) == 1 and one > 0
    pool.max_bytes = one * 3 // 2
    try:
        for i in range(1, 6):
            client.completions.create(model=MODEL, prompt=f"{i} apples " * 5, max_tokens=10)
            assert pool.bytes <= pool.max_bytes
            assert len(pool) == 1  # room for one, never two
    finally:
        pool.max_bytes = budget


@needs_shared
def test_client_tool_messages_render_through_the_real_qwen_template():
    from transformers import AutoTokenizer

    from qwen_mlx.server import ChatRequest
    from qwen_mlx.server.protocols.openai.translate import _template_message

    request = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"},
            ]
        }
    )
    messages = [_template_message(m, i) for i, m in enumerate(request.messages)]
    text = AutoTokenizer.from_pretrained(SHARED_MODEL).apply_chat_template(
        messages, tools=[WEATHER_TOOL], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nWeather in Paris?<|im_end|>" in text
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}\n</tool_call><|im_end|>'
    ) in text
    assert "<|im_start|>user\n<tool_response>\n18 degrees\n</tool_response><|im_end|>" in text


# -- the prompt cache pool ---------------------------------------------------------------------


def filled_cache(model, tokens: list[int]) -> tuple[list, list[int]]:
    """A real KV cache after a short greedy reply to `tokens`, and the ids it holds."""
    from qwen_mlx.runtime import SamplingParams, make_cache

    cache, held = make_cache(model), list(tokens)
    params = SamplingParams(temperature=0, max_tokens=4)
    list(stream_tokens(model, tokens, params, prompt_cache=cache, on_token=held.append))
    return cache, held


def test_the_pool_moves_a_conversation_on_and_copies_for_a_branch(tiny_model):
    from qwen_mlx.runtime import cache_length, make_cache
    from qwen_mlx.server.cache_pool import PromptCachePool

    pool = PromptCachePool(lambda: make_cache(tiny_model), 10_000_000)
    prompt = tiny_model.prompt_tokens(user("The first conversation"))
    cache, held = filled_cache(tiny_model, prompt)
    pool.checkin(cache, held, len(prompt))

    branch = tiny_model.prompt_tokens(user("Another one"))
    shared = next(i for i, (a, b) in enumerate(zip(prompt, branch, strict=False)) if a != b)
    copy = pool.checkout(branch)
    assert copy.reused == shared and cache_length(copy.cache) == shared
    assert len(pool) == 1 and cache_length(cache) == len(held)  # the original is untouched

    follow_up = [*held, *tiny_model.encode("more")]
    moved_on = pool.checkout(follow_up)
    assert moved_on.reused == len(held) and moved_on.cache is cache
    assert len(pool) == 0


def test_the_pool_evicts_least_recently_used_and_redundant_entries():
    from qwen_mlx.server.cache_pool import PromptCachePool

    pool = PromptCachePool(list, max_bytes=50, measure=lambda cache: len(cache[0]))
    pool.checkin(["a" * 20], [1] * 10, 5)
    pool.checkin(["b" * 20], [2] * 10, 5)
    pool.checkin(["c" * 20], [3] * 10, 5)  # 60 bytes: the oldest goes
    assert pool.tokens == 20 and pool.bytes == 40
    pool.checkin(["d" * 24], [3] * 12, 5)  # holds all that "c" held, and more
    assert pool.tokens == 22 and pool.bytes == 44
    pool.checkin(["e" * 60], [4] * 30, 5)  # larger than the whole budget: not kept
    assert pool.tokens == 22
    pool.shrink(24)
    assert pool.tokens == 12 and pool.bytes == 24


def test_the_pool_counts_the_bytes_a_cache_really_holds(tiny_model):
    from qwen_mlx.runtime import make_cache
    from qwen_mlx.server.cache_pool import PromptCachePool

    pool = PromptCachePool(lambda: make_cache(tiny_model), 10_000_000)
    prompt = tiny_model.prompt_tokens(user("Count me"))
    cache, held = filled_cache(tiny_model, prompt)
    pool.checkin(cache, held, len(prompt))
    # MLX allocates KV caches 256 tokens at a time: a short prompt holds a full step of
    # keys and values, for every layer and KV head.
    config = tiny_model.config
    per_token = (
        config["num_hidden_layers"]
        * 2
        * config["num_key_value_heads"]
        * config["head_dim"]
        * cache[0].keys.dtype.size
    )
    assert len(held) < 256
    assert pool.bytes == 256 * per_token


# -- the command ------------------------------------------------------------------------------


def test_binding_beyond_localhost_without_a_key_warns():
    from qwen_mlx.cli.serve import bind_warning

    assert bind_warning("127.0.0.1", None) is None
    assert bind_warning("::1", None) is None
    assert bind_warning("localhost", None) is None
    assert bind_warning("0.0.0.0", "key") is None
    assert "--api-key" in bind_warning("0.0.0.0", None)


def test_a_loopback_server_answers_loopback_names_only():
    from qwen_mlx.server.net import allowed_hosts, host_of

    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("example.org") is None
    assert allowed_hosts("127.0.0.2") == ["127.0.0.1", "127.0.0.2", "[::1]", "localhost"]
    assert "[::1]" in allowed_hosts("::1") and "localhost" in allowed_hosts("localhost")
    assert host_of("[::1]:8080") == "[::1]" and host_of("LocalHost") == "localhost"
    assert host_of("127.0.0.1:80") == "127.0.0.1"
    for malformed in ("[::1]evil", "[::1]:80:90", "a.b@evil.example", "", "[::1", "x:port"):
        assert host_of(malformed) is None, malformed


def test_serve_help_shows_the_server_defaults_without_loading_fastapi():
    """The defaults are defined once (server/defaults.py); `serve --help` shows them and
    stays light."""
    code = (
        "import sys\n"
        "from qwen_mlx.cli.main import main\n"
        "try:\n"
        "    main(['serve', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('LOADED', sorted(m for m in ('fastapi', 'mlx', 'uvicorn') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=child_env()
    ).stdout
    from qwen_mlx.server import defaults

    assert f"default: {defaults.DEFAULT_MAX_TOKENS_CAP}" in out
    assert f"default: {defaults.DEFAULT_MAX_BODY_BYTES:,}" in out
    assert f"--max-batch + --max-queue + {defaults.CONNECTION_HEADROOM})" in out
    assert "LOADED []" in out


def test_a_connection_limit_below_one_is_an_error(capsys):
    from qwen_mlx.cli.serve import main

    assert main(["--max-connections", "0"]) == 1
    assert "--max-connections must be positive" in capsys.readouterr().err


def test_a_port_that_cannot_be_used_is_an_error_before_the_model_loads(tiny_mlx, capsys):
    from qwen_mlx.cli.serve import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--model", str(tiny_mlx), "--port", str(port)]) == 1
        err = capsys.readouterr().err
        assert f"Port {port} on 127.0.0.1 is in use" in err and "loading" not in err
    assert main(["--model", str(tiny_mlx), "--port", "99999"]) == 1
    assert "between 0 and 65535" in capsys.readouterr().err
    assert main(["--model", str(tiny_mlx), "--host", "no-such-host.invalid"]) == 1
    assert "not an address of this machine" in capsys.readouterr().err


def test_qwen_mlx_serve_serves_until_interrupted_and_exits_cleanly(tiny_mlx, tiny_model):
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "qwen_mlx.cli.serve", "--model", str(tiny_mlx)),
            *("--port", "0", "--log-level", "warning"),  # 0: any free port, and it says which
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        said = ""
        while "serving" not in said:
            line = proc.stderr.readline()
            assert line, f"qwen-mlx serve exited: {said}"
            said += line
        url = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", said).group(1)
        port = int(url.rsplit(":", 1)[1])
        assert port > 0
        # Once it says where, it takes connections: a client started on that line (at
        # once, as curl would be) is answered, not refused while uvicorn starts.
        with socket.create_connection(("127.0.0.1", port), timeout=60) as first:
            first.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            assert first.recv(64).startswith(b"HTTP/1.1 200")
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert client.models.list().data[0].id == tiny_model.name
        reply = client.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=4)
        assert reply.usage.completion_tokens > 0
        # Bound to loopback: a page whose domain resolves to 127.0.0.1 is turned away.
        rebound = httpx.get(url + "/v1/models", headers={"Host": f"evil.example:{port}"})
        assert rebound.status_code == 400
        assert rebound.json()["error"]["code"] == "invalid_host"
        by_name = httpx.get(f"http://localhost:{port}/v1/models")
        assert by_name.status_code == 200
        proc.send_signal(signal.SIGINT)  # and it exits cleanly after generating (MLX threads)
        assert proc.wait(timeout=30) == 0
        assert f"serving {tiny_model.name}" in said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
