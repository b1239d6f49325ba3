"""Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

A request is translated into the shared request every protocol speaks (`..prompt`:
system prompt, turns of content blocks, `tool_use` blocks as tool calls, `tool_result`
blocks as tool messages, `tool_choice`, stop sequences, sampling, `output_config.format`
as a JSON schema) and prepared by the same `prepare_chat`, so templates, tool schemas,
forced calls and context checks behave exactly as on `/v1/chat/completions`. Replies
come back as content blocks (`text`, `tool_use`) with Anthropic's stop reasons and
usage, whole or as Anthropic's event stream
(`message_start`, `content_block_start` / `_delta` / `_stop`, `ping`, `message_delta`,
`message_stop`; an `error` event when generation fails mid-stream).

The key is accepted as `x-api-key` (what Anthropic's SDKs and Claude Code send) or as
`Authorization: Bearer`. Every error on these routes, including validation, auth and
body-size refusals, is in Anthropic's shape, `{"type": "error", "error": {"type",
"message"}}` (`anthropic_error`, which the server's error handling asks for on these
paths).
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from ..chat.tools import Tool, ToolCall
from . import relay
from .engine import Engine
from .errors import APIError
from .guard import KeySource, bearer_token
from .jobs import Finished, Job
from .prepare import Prepared, prepare_chat
from .prompt import ChatPrompt, NamedTool, function_tool, message, text_of, tool_call
from .protocol import Protocol, ServerContext
from .reply import Outcome
from .schemas import sampling

PREFIX = "/v1/messages"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def _number(**bounds: float) -> Any:
    return Field(default=None, strict=True, allow_inf_nan=False, **bounds)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # metadata, thinking, service_tier, ...


class Block(_Body):
    """A content block; which fields matter depends on `type` (checked when translating)."""

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: str | list[Block] | None = None
    is_error: StrictBool | None = None


class Turn(_Body):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class ToolDef(_Body):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None  # "custom"; Anthropic's server tools (web search...) are refused


class ToolChoice(_Body):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: StrictBool | None = None


class OutputFormat(_Body):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Body):
    format: OutputFormat | None = None  # structured output; `effort` means nothing here


class CountRequest(_Body):
    model: str
    messages: list[Turn] = Field(min_length=1)
    system: str | list[Block] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None


class MessagesRequest(CountRequest):
    max_tokens: StrictInt = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = _number(ge=0, le=1)
    top_p: float | None = _number(gt=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0)
    stream: StrictBool = False
    output_config: OutputConfig | None = None


def install(router: APIRouter, ctx: ServerContext) -> None:
    """The Messages API's routes over `ctx`'s engine."""
    engine, guard = ctx.engine, ctx.guard

    @router.post(PREFIX)
    async def messages(request: Request) -> Any:
        req = await guard.read(request, MessagesRequest)
        engine.check_model(req.model)
        prepared = await engine.prepare(_prepare, engine, req)
        job, reply = prepared.job, prepared.reply
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        if req.stream:
            return relay.stream(engine, job, request, _Events(engine, job, message_id), reply)
        whole = await relay.whole(engine, job, request, reply)
        end, done = whole.outcome, whole.done
        blocks: list[dict[str, Any]] = []
        if end.content:
            blocks.append({"type": "text", "text": end.content})
        blocks += [_tool_use(c) for c in end.calls]
        return {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": engine.model.name,
            "content": blocks,
            "stop_reason": _stop_reason(end.finish_reason, done),
            "stop_sequence": done.stop_sequence,
            "usage": _usage(done),
        }

    @router.post(PREFIX + "/count_tokens")
    async def count_tokens(request: Request) -> dict[str, int]:
        req = await guard.read(request, CountRequest)
        engine.check_model(req.model)
        prepared = await engine.prepare(_prepare, engine, req, queue=False)
        return {"input_tokens": len(prepared.job.tokens)}


# -- requests ------------------------------------------------------------------------------


def _prepare(engine: Engine, req: CountRequest) -> Prepared:
    """On a preparation thread: the request's job, and the reply that shapes its text."""
    return prepare_chat(engine, chat_prompt(req))


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


def _turn(turn: Turn, param: str) -> list[dict[str, Any]]:
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
        raise APIError(
            400,
            f"tools.{index}: Anthropic's server tools ({tool.type}) do not run here; "
            "define a custom tool with an input_schema.",
            param=f"tools.{index}",
        )
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


# -- replies -------------------------------------------------------------------------------


def _tool_use(call: ToolCall) -> dict[str, Any]:
    """A `tool_use` block; for a call max_tokens cut off, its input is what is complete in
    the arguments written so far (as Anthropic's SDKs read a partial `input_json_delta`)."""
    tool_id = call.id.replace("call_", "toolu_", 1)
    return {"type": "tool_use", "id": tool_id, "name": call.name, "input": call.arguments or {}}


def _stop_reason(reason: str, done: Finished) -> str:
    if reason == "tool_calls":
        return "tool_use"
    if reason == "length":
        return "max_tokens"
    return "stop_sequence" if done.stop_sequence else "end_turn"


def _usage(done: Finished) -> dict[str, Any]:
    # Anthropic counts cache reads apart: input_tokens are those read afresh.
    return {
        "input_tokens": done.prompt_tokens - done.cached_tokens,
        "output_tokens": done.completion_tokens,
        "cache_read_input_tokens": done.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(dict(type=name, **data))}\n\n"


class _Events(relay.Encoder):
    """Anthropic's event stream for one reply: the message, a text block as the text
    comes, then a block for each tool call, the stop reason and usage."""

    def __init__(self, engine: Engine, job: Job, message_id: str) -> None:
        self.message = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": engine.model.name,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": len(job.tokens), "output_tokens": 0},
        }
        self.index = 0  # of the block being written
        self.text_open = False

    def start(self) -> list[str]:
        return [_event("message_start", {"message": self.message}), _event("ping", {})]

    def text(self, piece: str, shown: str) -> list[str]:
        return self._text_delta(shown) if shown else []

    def end(self, done: Finished, outcome: Outcome) -> list[str]:
        events = []
        if outcome.tail or (not self.text_open and not outcome.calls):
            events += self._text_delta(outcome.tail)
        if self.text_open:
            events.append(_event("content_block_stop", {"index": self.index}))
            self.index += 1
        for call in outcome.calls:
            block = dict(_tool_use(call), input={})
            events.append(
                _event("content_block_start", {"index": self.index, "content_block": block})
            )
            if call.partial is not None:  # cut off by max_tokens: as far as it was written
                partial = call.partial
            else:
                partial = json.dumps(call.arguments or {}, ensure_ascii=False)
            delta = {"type": "input_json_delta", "partial_json": partial}
            events.append(_event("content_block_delta", {"index": self.index, "delta": delta}))
            events.append(_event("content_block_stop", {"index": self.index}))
            self.index += 1
        stop = {
            "stop_reason": _stop_reason(outcome.finish_reason, done),
            "stop_sequence": done.stop_sequence,
        }
        events.append(_event("message_delta", {"delta": stop, "usage": _usage(done)}))
        events.append(_event("message_stop", {}))
        return events

    def error(self, error: APIError) -> list[str]:
        return [_event("error", {"error": anthropic_error(error)["error"]})]

    def _text_delta(self, text: str) -> list[str]:
        events = []
        if not self.text_open:
            self.text_open = True
            block = {"type": "text", "text": ""}
            events.append(
                _event("content_block_start", {"index": self.index, "content_block": block})
            )
        delta = {"type": "text_delta", "text": text}
        events.append(_event("content_block_delta", {"index": self.index, "delta": delta}))
        return events


# -- auth and errors -----------------------------------------------------------------------


def _x_api_key_or_bearer(request: Request) -> str | None:
    given = request.headers.get("x-api-key")
    return given if given is not None else bearer_token(request)


def anthropic_error(e: APIError) -> dict[str, Any]:
    """An error in Anthropic's shape."""
    kind = _ERROR_TYPES.get(e.status, "api_error" if e.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": e.message}}


PROTOCOL = Protocol(
    name="anthropic",
    prefixes=(PREFIX,),
    install=install,
    error_body=anthropic_error,
    key=KeySource(
        _x_api_key_or_bearer,
        "Send it as `x-api-key: <key>` (ANTHROPIC_API_KEY) or `Authorization: Bearer <key>`.",
    ),
)
