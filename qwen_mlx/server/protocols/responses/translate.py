"""Responses requests as the shared request (`..prompt`): the conversation so far (a stored
response's, when the request continues one, with the exact token ids of its replies),
then the input (text, or items: messages, `function_call` items joining the assistant
message before them, `function_call_output` items as tool messages, earlier reasoning
left out), the instructions as a system message (never carried over, as with OpenAI),
function tools, `tool_choice`, `text.format` as a JSON schema, sampling and logprobs."""

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
from .schemas import Format, FunctionChoice, FunctionTool, Item, Part, ResponsesRequest
from .store import Conversation, Stored


def conversation(req: ResponsesRequest, previous: Stored | None) -> Conversation:
    """The stored conversation `req` continues (if any), and its input."""
    history = previous.conversation() if previous is not None else Conversation()
    return Conversation(history.messages + _messages(req.input), history.reply_ids)


def chat_prompt(req: ResponsesRequest, conv: Conversation, *, logprobs: bool) -> ChatPrompt:
    """What the request asks for, over its conversation."""
    system = [message("system", req.instructions)] if req.instructions else []
    choice = req.tool_choice
    return ChatPrompt(
        system + conv.messages,
        tools=[_tool(t, i) for i, t in enumerate(req.tools or [])],
        tool_choice=NamedTool(choice.name) if isinstance(choice, FunctionChoice) else choice,
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


def _tool(tool: FunctionTool, index: int) -> Tool:
    if tool.type != "function" or not tool.name:
        why = f"only function tools with a name run here, not {tool.type!r}"
        raise unrunnable_tool(index, why + "; define the tool as a function.")
    return function_tool(tool.name, tool.description, tool.parameters)


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
            call = tool_call(item.call_id, item.name, item.arguments or "{}")
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
