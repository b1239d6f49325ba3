"""OpenAI's Responses API, through real HTTP with the official `openai` client's
`client.responses` (and httpx where a test needs the raw events)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from .served import CALL_TEXT, CONTEXT, KEY, MAX_TOKENS_CAP, MODEL, WEATHER_TOOL, Served

TOOL = {"type": "function", **WEATHER_TOOL["function"]}


@pytest.fixture(scope="module")
def served(module_server) -> Served:
    return module_server(max_context=CONTEXT, max_tokens_cap=MAX_TOKENS_CAP, cache_bytes=64 << 20)


@pytest.fixture
def client(served) -> openai.OpenAI:
    return served.client()


def test_text_input_gives_an_output_message_with_usage(client, served, tiny_model):
    served.engine.cache.clear()
    response = client.responses.create(
        model=MODEL, input="Hello there", instructions="Be brief.", max_output_tokens=8
    )
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete") and response.model == MODEL
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"
    assert response.output_text == message.content[0].text
    expected = tiny_model.prompt_tokens(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    )
    assert response.usage.input_tokens == len(expected)
    assert 0 < response.usage.output_tokens <= 8
    assert response.usage.total_tokens == len(expected) + response.usage.output_tokens
    if response.status == "incomplete":
        assert response.incomplete_details.reason == "max_output_tokens"


def test_input_items_and_sampling_reach_the_model(served, client, script, tiny_model):
    script.reply("ok")
    client.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {"type": "message", "role": "assistant", "content": "Salut."},
            {"role": "user", "content": "Again"},
        ],
        temperature=0.5,
        top_p=0.9,
        max_output_tokens=7,
    )
    job = served.jobs[-1]
    params = job.params
    expected = tiny_model.prompt_tokens(
        [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Salut."},
            {"role": "user", "content": "Again"},
        ]
    )
    assert job.tokens == expected and script.prompts == [expected]  # as the model saw it
    assert (params.temperature, params.top_p, params.max_tokens) == (0.5, 0.9, 7)


def collapse_deltas(types: list[str]) -> list[str]:
    """Event types with each run of text deltas counted as one."""
    return [t for i, t in enumerate(types) if not (t.endswith(".delta") and types[i - 1] == t)]


def test_the_stream_sends_the_responses_events_in_order(client, script):
    script.reply("Hello from the stream")
    with client.responses.stream(model=MODEL, input="hi") as stream:
        events = [e.type for e in stream]
        final = stream.get_final_response()
    assert events[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert set(events[4:-4]) == {"response.output_text.delta"}
    assert events[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == "Hello from the stream"
    assert final.usage.output_tokens == len(script.model.encode("Hello from the stream"))
    # create(stream=True) gives the same events, numbered in sequence (how many deltas
    # depends on how the text was batched into chunks on its way out).
    raw = list(client.responses.create(model=MODEL, input="hi", stream=True))
    assert collapse_deltas([e.type for e in raw]) == collapse_deltas(events)
    assert [e.sequence_number for e in raw] == list(range(len(raw)))


def test_a_real_stream_matches_the_whole_response(client, served):
    args = dict(model=MODEL, input="Count", max_output_tokens=10, temperature=0)
    served.engine.cache.clear()
    whole = client.responses.create(**args)
    served.engine.cache.clear()
    with client.responses.stream(**args) as stream:
        events = list(stream)
    # Cut off by max_output_tokens, a stream ends with response.incomplete (which the
    # SDK's get_final_response does not take), otherwise with response.completed.
    last = events[-1]
    assert last.type == f"response.{whole.status}"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text == last.response.output_text
    assert last.response.usage.output_tokens == whole.usage.output_tokens


def test_a_function_call_round_trip(client, script, tiny_model):
    script.reply(CALL_TEXT, when="Weather in Paris?")
    first = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[TOOL])
    message, call = first.output
    assert message.content[0].text.strip() == "Let me check."
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}

    script.reply("It is 18 degrees.", when="18 degrees")
    # Stateless: the client sends the whole conversation back.
    items = [
        {"role": "user", "content": "Weather in Paris?"},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees, sunny"},
    ]
    answer = client.responses.create(model=MODEL, input=items, tools=[TOOL], store=False)
    assert answer.output_text == "It is 18 degrees."
    prompt = script.text(script.prompts[-1])
    assert "<tool_response>\n18 degrees, sunny\n</tool_response>" in prompt
    assert '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}' in prompt

    # Stateful: previous_response_id instead of the history.
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"}
    again = client.responses.create(
        model=MODEL, previous_response_id=first.id, input=[output], tools=[TOOL]
    )
    assert again.output_text == "It is 18 degrees." and again.previous_response_id == first.id
    assert "<tool_response>\n18 degrees\n</tool_response>" in script.text(script.prompts[-1])


def test_a_streamed_function_call_arrives_as_argument_events(client, script):
    script.reply(CALL_TEXT)
    with client.responses.stream(model=MODEL, input="Weather?", tools=[TOOL]) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in events
    assert "response.function_call_arguments.done" in events
    call = final.output[-1]
    assert call.type == "function_call"
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}
    assert "tool_call" not in final.output_text


def test_a_required_tool_choice_forces_a_schema_valid_call(client):
    response = client.responses.create(
        model=MODEL, input="Rome?", tools=[TOOL], tool_choice="required", temperature=0
    )
    call = response.output[-1]
    assert call.type == "function_call"
    jsonschema.validate(json.loads(call.arguments), TOOL["parameters"])


def test_a_forced_call_with_schema_references_is_schema_valid(client):
    from .tool_cases import nested_parameters

    schema = nested_parameters(draft07=True)
    response = client.responses.create(
        model=MODEL,
        input="Order tea.",
        tools=[{"type": "function", "name": "order", "parameters": schema}],
        tool_choice={"type": "function", "name": "order"},
        max_output_tokens=200,
        temperature=0,
    )
    call = response.output[-1]
    assert call.type == "function_call" and call.name == "order"
    jsonschema.validate(json.loads(call.arguments), schema)


def test_a_forced_call_cut_off_by_max_output_tokens_is_an_incomplete_function_call(
    client, script, served
):
    # As OpenAI returns one: the function_call item, incomplete, in an incomplete response.
    # The turn the model writes: the server opens the call itself (in the prompt).
    opened = script.model.encode("<tool_call>\n")
    written = script.model.encode('{"name":"get_weather","arguments":{"city":"Pa')
    script.reply(opened + written + script.model.encode('ris","unit":"celsius"}}'))
    args = dict(
        model=MODEL,
        input="Weather in Rome?",
        tools=[TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=len(written),
    )
    response = client.responses.create(**args)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    (call,) = response.output
    assert (call.type, call.status, call.name) == ("function_call", "incomplete", "get_weather")
    assert call.arguments == '{"city":"Pa' and response.output_text == ""
    assert client.responses.retrieve(response.id).output[0].arguments == call.arguments
    events = list(client.responses.create(**args, stream=True))
    kinds = [e.type for e in events]
    assert "response.output_text.delta" not in kinds and kinds[-1] == "response.incomplete"
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert [(i.type, i.status, i.arguments) for i in done] == [
        ("function_call", "incomplete", '{"city":"Pa')
    ]
    assert events[-1].response.output[0].status == "incomplete"


def test_text_format_json_schema_gives_schema_valid_json(client, script):
    # The model would go on after the JSON; the format ends the reply there.
    script.reply('{"answer":42} is my answer.')
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=MODEL,
        input="Answer in JSON.",
        max_output_tokens=40,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema}},
    )
    assert response.status == "completed"
    assert json.loads(response.output_text) == {"answer": 42}
    assert response.text.format.type == "json_schema"


def split_pair(model) -> tuple[list[int], str]:
    """Two tokens whose text the tokenizer spells as one other token: a reply made of
    them does not come back from its text as the tokens the model sampled."""
    vocab = model.tokenizer.get_vocab()
    for spelled, merged in sorted(vocab.items(), key=lambda kv: kv[1]):
        if (
            len(spelled) == 2
            and spelled.isascii()
            and spelled.isalpha()
            and spelled[0] in vocab
            and spelled[1] in vocab
        ):
            text = model.tokenizer.decode([merged])
            if model.encode(text) == [merged]:
                return [vocab[spelled[0]], vocab[spelled[1]]], text
    raise AssertionError("the tiny vocabulary has no merged pair")


def test_previous_response_id_continues_from_the_kv_cache(client, served, script, tiny_model):
    pair, text = split_pair(tiny_model)
    served.engine.cache.clear()
    script.reply(pair, when="Say it.")  # the model replies exactly these two tokens
    first = client.responses.create(model=MODEL, input="Say it.", max_output_tokens=6)
    script.reads.clear()
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, input="Again?", max_output_tokens=3
    )
    assert first.output_text == text and first.usage.output_tokens == 2
    # The second request prefilled only its new turn: everything before it, the first
    # reply's two tokens included (its text would encode as one other token), came
    # from the cache.
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= first.usage.input_tokens + 2
    prompt = served.jobs[-1].tokens
    assert script.read_of(prompt) == second.usage.input_tokens - cached
    new_turn = script.text(prompt[cached:])
    assert "Again?" in new_turn and "Say it." not in new_turn and text not in new_turn


def test_stored_responses_can_be_retrieved_and_deleted(client):
    response = client.responses.create(model=MODEL, input="Keep me", max_output_tokens=3)
    fetched = client.responses.retrieve(response.id)
    assert fetched.id == response.id and fetched.output_text == response.output_text
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, previous_response_id=response.id, input="hi")
    assert e.value.code == "previous_response_not_found"


def test_store_false_keeps_nothing(client):
    response = client.responses.create(
        model=MODEL, input="Forget me", max_output_tokens=3, store=False
    )
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_errors_are_in_openais_shape_and_the_key_is_needed(served, client):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url, api_key="wrong", max_retries=0).responses.create(
            model=MODEL, input="hi"
        )
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="gpt-5", input="hi")
    assert e.value.code == "model_not_found"
    headers = {"Authorization": f"Bearer {KEY}"}
    for body, param in (
        ({"input": [{"type": "input_image", "image_url": "x"}]}, "input.0"),
        ({"input": "hi", "temperature": 3}, "temperature"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools.0"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, None),
    ):
        response = httpx.post(served.url + "/responses", json=body, headers=headers, timeout=30)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        if param is not None:
            assert error["param"] == param


def test_a_request_shaped_like_codexs_is_served(served, script):
    """What Codex CLI sends: long instructions, input_text parts, earlier reasoning
    items, function tools with strict, store false, include, prompt_cache_key."""
    script.reply("Listing.")
    body = {
        "model": MODEL,
        "instructions": "You are Codex, a coding agent.",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "ls"}]},
            {"type": "reasoning", "summary": [], "encrypted_content": None},
            {
                "type": "function_call",
                "name": "shell",
                "arguments": '{"command": ["ls"]}',
                "call_id": "call_1",
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "README.md"},
        ],
        "tools": [
            {
                "type": "function",
                "name": "shell",
                "description": "Runs a command.",
                "strict": False,
                "parameters": {
                    "type": "object",
                    "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                    "required": ["command"],
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": None,
        "store": False,
        "stream": True,
        "include": [],
        "prompt_cache_key": "abc",
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    response = httpx.post(served.url + "/responses", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert "event: response.completed" in response.text
    deltas = [
        json.loads(line.removeprefix("data: "))["delta"]
        for line in response.text.splitlines()
        if line.startswith("data: ") and '"response.output_text.delta"' in line
    ]
    assert "".join(deltas) == "Listing."
    prompt = script.text(script.prompts[-1])
    assert "You are Codex" in prompt and "<tool_response>\nREADME.md\n</tool_response>" in prompt
    assert '{"name": "shell", "arguments": {"command": ["ls"]}}' in prompt


def test_output_text_logprobs_come_when_included(client, served):
    args = dict(
        model=MODEL,
        input="Tell me",
        max_output_tokens=5,
        temperature=0,
        include=["message.output_text.logprobs"],
        top_logprobs=2,
    )
    served.engine.cache.clear()
    response = client.responses.create(**args)
    logprobs = response.output[0].content[0].logprobs
    assert len(logprobs) == response.usage.output_tokens
    for entry in logprobs:
        assert len(entry.top_logprobs) == 2
        assert (entry.top_logprobs[0].token, entry.top_logprobs[0].logprob) == (
            entry.token,
            entry.logprob,
        )
    joined = b"".join(bytes(e.bytes) for e in logprobs).decode("utf-8", errors="replace")
    assert joined == response.output_text
    served.engine.cache.clear()
    events = list(client.responses.create(**args, stream=True))
    deltas = [e for ev in events if ev.type == "response.output_text.delta" for e in ev.logprobs]
    assert [(e.token, e.logprob) for e in deltas] == [(e.token, e.logprob) for e in logprobs]
    plain = client.responses.create(model=MODEL, input="Tell me", max_output_tokens=2)
    assert plain.output[0].content[0].logprobs == []


def test_text_that_is_not_valid_unicode_is_400(served):
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    response = httpx.post(
        served.url + "/responses", content=b'{"input": "a\\ud800"}', headers=headers, timeout=10
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_unicode"


def test_metadata_is_held_to_openais_limits(client, served):
    fits = {f"key{i:02}".ljust(64, "k"): "v" * 512 for i in range(16)}
    response = client.responses.create(model=MODEL, input="hi", max_output_tokens=2, metadata=fits)
    assert client.responses.retrieve(response.id).metadata == fits
    for metadata, param, code, words in (
        (
            {f"k{i}": "v" for i in range(17)},
            "metadata",
            "object_above_max_properties",
            "Invalid 'metadata': too many properties. Expected an object with at most 16 "
            "properties, but got an object with 17 properties instead.",
        ),
        ({"k" * 65: "v"}, "metadata", "string_above_max_length", "key too long"),
        (
            {"note": "v" * 513},
            "metadata.note",
            "string_above_max_length",
            "Invalid 'metadata.note': string too long. Expected a string with maximum length "
            "512, but got a string with length 513 instead.",
        ),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model=MODEL, input="hi", metadata=metadata)
        assert e.value.code == code and e.value.param == param
        assert words in e.value.message


def test_the_store_is_bounded_in_bytes_and_keeps_what_get_returns(serve):
    served = serve(key=None, max_context=CONTEXT, cache_bytes=0)
    store = served.app.state.responses
    store.max_bytes = 40_000
    client = served.client()
    tool = dict(TOOL, description="Weather, told at length. " * 40)
    made = [
        client.responses.create(
            model=MODEL,
            input=f"question {i}",
            tools=[tool],
            metadata={"n": str(i)},
            max_output_tokens=2,
        )
        for i in range(16)
    ]
    assert store.bytes <= store.max_bytes and 1 < len(store) < len(made)
    newest = served.get(f"/v1/responses/{made[-1].id}").json()
    assert newest == made[-1].model_dump(mode="json", exclude_unset=True)
    assert newest["tools"][0]["description"] == tool["description"]
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve(made[0].id)  # the oldest made room
    assert "dropped to make room" in e.value.message
    # The stored conversation still continues, token for token.
    follow = client.responses.create(
        model=MODEL, previous_response_id=made[-1].id, input="and then?", max_output_tokens=2
    )
    assert follow.status in ("completed", "incomplete")
    # One response larger than the whole store is answered, not kept.
    store.max_bytes = 1_000
    big = client.responses.create(model=MODEL, input="hi", tools=[tool], max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(big.id)
    assert store.bytes <= 40_000
