"""OpenAI's Responses API: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`.

A request (input as text or items, `instructions`, function tools, `function_call` and
`function_call_output` items, `text.format`, sampling) is translated into the shared
request every protocol speaks (`..prompt`) and prepared by the same `prepare_chat`. Replies
come back as output items (`message` with `output_text`, `function_call`), whole or as
the Responses event stream (`response.created`, `response.output_item.added`,
`response.output_text.delta`, ..., `response.completed` or `response.incomplete`).

Stateful where Ollama's is not: a stored response (`store`, true unless the request says
false) keeps its conversation and the exact token ids the model generated, and a request
naming it as `previous_response_id` continues that conversation with those ids spliced
into the prompt, so it meets the engine's pooled KV cache token for token and prefills
only what is new (`usage.input_tokens_details.cached_tokens` says how much it saved).
As with OpenAI, `instructions` are not carried over.

Stored responses live in this process's memory: each as the JSON that GET returns and its
conversation (serialized, with the reply ids as 32-bit arrays), nothing else of the
request. The store keeps the most recent ones up to `DEFAULT_STORED` of them and
`DEFAULT_STORED_BYTES` in all, dropping the oldest first. `metadata` is held to OpenAI's
limits (16 keys of at most 64 characters, values of at most 512), refused past them in
OpenAI's words.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from ..chat.tools import Tool, ToolCall
from . import relay
from .engine import Engine
from .errors import APIError
from .jobs import Finished
from .logprobs import chat_logprobs, scored
from .prepare import Prepared, prepare_chat
from .prompt import ChatPrompt, NamedTool, function_tool, message, text_of, tool_call
from .protocol import Protocol, ServerContext
from .reply import Outcome
from .schemas import sampling

logger = logging.getLogger(__name__)

DEFAULT_STORED = 1000
DEFAULT_STORED_BYTES = 256 << 20
# OpenAI's limits on `metadata`.
METADATA_KEYS = 16
METADATA_KEY_CHARS = 64
METADATA_VALUE_CHARS = 512


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # metadata, reasoning, include, truncation...


class Part(_Body):
    type: str
    text: str | None = None


class Item(_Body):
    """An input item; which fields matter depends on `type` (checked when translating)."""

    type: str | None = None  # "message" when it has a role
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[Part] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[Part] | None = None


class FunctionTool(_Body):
    type: str  # "function"; OpenAI's hosted tools (web search, ...) are refused
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class FunctionChoice(_Body):
    type: Literal["function"]
    name: str


class Format(_Body):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class TextOptions(_Body):
    format: Format | None = None


def _number(**bounds: float) -> Any:
    return Field(default=None, strict=True, allow_inf_nan=False, **bounds)


class ResponsesRequest(_Body):
    model: str | None = None
    input: str | list[Item]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    text: TextOptions | None = None
    max_output_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = _number(ge=0, le=2)
    top_p: float | None = _number(gt=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0)
    seed: StrictInt | None = None
    stream: StrictBool = False
    store: StrictBool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    include: list[str] | None = None  # "message.output_text.logprobs" asks for logprobs
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)


@dataclass(frozen=True)
class Stored:
    """A stored response: the JSON GET returns, and its conversation: the chat messages
    (without the instructions) as JSON, and the exact token ids of its assistant replies
    by message index."""

    response: bytes
    messages: bytes
    reply_ids: dict[int, array]

    @classmethod
    def of(
        cls,
        response: dict[str, Any],
        messages: list[dict[str, Any]],
        reply_ids: dict[int, list[int]],
    ) -> Stored:
        return cls(
            json.dumps(response, ensure_ascii=False).encode(),
            json.dumps(messages, ensure_ascii=False).encode(),
            {i: array("I", ids) for i, ids in reply_ids.items()},
        )

    @property
    def bytes(self) -> int:
        """About what it holds in memory."""
        ids = sum(len(a) * a.itemsize + 64 for a in self.reply_ids.values())
        return len(self.response) + len(self.messages) + ids + 256

    def conversation(self) -> tuple[list[dict[str, Any]], dict[int, list[int]]]:
        """(messages, reply ids) to continue from."""
        return json.loads(self.messages), {i: a.tolist() for i, a in self.reply_ids.items()}


class ResponseStore:
    """The most recent stored responses by id, at most `limit` of them and `max_bytes`
    in all (the oldest go first; one larger than that alone is not kept); safe from any
    thread."""

    def __init__(self, limit: int = DEFAULT_STORED, max_bytes: int = DEFAULT_STORED_BYTES) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, Stored] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(self, response_id: str) -> Stored | None:
        with self._lock:
            return self._items.get(response_id)

    def put(self, response_id: str, stored: Stored) -> None:
        if stored.bytes > self.max_bytes:
            logger.warning(
                "%s: not stored: %s bytes, more than the store's %s",
                response_id,
                f"{stored.bytes:,}",
                f"{self.max_bytes:,}",
            )
            return
        with self._lock:
            self._drop(response_id)
            self._items[response_id] = stored
            self.bytes += stored.bytes
            while len(self._items) > self.limit or self.bytes > self.max_bytes:
                self._drop(next(iter(self._items)))

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        stored = self._items.pop(response_id, None)
        if stored is None:
            return False
        self.bytes -= stored.bytes
        return True


def check_metadata(metadata: dict[str, str] | None) -> None:
    """Refuse `metadata` past OpenAI's limits, in OpenAI's words."""
    if not metadata:
        return
    if len(metadata) > METADATA_KEYS:
        raise APIError(
            400,
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{METADATA_KEYS} properties, but got an object with {len(metadata)} properties "
            "instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_CHARS:
            raise APIError(
                400,
                f"Invalid 'metadata': key too long. Expected a key with maximum length "
                f"{METADATA_KEY_CHARS}, but got a key with length {len(key)} instead.",
                param="metadata",
                code="string_above_max_length",
            )
        if len(value) > METADATA_VALUE_CHARS:
            raise APIError(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                f"length {METADATA_VALUE_CHARS}, but got a string with length {len(value)} "
                "instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )


def install(router: APIRouter, ctx: ServerContext) -> None:
    """The Responses API's routes over `ctx`'s engine; its store is `ctx.state.responses`."""
    engine, guard = ctx.engine, ctx.guard
    store = ctx.state.responses = ResponseStore()

    @router.post("/v1/responses")
    async def create(request: Request) -> Any:
        req = await guard.read(request, ResponsesRequest)
        engine.check_model(req.model)
        check_metadata(req.metadata)
        turn = _Turn(engine, store, req)
        prepared = await engine.prepare(turn.prepare)
        job, reply = prepared.job, prepared.reply
        if req.stream:
            return relay.stream(engine, job, request, _Events(turn), reply)
        whole = await relay.whole(engine, job, request, reply)
        turn.logprobs += turn.entries(whole.parts)
        return turn.complete(whole.done, whole.outcome)

    @router.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str) -> Response:
        stored = store.get(response_id)
        if stored is None:
            raise _not_found(response_id)
        return Response(stored.response, media_type="application/json")

    @router.delete("/v1/responses/{response_id}")
    async def delete(response_id: str) -> dict[str, Any]:
        if not store.delete(response_id):
            raise _not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}


def _not_found(response_id: str) -> APIError:
    return APIError(
        404,
        f"No stored response has the id {response_id!r} (it was not stored, was deleted, "
        "was dropped to make room for newer ones, or the server restarted).",
        code="not_found",
    )


class _Turn:
    """One request: its conversation, its chat request, and the response it becomes."""

    def __init__(self, engine: Engine, store: ResponseStore, req: ResponsesRequest) -> None:
        self.engine, self.store, self.req = engine, store, req
        self.id = f"resp_{uuid.uuid4().hex}"
        self.message_id = f"msg_{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.previous: Stored | None = None
        if req.previous_response_id is not None:
            self.previous = store.get(req.previous_response_id)
            if self.previous is None:
                raise APIError(
                    400,
                    f"Previous response with id {req.previous_response_id!r} not found "
                    "(send `store: true` on the request that made it).",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
        self.messages: list[dict[str, Any]] = []  # the conversation, set by `prepare`
        self.reply_ids: dict[int, list[int]] = {}
        self.wants_logprobs = "message.output_text.logprobs" in (req.include or [])
        self.logprobs: list[dict[str, Any]] = []  # the output text's, when asked for

    def entries(self, parts: list[str]) -> list[dict[str, Any]]:
        """The logprobs entries of these pieces of generated text."""
        if not self.wants_logprobs:
            return []
        return chat_logprobs(self.engine.model, scored(parts))["content"]

    def prepare(self) -> Prepared:
        """The job (on a preparation thread): the conversation through `prepare_chat`."""
        req = self.req
        history: list[dict[str, Any]] = []
        if self.previous is not None:
            history, self.reply_ids = self.previous.conversation()
        self.messages = history + _messages(req.input)
        system = [message("system", req.instructions)] if req.instructions else []
        choice = req.tool_choice
        shift = len(system)
        prompt = ChatPrompt(
            system + self.messages,
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
            logprobs=(req.top_logprobs or 0) if self.wants_logprobs else None,
            reply_ids={i + shift: ids for i, ids in self.reply_ids.items()},
        )
        return prepare_chat(self.engine, prompt)

    # -- the response ----------------------------------------------------------------------

    def output(self, content: str | None, calls: list[ToolCall]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if content or not calls:
            items.append(self._message_item(content or "", "completed"))
        items += [self._call_item(c, "completed") for c in calls]
        return items

    def _message_item(self, text: str, status: str) -> dict[str, Any]:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": self.logprobs}
        parts = [part]
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": parts if status == "completed" else [],
        }

    @staticmethod
    def _call_item(call: ToolCall, status: str) -> dict[str, Any]:
        """A function_call item; done, a call max_tokens cut off is "incomplete", with its
        arguments as far as they were written."""
        if call.partial is not None:
            arguments = call.partial
            status = "incomplete" if status == "completed" else status
        else:
            arguments = json.dumps(call.arguments or {}, ensure_ascii=False)
        return {
            "id": call.id.replace("call_", "fc_", 1),
            "type": "function_call",
            "status": status,
            "call_id": call.id,
            "name": call.name,
            "arguments": arguments if status != "in_progress" else "",
        }

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        done: Finished | None = None,
        incomplete: str | None = None,
    ) -> dict[str, Any]:
        req = self.req
        fmt = req.text.format if req.text and req.text.format else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.engine.model.name,
            "output": output,
            "instructions": req.instructions,
            "previous_response_id": req.previous_response_id,
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
            "tool_choice": (
                req.tool_choice.model_dump()
                if isinstance(req.tool_choice, FunctionChoice)
                else req.tool_choice or "auto"
            ),
            "parallel_tool_calls": True,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_output_tokens": req.max_output_tokens,
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True)}
            if fmt
            else {"format": {"type": "text"}},
            "store": req.store,
            "metadata": req.metadata or {},
            "truncation": "disabled",
            "error": None,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "usage": _usage(done) if done else None,
        }

    def complete(self, done: Finished, outcome: Outcome) -> dict[str, Any]:
        """The finished response (stored when asked to)."""
        content, calls = outcome.content, outcome.calls
        incomplete = "max_output_tokens" if outcome.finish_reason == "length" else None
        output = self.output(content, calls)
        status = "incomplete" if incomplete else "completed"
        response = self.response(status, output, done, incomplete)
        if self.req.store:
            message: dict[str, Any] = {"role": "assistant", "content": content or ""}
            reply_ids = dict(self.reply_ids)
            if calls:
                message["tool_calls"] = [c.to_message() for c in calls]
            elif done.reply_tokens and not done.stop_sequence:
                eos = set(self.engine.model.tokenizer.eos_token_ids)
                ids = list(done.reply_tokens)
                while ids and ids[-1] in eos:
                    ids.pop()
                reply_ids[len(self.messages)] = ids
            self.store.put(self.id, Stored.of(response, [*self.messages, message], reply_ids))
        return response


class _Events(relay.Encoder):
    """The Responses event stream of one turn: the response created, its message's text
    as it comes, each function call's arguments, then the response completed (or
    incomplete); an `error` event when generation fails."""

    def __init__(self, turn: _Turn) -> None:
        self.turn = turn
        self.sequence = 0
        self.written: list[str] = []  # the message's text so far
        self.where = {"item_id": turn.message_id, "output_index": 0, "content_index": 0}
        self.part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}

    def event(self, kind: str, **data: Any) -> str:
        self.sequence += 1
        body = {"type": kind, "sequence_number": self.sequence - 1, **data}
        return f"event: {kind}\ndata: {json.dumps(body)}\n\n"

    def start(self) -> list[str]:
        opening = self.turn.response("in_progress", [])
        return [
            self.event("response.created", response=opening),
            self.event("response.in_progress", response=opening),
        ]

    def text(self, piece: str, shown: str) -> list[str]:
        entries = self.turn.entries([piece])
        self.turn.logprobs += entries
        if not shown:
            return []
        return self._delta(shown, entries)

    def end(self, done: Finished, outcome: Outcome) -> list[str]:
        turn, events = self.turn, []

        def add(kind: str, **data: Any) -> None:
            events.append(self.event(kind, **data))

        if outcome.tail or (not self.written and not outcome.calls):
            events += self._delta(outcome.tail, [])
        index = 0
        if self.written:
            whole = "".join(self.written)
            add("response.output_text.done", text=whole, logprobs=turn.logprobs, **self.where)
            add("response.content_part.done", part=dict(self.part, text=whole), **self.where)
            add(
                "response.output_item.done",
                output_index=0,
                item=turn._message_item(whole, "completed"),
            )
            index = 1
        for call in outcome.calls:
            add(
                "response.output_item.added",
                output_index=index,
                item=turn._call_item(call, "in_progress"),
            )
            item = turn._call_item(call, "completed")
            ids = {"item_id": item["id"], "output_index": index}
            add("response.function_call_arguments.delta", delta=item["arguments"], **ids)
            add(
                "response.function_call_arguments.done",
                arguments=item["arguments"],
                name=call.name,
                **ids,
            )
            add("response.output_item.done", output_index=index, item=item)
            index += 1
        response = turn.complete(done, outcome)
        add(
            f"response.{'incomplete' if response['status'] == 'incomplete' else 'completed'}",
            response=response,
        )
        return events

    def error(self, error: APIError) -> list[str]:
        return [self.event("error", code=error.code, message=error.message, param=error.param)]

    def _delta(self, text: str, logprobs: list[dict[str, Any]]) -> list[str]:
        events = []
        if not self.written:  # the message and its text part open with the first text
            item = self.turn._message_item("", "in_progress")
            events.append(self.event("response.output_item.added", output_index=0, item=item))
            events.append(self.event("response.content_part.added", part=self.part, **self.where))
        self.written.append(text)
        events.append(
            self.event("response.output_text.delta", delta=text, logprobs=logprobs, **self.where)
        )
        return events


def _usage(done: Finished) -> dict[str, Any]:
    return {
        "input_tokens": done.prompt_tokens,
        "input_tokens_details": {"cached_tokens": done.cached_tokens},
        "output_tokens": done.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _tool(tool: FunctionTool, index: int) -> Tool:
    if tool.type != "function" or not tool.name:
        raise APIError(
            400,
            f"tools.{index}: only function tools with a name run here, not {tool.type!r}; "
            "define the tool as a function.",
            param=f"tools.{index}",
        )
    return function_tool(tool.name, tool.description, tool.parameters)


def _response_schema(fmt: Format | None) -> dict[str, Any] | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    if fmt.schema_ is None:
        raise APIError(400, "text.format json_schema needs a schema.", param="text.format.schema")
    return fmt.schema_


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


PROTOCOL = Protocol(name="responses", prefixes=("/v1/responses",), install=install)
