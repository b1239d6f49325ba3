"""Claude Code and Codex CLI, the real programs at pinned versions (.ci/run installs them from
npm), against `qwen-mlx serve` set up as the README's "Use it from your tools" says, with
their default settings and tools: a plain reply, a streamed one, a tool round trip, and a
session of five tool steps.

The test model is random: it never calls a tool by itself and never ends a reply. The
forcing proxy (tests/agents.py) makes it: on a conversation's first requests it forces a
harmless call (Claude Code's Read of a project file; Codex's `get_goal`, or `exec_command`
of `cat`/`echo`), with the tool's parameters narrowed to constants; otherwise it has the
model write a constant reply (a JSON string), which ends. Interop tier: `pytest -m interop`."""

from __future__ import annotations

import json

import pytest

from .agents import (
    NOTES,
    REPLY_TEXT,
    Call,
    Workspace,
    claude,
    claude_binary,
    claude_session,
    codex,
    codex_binary,
    codex_session,
    json_lines,
    readme_command,
)

pytestmark = pytest.mark.interop

needs_claude = pytest.mark.skipif(
    claude_binary() is None,
    reason="Claude Code is not installed (.ci/run installs it with npm into .agents; or set "
    "QWEN_MLX_AGENT_CLIENTS to a folder whose node_modules has @anthropic-ai/claude-code)",
)
needs_codex = pytest.mark.skipif(
    codex_binary() is None,
    reason="Codex CLI is not installed (.ci/run installs it with npm into .agents; or set "
    "QWEN_MLX_AGENT_CLIENTS to a folder whose node_modules has @openai/codex), or no node",
)


@pytest.fixture
def space(tmp_path) -> Workspace:
    return Workspace.make(tmp_path)


def _served_every_request(proxy) -> None:
    """Every request the client made was answered 200 (no retry after a refusal)."""
    assert proxy.exchanges, "the client made no request"
    refused = [(e.path, e.status) for e in proxy.exchanges if e.status != 200]
    assert not refused, f"refused: {refused}"


def _tool_results(exchange) -> list[str]:
    """The text of the tool results in a Messages request, in order."""
    found = []
    for m in exchange.body["messages"]:
        for block in m["content"] if isinstance(m["content"], list) else []:
            if block.get("type") == "tool_result":
                content = block.get("content")
                parts = content if isinstance(content, list) else [{"text": content or ""}]
                found.append("".join(p.get("text", "") for p in parts))
    return found


# -- Claude Code --------------------------------------------------------------------------------


@needs_claude
def test_claude_code_answers_a_prompt(agent_proxy, space):
    argv = readme_command("claude", "### Claude Code", "json")
    result = json.loads(claude(space, agent_proxy.port, argv))
    assert result["type"] == "result" and not result["is_error"], result
    assert result["result"] == REPLY_TEXT
    _served_every_request(agent_proxy)
    first = agent_proxy.exchanges[0]
    assert first.path == "/v1/messages" and len(first.body["tools"]) > 5  # its default tools


@needs_claude
def test_claude_code_streams_a_reply(agent_proxy, space):
    argv = readme_command("claude", "### Claude Code", "stream-json")
    events = json_lines(claude(space, agent_proxy.port, argv))
    deltas = [
        e["event"]["delta"]["text"]
        for e in events
        if e.get("type") == "stream_event"
        and e["event"].get("type") == "content_block_delta"
        and e["event"]["delta"].get("type") == "text_delta"
    ]
    assert len(deltas) > 1 and "".join(deltas) == REPLY_TEXT
    assert events[-1]["type"] == "result" and not events[-1]["is_error"]
    _served_every_request(agent_proxy)
    assert all(e.content_type.startswith("text/event-stream") for e in agent_proxy.exchanges)


@needs_claude
def test_claude_code_runs_a_tool_and_answers_with_its_result(agent_proxy, space):
    # Forced by the proxy: Read of notes.txt (the model would not call it by itself).
    agent_proxy.reset([Call("Read", {"file_path": str(space.project / "notes.txt")})])
    argv = readme_command("claude", "### Claude Code", "bypassPermissions")
    assert claude(space, agent_proxy.port, argv).strip() == REPLY_TEXT
    _served_every_request(agent_proxy)
    assert [e.forced for e in agent_proxy.exchanges] == ["Read", None]
    (result,) = _tool_results(agent_proxy.exchanges[1])
    assert NOTES.strip() in result


@needs_claude
def test_claude_code_runs_a_session_of_five_tool_steps(agent_proxy, space):
    assert claude_session(agent_proxy, space, steps=5).strip() == REPLY_TEXT
    _served_every_request(agent_proxy)
    assert [e.forced for e in agent_proxy.exchanges] == ["Read", "Bash"] * 2 + ["Read", None]
    results = _tool_results(agent_proxy.exchanges[-1])
    assert len(results) == 5
    assert NOTES.strip() in results[0] and results[1].strip() == "step"


# -- Codex CLI ----------------------------------------------------------------------------------


def _agent_messages(events: list[dict]) -> list[str]:
    return [
        e["item"]["text"]
        for e in events
        if e.get("type") == "item.completed" and e["item"].get("type") == "agent_message"
    ]


@needs_codex
def test_codex_answers_a_prompt(agent_proxy, space):
    argv = readme_command("codex", "### Codex CLI", "exec")
    events = codex(space, agent_proxy.port, argv)
    assert _agent_messages(events) == [REPLY_TEXT]
    assert events[-1]["type"] == "turn.completed"
    _served_every_request(agent_proxy)
    (request,) = agent_proxy.exchanges
    kinds = {tool.get("type") for tool in request.body["tools"]}
    assert {"function", "namespace", "web_search"} <= kinds  # its default tools, as sent


@needs_codex
def test_codex_reads_a_streamed_reply(agent_proxy, space):
    # Codex always streams (the Responses API's server-sent events); its --json output
    # shows the finished message, so the stream is checked on the wire.
    argv = readme_command("codex", "### Codex CLI", "exec")
    events = codex(space, agent_proxy.port, argv)
    assert _agent_messages(events) == [REPLY_TEXT]
    (request,) = agent_proxy.exchanges
    assert request.body["stream"] is True
    assert request.content_type.startswith("text/event-stream")


@needs_codex
def test_codex_runs_a_command_and_answers_with_its_output(agent_proxy, space):
    # Forced by the proxy: `cat notes.txt` through exec_command (in Codex's own sandbox).
    agent_proxy.reset([Call("exec_command", {"cmd": "cat notes.txt"})])
    argv = readme_command("codex", "### Codex CLI", "exec")
    events = codex(space, agent_proxy.port, argv)
    (command,) = [
        e["item"]
        for e in events
        if e.get("type") == "item.completed" and e["item"].get("type") == "command_execution"
    ]
    assert command["exit_code"] == 0 and command["aggregated_output"] == NOTES
    assert _agent_messages(events) == [REPLY_TEXT]
    _served_every_request(agent_proxy)
    assert [e.forced for e in agent_proxy.exchanges] == ["exec_command", None]
    outputs = [
        item
        for item in agent_proxy.exchanges[1].body["input"]
        if item.get("type") == "function_call_output"
    ]
    assert len(outputs) == 1 and NOTES.strip() in outputs[0]["output"]


@needs_codex
def test_codex_runs_a_session_of_five_tool_steps(agent_proxy, space):
    events = codex_session(agent_proxy, space, steps=5)
    outputs = [
        e["item"]["aggregated_output"]
        for e in events
        if e.get("type") == "item.completed" and e["item"].get("type") == "command_execution"
    ]
    assert outputs == ["step\n"] * 3
    assert _agent_messages(events) == [REPLY_TEXT]
    _served_every_request(agent_proxy)
    assert len(agent_proxy.exchanges) == 6
    last = agent_proxy.exchanges[-1].body["input"]
    assert sum(item.get("type") == "function_call_output" for item in last) == 5
