"""The generation queue: requests' jobs run on the model one at a time, in arrival order.

Generation runs on the process's model thread (`qwen_mlx.runtime.thread`), which lives as
long as the process, so MLX's per-thread clean-up never runs at exit. Request preparation
(templates, tokenizing, schema compiling; no MLX) has a few threads of its own, so the
event loop only parses and streams text back, and one slow preparation (a huge prompt)
does not hold up the others.

Each job starts from the KV cache of an earlier one sharing its longest token prefix (see
`prompt_cache.py`), so a client resending a growing conversation prefills only what is
new; `Finished.cached_tokens` (`usage.prompt_tokens_details.cached_tokens`) says how many
prompt tokens that saved. A client that disconnects stops its generation at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from ..errors import GenerationCancelled
from ..runtime import (
    Model,
    SamplingParams,
    cache_length,
    make_cache,
    make_drafter,
    stream_tokens,
    trim_cache,
)
from ..runtime.memory import MemoryPlanner
from ..runtime.thread import model_thread
from .cache_pool import PromptCachePool
from .errors import APIError

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS_CAP = 16384  # Qwen's model card: enough output for most queries
DISCONNECT_POLL = 0.1  # seconds between checks that a client is still there
PREPARE_THREADS = 4  # tokenizers release the GIL: a long prompt leaves the others room


@dataclass(eq=False)  # each job is its own: hashed by identity
class Job:
    """One request's generation: prompt ids, sampling, logits processors and a stop flag."""

    tokens: list[int]
    params: SamplingParams
    processors: list[Callable[..., Any]] = field(default_factory=list)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    stop: threading.Event = field(default_factory=threading.Event)
    speculative: bool = True  # with the engine's draft, if it has one


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
    drafted: int = 0  # speculative decoding: draft tokens proposed and kept
    accepted: int = 0


Event = str | Finished | BaseException


class Engine:
    """Runs jobs on the model one at a time, on the model thread, in arrival order, each
    starting from the pooled KV cache that shares the longest prefix with its prompt.

    `stream_tokens` is the single call that runs the model (`runtime.stream_tokens`); tests
    replace it with a scripted stream to get exact replies from a random model. `finished`
    records how the last jobs ended. `names` are what a request's `model` may say: the
    model's name, its family id (the alias users pass, e.g. `qwen3-4b-instruct`) and any
    `aliases` (the reference it was loaded by).
    """

    def __init__(
        self,
        model: Model,
        *,
        kv_bits: int | None = None,
        cache_bytes: int | None = None,
        max_context: int | None = None,
        max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP,
        planner: MemoryPlanner | None = None,
        aliases: Sequence[str] = (),
        draft: Any = None,
        num_draft_tokens: int | None = None,
    ) -> None:
        self.model = model
        # Speculative decoding for every request that does not turn it off (a lone
        # request's generation path; see `_generate`).
        self.drafter = make_drafter(model, draft, kv_bits=kv_bits)
        self.num_draft_tokens = num_draft_tokens
        family = [model.manifest.family] if model.manifest and model.manifest.family else []
        self.names = tuple(dict.fromkeys([model.name, *family, *aliases]))
        self.max_token_chars = _longest_token(model)
        self.kv_bits = kv_bits
        draft_model = getattr(self.drafter, "draft", None)
        extra = {"draft": draft_model} if draft_model is not None else {}
        self.planner = planner or MemoryPlanner.for_model(model, **extra)
        limits = [model.context_length, self.planner.max_context(kv_bits)]
        self.context_limit = min([*limits, max_context] if max_context else limits)
        self.max_tokens_cap = max_tokens_cap
        if cache_bytes is None:  # half of what the weights leave of the budget
            cache_bytes = max(self.planner.budget.bytes - self.planner.weights, 0) // 2
        self.cache = PromptCachePool(lambda: make_cache(model, kv_bits), cache_bytes)
        self.stream_tokens = stream_tokens
        self.finished: deque[Finished] = deque(maxlen=256)
        self._preparer = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="qwen-mlx-prepare")
        self._jobs: dict[Job, Future[None]] = {}  # waiting or running, with their futures
        self._jobs_lock = threading.Lock()

    @property
    def queued(self) -> int:
        """Jobs waiting or running."""
        with self._jobs_lock:
            return len(self._jobs)

    async def prepare(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run request preparation (templates, tokenizing, schema compiling) off the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._preparer, fn, *args)

    def check_model(self, requested: str | None) -> None:
        """Refuse a request for a model this server does not serve, as OpenAI does (404
        model_not_found); no `model` at all means the served one."""
        if requested is not None and requested not in self.names:
            others = f" (also answers to {', '.join(self.names[1:])})" if self.names[1:] else ""
            raise APIError(
                404,
                f"The model `{requested}` does not exist on this server. It serves "
                f"`{self.model.name}`{others}.",
                param="model",
                code="model_not_found",
            )

    def check_context(self, prompt_tokens: int, param: str, *, at_least: bool = False) -> None:
        """Refuse a prompt that leaves no room for a reply. With `at_least`, the count is
        a lower bound found without tokenizing everything (see `prepare.py`)."""
        if prompt_tokens >= self.context_limit:
            has = f"at least {prompt_tokens:,}" if at_least else f"{prompt_tokens:,}"
            raise APIError(
                400,
                f"This model's maximum context length is {self.context_limit:,} tokens, "
                f"but the prompt has {has}. Shorten it, or leave out old turns.",
                param=param,
                code="context_length_exceeded",
            )

    async def events(self, job: Job, request: Request | None = None) -> AsyncIterator[Event]:
        """Queue `job` and yield its text as it comes, then its Finished record. Leaving
        early, or the client going away, stops the job."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def emit(item: Event) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (shutdown): nobody is listening
                job.stop.set()

        with self._jobs_lock:  # held until the job is listed: `_run` unlists it when done
            self._jobs[job] = model_thread().submit(self._run, job, emit)
        watcher = asyncio.create_task(_watch(request, job)) if request is not None else None
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            job.stop.set()
            if watcher is not None:
                watcher.cancel()

    def close(self, timeout: float = 10.0) -> None:
        """Stop every job and wait (up to `timeout` seconds) until the model thread has
        ended them, so the process never exits with MLX mid-step; end the preparer."""
        with self._jobs_lock:
            pending = dict(self._jobs)
        for job in pending:
            job.stop.set()  # queued jobs then end at once, running ones at the next token
        self._preparer.shutdown(wait=False, cancel_futures=True)
        wait(pending.values(), timeout=timeout)

    def _run(self, job: Job, emit: Callable[[Event], None]) -> None:
        try:
            if job.stop.is_set():
                finished = Finished(job.id, "cancelled", len(job.tokens), 0, 0)
            else:
                finished = self._generate(job, emit)
        except BaseException as e:
            emit(e)
            return
        finally:
            with self._jobs_lock:
                self._jobs.pop(job, None)
        self.finished.append(finished)
        logger.info(
            "%s: %d prompt tokens (%d cached), %d generated at %.1f tokens/s, finish: %s",
            job.id,
            finished.prompt_tokens,
            finished.cached_tokens,
            finished.completion_tokens,
            finished.generation_tps,
            finished.finish_reason,
        )
        emit(finished)

    def _generate(self, job: Job, emit: Callable[[Event], None]) -> Finished:
        """Check out a cache, prefill what it lacks, stream, and pool the cache again
        holding exactly the prompt and reply tokens (stream_tokens keeps `held` in step)."""
        tokens = job.tokens
        checkout = self.cache.checkout(tokens)
        cache, reused = checkout.cache, checkout.reused
        held = tokens[:reused]
        reserve = len(tokens) + job.params.max_tokens
        plan = self.planner.plan(reserve, self.kv_bits)
        self.cache.shrink(max(plan.budget - plan.total, 0))  # this request's memory first

        last = None
        try:
            for chunk in self.stream_tokens(
                self.model,
                tokens[reused:],
                job.params,
                prompt_cache=cache,
                cache_tokens=held,
                prefill_step_size=plan.chunk,
                logits_processors=job.processors,
                should_stop=job.stop.is_set,
                draft=self.drafter if job.speculative else None,
                num_draft_tokens=self.num_draft_tokens,
            ):
                last = chunk
                if chunk.text:
                    emit(chunk.text)
            reason = last.finish_reason if last and last.finish_reason else "cancelled"
        except GenerationCancelled:
            reason = "cancelled"
        # The cache may hold one token more or fewer than we saw (the last one sampled):
        # make the two agree before pooling it.
        length = cache_length(cache)
        if length < len(held):
            held = held[:length]
        elif length > len(held):
            trim_cache(cache, length - len(held))
        self.cache.checkin(cache, held, len(tokens))
        return Finished(
            job.id,
            reason,
            len(tokens),
            reused,
            last.generation_tokens if last else 0,
            last.time_to_first_token if last else 0.0,
            last.generation_tps if last else 0.0,
            last.drafted if last else 0,
            last.accepted if last else 0,
        )


def _longest_token(model: Model) -> int:
    """The most characters one token stands for (byte-level vocabularies spell each byte
    as one character, so this bounds the decoded text too): a prompt of more characters
    than the context times this cannot fit, whatever it says. 128 for Qwen3."""
    try:
        vocab = model.tokenizer.get_vocab()
    except AttributeError:  # not a Hugging Face tokenizer: no bound from characters
        return 1 << 20
    return max(map(len, vocab), default=1)


async def _watch(request: Request, job: Job) -> None:
    """Set the job's stop flag when its client disconnects."""
    while not job.stop.is_set():
        if await request.is_disconnected():
            logger.info("%s: the client disconnected; stopping", job.id)
            job.stop.set()
            return
        await asyncio.sleep(DISCONNECT_POLL)
