"""The interop tier's own parts, checked without the clients (default tier): the README's
"Use it from your tools" blocks are the ones the client tests run, and the forcing proxy
rewrites each protocol's request as tests/agents.py says."""

from __future__ import annotations

import re

import pytest

from .agents import (
    CALL_TOKENS,
    REPLY,
    Call,
    ForcingProxy,
    constant_schema,
    readme_blocks,
    readme_commands,
    readme_section,
)

# What the client tests run, by heading: (language, blocks).
RUN_BY_TESTS = {
    "Claude Code": {"sh": 2},  # the exports, then the three headless lines
    "Codex CLI": {"toml": 1, "sh": 1},
    "oterm": {"sh": 1},
    "llm": {"yaml": 1, "sh": 1},
    "LiteLLM": {"python": 1},  # and its table of routes
    "LangChain": {"python": 4},
}


def test_every_block_of_the_tools_section_is_one_the_client_tests_run():
    section = readme_section()
    headings = re.findall(r"^### (.+)$", section, flags=re.M)
    assert headings == list(RUN_BY_TESTS)
    for heading, languages in RUN_BY_TESTS.items():
        part = section.split(f"### {heading}\n")[1].split("\n### ")[0]
        found = re.findall(r"^```(\w+)\n", part, flags=re.M)
        assert {lang: found.count(lang) for lang in found} == languages, heading
        for language, count in languages.items():
            assert len(readme_blocks(language, f"### {heading}")) == count


def test_the_headless_command_lines_are_the_ones_the_tests_pick():
    claude = readme_commands("claude", "### Claude Code")
    last = [argv[-1] for argv in claude]
    assert last == ["json", "--include-partial-messages", "bypassPermissions"]
    (codex,) = readme_commands("codex", "### Codex CLI")
    assert codex[:2] == ["codex", "exec"] and "--json" in codex


def _messages(*content) -> dict:
    tools = [
        {"name": "Bash", "input_schema": {"type": "object"}},
        {"name": "Read", "input_schema": {"type": "object", "properties": {"file_path": {}}}},
    ]
    messages = [
        {"role": "user", "content": list(c) if isinstance(c, tuple) else c} for c in content
    ]
    return {"model": "m", "max_tokens": 32000, "tools": tools, "messages": messages}


def test_the_proxy_forces_the_next_call_of_its_script_on_anthropic_messages():
    proxy = ForcingProxy("http://unused")
    proxy.reset([Call("Read", {"file_path": "/a"}), Call("Bash", {"command": "echo"})])
    body, forced = proxy.rewrite("/v1/messages", _messages("hi"))
    assert forced == "Read" and body["tool_choice"] == {"type": "tool", "name": "Read"}
    assert body["tools"][1]["input_schema"] == constant_schema({"file_path": "/a"})
    assert body["tools"][0]["input_schema"] == constant_schema({"command": "echo"})
    assert body["max_tokens"] == CALL_TOKENS

    result = ({"type": "tool_result", "tool_use_id": "t", "content": "x"},)
    body, forced = proxy.rewrite("/v1/messages", _messages("hi", result))
    assert forced == "Bash" and body["tool_choice"] == {"type": "tool", "name": "Bash"}
    assert body["tools"][0]["input_schema"] == constant_schema({"command": "echo"})

    body, forced = proxy.rewrite("/v1/messages", _messages("hi", result, result))
    assert forced is None and "tool_choice" not in body
    # the tools stay as narrowed in every request (the prompt keeps its prefix)
    assert body["tools"][1]["input_schema"] == constant_schema({"file_path": "/a"})
    schema = body["output_config"]["format"]["schema"]
    assert schema == {"type": "string", "const": REPLY}


def test_the_proxy_forces_on_chat_completions_and_responses():
    proxy = ForcingProxy("http://unused")
    proxy.reset([Call("get_weather", {"city": "Paris"})])
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    chat = {"messages": [{"role": "user", "content": "?"}], "tools": [tool]}
    body, forced = proxy.rewrite("/v1/chat/completions", chat)
    assert forced == "get_weather"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["tools"][0]["function"]["parameters"]["properties"] == {"city": {"const": "Paris"}}

    responses = {
        "input": [{"type": "message", "role": "user", "content": "?"}],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {}}],
    }
    body, forced = proxy.rewrite("/v1/responses", responses)
    assert body["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert body["max_output_tokens"] == CALL_TOKENS
    answered = {**responses, "input": [*responses["input"], {"type": "function_call_output"}]}
    body, forced = proxy.rewrite("/v1/responses", answered)
    assert forced is None and body["text"]["format"]["schema"]["const"] == REPLY


def test_the_proxy_leaves_a_request_without_the_tool_unforced():
    proxy = ForcingProxy("http://unused")
    proxy.reset([Call("Read", {"file_path": "/a"})])
    body, forced = proxy.rewrite("/v1/messages", {"messages": [], "tools": []})
    assert forced is None and "tool_choice" not in body


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_on_ollama_routes_the_proxy_narrows_format(path):
    proxy = ForcingProxy("http://unused")
    body, forced = proxy.rewrite(path, {"messages": [], "options": {"temperature": 0}})
    assert forced is None and body["format"] == {"type": "string", "const": REPLY}
    assert body["options"] == {"temperature": 0, "num_predict": CALL_TOKENS}
    proxy.reset([Call("get_weather", {"city": "Paris"})])
    body, forced = proxy.rewrite(path, {"prompt": "?", "format": "json"})
    # LiteLLM's JSON tool replies on generate; Ollama's chat has no way to force a call
    assert forced == ("get_weather" if path == "/api/generate" else None)


def test_a_script_s_calls_of_one_tool_have_the_same_arguments():
    proxy = ForcingProxy("http://unused")
    with pytest.raises(AssertionError, match="differ"):
        proxy.reset([Call("Read", {"file_path": "/a"}), Call("Read", {"file_path": "/b"})])
