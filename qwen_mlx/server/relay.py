"""The event loop's side of a generation, the same for every protocol: the engine's events
for a job (its text, then how it ended), watched for the client going away, either
collected into a whole reply (`whole`) or written out as they come by the protocol's
`Encoder` (`stream`: server-sent events or NDJSON lines).

The relay owns what every protocol's generating route would otherwise repeat: leaving
the engine's events cleanly (`aclosing`: a stream ended early stops its job), stopping
the job when the client disconnects, a cancelled job ending the stream without a last
chunk, shaping the model's text off the event loop when it parses tool calls (real work
on long replies), the streaming headers, and the 500 that an unexpected error becomes
inside a stream, whose status line has already gone out (the error is logged, its
details stay in the log).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from .errors import APIError
from .jobs import Event, Finished, Job
from .reply import Outcome, Reply

if TYPE_CHECKING:
    from .engine import Engine

logger = logging.getLogger(__name__)

DISCONNECT_POLL = 0.1  # seconds between checks that a client is still there
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
# No caching, and no buffering by a proxy in front (nginx): each chunk goes out at once.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Encoder:
    """How a protocol writes one reply as it streams. The relay calls `start` once, `text`
    for each piece the model generates, then `end` when the job has finished (not when it
    was cancelled: its client is gone), or `error` when it failed (an `APIError`, already
    the 500 for anything unexpected). Each returns the chunks to send."""

    media_type = SSE

    def start(self) -> Iterable[str]:
        return ()

    def text(self, piece: str, shown: str) -> Iterable[str]:
        """`piece` as generated (a `Text` with logprobs, when asked for); `shown`, what
        of it the client sees now (the reply holds back what may begin a tool call)."""
        return ()

    def end(self, done: Finished, outcome: Outcome) -> Iterable[str]:
        return ()

    def error(self, error: APIError) -> Iterable[str]:
        return ()


@dataclass(frozen=True)
class Whole:
    """A reply collected whole: its text pieces (each a `str`, or a `Text` with logprobs),
    how the job ended, and the reply shaped from them."""

    parts: list[str]
    done: Finished
    outcome: Outcome

    @property
    def text(self) -> str:
        return "".join(self.parts)


async def events(engine: Engine, job: Job, request: Request) -> AsyncIterator[Event]:
    """The engine's events for `job`, which stops when `request`'s client disconnects."""
    watcher = asyncio.create_task(watch(request, job.stop.is_set, _stopper(job)))
    try:
        async with aclosing(engine.events(job)) as stream:
            async for item in stream:
                yield item
    finally:
        watcher.cancel()


async def whole(engine: Engine, job: Job, request: Request, reply: Reply | None = None) -> Whole:
    """Run `job` to its end and shape its text with `reply` (by default, as it is)."""
    reply = reply if reply is not None else Reply(parse_calls=False)
    parts: list[str] = []
    async with aclosing(events(engine, job, request)) as stream:
        async for item in stream:
            if isinstance(item, Finished):
                done = item
                break
            parts.append(item)
        else:
            raise RuntimeError("the generation ended without a finish record")

    def shape() -> Outcome:
        for part in parts:
            reply.feed(part)
        return reply.finish(done.finish_reason)

    return Whole(parts, done, await off_loop(reply, shape))


def stream(
    engine: Engine,
    job: Job,
    request: Request,
    encoder: Encoder,
    reply: Reply | None = None,
) -> StreamingResponse:
    """`job`'s reply written by `encoder` as it comes, its text shaped by `reply` (by
    default, as it is)."""
    return streaming(_relay(engine, job, request, encoder, reply), encoder.media_type)


def streaming(chunks: AsyncIterator[str], media_type: str = SSE) -> StreamingResponse:
    """A streamed response of `chunks`, with the headers every stream needs."""
    return StreamingResponse(chunks, media_type=media_type, headers=STREAM_HEADERS)


def failure(error: Exception) -> APIError:
    """What an error inside a stream tells the client: an APIError as it is, anything else
    a generic 500 (logged with its traceback here)."""
    if isinstance(error, APIError):
        return error
    logger.exception("generation failed", exc_info=error)
    return APIError(500, "The server had an error while generating.", type="server_error")


async def off_loop(reply: Reply, fn: Callable[[], Any]) -> Any:
    """`fn()`, on a worker thread when it parses tool calls (real work on long replies)."""
    return await asyncio.to_thread(fn) if reply.parses_calls else fn()


async def _relay(
    engine: Engine, job: Job, request: Request, encoder: Encoder, reply: Reply | None
) -> AsyncIterator[str]:
    reply = reply if reply is not None else Reply(parse_calls=False)
    try:
        for chunk in encoder.start():
            yield chunk
        done: Finished | None = None
        async with aclosing(events(engine, job, request)) as stream:
            async for item in stream:
                if isinstance(item, Finished):
                    done = item
                    continue
                shown = await off_loop(reply, lambda item=item: reply.feed(item))
                for chunk in encoder.text(item, shown):
                    yield chunk
        if done is None or done.finish_reason == "cancelled":
            return  # the client has gone: nobody reads an end
        reason = done.finish_reason
        outcome = await off_loop(reply, lambda: reply.finish(reason))
        for chunk in encoder.end(done, outcome):
            yield chunk
    except Exception as e:
        for chunk in encoder.error(failure(e)):
            yield chunk


async def watch(request: Request, over: Callable[[], bool], gone: Callable[[], None]) -> None:
    """Call `gone` if `request`'s client disconnects before `over()` is true (a job, or a
    web chat's turn, that nobody waits for any more is stopped)."""
    while not over():
        if await request.is_disconnected():
            gone()
            return
        await asyncio.sleep(DISCONNECT_POLL)


def _stopper(job: Job) -> Callable[[], None]:
    def stop() -> None:
        logger.info("%s: the client disconnected; stopping", job.id)
        job.stop.set()

    return stop
