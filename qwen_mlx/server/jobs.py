"""What a request asks of the engine and what it hears back: a `Job` (prompt ids, sampling,
a stop flag), its text as it comes (`str`, or `Text` carrying the tokens' log
probabilities), then its `Finished` record (or the error that ended it).

Below the engine and its scheduler, which both make and read them, and light: no
FastAPI, no MLX.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..runtime import SamplingParams
    from ..runtime.generation import TokenLogprob


@dataclass(eq=False)  # each job is its own: hashed by identity
class Job:
    """One request's generation: prompt ids, sampling, logits processors and a stop flag."""

    tokens: list[int]
    params: SamplingParams
    processors: list[Callable[..., Any]] = field(default_factory=list)
    logprobs: int | None = None  # with each token's logprob and this many alternatives
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    stop: threading.Event = field(default_factory=threading.Event)
    speculative: bool = True  # with the engine's draft, if it has one
    # A chat's prompt ends with its reply's opening (`<|im_start|>assistant\n`, and a
    # forced call's `<tool_call>\n`): this many tokens, None for a raw text prompt. With
    # `reply_close` (a forced call's closing ids), they let the prompt cache know where the
    # reply sits when the client echoes it (see `cache_pool.py`).
    reply_tail: int | None = None
    reply_close: tuple[int, ...] = ()
    # The assistant turns of `tokens` that are the model's own ids (set at checkout).
    turns: tuple[Turn, ...] = ()
    # Its place in the queue, reserved while it was prepared (see `Engine.prepare`).
    slot: Slot | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Turn:
    """An assistant turn as the model wrote it, at `start` in a prompt: its ids from its
    `<|im_start|>` to its content's end (without `<|im_end|>`). A client echoes the turn
    as text or as parsed tool calls, which the template renders to other ids; the pool
    swaps these back in so the echo matches what the KV cache holds."""

    start: int
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Finished:
    """How a job ended: the finish reason ("stop", "length" or "cancelled") and its counts."""

    job_id: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    time_to_first_token: float = 0.0
    generation_tps: float = 0.0
    batch_size: int = 1  # the most sequences it decoded beside (1: it ran alone)
    stop_sequence: str | None = None  # the stop string that ended it, if one did
    reply_tokens: tuple[int, ...] = ()  # the ids it generated (an end-of-turn one too)
    drafted: int = 0  # speculative decoding: draft tokens proposed and kept
    accepted: int = 0

    @classmethod
    def cancelled(cls, job: Job) -> Finished:
        """The record of a job that ended before it ran (its client left while it waited)."""
        return cls(
            job_id=job.id,
            finish_reason="cancelled",
            prompt_tokens=len(job.tokens),
            cached_tokens=0,
            completion_tokens=0,
        )


class Text(str):
    """Generated text with the log probabilities of the tokens it came from (jobs that
    ask for `logprobs` get these; a plain `str` is everything else)."""

    logprobs: tuple[TokenLogprob, ...]

    def __new__(cls, text: str, logprobs: tuple[TokenLogprob, ...]) -> Text:
        self = super().__new__(cls, text)
        self.logprobs = logprobs
        return self


# What a job's listener hears: text, then its Finished record or the error that ended it.
Event = str | Finished | BaseException


class Slot:
    """A place in the engine's queue held by a request being prepared (`Engine.reserve`);
    given back once (`give_back`, under `lock`), by whichever comes first: its job being
    queued, or the request ending without one."""

    def __init__(self, lock: threading.RLock, give_back: Callable[[], None]) -> None:
        self._lock = lock
        self._give_back = give_back
        self._held = True

    def release(self) -> None:
        with self._lock:
            self.release_locked()

    def release_locked(self) -> None:
        """`release`, for a caller holding the lock."""
        if self._held:
            self._held = False
            self._give_back()
