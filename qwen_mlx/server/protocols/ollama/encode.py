"""Ollama's replies: whole, or streamed as NDJSON (one JSON object a line, the last with
`done`, why, and Ollama's counts and durations in nanoseconds; an error mid-stream as an
`{"error": ...}` line); and errors in Ollama's shape, `{"error": "..."}`."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from ....chat.tools import ToolCall
from ... import relay
from ...engine import Engine
from ...errors import APIError
from ...jobs import Finished
from ...reply import Outcome
from .schemas import Generating


def model_name(engine: Engine) -> str:
    """The served model as Ollama names models: with a tag (ours is the one there is)."""
    return f"{engine.model.name}:latest"


def stamp(when: datetime | None = None) -> str:
    return (when or datetime.now(timezone.utc)).isoformat().replace("+00:00", "Z")


def head(engine: Engine) -> dict[str, Any]:
    return {"model": model_name(engine), "created_at": stamp()}


def loaded(engine: Engine, req: Generating, key: str, value: Any) -> dict[str, Any]:
    """The answer to an empty request: the model is loaded (even with keep_alive 0, which
    asks Ollama to unload it: this server has the one model, loaded while it runs)."""
    return {**head(engine), key: value, "done": True, "done_reason": "load"}


def final(done: Finished, started: float) -> dict[str, Any]:
    """The closing fields: done, why, and Ollama's counts and durations (nanoseconds)."""
    prompt_ns = int(done.time_to_first_token * 1e9)
    eval_ns = int(done.completion_tokens / done.generation_tps * 1e9) if done.generation_tps else 0
    return {
        "done": True,
        "done_reason": "length" if done.finish_reason == "length" else "stop",
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": 0,
        # as Ollama counts: the prompt tokens evaluated, not those its cache already held
        "prompt_eval_count": done.prompt_tokens - done.cached_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": done.completion_tokens,
        "eval_duration": eval_ns,
        # speculative drafts (--draft), counted as llama.cpp's server does; fields of
        # ours, which Ollama's clients ignore
        **(
            {"draft_count": done.drafted, "draft_accepted_count": done.accepted}
            if done.drafted
            else {}
        ),
    }


def _tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "function": {"index": i, "name": c.name, "arguments": c.arguments or {}}}
        for i, c in enumerate(calls)
    ]


def assistant_message(content: str, calls: list[ToolCall]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = _tool_calls(calls)
    return message


def _line(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False) + "\n"


class _Lines(relay.Encoder):
    """Ollama's stream: one JSON object a line, the last with `done` and the counts; an
    error arrives as an `{"error": ...}` line."""

    media_type = relay.NDJSON

    def __init__(self, engine: Engine, started: float) -> None:
        self.engine = engine
        self.started = started

    def error(self, error: APIError) -> list[str]:
        return [_line(ollama_error(error))]


class ChatLines(_Lines):
    def part(self, message: dict[str, Any]) -> str:
        return _line({**head(self.engine), "message": message, "done": False})

    def text(self, piece: str, shown: str) -> list[str]:
        return [self.part({"role": "assistant", "content": shown})] if shown else []

    def end(self, done: Finished, outcome: Outcome) -> list[str]:
        lines = []
        if outcome.tail or outcome.calls:
            lines.append(self.part(assistant_message(outcome.tail, outcome.calls)))
        last = {**head(self.engine), "message": {"role": "assistant", "content": ""}}
        return [*lines, _line({**last, **final(done, self.started)})]


class GenerateLines(_Lines):
    def text(self, piece: str, shown: str) -> list[str]:
        return [_line({**head(self.engine), "response": piece, "done": False})]

    def end(self, done: Finished, outcome: Outcome) -> list[str]:
        return [_line({**head(self.engine), "response": "", **final(done, self.started)})]


def ollama_error(e: APIError) -> dict[str, Any]:
    """An error in Ollama's shape (the server's error handling asks for it on every path
    under /api/, an unknown route's or a refused body's too)."""
    return {"error": e.message}
