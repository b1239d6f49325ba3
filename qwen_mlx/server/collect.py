"""What every protocol's routes (OpenAI, Anthropic, Responses, Ollama) do with the
engine's events: collect a whole reply, and run the reply parser (tool calls, the
response format) off the event loop when it has real work to do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from fastapi import Request

from ..chat.tools import ToolCall
from .prepare import Reply

if TYPE_CHECKING:
    from .engine import Engine
    from .jobs import Finished, Job


async def off_loop(reply: Reply, fn: Callable[[], Any]) -> Any:
    """`fn()`, on a worker thread when it parses tool calls (real work on long replies)."""
    return await asyncio.to_thread(fn) if reply.parses_calls else fn()


async def collect(engine: Engine, job: Job, request: Request) -> tuple[list[str], Finished]:
    """The job's text pieces (each a `str`, or a `Text` with logprobs) and how it ended."""
    parts: list[str] = []
    async with aclosing(engine.events(job, request)) as events:
        async for item in events:
            if isinstance(item, str):
                parts.append(item)
            else:
                return parts, item
    raise RuntimeError("the generation ended without a finish record")


async def whole_reply(
    reply: Reply, parts: list[str], done: Finished
) -> tuple[str, str | None, list[ToolCall], str]:
    """The collected text through the reply parser: (text, content, tool calls, reason)."""

    def shape() -> tuple[str, str | None, list[ToolCall], str]:
        for part in parts:
            reply.feed(part)
        return reply.finish(done.finish_reason)

    return await off_loop(reply, shape)
