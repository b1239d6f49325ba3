"""Anthropic's Messages API, through real HTTP with the official `anthropic` SDK (and httpx
where a test sends what the SDK never would)."""

from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import pytest

from .served import (
    CALL_TEXT,
    CONTEXT,
    KEY,
    MAX_BODY,
    MAX_TOKENS_CAP,
    MODEL,
    WEATHER_TOOL,
    Served,
)

TOOL = {
    "name": "get_weather",
    "description": WEATHER_TOOL["function"]["description"],
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def served(module_server) -> Served:
    return module_server(
        max_context=CONTEXT,
        max_tokens_cap=MAX_TOKENS_CAP,
        cache_bytes=64 << 20,
        app={"max_body_bytes": MAX_BODY},
    )


@pytest.fixture
def client(served) -> anthropic.Anthropic:
    # What ANTHROPIC_BASE_URL / ANTHROPIC_API_KEY configure: the key goes as x-api-key.
    return anthropic.Anthropic(base_url=served.base, api_key=KEY, max_retries=0, timeout=60)


def post(served, path: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(served.base + path, json=body, headers=headers, timeout=60)


def test_a_message_comes_back_as_text_blocks_with_usage(client, tiny_model, served):
    served.engine.cache.clear()
    messages = [{"role": "user", "content": "Hello there"}]
    reply = client.messages.create(
        model=MODEL, max_tokens=8, messages=messages, system="Be brief.", extra_body=GREEDY
    )
    assert reply.type == "message" and reply.role == "assistant" and reply.model == MODEL
    assert reply.id.startswith("msg_")
    assert [b.type for b in reply.content] in (["text"], [])
    assert reply.stop_reason in ("end_turn", "max_tokens")
    expected = tiny_model.prompt_tokens([{"role": "system", "content": "Be brief."}, *messages])
    assert reply.usage.input_tokens + reply.usage.cache_read_input_tokens == len(expected)
    assert 0 < reply.usage.output_tokens <= 8


def test_system_blocks_turns_and_sampling_reach_the_model(served, client, script, tiny_model):
    script.reply("ok")
    client.messages.create(
        model=MODEL,
        max_tokens=5,
        system=[{"type": "text", "text": "You are terse."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Again"},
        ],
        # This SDK version leaves sampling out of its signature: extra_body sends it.
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 7},
        stop_sequences=["END"],
    )
    job = served.jobs[-1]
    params = job.params
    expected = tiny_model.prompt_tokens(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Again"},
        ]
    )
    assert job.tokens == expected and script.prompts == [expected]  # as the model saw it
    assert (params.temperature, params.top_p, params.top_k) == (0.5, 0.9, 7)
    assert params.max_tokens == 5 and params.stop == ("END",)


def test_the_stream_follows_anthropics_event_sequence(client, script, served):
    script.reply("Hello from the stream")
    with client.messages.stream(
        model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    sdk = [e for e in events if e not in ("text", "input_json")]  # the SDK's own extras
    assert sdk[:2] == ["message_start", "content_block_start"]  # it drops pings
    assert sdk[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(sdk[2:-3]) == {"content_block_delta"}
    assert final.content[0].text == "Hello from the stream"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(served.engine.model.encode("Hello from the stream"))
    # On the wire: each event's name is its data's type, and a ping follows message_start.
    body = {"model": MODEL, "max_tokens": 20, "stream": True, "messages": [user_hi()]}
    text = post(served, "/v1/messages", body, **{"x-api-key": KEY}).text
    frames = [f.split("\n") for f in text.strip().split("\n\n")]
    names = [f[0].removeprefix("event: ") for f in frames]
    assert all(
        json.loads(f[1].removeprefix("data: "))["type"] == n
        for f, n in zip(frames, names, strict=True)
    )
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-1] == "message_stop"


def user_hi() -> dict:
    return {"role": "user", "content": "hi"}


def test_a_real_stream_matches_the_whole_reply(client, served):
    args = dict(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "Count"}])
    served.engine.cache.clear()
    whole = client.messages.create(**args, extra_body=GREEDY)
    served.engine.cache.clear()
    with client.messages.stream(**args, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(b.text for b in whole.content)
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_a_tool_round_trip_uses_tool_use_and_tool_result_blocks(client, script, tiny_model):
    script.reply(CALL_TEXT, when="Weather in Paris?")
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    reply = client.messages.create(model=MODEL, max_tokens=50, tools=[TOOL], messages=messages)
    assert reply.stop_reason == "tool_use"
    text, use = reply.content
    assert text.type == "text" and text.text.strip() == "Let me check."
    assert use.type == "tool_use" and use.name == "get_weather" and use.id.startswith("toolu_")
    assert use.input == {"city": "Paris", "unit": "celsius"}

    script.reply("It is 18 degrees.", when="18 degrees, sunny")
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in reply.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees, sunny"}
            ],
        },
    ]
    answer = client.messages.create(model=MODEL, max_tokens=50, tools=[TOOL], messages=messages)
    assert answer.content[0].text == "It is 18 degrees." and answer.stop_reason == "end_turn"
    prompt = tiny_model.tokenizer.decode(script.prompts[-1])
    assert "<tool_response>\n18 degrees, sunny\n</tool_response>" in prompt
    assert '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}' in prompt


def test_a_streamed_tool_use_arrives_as_input_json_deltas(client, script):
    script.reply(CALL_TEXT)
    with client.messages.stream(
        model=MODEL,
        max_tokens=50,
        tools=[TOOL],
        messages=[{"role": "user", "content": "Weather?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[-1].type == "tool_use"
    assert final.content[-1].input == {"city": "Paris", "unit": "celsius"}
    assert "tool_call" not in final.content[0].text


@pytest.mark.parametrize(
    "choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}], ids=["any", "tool"]
)
def test_a_forced_tool_choice_gives_a_schema_valid_tool_use(client, choice):
    reply = client.messages.create(
        model=MODEL,
        max_tokens=60,
        tools=[TOOL],
        tool_choice=choice,
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        extra_body=GREEDY,
    )
    assert reply.stop_reason == "tool_use"
    use = reply.content[-1]
    assert use.name == "get_weather" and set(use.input) == {"city", "unit"}


def test_a_forced_tool_use_with_schema_references_is_schema_valid(client):
    from .tool_cases import nested_parameters

    schema = nested_parameters()
    reply = client.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[{"name": "order", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "order"},
        messages=[{"role": "user", "content": "Order tea."}],
        extra_body=GREEDY,
    )
    use = reply.content[-1]
    assert reply.stop_reason == "tool_use" and use.name == "order"
    jsonschema.validate(use.input, schema)


def test_a_forced_tool_use_cut_off_by_max_tokens_is_the_tool_use_so_far(client, script):
    # As Anthropic returns one: the tool_use block, stop_reason "max_tokens".
    # The turn the model writes: the server opens the call itself (in the prompt).
    opened = script.model.encode("<tool_call>\n")
    written = script.model.encode('{"name":"get_weather","arguments":{"city":"Paris","unit":"cel')
    script.reply(opened + written + script.model.encode('sius"}}'))
    args = dict(
        model=MODEL,
        max_tokens=len(written),
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Rome?"}],
    )
    reply = client.messages.create(**args)
    assert reply.stop_reason == "max_tokens"
    (use,) = reply.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.id.startswith("toolu_")
    assert use.input == {"city": "Paris"}  # what is complete so far
    with client.messages.stream(**args) as stream:
        events = list(stream)
        final = stream.get_final_message()
    deltas = [e.delta.partial_json for e in events if e.type == "content_block_delta"]
    assert deltas == ['{"city":"Paris","unit":"cel']  # as written
    assert final.stop_reason == "max_tokens"
    assert [(b.type, b.name) for b in final.content] == [("tool_use", "get_weather")]
    assert all("name" not in getattr(b, "text", "") for b in final.content)


def test_a_stop_sequence_is_named_in_the_reply(client, script):
    script.reply("Half way. END and then more")
    reply = client.messages.create(
        model=MODEL,
        max_tokens=30,
        stop_sequences=["END"],
        messages=[{"role": "user", "content": "x"}],
    )
    assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == "END"
    assert reply.content[0].text == "Half way. "


def test_output_config_json_schema_gives_schema_valid_json(client, script):
    # The model would go on after the JSON; the format ends the reply there.
    script.reply('{"answer":42} is my answer.')
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    reply = client.messages.create(
        model=MODEL,
        max_tokens=40,
        messages=[{"role": "user", "content": "Answer in JSON."}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
        extra_body=GREEDY,
    )
    assert reply.stop_reason == "end_turn"
    assert json.loads(reply.content[0].text) == {"answer": 42}


def test_count_tokens_counts_the_prompt(client, tiny_model):
    messages = [{"role": "user", "content": "How many tokens?"}]
    counted = client.messages.count_tokens(model=MODEL, messages=messages, system="Sys")
    system = [{"role": "system", "content": "Sys"}]
    assert counted.input_tokens == len(tiny_model.prompt_tokens(system + messages))


def test_the_key_goes_as_x_api_key_or_bearer(served):
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    assert post(served, "/v1/messages", body, **{"x-api-key": KEY}).status_code == 200
    assert post(served, "/v1/messages", body, authorization=f"Bearer {KEY}").status_code == 200
    for headers in ({"x-api-key": "wrong"}, {}, {"authorization": "Bearer wrong"}):
        response = post(served, "/v1/messages", body, **headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=served.base, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}]
        )


def assert_anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind and "Traceback" not in body["error"]["message"]
    return body["error"]["message"]


def test_errors_come_in_anthropics_shape(served, client):
    key = {"x-api-key": KEY}
    hi = [{"role": "user", "content": "hi"}]
    # No max_tokens, a bad temperature, an image block, malformed JSON, too big a body.
    message = assert_anthropic_error(
        post(served, "/v1/messages", {"model": MODEL, "messages": hi}, **key),
        400,
        "invalid_request_error",
    )
    assert "max_tokens" in message
    body = {"model": MODEL, "max_tokens": 2, "messages": hi, "temperature": 1.5}
    assert_anthropic_error(post(served, "/v1/messages", body, **key), 400, "invalid_request_error")
    image = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}]
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": image}]}
    message = assert_anthropic_error(
        post(served, "/v1/messages", body, **key), 400, "invalid_request_error"
    )
    assert "'image'" in message
    response = httpx.post(
        served.base + "/v1/messages",
        content=b"{not json",
        headers={**key, "content-type": "application/json"},
        timeout=10,
    )
    assert_anthropic_error(response, 400, "invalid_request_error")
    big = {
        "model": MODEL,
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "x" * MAX_BODY}],
    }
    assert_anthropic_error(post(served, "/v1/messages", big, **key), 413, "request_too_large")
    body = {"model": "claude-sonnet-4-5", "max_tokens": 2, "messages": hi}
    message = assert_anthropic_error(
        post(served, "/v1/messages", body, **key), 404, "not_found_error"
    )
    assert MODEL in message
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=MODEL, max_tokens=0, messages=hi)
    assert e.value.body["error"]["type"] == "invalid_request_error"
    # The OpenAI routes keep OpenAI's shape.
    response = httpx.post(
        served.base + "/v1/chat/completions",
        json={"messages": []},
        headers={"authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert response.status_code == 400 and set(response.json()["error"]) >= {"message", "code"}


def test_an_error_mid_stream_is_an_error_event(client, script):
    script.fail(RuntimeError("secret internals"))
    hi = [{"role": "user", "content": "hi"}]
    with (
        pytest.raises(anthropic.APIStatusError) as e,
        client.messages.stream(model=MODEL, max_tokens=5, messages=hi) as stream,
    ):
        for _ in stream:
            pass
    assert "secret" not in str(e.value)


def test_a_request_shaped_like_claude_codes_is_served(served, script):
    """What Claude Code sends: ?beta=true, beta headers, cache_control everywhere,
    thinking and metadata, earlier thinking blocks, tool results as block lists."""
    script.reply("Done.")
    cache = {"type": "ephemeral"}
    body = {
        "model": MODEL,
        "max_tokens": 32,
        "stream": True,
        "system": [{"type": "text", "text": "You are a coding agent.", "cache_control": cache}],
        "tools": [dict(TOOL, cache_control=cache)],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "metadata": {"user_id": "someone"},
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Weather?", "cache_control": cache}],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Let me look.", "signature": "x"},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Oslo", "unit": "celsius"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "is_error": True,
                        "content": [{"type": "text", "text": "service down"}],
                    },
                    {"type": "text", "text": "Try again later."},
                ],
            },
        ],
    }
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "anthropic-beta": "x"}
    response = httpx.post(
        served.base + "/v1/messages?beta=true", json=body, headers=headers, timeout=60
    )
    assert response.status_code == 200, response.text
    assert "event: message_stop" in response.text
    deltas = [
        json.loads(line.removeprefix("data: "))["delta"]
        for line in response.text.splitlines()
        if line.startswith("data: ") and '"content_block_delta"' in line
    ]
    assert "".join(d["text"] for d in deltas) == "Done."
    prompt = script.text(script.prompts[-1])
    assert "<tool_response>\nError: service down\n</tool_response>" in prompt
    assert "Try again later." in prompt and "Let me look." not in prompt


def test_text_that_is_not_valid_unicode_is_400(served):
    turn = '{"role": "user", "content": "a\\ud800"}'
    body = f'{{"model": "{MODEL}", "max_tokens": 2, "messages": [{turn}]}}'.encode()
    headers = {"x-api-key": KEY, "content-type": "application/json"}
    response = httpx.post(served.base + "/v1/messages", content=body, headers=headers, timeout=10)
    assert "not valid Unicode" in assert_anthropic_error(response, 400, "invalid_request_error")
