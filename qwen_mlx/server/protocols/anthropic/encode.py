"""Anthropic's replies: a message of content blocks (`text`, `tool_use`) with Anthropic's
stop reasons and usage, whole (`message`) or as its event stream (`MessageEvents`:
`message_start`, `ping`, `content_block_start` / `_delta` / `_stop`, `message_delta`,
`message_stop`; an `error` event when generation fails mid-stream); and errors in its
shape, `{"type": "error", "error": {"type", "message"}}` (`anthropic_error`)."""

from __future__ import annotations

import json
from typing import Any

from ....chat.tools import ToolCall
from ... import relay
from ...engine import Engine
from ...errors import APIError, ContextLengthError
from ...jobs import Finished, Job
from ...relay import Whole
from ...reply import Outcome

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


def message(engine: Engine, message_id: str, whole: Whole) -> dict[str, Any]:
    """A whole reply."""
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
    usage = {
        "input_tokens": done.prompt_tokens - done.cached_tokens,
        "output_tokens": done.completion_tokens,
        "cache_read_input_tokens": done.cached_tokens,
        "cache_creation_input_tokens": 0,
    }
    if done.drafted:  # speculative drafts (--draft): fields of ours, which clients ignore
        usage.update(draft_tokens=done.drafted, draft_accepted_tokens=done.accepted)
    return usage


def _expected_usage(engine: Engine, job: Job) -> dict[str, Any]:
    """message_start's usage, before the job runs: what the prompt cache holds of the
    prompt now (`message_delta` says what was read in the end; the two differ only when
    another request moved the cache in between). Claude Code adds input and cache reads
    up for its context gauge: the sum is the prompt either way."""
    cached = min(engine.cache.peek(job.tokens), len(job.tokens))
    return {
        "input_tokens": len(job.tokens) - cached,
        "output_tokens": 0,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(dict(type=name, **data))}\n\n"


class MessageEvents(relay.Encoder):
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
            "usage": _expected_usage(engine, job),
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


def anthropic_error(e: APIError) -> dict[str, Any]:
    """An error in Anthropic's shape; a prompt over the context in Anthropic's words,
    which Claude Code recognises (it then offers to compact the conversation)."""
    kind = _ERROR_TYPES.get(e.status, "api_error" if e.status >= 500 else "invalid_request_error")
    text = e.message
    if isinstance(e, ContextLengthError):
        text = f"prompt is too long: {e.tokens} tokens > {e.limit - 1} maximum"
    return {"type": "error", "error": {"type": kind, "message": text}}
