"""OpenAI's replies, for chat completions and completions: whole (`Frame.chat`,
`Frame.completion`) and streamed as server-sent events (`ChatChunks`,
`CompletionChunks`: `data: {...}` chunks, `data: [DONE]` last; an error arrives as a
`data: {"error": ...}` chunk before `[DONE]`, the status line having gone out); and the
model card of `/v1/models`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ....chat.tools import ToolCall
from ....runtime import Model
from ... import relay
from ...engine import Engine
from ...errors import APIError, openai_error
from ...jobs import Finished, Job
from ...logprobs import chat_logprobs, completion_logprobs, scored
from ...relay import Whole
from ...reply import Outcome


def model_card(model: Model) -> dict[str, Any]:
    from datetime import datetime

    try:
        stamp = int(datetime.fromisoformat(model.manifest.created_at).timestamp())
    except (AttributeError, ValueError):  # no manifest, or no date in it
        stamp = 0
    return {"id": model.name, "object": "model", "created": stamp, "owned_by": "qwen-mlx"}


def _usage(done: Finished) -> dict[str, Any]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
        # OpenAI's fields for predicted outputs, here the speculative drafts (--draft).
        "completion_tokens_details": {
            "accepted_prediction_tokens": done.accepted,
            "rejected_prediction_tokens": done.drafted - done.accepted,
        },
    }


def _tool_call_entries(calls: list[ToolCall], *, indexed: bool = False) -> list[dict[str, Any]]:
    return [
        dict(c.to_message(), index=i) if indexed else c.to_message() for i, c in enumerate(calls)
    ]


# -- streams ---------------------------------------------------------------------------------


class Frame:
    """What every response and stream chunk of one request repeats: id, time, model."""

    def __init__(self, engine: Engine, obj: str, prefix: str, include_usage: bool) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.obj = obj
        self.model = engine.model
        self.fingerprint = f"fp_{engine.model.fingerprint[:10]}"
        self.include_usage = include_usage

    def _head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model.name,
            "system_fingerprint": self.fingerprint,
        }

    def body(self, obj: str, choice: dict[str, Any], done: Finished) -> dict[str, Any]:
        """A whole response, of its one choice."""
        return {**self._head(obj), "choices": [choice], "usage": _usage(done)}

    def chat(self, whole: Whole, *, logprobs: bool) -> dict[str, Any]:
        """A whole chat completion."""
        end = whole.outcome
        message: dict[str, Any] = {"role": "assistant", "content": end.content}
        if end.calls:
            message["tool_calls"] = _tool_call_entries(end.calls)
        choice = {
            "index": 0,
            "message": message,
            "finish_reason": end.finish_reason,
            "logprobs": chat_logprobs(self.model, scored(whole.parts)) if logprobs else None,
        }
        return self.body("chat.completion", choice, whole.done)

    def completion(self, whole: Whole, *, logprobs: bool) -> dict[str, Any]:
        """A whole completion."""
        choice = {
            "index": 0,
            "text": whole.text,
            "finish_reason": whole.done.finish_reason,
            "logprobs": (
                completion_logprobs(self.model, scored(whole.parts)) if logprobs else None
            ),
        }
        return self.body("text_completion", choice, whole.done)

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        data = {**self._head(self.obj), "choices": choices}
        if self.include_usage:
            data["usage"] = usage
        return _sse(data)

    def closing(self, done: Finished) -> list[str]:
        """The stream's last chunks: the usage (when asked for) and `[DONE]`."""
        last = [self.chunk([], _usage(done))] if self.include_usage else []
        return [*last, _sse("[DONE]")]


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class _Chunks(relay.Encoder):
    """OpenAI's stream: `data: {...}` chunks, then `data: [DONE]`; an error arrives as a
    `data: {"error": ...}` chunk before `[DONE]`."""

    def __init__(self, engine: Engine, job: Job, frame: Frame) -> None:
        self.model = engine.model
        self.job = job
        self.frame = frame

    def error(self, error: APIError) -> list[str]:
        return [_sse(openai_error(error)), _sse("[DONE]")]


class ChatChunks(_Chunks):
    def delta(self, d: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> str:
        choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": logprobs}
        return self.frame.chunk([choice])

    def start(self) -> list[str]:
        return [self.delta({"role": "assistant", "content": ""})]

    def text(self, piece: str, shown: str) -> list[str]:
        logprobs = scored([piece]) if self.job.logprobs is not None else []
        if logprobs:
            return [self.delta({"content": shown}, None, chat_logprobs(self.model, logprobs))]
        return [self.delta({"content": shown})] if shown else []

    def end(self, done: Finished, outcome: Outcome) -> list[str]:
        chunks = [self.delta({"content": outcome.tail})] if outcome.tail else []
        if outcome.calls:
            calls = _tool_call_entries(outcome.calls, indexed=True)
            chunks.append(self.delta({"tool_calls": calls}))
        chunks.append(self.delta({}, outcome.finish_reason))
        return chunks + self.frame.closing(done)


class CompletionChunks(_Chunks):
    offset = 0  # where the next piece starts in the reply (the logprobs' text_offset)

    def choice(self, text: str, finish: str | None = None, logprobs: Any = None) -> str:
        entry = {"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}
        return self.frame.chunk([entry])

    def text(self, piece: str, shown: str) -> list[str]:
        if self.job.logprobs is None:
            return [self.choice(piece)]
        logprobs = completion_logprobs(self.model, scored([piece]), offset=self.offset)
        self.offset += len(piece)
        return [self.choice(piece, None, logprobs)]

    def end(self, done: Finished, outcome: Outcome) -> list[str]:
        return [self.choice("", done.finish_reason), *self.frame.closing(done)]
