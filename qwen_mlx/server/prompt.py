"""The shared request: what every protocol's request becomes before it is prepared into a
job (prepare.py). A `ChatPrompt` is a conversation to reply to (messages as the chat
template takes them, tools, tool choice, a JSON schema for the reply, sampling); a
`TextPrompt` is raw text or token ids to continue.

Each protocol translates its own request into one, with the helpers here so that the
same thing is said the same way whichever protocol said it: a message (`message`), a
tool call in it (`tool_call`), a tool (`function_tool`), text given as content parts or
blocks (`text_of`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..chat.tools import Tool
from .errors import APIError
from .schemas import Sampling


@dataclass(frozen=True)
class NamedTool:
    """A tool choice naming the one tool the reply must call."""

    name: str


@dataclass
class ChatPrompt:
    """A conversation to reply to. `tool_choice` is "auto" (or None), "none" (the tools
    are left out), "required" (a call to one of them) or a `NamedTool`; `logprobs` asks
    for each token's log probability and that many alternatives; `reply_ids` gives the
    exact token ids the model produced for some assistant messages (by index), which go
    into the prompt as they are, so a conversation the server remembers meets its cache
    token for token. `deferred` tools may be called but are not in the prompt's tool
    list: the conversation shows their definitions where it loads them (Anthropic's
    tool search)."""

    messages: list[dict[str, Any]]
    tools: list[Tool] = field(default_factory=list)
    deferred: list[Tool] = field(default_factory=list)
    tool_choice: str | NamedTool | None = None
    response_schema: dict[str, Any] | None = None
    sampling: Sampling = field(default_factory=Sampling)
    logprobs: int | None = None
    speculative: bool = True  # with the server's draft (--draft), if it has one
    reply_ids: Mapping[int, Sequence[int]] = field(default_factory=dict)


@dataclass
class TextPrompt:
    """Text, or token ids, to continue as they are (no chat template)."""

    prompt: str | list[int]
    sampling: Sampling = field(default_factory=Sampling)
    logprobs: int | None = None
    speculative: bool = True


def message(
    role: str,
    content: str,
    *,
    tool_calls: Sequence[dict[str, Any]] = (),
    tool_call_id: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A message as the chat template takes it (OpenAI's shape, content a string; a
    developer message is a system message)."""
    out: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": content}
    if tool_calls:
        out["tool_calls"] = list(tool_calls)
    if tool_call_id is not None:
        out["tool_call_id"] = tool_call_id
    if name is not None:
        out["name"] = name
    return out


def tool_call(call_id: str, name: str, arguments: str | dict[str, Any]) -> dict[str, Any]:
    """An assistant message's call of `name`, its arguments (JSON text or an object)
    written as the model writes them, `json.dumps` with its default separators (the chat
    template's `tojson`). Many clients send a call back re-serialized (compact, or as an
    object): written one way, the conversation keeps the prompt its earlier turn had, so
    the server's prompt cache still holds it. Text that is not a JSON object stays as
    it is; no text at all (what some clients send for a call without arguments) is an
    empty object."""
    if isinstance(arguments, str) and not arguments.strip():
        arguments = {}
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            arguments = parsed
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def function_tool(name: str, description: str | None, parameters: dict[str, Any] | None) -> Tool:
    """A tool the model may call; no parameters means an object with none."""
    return Tool(name, description or "", parameters or {"type": "object", "properties": {}})


def format_schema(
    kind: str, schema: dict[str, Any] | None, *, param: str, missing: str
) -> dict[str, Any] | None:
    """The JSON schema a reply format asks for (OpenAI's kinds): none for "text", any
    object for "json_object", `schema` for "json_schema" (a 400 naming `param`, saying
    `missing`, when there is none)."""
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if schema is None:
        raise APIError(400, missing, param=param)
    return schema


def unrunnable_tool(index: int | str, why: str) -> APIError:
    """The 400 for a request's tool `index` (or a path under it, `4.tools.1`), which this
    server cannot run (`why`)."""
    return APIError(400, f"tools.{index}: {why}", param=f"tools.{index}")


def text_of(
    content: str | Sequence[Any] | None,
    param: str,
    *,
    kinds: tuple[str, ...] = ("text",),
    sep: str = "\n",
) -> str:
    """Content given as a string or as parts (anything with `type` and `text`: OpenAI's
    content parts, Anthropic's blocks, the Responses API's parts) as one string, the
    parts' texts joined by `sep`; a part of another kind than `kinds` is a 400 naming
    `param`, since this model reads text only."""
    if content is None or isinstance(content, str):
        return content or ""
    for part in content:
        if part.type not in kinds or part.text is None:
            raise APIError(
                400,
                f"{param}: only text content is supported here, not {part.type!r}.",
                param=param,
            )
    return sep.join(part.text for part in content)
