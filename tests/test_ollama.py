"""Ollama's API, through real HTTP with the official `ollama` client: a uvicorn server on a
free port serving the tiny model, reached as an app configured with OLLAMA_HOST reaches it."""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import pytest

from .served import MODEL, Served

KEY = "ollama-key"
CONTEXT = 2048


def get_weather(city: str, unit: str = "celsius") -> str:
    """Current weather in a city.

    Args:
        city: The city's name.
        unit: celsius or fahrenheit.
    """
    return "sunny"


@pytest.fixture(scope="module")
def served(module_server) -> Served:
    return module_server(key=KEY, max_context=CONTEXT, max_tokens_cap=256, cache_bytes=64 << 20)


@pytest.fixture
def client(served, monkeypatch) -> ollama.Client:
    """A client configured as apps are: OLLAMA_HOST and OLLAMA_API_KEY, no arguments."""
    monkeypatch.setenv("OLLAMA_HOST", served.base)
    monkeypatch.setenv("OLLAMA_API_KEY", KEY)
    return ollama.Client(timeout=60)


def test_chat_replies_with_the_real_model_and_ollamas_counts(client):
    reply = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        options={"num_predict": 6, "temperature": 0},
        stream=False,
    )
    assert reply.done and reply.done_reason in ("stop", "length")
    assert reply.message.role == "assistant" and isinstance(reply.message.content, str)
    assert reply.model == f"{MODEL}:latest"
    assert 0 < reply.eval_count <= 6 and reply.prompt_eval_count > 0
    assert reply.total_duration > 0


def test_chat_streams_ndjson_parts_then_a_done_line(client, script):
    script.reply("Kyoto in autumn is lovely.")
    parts = list(
        client.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True)
    )
    assert "".join(p.message.content for p in parts) == "Kyoto in autumn is lovely."
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].done_reason == "stop" and parts[-1].eval_count > 0


def test_the_model_name_with_or_without_its_tag_is_accepted(client, script):
    script.reply("ok")
    for name in (MODEL, f"{MODEL}:latest"):
        assert client.chat(model=name, messages=[{"role": "user", "content": "x"}]).message
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="llama3:8b", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404 and MODEL in e.value.error


def test_options_map_onto_sampling_parameters(served, client, script):
    script.reply("fine")
    client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "x"}],
        options={
            "temperature": 0.3,
            "top_p": 0.5,
            "top_k": 7,
            "num_predict": 11,
            "stop": ["END"],
            "seed": 42,
            "repeat_penalty": 1.2,
            "num_gpu": 99,  # Ollama's runner setting: accepted, no effect
        },
        keep_alive="5m",
    )
    params = served.jobs[-1].params
    assert (params.temperature, params.top_p, params.top_k) == (0.3, 0.5, 7)
    assert (params.max_tokens, params.stop, params.seed) == (11, ("END",), 42)
    assert params.repetition_penalty == 1.2


def test_num_ctx_caps_the_reply_and_refuses_a_prompt_over_it(served, client, script):
    script.reply("fine")
    reply = client.generate(model=MODEL, prompt="Hello there", options={"num_ctx": 40})
    assert served.jobs[-1].params.max_tokens == 40 - reply.prompt_eval_count
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=MODEL, prompt="Hello there", options={"num_ctx": 5})
    assert e.value.status_code == 400 and "num_ctx" in e.value.error


def test_tool_calls_come_back_in_ollamas_shape(client, script):
    script.reply(
        'Checking.<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Kyoto", "unit": "celsius"}}\n</tool_call>'
    )
    messages = [{"role": "user", "content": "Weather in Kyoto?"}]
    reply = client.chat(model=MODEL, messages=messages, tools=[get_weather])
    (call,) = reply.message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "Kyoto", "unit": "celsius"}
    assert reply.message.content == "Checking."
    parts = list(client.chat(model=MODEL, messages=messages, tools=[get_weather], stream=True))
    assert "<tool_call>" not in "".join(p.message.content for p in parts)
    calls = [c for p in parts for c in p.message.tool_calls or ()]
    assert [c.function.arguments["city"] for c in calls] == ["Kyoto"]


def test_tool_results_reach_the_prompt(client, script):
    script.reply("It is sunny.")
    call = {"function": {"name": "get_weather", "arguments": {"city": "Kyoto"}}}
    client.chat(
        model=MODEL,
        messages=[
            {"role": "user", "content": "Weather in Kyoto?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "sunny and 21 degrees", "tool_name": "get_weather"},
        ],
        tools=[get_weather],
    )
    prompt = script.text(script.prompts[-1])
    assert "sunny and 21 degrees" in prompt and '"city": "Kyoto"' in prompt


def test_format_json_schema_gives_schema_valid_json(client):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    reply = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "A person"}],
        format=schema,
        options={"temperature": 0, "num_predict": 64},
    )
    assert reply.done_reason == "stop"
    jsonschema.validate(json.loads(reply.message.content), schema)


def test_format_json_gives_a_json_object(client, script):
    # The model would go on after the object; the format ends the reply there.
    script.reply('{"city":"Kyoto","days":[1,2]} and that is that.')
    reply = client.generate(
        model=MODEL, prompt="JSON", format="json", options={"temperature": 0, "num_predict": 48}
    )
    assert reply.done_reason == "stop"
    assert json.loads(reply.response) == {"city": "Kyoto", "days": [1, 2]}


def test_generate_whole_streamed_and_raw(served, client, script):
    script.reply("Once upon a time.")
    whole = client.generate(model=MODEL, prompt="Tell a story", system="Be brief.")
    assert whole.response == "Once upon a time." and whole.done
    assert "Be brief." in script.text(script.prompts[-1])  # the chat template
    parts = list(client.generate(model=MODEL, prompt="Tell a story", stream=True))
    assert "".join(p.response for p in parts) == "Once upon a time." and parts[-1].done
    script.complete("Once", "more, raw.")
    raw = client.generate(model=MODEL, prompt="Once", raw=True)
    assert raw.response == "more, raw."
    assert script.text(served.jobs[-1].tokens) == "Once"  # no template


def test_empty_requests_load_the_model_as_ollama_does(client):
    assert client.generate(model=MODEL).done_reason == "load"
    assert client.chat(model=MODEL, messages=[]).done_reason == "load"
    assert client.generate(model=MODEL, keep_alive=0).done_reason == "load"  # it stays


def test_tags_show_ps_and_version(client, served):
    (entry,) = client.list().models
    assert entry.model == f"{MODEL}:latest" and entry.size > 0
    assert entry.details.family == "qwen3" and entry.details.format == "mlx"
    shown = client.show(MODEL)
    assert shown.modelinfo["qwen3.context_length"] == CONTEXT
    assert "tools" in shown.capabilities and "<|im_start|>" in shown.template
    assert "temperature" in shown.parameters
    (running,) = client.ps().models
    assert running.model == f"{MODEL}:latest" and running.context_length == CONTEXT
    version = served.get("/api/version")
    assert version.json()["version"].count(".") == 2


def test_errors_come_back_in_ollamas_shape(client, served):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "x"}], options={"top_p": 5})
    assert e.value.status_code == 400 and "top_p" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=MODEL, prompt="x", images=[b"\x89PNG"])
    assert e.value.status_code == 400 and "text only" in e.value.error
    bad = httpx.post(f"{served.base}/api/chat", content=b"{nope", headers=served.auth)
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)
    assert not bad.json()["error"].startswith("{")  # the message, not a wrapped error


def test_the_api_key_is_required_when_set(served, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", served.base)
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client().list()
    assert e.value.status_code == 401 and "OLLAMA_API_KEY" in e.value.error
    monkeypatch.setenv("OLLAMA_API_KEY", "wrong")
    with pytest.raises(ollama.ResponseError):
        ollama.Client().chat(model=MODEL, messages=[{"role": "user", "content": "x"}])


def test_an_error_mid_stream_arrives_as_an_error_line(client, script):
    script.fail(RuntimeError("the model thread fell over"), after="Half a reply, and more")
    parts = client.chat(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True)
    seen = []
    with pytest.raises(ollama.ResponseError, match="server had an error"):
        for part in parts:
            seen.append(part.message.content)
    assert "".join(seen).startswith("Half")


def test_every_error_under_api_is_in_ollamas_shape(serve, monkeypatch):
    served = serve(key=KEY, app={"max_body_bytes": 4096}, max_context=CONTEXT, cache_bytes=0)
    url, auth = served.base, served.auth
    refusals = [
        (httpx.get(f"{url}/api/no-such-route", headers=auth), 404),
        (httpx.post(f"{url}/api/pull", json={"model": MODEL}, headers=auth), 404),
        (httpx.get(f"{url}/api/chat", headers=auth), 405),
        (httpx.post(f"{url}/api/chat", json={"prompt": "x" * 8000}, headers=auth), 413),
        (httpx.get(f"{url}/api/tags"), 401),
    ]
    for response, status in refusals:
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)
    # The official client reads them as Ollama's errors.
    monkeypatch.setenv("OLLAMA_HOST", url)
    monkeypatch.setenv("OLLAMA_API_KEY", KEY)
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client().pull(MODEL)
    assert e.value.status_code == 404 and "not found" in e.value.error.lower()
    # OpenAI's routes keep OpenAI's shape.
    assert "message" in httpx.get(f"{url}/v1/no-such-route", headers=auth).json()["error"]


def test_a_wrong_model_is_refused_naming_models_never_a_folder(serve, tiny_mlx, monkeypatch):
    # `serve --model ./folder`: requests may name the folder, but no error shows it.
    served = serve(key=None, max_context=CONTEXT, aliases=[str(tiny_mlx), "my-tiny"])
    url = served.base
    monkeypatch.setenv("OLLAMA_HOST", url)
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client().chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404
    openai_error = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
    ).json()["error"]["message"]
    for message in (e.value.error, openai_error):
        assert MODEL in message and "my-tiny" in message
        assert str(tiny_mlx) not in message and tiny_mlx.name not in message
    reply = httpx.post(
        f"{url}/api/chat",
        json={"model": str(tiny_mlx), "messages": [], "stream": False},
    )
    assert reply.status_code == 200  # the folder still names the model
