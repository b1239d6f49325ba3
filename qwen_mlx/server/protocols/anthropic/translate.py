"""Anthropic's Messages requests as the shared request (`..prompt`): the system prompt,
turns of content blocks (`tool_use` blocks as an assistant message's tool calls,
`tool_result` blocks as tool messages, a system turn as a system message where it
stands, earlier thinking left out), custom tools (those with `defer_loading` kept out of
the prompt until a `tool_reference` loads them), `tool_choice`, stop sequences,
sampling, and `output_config.format` as a JSON schema.

Block types that ask nothing of this server (thinking, records of Anthropic's own
server tools, types newer than this code) are left out; plain-text documents and search
results are read as their text; blocks it cannot read (an image, a PDF) are refused in a
user turn and noted as left out in a tool result. Claude Code's
`x-anthropic-billing-header:` system block is metadata that changes every session:
it is left out, so two sessions share their prompt's prefix.
"""

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
from .schemas import Block, CountRequest, MessageParam, MessagesRequest, ToolChoice, ToolDef

BILLING_HEADER = "x-anthropic-billing-header:"
# Blocks a model that reads text cannot take: refused, not silently dropped.
_UNREADABLE = ("image", "document")


def chat_prompt(req: CountRequest) -> ChatPrompt:
    """What a Messages request (or a token count's) asks for."""
    if req.mcp_servers:
        raise APIError(
            400,
            "mcp_servers: this server does not connect to remote MCP servers; run them in "
            "your client and send their tools as custom tools.",
            param="mcp_servers",
        )
    tools = {t.name: _tool(t, i) for i, t in enumerate(req.tools or [])}
    deferred = {t.name for t in req.tools or [] if t.defer_loading}
    messages: list[dict[str, Any]] = []
    system = _system_text(req.system)
    if system:
        messages.append(message("system", system))
    for i, turn in enumerate(req.messages):
        messages += _turn(turn, f"messages.{i}.content", tools)
    if req.messages[-1].role == "assistant":
        raise APIError(
            400,
            "A final assistant message (a prefill) is not supported: end with a user message.",
            param="messages",
        )
    prompt = ChatPrompt(
        messages,
        tools=[t for name, t in tools.items() if name not in deferred],
        deferred=[t for name, t in tools.items() if name in deferred],
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


def _system_text(system: str | list[Block] | None) -> str:
    """The system prompt's text, without Claude Code's billing header block."""
    if not isinstance(system, list):
        return system or ""
    blocks = [
        b for b in system if not (b.type == "text" and (b.text or "").startswith(BILLING_HEADER))
    ]
    return text_of(blocks, "system")


def _turn(turn: MessageParam, param: str, tools: dict[str, Tool]) -> list[dict[str, Any]]:
    """A turn of blocks as chat messages: tool results become tool messages, tool uses
    an assistant message's tool calls, text stays text."""
    if isinstance(turn.content, str):
        return [message(turn.role, turn.content)]
    out: list[dict[str, Any]] = []
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(turn.content):
        where = f"{param}.{j}"
        if block.type == "text":
            text.append(block.text or "")
        elif _readable(block) is not None and turn.role != "assistant":
            text.append(_readable(block) or "")
        elif block.type == "tool_use" and turn.role == "assistant":
            if not block.name:
                raise APIError(400, f"{where}: a tool_use block needs a name.", param=where)
            arguments = json.dumps(block.input or {}, ensure_ascii=False)
            calls.append(tool_call(block.id or f"toolu_{j}", block.name, arguments))
        elif block.type == "tool_result" and turn.role == "user":
            if text:
                out.append(message("user", "\n".join(text)))
                text = []
            result = _result_text(block.content, f"{where}.content", tools)
            if block.is_error:
                result = f"Error: {result}"
            out.append(message("tool", result, tool_call_id=block.tool_use_id))
        elif block.type in _UNREADABLE and turn.role != "assistant":
            raise APIError(
                400,
                f"{where}: {block.type!r} blocks are not supported: this model reads text "
                "only; send text blocks.",
                param=where,
            )
        elif block.type in ("tool_use", "tool_result"):
            raise APIError(
                400,
                f"{where}: {block.type!r} blocks are not supported in {turn.role} turns; send "
                "text, tool_use (assistant) or tool_result (user) blocks.",
                param=where,
            )
        # Anything else (thinking, server tools' records, newer types) asks nothing of us.
    if text or calls or not out:
        out.append(message(turn.role, "\n".join(text), tool_calls=calls))
    return out


def _result_text(content: str | list[Block] | None, param: str, tools: dict[str, Tool]) -> str:
    """A tool result's content as text: its text blocks, plain-text documents and search
    results; an image or other document as a note that it was left out (a tool may well
    read a picture or a PDF; the model reads text only); a
    `tool_reference` as the definition of the tool it loads, where it stands, as the
    prompt's tool list would show it (so loading a tool appends to the prompt instead of
    changing its top)."""
    if not isinstance(content, list):
        return content or ""
    parts: list[str] = []
    for k, block in enumerate(content):
        if block.type == "text" and block.text is not None:
            parts.append(block.text)
        elif _readable(block) is not None:
            parts.append(_readable(block) or "")
        elif block.type in _UNREADABLE:
            source = block.source if isinstance(block.source, dict) else {}
            kind = source.get("media_type") or block.type
            parts.append(f"[{block.type} ({kind}) left out: this model reads text only]")
        elif block.type == "tool_reference":
            tool = tools.get(block.tool_name or "")
            if tool is None:
                where = f"{param}.{k}"
                raise APIError(
                    400,
                    f"{where}: tool_reference names {block.tool_name!r}, which is not in tools.",
                    param=where,
                )
            parts.append(json.dumps(tool.spec(), ensure_ascii=False))
    return "\n".join(parts)


def _readable(block: Block) -> str | None:
    """The text of a block that carries text in its own shape: a plain-text `document`
    and a `search_result` (title, then source, then the text). None for any other."""
    head = [block.title] if block.title else []
    source = block.source
    if block.type == "document" and isinstance(source, dict) and source.get("type") == "text":
        return "\n".join([*head, str(source.get("data") or "")])
    if block.type == "search_result":
        if isinstance(source, str) and source:
            head.append(source)
        content = block.content
        texts = [content] if isinstance(content, str) else [b.text for b in content or [] if b.text]
        return "\n".join(head + texts)
    return None


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
