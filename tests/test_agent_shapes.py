"""Requests shaped like those of the agent clients people point at a local server (Claude
Code, Codex CLI, qwen-code, opencode, Continue, litellm, LangChain, llm, oterm), each
protocol through real HTTP: with the official client where it can send the shape, with
httpx where it cannot. The bodies are written here, after what each client sends: a
system turn inside Anthropic's messages, tool search's deferred tools, Codex's namespace
and hosted tools, bodies without a Content-Type, `NAME:latest` model names, tool-call
arguments echoed back re-serialized."""

from __future__ import annotations

import json
from collections.abc import Callable

import anthropic
import httpx
import pytest

from .served import CALL_TEXT, CONTEXT, MAX_TOKENS_CAP, MODEL, WEATHER_TOOL, Served

ANTHROPIC_TOOL = {
    "name": "get_weather",
    "description": WEATHER_TOOL["function"]["description"],
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}
FETCH_TOOL = {
    "name": "web_fetch",
    "description": "Fetch a web page.",
    "input_schema": {"type": "object", "properties": {"url": {"type": "string"}}},
}
BILLING = "x-anthropic-billing-header: cc_version=9.9.9.{}; cc_entrypoint=sdk-cli;"


@pytest.fixture(scope="module")
def served(module_server) -> Served:
    return module_server(key=None, max_context=CONTEXT, max_tokens_cap=MAX_TOKENS_CAP)


class Prompts:
    """The prompts (token ids, whole) of the jobs a server was given since a point."""

    def __init__(self, served: Served) -> None:
        self.served, self.start = served, len(served.jobs)

    def __getitem__(self, index: int) -> list[int]:
        return list(self.served.jobs[self.start :][index].tokens)

    def __len__(self) -> int:
        return len(self.served.jobs) - self.start


@pytest.fixture
def seen(served, script) -> Callable[[str], Prompts]:
    """Script the model's reply for one test (tests/scripted.py); returns the prompts the
    server's jobs are given from then on."""

    def reply(text: str) -> Prompts:
        script.reply(text)
        return Prompts(served)

    return reply


def post(served, path: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(served.base + path, json=body, timeout=60, **kwargs)


def prompt_text(served, prompts: Prompts, index: int = -1) -> str:
    return served.engine.model.tokenizer.decode(prompts[index])


# Anthropic: Claude Code


def claude_code_body(**changes) -> dict:
    """A first request as Claude Code sends it: a billing block, a user turn, then a system
    turn (blocks at first, a string later), tools of which one is deferred, and fields
    that ask nothing of a local server."""
    cache = {"type": "ephemeral"}
    body = {
        "model": MODEL,
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": BILLING.format("a1f")},
            {"type": "text", "text": "You are an agent.", "cache_control": cache},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
            {
                "role": "system",
                "content": [{"type": "text", "text": "Today is Monday.", "cache_control": cache}],
            },
        ],
        "tools": [ANTHROPIC_TOOL, dict(FETCH_TOOL, defer_loading=True)],
        "metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "s"})},
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "safeguards": [{"type": "dangerous_tool_use", "classifier_context": {"cwd": "/x"}}],
    }
    body.update(changes)
    return body


CLAUDE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
    "context-management-2025-06-27,advanced-tool-use-2025-11-20,effort-2025-11-24",
}


def test_a_system_turn_inside_messages_is_a_system_message_where_it_stands(served, seen):
    prompts = seen("Fine.")
    response = post(served, "/v1/messages?beta=true", claude_code_body(), headers=CLAUDE_HEADERS)
    assert response.status_code == 200, response.text
    events = sse_events(response)
    assert events[-1]["type"] == "message_stop"
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert "".join(d["text"] for d in deltas) == "Fine."
    expected = served.engine.model.prompt_tokens(
        [
            {"role": "system", "content": "You are an agent."},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "system", "content": "Today is Monday."},
        ],
        tools=[WEATHER_TOOL],
    )
    assert prompts[-1] == expected
    prompt = prompt_text(served, prompts)
    assert prompt.index("Weather in Oslo?") < prompt.index("<|im_start|>system\nToday is Monday.")


def test_the_official_client_sends_a_system_turn_and_it_is_served(served, seen):
    prompts = seen("Hello.")
    client = anthropic.Anthropic(base_url=served.base, api_key="unused", max_retries=0)
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Answer in French."},
    ]
    reply = client.messages.create(model=MODEL, max_tokens=8, messages=messages)  # type: ignore[arg-type]
    assert reply.content[0].text == "Hello."
    assert "<|im_start|>system\nAnswer in French.<|im_end|>" in prompt_text(served, prompts)
    counted = client.messages.count_tokens(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert counted.input_tokens == len(prompts[-1])


def test_the_billing_header_block_is_left_out_so_sessions_share_a_prefix(served, seen):
    prompts = seen("ok")
    for session in ("a1f", "07c"):
        system = [{"type": "text", "text": BILLING.format(session)}, {"type": "text", "text": "S"}]
        body = claude_code_body(system=system, stream=False)
        assert post(served, "/v1/messages", body).status_code == 200
    assert prompts[0] == prompts[1]
    assert "billing" not in prompt_text(served, prompts)


def test_deferred_tools_stay_out_of_the_prompt_until_a_tool_reference_loads_them(served, seen):
    prompts = seen("ok")
    first = claude_code_body(stream=False)
    assert post(served, "/v1/messages", first).status_code == 200
    assert "web_fetch" not in prompt_text(served, prompts)
    # Tool search answered: the result references the tool; it is defined there, in place.
    later = claude_code_body(stream=False)
    later["messages"] += [
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_9", "name": "ToolSearch", "input": {"q": "web"}}
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_9",
                    "content": [{"type": "tool_reference", "tool_name": "web_fetch"}],
                }
            ],
        },
    ]
    assert post(served, "/v1/messages", later).status_code == 200
    prompt = prompt_text(served, prompts)
    spec = {
        "type": "function",
        "function": {
            "name": "web_fetch",
            "description": FETCH_TOOL["description"],
            "parameters": FETCH_TOOL["input_schema"],
        },
    }
    assert f"<tool_response>\n{json.dumps(spec)}\n</tool_response>" in prompt
    assert prompt.count('"web_fetch"') == 1  # not in the tool list at the top
    # The prompt so far is the earlier one's prefix: loading a tool appended to it.
    assert prompts[1][: len(prompts[0]) - 3] == prompts[0][:-3]


def test_a_call_of_a_deferred_tool_comes_back_as_tool_use(served, seen):
    seen('<tool_call>\n{"name": "web_fetch", "arguments": {"url": "http://x"}}\n</tool_call>')
    tools = [dict(FETCH_TOOL, defer_loading=True)]
    body = claude_code_body(stream=False, tools=tools)
    reply = post(served, "/v1/messages", body).json()
    assert reply["stop_reason"] == "tool_use"
    assert reply["content"][-1]["name"] == "web_fetch"
    assert reply["content"][-1]["input"] == {"url": "http://x"}
    forced = claude_code_body(stream=False, tools=tools, tool_choice={"type": "any"})
    assert post(served, "/v1/messages", forced).status_code == 200


def test_a_tool_result_image_is_a_note_and_a_user_image_is_refused(served, seen):
    prompts = seen("ok")
    png = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    messages = [
        {"role": "user", "content": "Look at the chart."},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [
                        {"type": "text", "text": "chart.png"},
                        {"type": "image", "source": png},
                    ],
                }
            ],
        },
    ]
    body = {"model": MODEL, "max_tokens": 8, "messages": messages, "tools": [ANTHROPIC_TOOL]}
    assert post(served, "/v1/messages", body).status_code == 200
    note = "chart.png\n[image (image/png) left out: this model reads text only]"
    assert f"<tool_response>\n{note}\n</tool_response>" in prompt_text(served, prompts)
    image_turn = {"role": "user", "content": [{"type": "image", "source": png}]}
    refused = post(served, "/v1/messages", dict(body, messages=[image_turn]))
    assert refused.status_code == 400
    assert "reads text only" in refused.json()["error"]["message"]


def test_plain_text_documents_and_search_results_are_read_as_text(served, seen):
    prompts = seen("ok")
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}
    search = {
        "type": "search_result",
        "title": "Rivers",
        "source": "https://example.org/rivers",
        "content": [{"type": "text", "text": "The Nile is long."}],
    }
    messages = [
        {"role": "user", "content": "Rivers?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [search, {"type": "document", "source": pdf}],
                },
                {
                    "type": "document",
                    "title": "Notes",
                    "source": {"type": "text", "media_type": "text/plain", "data": "Amazon."},
                },
            ],
        },
    ]
    body = {"model": MODEL, "max_tokens": 8, "messages": messages, "tools": [ANTHROPIC_TOOL]}
    assert post(served, "/v1/messages", body).status_code == 200
    result = (
        "Rivers\nhttps://example.org/rivers\nThe Nile is long.\n"
        "[document (application/pdf) left out: this model reads text only]"
    )
    prompt = prompt_text(served, prompts)
    assert f"<tool_response>\n{result}\n</tool_response>" in prompt
    assert "<|im_start|>user\nNotes\nAmazon.<|im_end|>" in prompt
    turn = {"role": "user", "content": [{"type": "document", "source": pdf}]}
    refused = post(served, "/v1/messages", dict(body, messages=[turn]))
    assert refused.status_code == 400 and "reads text only" in refused.text


def test_block_types_that_ask_nothing_of_the_server_are_left_out(served, seen):
    prompts = seen("ok")
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Search it."}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "redacted_thinking", "data": "zzz"},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                {"type": "text", "text": "Found it."},
            ],
        },
        {"role": "user", "content": [{"type": "text", "text": "Thanks."}, {"type": "new_kind"}]},
    ]
    body = {"model": MODEL, "max_tokens": 8, "messages": messages}
    response = post(served, "/v1/messages", body)
    assert response.status_code == 200, response.text
    prompt = prompt_text(served, prompts)
    assert "Found it." in prompt and "hmm" not in prompt and "srvtoolu" not in prompt


def test_what_asks_for_work_this_server_cannot_do_is_refused_in_anthropics_shape(served):
    hi = [{"role": "user", "content": "hi"}]
    for changes, named in (
        ({"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]}, "mcp"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search"),
    ):
        body = {"model": MODEL, "max_tokens": 8, "messages": hi, **changes}
        response = post(served, "/v1/messages", body)
        assert response.status_code == 400
        error = response.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert named in error["error"]["message"]


def test_custom_tools_as_litellm_sends_them_are_accepted(served, seen):
    seen(CALL_TEXT)
    body = {
        "model": MODEL,
        "max_tokens": 128000,  # litellm's default for a model it does not know: capped
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [dict(ANTHROPIC_TOOL, type="custom")],
    }
    reply = post(served, "/v1/messages", body).json()
    assert reply["content"][-1]["type"] == "tool_use"


def test_a_prompt_over_the_context_is_refused_in_anthropics_words_but_counted(served):
    long = "word " * (CONTEXT * 2)
    body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": long}]}
    response = post(served, "/v1/messages", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    tokens, limit = map(int, _too_long(error["message"]))
    assert tokens > limit and limit == CONTEXT - 1
    counted = post(served, "/v1/messages/count_tokens", {k: body[k] for k in ("model", "messages")})
    assert counted.status_code == 200, counted.text
    # A prompt far over is refused before it is tokenized whole: its count is a lower bound.
    assert counted.json()["input_tokens"] >= tokens


def _too_long(message: str) -> tuple[str, str]:
    import re

    # Claude Code's own pattern for this error (it offers to compact on it).
    match = re.fullmatch(r"prompt is too long: (\d+) tokens > (\d+) maximum", message)
    assert match, message
    return match.group(1), match.group(2)


# Responses: Codex CLI

NS_CALL = (
    '<tool_call>\n{"name": "multi_agent_v1__wait_agent", "arguments": {"id": "a1"}}\n</tool_call>'
)


def codex_body(*extra_input: dict, **changes) -> dict:
    """A request as Codex sends it: no instructions, developer messages (one of two
    parts), items with ids, function tools, a namespace of tools, web search, and fields
    that ask nothing of a local server (store false: the whole input every turn)."""
    params = {"type": "object", "properties": {"id": {"type": "string"}}}
    body = {
        "model": MODEL,
        "stream": True,
        "input": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "developer",
                "content": [{"type": "input_text", "text": "You are a coding agent."}],
            },
            {
                "type": "message",
                "id": "msg_2",
                "role": "developer",
                "content": [
                    {"type": "input_text", "text": "Skills: none.\n"},
                    {"type": "input_text", "text": "Sandbox: read-only."},
                ],
            },
            {
                "type": "message",
                "id": "msg_3",
                "role": "user",
                "content": [{"type": "input_text", "text": "Wait for the agent."}],
            },
            *extra_input,
        ],
        "tools": [
            {
                "type": "function",
                "name": "exec_command",
                "description": "Run a command.",
                "strict": False,
                "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
            },
            {
                "type": "namespace",
                "name": "multi_agent_v1",
                "description": "Sub-agents.",
                "tools": [
                    {
                        "type": "function",
                        "name": "wait_agent",
                        "description": "Wait for an agent.",
                        "strict": False,
                        "parameters": params,
                    },
                    {
                        "type": "function",
                        "name": "close_agent",
                        "description": "Close an agent.",
                        "strict": False,
                        "parameters": params,
                    },
                ],
            },
            {"type": "web_search", "external_web_access": False},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "thread-1",
        "client_metadata": {"session_id": "s", "thread_id": "thread-1", "turn_id": "t"},
    }
    body.update(changes)
    return body


def sse_events(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def test_a_namespace_tool_is_offered_by_its_flat_name_and_called_back_by_namespace(served, seen):
    prompts = seen(NS_CALL)
    events = sse_events(post(served, "/v1/responses", codex_body()))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert added == [item["id"] for item in done]  # every item is finished
    (call,) = [item for item in done if item["type"] == "function_call"]
    assert (call["namespace"], call["name"]) == ("multi_agent_v1", "wait_agent")
    assert json.loads(call["arguments"]) == {"id": "a1"}
    assert events[-1]["response"]["output"][-1]["namespace"] == "multi_agent_v1"
    prompt = prompt_text(served, prompts)
    assert '"name": "multi_agent_v1__wait_agent"' in prompt
    assert '"name": "multi_agent_v1__close_agent"' in prompt and "web_search" not in prompt
    assert "Skills: none.\nSandbox: read-only." in prompt


def test_a_namespaced_call_in_the_input_renders_by_its_flat_name(served, seen):
    prompts = seen("The agent finished.")
    echoed = [
        {
            "type": "function_call",
            "id": "fc_1",
            "status": "completed",
            "namespace": "multi_agent_v1",
            "name": "wait_agent",
            "arguments": '{"id": "a1"}',
            "call_id": "call_1",
        },
        {"type": "function_call_output", "id": "fco_1", "call_id": "call_1", "output": "done"},
    ]
    events = sse_events(post(served, "/v1/responses", codex_body(*echoed)))
    assert events[-1]["type"] == "response.completed"
    prompt = prompt_text(served, prompts)
    call = '{"name": "multi_agent_v1__wait_agent", "arguments": {"id": "a1"}}'
    assert call in prompt and "<tool_response>\ndone\n</tool_response>" in prompt


def test_hosted_tools_are_left_out_and_named_once_in_the_log(served, seen, caplog):
    seen("ok")
    caplog.set_level("WARNING", logger="qwen_mlx.server.protocols.responses.routes")
    client = served_openai(served)
    tools = [{"type": "file_search", "vector_store_ids": ["vs_1"]}, {"type": "code_interpreter"}]
    for _ in range(2):
        reply = client.responses.create(model=MODEL, input="Hi", tools=tools)  # type: ignore[arg-type]
        assert reply.output_text == "ok"
    named = [r.getMessage() for r in caplog.records if "hosted tool" in r.getMessage()]
    assert len(named) == 2 and "'file_search'" in named[0] and "'code_interpreter'" in named[1]


@pytest.mark.parametrize(
    "choice",
    [
        {"type": "function", "name": "multi_agent_v1__close_agent"},
        {"type": "function", "namespace": "multi_agent_v1", "name": "close_agent"},
    ],
    ids=["flat", "namespace"],
)
def test_a_tool_choice_may_force_a_namespaced_tool(served, choice):
    body = codex_body(stream=False, tool_choice=choice, max_output_tokens=40)
    reply = post(served, "/v1/responses", body).json()
    (call,) = reply["output"]
    assert (call["namespace"], call["name"]) == ("multi_agent_v1", "close_agent")
    assert reply["tool_choice"] == choice


def test_records_of_hosted_tools_in_the_input_are_left_out(served, seen):
    prompts = seen("ok")
    search = {"type": "web_search_call", "id": "ws_1", "status": "completed"}
    search["action"] = {"type": "search", "query": "secret query"}
    body = codex_body(search, {"type": "message", "role": "user", "content": "And?"})
    assert sse_events(post(served, "/v1/responses", body))[-1]["type"] == "response.completed"
    assert "secret query" not in prompt_text(served, prompts)


def test_a_tool_choice_forcing_a_hosted_tool_is_a_400_naming_it(served):
    import openai

    client = served_openai(served)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(
            model=MODEL,
            input="Search",
            tools=[{"type": "web_search"}],
            tool_choice={"type": "web_search"},  # type: ignore[typeddict-item]
        )
    assert "web_search" in e.value.message and e.value.body["param"] == "tool_choice"


def test_the_official_client_reads_a_namespaced_call(served, seen):
    seen(NS_CALL)
    body = codex_body(stream=False)
    extra = {"client_metadata": body.pop("client_metadata")}  # not in this client's signature
    reply = served_openai(served).responses.create(**body, extra_body=extra)
    (call,) = reply.output
    assert call.type == "function_call" and call.name == "wait_agent"
    assert call.namespace == "multi_agent_v1"  # a field of the official client's item


def served_openai(served):
    import openai

    return openai.OpenAI(base_url=served.base + "/v1", api_key="unused", max_retries=0, timeout=60)


# Every route, every name


HI = [{"role": "user", "content": "hi"}]
EVERY_POST_ROUTE = [
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 2}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2}),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 2}),
    ("/v1/messages", {"max_tokens": 2, "messages": HI}),
    ("/v1/messages/count_tokens", {"messages": HI}),
    ("/api/chat", {"messages": HI, "stream": False, "options": {"num_predict": 2}}),
    ("/api/generate", {"prompt": "hi", "stream": False, "options": {"num_predict": 2}}),
    ("/api/show", {}),
]


@pytest.mark.parametrize("content_type", [None, "text/plain"])
@pytest.mark.parametrize(("path", "body"), EVERY_POST_ROUTE, ids=[p for p, _ in EVERY_POST_ROUTE])
def test_every_route_reads_a_json_body_whatever_its_content_type(
    served, seen, path, body, content_type
):
    seen("ok")
    headers = {"content-type": content_type} if content_type else {}
    body = dict(body, model=MODEL)
    response = httpx.post(
        served.base + path, content=json.dumps(body).encode(), headers=headers, timeout=60
    )
    assert response.status_code == 200, response.text
    refused = httpx.post(served.base + path, content=b"model=x", headers=headers, timeout=60)
    assert refused.status_code == 400 and "not valid JSON" in refused.text


def test_every_name_a_listing_gives_is_accepted_by_every_protocol(served, seen):
    seen("ok")
    names = [m["id"] for m in httpx.get(served.base + "/v1/models").json()["data"]]
    names += [m["name"] for m in httpx.get(served.base + "/api/tags").json()["models"]]
    names += [m["model"] for m in httpx.get(served.base + "/api/tags").json()["models"]]
    assert f"{MODEL}:latest" in names
    for name in names:
        for path, body in EVERY_POST_ROUTE:
            response = post(served, path, dict(body, model=name))
            assert response.status_code == 200, (name, path, response.text)
        assert httpx.get(f"{served.base}/v1/models/{name}").status_code == 200
    # oterm: lists /api/tags, then chats on /v1/chat/completions by that name.
    client = served_openai(served)
    reply = client.chat.completions.create(model=f"{MODEL}:latest", messages=HI, max_tokens=2)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "ok"
    refused = post(served, "/v1/chat/completions", {"model": "other:latest", "messages": HI})
    assert refused.status_code == 404


# What the other clients send


def test_chat_as_qwen_code_and_opencode_send_it(served, seen):
    """Content as a list of text parts, an assistant turn of calls with null content, a
    tool result as parts, and the call's arguments echoed back compact: the prompt is
    the one the model's own call would give."""
    prompts = seen("Sunny.")
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo","unit":"celsius"}'},
    }
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You are an agent."}]},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sun"}]},
    ]
    body = {
        "model": MODEL,
        "messages": messages,
        "tools": [WEATHER_TOOL],
        "max_tokens": 32768,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = sse_events(post(served, "/v1/chat/completions", body))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Sunny." and chunks[-1]["usage"]["completion_tokens"]
    prompt = prompt_text(served, prompts)
    assert '"arguments": {"city": "Oslo", "unit": "celsius"}}' in prompt
    assert "<tool_response>\nsun\n</tool_response>" in prompt


def test_a_call_echoed_back_in_any_serialization_renders_the_same(served, seen):
    prompts = seen("ok")
    forms = [
        '{"city": "Oslo", "unit": "celsius"}',  # as the server sent it (Codex, llm, LangChain)
        '{"city":"Oslo","unit":"celsius"}',  # compact (opencode, qwen-code, Continue, oterm)
        {"city": "Oslo", "unit": "celsius"},  # an object (litellm, Ollama clients)
    ]
    for arguments in forms:
        call = {"id": "c", "type": "function", "function": {"name": "get_weather"}}
        call["function"]["arguments"] = arguments
        messages = [*HI, {"role": "assistant", "content": None, "tool_calls": [call]}]
        messages.append({"role": "tool", "tool_call_id": "c", "content": "sun"})
        body = {"model": MODEL, "messages": messages, "tools": [WEATHER_TOOL], "max_tokens": 2}
        assert post(served, "/v1/chat/completions", body).status_code == 200
    assert prompts[0] == prompts[1] == prompts[2]
    assert '"arguments": {"city": "Oslo", "unit": "celsius"}}' in prompt_text(served, prompts)


def test_a_call_without_arguments_echoed_as_empty_text_is_an_empty_object(served, seen):
    prompts = seen("ok")
    call = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    messages = [*HI, {"role": "assistant", "content": "", "tool_calls": [call]}]
    messages.append({"role": "tool", "tool_call_id": "c", "content": "sun"})
    body = {"model": MODEL, "messages": messages, "tools": [WEATHER_TOOL], "max_tokens": 2}
    assert post(served, "/v1/chat/completions", body).status_code == 200
    assert '{"name": "get_weather", "arguments": {}}' in prompt_text(served, prompts)


def test_ollama_chat_as_litellm_and_langchain_send_it(served, seen):
    """No Content-Type (litellm), `images: []`, `options: {}`, `tools: []` (LangChain), a
    call with arguments as an object and no id, a tool message with or without
    `tool_call_id`, and always streamed (LangChain)."""
    prompts = seen("Sunny.")
    call = {"function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}}
    for extra in ({"tool_call_id": "5b0c-uuid"}, {}):
        messages = [
            {"role": "user", "content": "Weather?", "images": []},
            {"role": "assistant", "content": "", "images": [], "tool_calls": [call]},
            {"role": "tool", "content": "sun", "images": [], **extra},
        ]
        body = {"model": f"{MODEL}:latest", "messages": messages, "options": {}, "tools": []}
        response = httpx.post(served.base + "/api/chat", content=json.dumps(body), timeout=60)
        assert response.status_code == 200, response.text
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert lines[-1]["done"] and "".join(line["message"]["content"] for line in lines)
    prompt = prompt_text(served, prompts)
    assert '"arguments": {"city": "Oslo", "unit": "celsius"}}' in prompt
    assert "<tool_response>\nsun\n</tool_response>" in prompt
    assert prompts[0] == prompts[1]
