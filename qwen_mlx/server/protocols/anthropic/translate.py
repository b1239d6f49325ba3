"""Anthropic's Messages requests as the shared request (`..prompt`): the system prompt,
turns of content blocks (`tool_use` blocks as an assistant message's tool calls,
`tool_result` blocks as tool messages, earlier thinking left out), custom tools,
`tool_choice`, stop sequences, sampling, and `output_config.format` as a JSON schema."""

from __future__ import annotations

import json
from typing import Any

from ....chat.tools import Tool
from ...errors import APIError
from ...prompt import (
    ChatPrompt,
    NamedTool,
    function_tool,
    message,
    text_of,
    tool_call,
    unrunnable_tool,
)
from ...schemas import sampling
from .schemas import CountRequest, MessageParam, MessagesRequest, ToolChoice, ToolDef


def chat_prompt(req: CountRequest) -> ChatPrompt:
    """What a Messages request (or a token count's) asks for."""
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append(message("system", text_of(req.system, "system")))
    for i, turn in enumerate(req.messages):
        messages += _turn(turn, f"messages.{i}.content")
    if req.messages[-1].role == "assistant":
        raise APIError(
            400,
            "A final assistant message (a prefill) is not supported: end with a user message.",
            param="messages",
        )
    prompt = ChatPrompt(
        messages,
        tools=[_tool(t, i) for i, t in enumerate(req.tools or [])],
        tool_choice=_tool_choice(req.tool_choice, bool(req.tools)) if req.tool_choice else None,
        sampling=sampling(max_tokens=1),  # a count: no reply
    )
    if isinstance(req, MessagesRequest):
        prompt.sampling = sampling(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            stop=req.stop_sequences,
        )
        if req.output_config and req.output_config.format:
            prompt.response_schema = req.output_config.format.schema_
    return prompt


def _turn(turn: MessageParam, param: str) -> list[dict[str, Any]]:
    """A turn of blocks as chat messages: tool results become tool messages, tool uses
    an assistant message's tool calls, text stays text."""
    if isinstance(turn.content, str):
        return [message(turn.role, turn.content)]
    out: list[dict[str, Any]] = []
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(turn.content):
        where = f"{param}.{j}"
        if block.type == "text" and block.text is not None:
            text.append(block.text)
        elif block.type == "tool_use" and turn.role == "assistant":
            if not block.name:
                raise APIError(400, f"{where}: a tool_use block needs a name.", param=where)
            arguments = json.dumps(block.input or {}, ensure_ascii=False)
            calls.append(tool_call(block.id or f"toolu_{j}", block.name, arguments))
        elif block.type == "tool_result" and turn.role == "user":
            if text:
                out.append(message("user", "\n".join(text)))
                text = []
            result = text_of(block.content, f"{where}.content")
            if block.is_error:
                result = f"Error: {result}"
            out.append(message("tool", result, tool_call_id=block.tool_use_id))
        elif block.type in ("thinking", "redacted_thinking") and turn.role == "assistant":
            continue  # this model does not think out loud: earlier thinking has no place
        else:
            raise APIError(
                400,
                f"{where}: {block.type!r} blocks are not supported in {turn.role} turns; send "
                "text, tool_use (assistant) or tool_result (user) blocks.",
                param=where,
            )
    if text or calls or not out:
        out.append(message(turn.role, "\n".join(text), tool_calls=calls))
    return out


def _tool(tool: ToolDef, index: int) -> Tool:
    if tool.type not in (None, "custom"):
        why = f"Anthropic's server tools ({tool.type}) do not run here; define a custom tool"
        raise unrunnable_tool(index, why + " with an input_schema.")
    return function_tool(tool.name, tool.description, tool.input_schema)


def _tool_choice(choice: ToolChoice, has_tools: bool) -> str | NamedTool | None:
    if choice.type == "tool":
        if not choice.name:
            raise APIError(400, "tool_choice of type tool needs a name.", param="tool_choice")
        return NamedTool(choice.name)
    if choice.type == "any":
        return "required"
    if choice.type == "auto" or not has_tools:
        return "auto" if has_tools else None
    return "none"
