"""The response a Responses request becomes: output items (`message` with `output_text`,
`function_call`), whole (`ResponseWriter.complete`, which also stores it) or as the
Responses event stream (`ResponseEvents`: `response.created`,
`response.output_item.added`, `response.output_text.delta`, ..., `response.completed`
or `response.incomplete`; an `error` event when generation fails mid-stream)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ....chat.tools import ToolCall
from ... import relay
from ...engine import Engine
from ...errors import APIError
from ...jobs import Finished
from ...logprobs import chat_logprobs, scored
from ...reply import Outcome
from .schemas import FunctionChoice, ResponsesRequest
from .store import Conversation, ResponseStore, Stored
from .translate import namespaced


class ResponseWriter:
    """The response one request becomes: its ids, its output items, the whole response
    (stored with its conversation when the request asks to be)."""

    def __init__(self, engine: Engine, store: ResponseStore, req: ResponsesRequest) -> None:
        self.engine, self.store, self.req = engine, store, req
        self.id = f"resp_{uuid.uuid4().hex}"
        self.message_id = f"msg_{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.conversation = Conversation()  # set when the request is prepared
        self.wants_logprobs = "message.output_text.logprobs" in (req.include or [])
        self.logprobs: list[dict[str, Any]] = []  # the output text's, when asked for
        self.namespaced = namespaced(req.tools)  # flat name: (namespace, name)

    def entries(self, parts: list[str]) -> list[dict[str, Any]]:
        """The logprobs entries of these pieces of generated text."""
        if not self.wants_logprobs:
            return []
        return chat_logprobs(self.engine.model, scored(parts))["content"]

    def output(self, content: str | None, calls: list[ToolCall]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if content or not calls:
            items.append(self.message_item(content or "", "completed"))
        items += [self.call_item(c, "completed") for c in calls]
        return items

    def message_item(self, text: str, status: str) -> dict[str, Any]:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": self.logprobs}
        parts = [part]
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": parts if status == "completed" else [],
        }

    def call_item(self, call: ToolCall, status: str) -> dict[str, Any]:
        """A function_call item; done, a call max_tokens cut off is "incomplete", with its
        arguments as far as they were written. A call of a namespace's tool names the
        namespace and the tool's own name (how Codex routes it)."""
        if call.partial is not None:
            arguments = call.partial
            status = "incomplete" if status == "completed" else status
        else:
            arguments = json.dumps(call.arguments or {}, ensure_ascii=False)
        item = {
            "id": call.id.replace("call_", "fc_", 1),
            "type": "function_call",
            "status": status,
            "call_id": call.id,
            "name": call.name,
            "arguments": arguments if status != "in_progress" else "",
        }
        if call.name in self.namespaced:
            item["namespace"], item["name"] = self.namespaced[call.name]
        return item

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
                req.tool_choice.model_dump(exclude_none=True)
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
            messages, reply_ids = self.conversation.messages, dict(self.conversation.reply_ids)
            if calls:
                message["tool_calls"] = [c.to_message() for c in calls]
            elif done.reply_tokens and not done.stop_sequence:
                eos = set(self.engine.model.tokenizer.eos_token_ids)
                ids = list(done.reply_tokens)
                while ids and ids[-1] in eos:
                    ids.pop()
                reply_ids[len(messages)] = ids
            self.store.put(self.id, Stored.of(response, [*messages, message], reply_ids))
        return response


class ResponseEvents(relay.Encoder):
    """The Responses event stream of one response: the response created, its message's text
    as it comes, each function call's arguments, then the response completed (or
    incomplete); an `error` event when generation fails."""

    def __init__(self, writer: ResponseWriter) -> None:
        self.writer = writer
        self.sequence = 0
        self.written: list[str] = []  # the message's text so far
        self.where = {"item_id": writer.message_id, "output_index": 0, "content_index": 0}
        self.part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}

    def event(self, kind: str, **data: Any) -> str:
        self.sequence += 1
        body = {"type": kind, "sequence_number": self.sequence - 1, **data}
        return f"event: {kind}\ndata: {json.dumps(body)}\n\n"

    def start(self) -> list[str]:
        opening = self.writer.response("in_progress", [])
        return [
            self.event("response.created", response=opening),
            self.event("response.in_progress", response=opening),
        ]

    def text(self, piece: str, shown: str) -> list[str]:
        entries = self.writer.entries([piece])
        self.writer.logprobs += entries
        if not shown:
            return []
        return self._delta(shown, entries)

    def end(self, done: Finished, outcome: Outcome) -> list[str]:
        writer, events = self.writer, []

        def add(kind: str, **data: Any) -> None:
            events.append(self.event(kind, **data))

        if outcome.tail or (not self.written and not outcome.calls):
            events += self._delta(outcome.tail, [])
        index = 0
        if self.written:
            whole = "".join(self.written)
            add("response.output_text.done", text=whole, logprobs=writer.logprobs, **self.where)
            add("response.content_part.done", part=dict(self.part, text=whole), **self.where)
            add(
                "response.output_item.done",
                output_index=0,
                item=writer.message_item(whole, "completed"),
            )
            index = 1
        for call in outcome.calls:
            add(
                "response.output_item.added",
                output_index=index,
                item=writer.call_item(call, "in_progress"),
            )
            item = writer.call_item(call, "completed")
            ids = {"item_id": item["id"], "output_index": index}
            add("response.function_call_arguments.delta", delta=item["arguments"], **ids)
            add(
                "response.function_call_arguments.done",
                arguments=item["arguments"],
                name=item["name"],
                **ids,
            )
            add("response.output_item.done", output_index=index, item=item)
            index += 1
        response = writer.complete(done, outcome)
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
            item = self.writer.message_item("", "in_progress")
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
        # With speculative drafts (--draft), chat completions' names for them beside
        # the reasoning tokens (clients ignore what they do not know).
        "output_tokens_details": {"reasoning_tokens": 0, **_drafts(done)},
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _drafts(done: Finished) -> dict[str, int]:
    if not done.drafted:
        return {}
    return {
        "accepted_prediction_tokens": done.accepted,
        "rejected_prediction_tokens": done.drafted - done.accepted,
    }
