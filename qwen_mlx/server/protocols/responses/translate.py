"""Responses requests as the shared request (`..prompt`): the conversation so far (a stored
response's, when the request continues one, with the exact token ids of its replies),
then the input (text, or items: messages, `function_call` items joining the assistant
message before them, `function_call_output` items as tool messages, earlier reasoning
left out), the instructions as a system message (never carried over, as with OpenAI),
function tools, `tool_choice`, `text.format` as a JSON schema, sampling and logprobs.

A `namespace` tool (Codex's) is its functions, each named in the prompt as Codex names
it (`flat_name`); a call of one goes back as a `function_call` with `namespace` and the
plain name (encode.py), and such calls in the input render by the flat name again.
OpenAI's hosted tools (web search, file search, ...) do not run here: they are left out
of the prompt (the route names them in the log), as are input items recording their
work, and a `tool_choice` forcing one is a 400."""

from __future__ import annotations

from typing import Any

from ....chat.tools import Tool
from ...errors import APIError
from ...prompt import (
    ChatPrompt,
    NamedTool,
    format_schema,
    function_tool,
    message,
    text_of,
    tool_call,
    unrunnable_tool,
)
from ...schemas import sampling
from .schemas import (
    Format,
    FunctionChoice,
    FunctionTool,
    HostedChoice,
    Item,
    Part,
    ResponsesRequest,
)
from .store import Conversation, Stored

# OpenAI's hosted tools: the server cannot run them, so the model is not offered them.
HOSTED_TOOLS = (
    "web_search",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "file_search",
    "code_interpreter",
    "image_generation",
    "computer_use",
    "computer_use_preview",
    "mcp",
)

# Input items recording a hosted tool's work (a conversation carried over from OpenAI's
# servers): left out, as the tools themselves are.
_HOSTED_RECORDS = (
    "web_search_call",
    "file_search_call",
    "code_interpreter_call",
    "image_generation_call",
    "computer_call",
    "computer_call_output",
    "mcp_list_tools",
    "mcp_call",
)


def flat_name(namespace: str, name: str) -> str:
    """A namespace's tool as one name, as Codex writes it (`ToolName::canonical_flat_name`
    in openai/codex): `multi_agent_v1` and `wait_agent` give `multi_agent_v1__wait_agent`."""
    return namespace.rstrip("_") + "__" + name.lstrip("_")


def namespaced(tools: list[FunctionTool] | None) -> dict[str, tuple[str, str]]:
    """Each namespace tool's flat name, and the (namespace, name) it stands for."""
    out: dict[str, tuple[str, str]] = {}
    for tool in tools or []:
        if tool.type == "namespace" and tool.name:
            for inner in tool.tools or []:
                if inner.name:
                    out[flat_name(tool.name, inner.name)] = (tool.name, inner.name)
    return out


def hosted(tools: list[FunctionTool] | None) -> list[str]:
    """The hosted tools a request lists, which are left out of its prompt."""
    return [t.type for t in tools or [] if _is_hosted(t.type)]


def _is_hosted(kind: str) -> bool:
    return kind in HOSTED_TOOLS or kind.startswith(("web_search", "computer_use"))


def conversation(req: ResponsesRequest, previous: Stored | None) -> Conversation:
    """The stored conversation `req` continues (if any), and its input."""
    history = previous.conversation() if previous is not None else Conversation()
    return Conversation(history.messages + _messages(req.input), history.reply_ids)


def chat_prompt(req: ResponsesRequest, conv: Conversation, *, logprobs: bool) -> ChatPrompt:
    """What the request asks for, over its conversation."""
    system = [message("system", req.instructions)] if req.instructions else []
    return ChatPrompt(
        system + conv.messages,
        tools=[t for i, given in enumerate(req.tools or []) for t in _tools(given, i)],
        tool_choice=_tool_choice(req.tool_choice),
        response_schema=_response_schema(req.text.format if req.text else None),
        sampling=sampling(
            max_tokens=req.max_output_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
        ),
        logprobs=(req.top_logprobs or 0) if logprobs else None,
        reply_ids={i + len(system): ids for i, ids in conv.reply_ids.items()},
    )


def _tools(tool: FunctionTool, index: int) -> list[Tool]:
    """The functions a request's tool offers the model: itself, a namespace's own (by
    their flat names), none for a hosted tool."""
    if _is_hosted(tool.type):
        return []
    if tool.type == "namespace" and tool.name:
        inner = [_function(t, f"{index}.tools.{j}") for j, t in enumerate(tool.tools or [])]
        return [
            function_tool(flat_name(tool.name, t.name or ""), t.description, t.parameters)
            for t in inner
        ]
    fn = _function(tool, str(index))
    return [function_tool(fn.name, fn.description, fn.parameters)]


def _function(tool: FunctionTool, where: str) -> FunctionTool:
    """`tool`, checked to be a function with a name (`where`: its path under tools)."""
    if tool.type != "function" or not tool.name:
        why = f"only function tools with a name run here, not {tool.type!r}"
        raise unrunnable_tool(where, why + "; define the tool as a function.")
    return tool


def _tool_choice(
    choice: str | FunctionChoice | HostedChoice | None,
) -> str | NamedTool | None:
    if isinstance(choice, FunctionChoice):
        if choice.namespace:
            return NamedTool(flat_name(choice.namespace, choice.name))
        return NamedTool(choice.name)
    if isinstance(choice, HostedChoice):
        if _is_hosted(choice.type):
            raise APIError(
                400,
                f"tool_choice forces the hosted tool {choice.type!r}, which does not run on "
                "this server; let the model choose (auto) or force a function tool.",
                param="tool_choice",
            )
        raise APIError(
            400,
            f"tool_choice of type {choice.type!r} is not supported; send none, auto, "
            'required or {"type": "function", "name": ...}.',
            param="tool_choice",
        )
    return choice


def _response_schema(fmt: Format | None) -> dict[str, Any] | None:
    if fmt is None:
        return None
    missing = "text.format json_schema needs a schema."
    return format_schema(fmt.type, fmt.schema_, param="text.format.schema", missing=missing)


def _text(content: str | list[Part] | None, param: str) -> str:
    return text_of(content, param, kinds=("input_text", "output_text", "text"), sep="")


def _messages(given: str | list[Item]) -> list[dict[str, Any]]:
    """Input items as chat messages: function calls join the assistant message before
    them, their outputs become tool messages."""
    if isinstance(given, str):
        return [message("user", given)]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(given):
        param = f"input.{i}"
        kind = item.type or ("message" if item.role else None)
        if kind == "message" and item.role is not None:
            out.append(message(item.role, _text(item.content, f"{param}.content")))
        elif kind == "function_call":
            if not item.name or not item.call_id:
                raise APIError(
                    400, f"{param}: a function_call needs name and call_id.", param=param
                )
            name = flat_name(item.namespace, item.name) if item.namespace else item.name
            call = tool_call(item.call_id, name, item.arguments or "{}")
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append(message("assistant", "", tool_calls=[call]))
        elif kind == "function_call_output":
            if not item.call_id:
                raise APIError(400, f"{param}: a function_call_output needs call_id.", param=param)
            output = _text(item.output, f"{param}.output")
            out.append(message("tool", output, tool_call_id=item.call_id))
        elif kind == "reasoning":
            continue  # this model does not reason out loud
        elif kind in _HOSTED_RECORDS:
            continue  # what a hosted tool did elsewhere: nothing this model called
        else:
            raise APIError(
                400,
                f"{param}: {kind!r} items are not supported; send messages, function_call "
                "and function_call_output items.",
                param=param,
            )
    if not out:
        raise APIError(400, "input has no messages.", param="input")
    return out
