"""The generation engine: requests' jobs decode together in one batch on the model thread.

Generation runs on the process's model thread (`qwen_mlx.runtime.thread`), which lives as
long as the process, so MLX's per-thread clean-up never runs at exit. Request preparation
(templates, tokenizing, schema compiling; no MLX) has a few threads of its own, so the
event loop only parses and streams text back, and one slow preparation (a huge prompt)
does not hold up the others.

Jobs run in `scheduler.py`'s continuous batch (at most `max_batch` at once, up to
`max_queue` more waiting; past that a request gets 503 with Retry-After). A request takes
its place in that count when its preparation starts, checked and reserved under one lock,
so a burst of simultaneous requests cannot all pass the check before any is counted; the
place passes to its job when the job is queued, and is given back on every other way out
(a failed preparation, a client gone before its stream began). Each starts
from the KV cache of an earlier one sharing its longest token prefix (see
`cache_pool.py`), so a client resending a growing conversation prefills only what is
new; `Finished.cached_tokens` (`usage.prompt_tokens_details.cached_tokens`) says how many
prompt tokens that saved. A client that disconnects leaves the batch at the next step.

A quantized KV cache (`kv_bits`) batches too (`runtime/kv_batch.py`: the pool keeps
quantized entries and admission counts quantized bytes), and so does speculation: with
`draft="lookup"` each sequence drafts by prompt lookup on its own, with a draft model (a
model or reference) that model drafts for every sequence from a batch cache of its own,
and every row's draft is verified in one pass (`runtime/batch_speculative.py`). Only a
model split across ranks runs a draft model one job at a time, through `stream_tokens`;
`status()` says which.

Entry points for the protocols' routes: `prepare` (which also refuses a request when the
queue is full), `check_model`, `check_context`, `events(job)` (text, then a `Finished`;
`relay.py` reads them for the routes), `status()` (for /health), `close()`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from ..errors import GenerationCancelled
from ..runtime import (
    Model,
    cache_length,
    make_cache,
    stream_tokens,
    trim_cache,
)
from ..runtime.distributed import group_failure, group_status, leader_of
from ..runtime.memory import MemoryPlanner
from ..runtime.speculative import drafter_and_planner
from ..runtime.thread import model_thread
from .cache_disk import DiskCache, fingerprint
from .cache_pool import PromptCachePool
from .defaults import DEFAULT_CACHE_DIR_BYTES, DEFAULT_MAX_TOKENS_CAP, RETRY_AFTER
from .errors import APIError, ContextLengthError, rank_failure
from .jobs import Event, Finished, Job, Slot, Text
from .scheduler import Scheduler, default_max_batch, default_max_queue
from .turns import TurnMatcher, finished_turns

logger = logging.getLogger(__name__)

PREPARE_THREADS = 4  # tokenizers release the GIL: a long prompt leaves the others room
PERSIST_TIMEOUT = 120.0  # seconds to write the pool to --cache-dir when stopping
COMPOSED = 4  # code points Unicode normalization (NFC) can compose into one character


class Engine:
    """Runs jobs on the model thread, together in one batch (see the module docstring),
    each starting from the pooled KV cache that shares the longest prefix with its prompt.

    `max_batch` and `max_queue` default from the memory planner (`scheduler.py`).
    `runtime.stream_tokens` runs the model when jobs go one at a time (tests script the
    model itself, `tests/scripted.py`, so they run the path production runs).
    `finished` records how the last jobs ended, and each of `observers` is called with every
    Finished record, on the model thread (the metrics count them). `names` are what a
    request's `model` may say: the model's name, its family id (the alias users pass, e.g.
    `qwen3-4b-instruct`) and any `aliases` (the reference it was loaded by).
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
        max_batch: int | None = None,
        max_queue: int | None = None,
        prefill_step_size: int | None = None,
        draft: Any = None,
        num_draft_tokens: int | None = None,
        cache_dir: str | Path | None = None,
        cache_dir_bytes: int = DEFAULT_CACHE_DIR_BYTES,
    ) -> None:
        self.model = model
        # Speculative decoding for every request that does not turn it off (a lone
        # request's generation path; see `_generate`).
        self.drafter, self.planner = drafter_and_planner(
            model, draft, kv_bits=kv_bits, planner=planner
        )
        self.num_draft_tokens = num_draft_tokens
        family = [model.manifest.family] if model.manifest and model.manifest.family else []
        self.names = tuple(dict.fromkeys([model.name, *family, *aliases]))
        self.max_token_chars = _longest_token(model)
        self.kv_bits = kv_bits
        limits = [model.context_length, self.planner.max_context(kv_bits)]
        self.context_limit = min([*limits, max_context] if max_context else limits)
        self.max_tokens_cap = max_tokens_cap
        if cache_bytes is None:  # half of what the weights leave of the budget
            cache_bytes = max(self.planner.budget.bytes - self.planner.weights, 0) // 2
        # A draft model in the batch keeps the draft caches of finished sequences for
        # their next turns: their part of `cache_bytes` is the draft's share of a token's
        # KV, and the pool keeps the rest.
        self.draft_keep_bytes = None
        if self._batch_draft is not None and not isinstance(self._batch_draft, str):
            self.draft_keep_bytes = int(cache_bytes * self.planner.draft_kv_share(kv_bits))
            cache_bytes -= self.draft_keep_bytes
        # ChatML turns (Qwen's): the pool matches echoed replies to what the model wrote
        self.turns = TurnMatcher.for_model(model)
        disk = None
        if cache_dir is not None:  # the pool's disk tier (`cache_disk.py`)
            if leader_of(model) is not None:
                raise ValueError("--cache-dir does not work yet with a model split across ranks.")
            disk = DiskCache(cache_dir, cache_dir_bytes, fingerprint(model, kv_bits))
        self.cache = PromptCachePool(
            lambda: make_cache(model, kv_bits), cache_bytes, matcher=self.turns, disk=disk
        )
        self.max_batch = max_batch or default_max_batch(self.planner)
        self.max_queue = default_max_queue(self.max_batch) if max_queue is None else max_queue
        if self.max_batch < 1 or self.max_queue < 0:
            raise ValueError("max_batch must be at least 1 and max_queue at least 0.")
        self.scheduler = Scheduler(
            model,
            self.cache,
            self.planner,
            max_batch=self.max_batch,
            prefill_step_size=prefill_step_size or _prefill_step(),
            kv_bits=kv_bits,
            draft=self._batch_draft,
            num_draft_tokens=num_draft_tokens,
            draft_keep_bytes=self.draft_keep_bytes,
        )
        self.drafted = 0  # draft tokens of all finished jobs, and those kept
        self.accepted = 0
        self.finished: deque[Finished] = deque(maxlen=256)
        self.observers: list[Callable[[Finished], None]] = []
        self._preparer = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="qwen-mlx-prepare")
        self._jobs: dict[Job, Future[None]] = {}  # waiting or running, with their futures
        self._listeners: dict[Job, Callable[[Event], None]] = {}  # how each job's client hears
        self._reserved = 0  # places taken by requests being prepared (see `prepare`)
        # Re-entrant: a dropped job's finalizer gives its place back (`_Slot`), and the
        # garbage collector may run it on a thread that already holds this lock.
        self._jobs_lock = threading.RLock()
        leader = leader_of(model)
        if leader is not None:  # a split model: a lost rank can leave the model thread blocked
            leader.ranks.on_stuck(self.abandon)

    @property
    def queued(self) -> int:
        """Requests being prepared, and jobs waiting or running."""
        with self._jobs_lock:
            return len(self._jobs) + self._reserved

    @property
    def _batch_draft(self) -> Any:
        """What drafts inside the batch: "lookup", the draft model, or None (no drafter,
        or a model split across ranks, whose batch runs no speculation)."""
        from ..runtime.speculative import LookupDrafter, ModelDrafter

        if leader_of(self.model) is not None:
            return None
        if isinstance(self.drafter, LookupDrafter):
            return "lookup"
        if isinstance(self.drafter, ModelDrafter):
            return self.drafter.draft
        return None

    @property
    def batched(self) -> bool:
        """Whether jobs decode together: with bf16 or quantized KV (on one process or a
        model split across ranks), with prompt lookup or a draft model; not with a draft
        on a model split across ranks (its drafts are verified one sequence at a time)."""
        lone_draft = self.drafter is not None and self._batch_draft is None
        return not lone_draft

    def status(self) -> dict[str, Any]:
        """What /health reports about the work: waiting and running jobs, and the limits."""
        running = self.scheduler.batch_size if self.batched else min(self.queued, 1)
        return {
            "queued": self.queued,
            "queue_depth": max(self.queued - running, 0),
            "batch_size": running,
            "max_batch": self.max_batch if self.batched else 1,
            "max_queue": self.max_queue,
            "restarts": self.scheduler.restarts,
            "kv_bits": self.kv_bits,
            "speculative": self._speculation(),
            **group_status(self.model),  # ranks: 1, or a split model's ranks and their states
        }

    def _speculation(self) -> dict[str, Any] | None:
        """/health's account of speculative decoding: the drafter, whether it runs in
        the batch, and the draft tokens of finished jobs (proposed, kept, the share)."""
        if self.drafter is None:
            return None
        return {
            "draft": self.drafter.kind,
            "batched": self.batched,
            "per_sequence": "requests without a schema or penalty draft; those decode "
            "plainly beside them"
            if self.batched
            else "one request at a time",
            "drafted_tokens": self.drafted,
            "accepted_tokens": self.accepted,
            "acceptance_rate": round(self.accepted / self.drafted, 4) if self.drafted else 0.0,
            # a draft model's caches kept for next turns, and their part of the cache budget
            "kept_draft_bytes": self.scheduler.draft_kept_bytes,
            "kept_draft_max_bytes": self.draft_keep_bytes,
        }

    def reserve(self) -> Slot:
        """A place in the queue for a request about to be prepared, or a 503 with
        Retry-After (in the protocol's error shape) when `max_queue` requests already wait
        behind a full batch. The check and the reservation are one step under the lock.
        A model split across ranks that lost one refuses everything (503 naming the rank)
        until the group restarts."""
        failure = group_failure(self.model)
        if failure is not None:
            raise rank_failure(failure)
        with self._jobs_lock:
            queued = len(self._jobs) + self._reserved
            if queued < self.max_batch + self.max_queue:
                self._reserved += 1
                return Slot(self._jobs_lock, self._give_back)
        raise APIError(
            503,
            f"The server is busy ({queued} requests running or waiting). Retry in {RETRY_AFTER} s.",
            type="server_error",
            code="server_busy",
            headers={"Retry-After": str(RETRY_AFTER)},
        )

    async def prepare(self, fn: Callable[..., Any], *args: Any, queue: bool = True) -> Any:
        """Run request preparation (templates, tokenizing, schema compiling) off the loop.
        With `queue` (a request that will generate), a place in the queue is reserved
        first (`reserve`: a full queue refuses the request at once) and handed to the job
        `fn` returns (a Job, or a value holding one as `.job`): `events` passes it on to
        the queued job, and a job dropped without being queued gives it back."""
        slot = self.reserve() if queue else None
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._preparer, fn, *args)
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        if slot is not None:
            job = result if isinstance(result, Job) else result.job
            job.slot = slot
            weakref.finalize(job, slot.release)  # never queued: the place comes back
        return result

    def check_model(self, requested: str | None) -> None:
        """Refuse a request for a model this server does not serve, as OpenAI does (404
        model_not_found); no `model` at all means the served one. Every name may carry
        Ollama's tag, `:latest` (what /api/tags lists), on every protocol: Ollama apps
        such as oterm list models there and chat on /v1/chat/completions."""
        if requested is not None and requested.removesuffix(":latest") not in self.names:
            # A folder the model was loaded from is accepted but never shown: an error
            # must not tell clients where the server keeps its files.
            shown = [n for n in self.names[1:] if not _is_path(n)]
            others = f" (also answers to {', '.join(shown)})" if shown else ""
            raise APIError(
                404,
                f"The model `{requested}` does not exist on this server. It serves "
                f"`{self.model.name}`{others}.",
                param="model",
                code="model_not_found",
            )

    def check_characters(self, chars: int, param: str | None) -> None:
        """Refuse text that cannot fit the context whatever it says: more characters than
        the context's tokens could spell (no token covers more than `max_token_chars`,
        and Unicode normalization composes at most `COMPOSED` code points into one)."""
        per_token = self.max_token_chars * COMPOSED
        if chars >= self.context_limit * per_token:
            self.check_context(chars // per_token, param, at_least=True)

    def check_context(
        self, prompt_tokens: int, param: str | None, *, at_least: bool = False
    ) -> None:
        """Refuse a prompt that leaves no room for a reply. With `at_least`, the count is
        a lower bound found without tokenizing everything (see `prepare.py`)."""
        if prompt_tokens >= self.context_limit:
            raise ContextLengthError(
                prompt_tokens, self.context_limit, param=param, at_least=at_least
            )

    async def events(self, job: Job) -> AsyncIterator[Event]:
        """Queue `job` and yield its text as it comes (what arrived since the last piece
        was taken, joined), then its Finished record. Leaving early stops the job (the
        relay leaves when the client goes away: `relay.events`)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def emit(item: Event) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (shutdown): nobody is listening
                job.stop.set()

        with self._jobs_lock:  # held until the job is listed: `_run` unlists it when done
            if job.slot is not None:  # the job now counts itself in the queue
                job.slot.release_locked()
            failure = group_failure(self.model)
            if failure is not None:  # prepared while a rank failed: the model cannot run it
                raise rank_failure(failure) or failure
            self._listeners[job] = emit
            if self.batched:
                self._jobs[job] = _Resolved()
                self.scheduler.submit(job, emit, self._done)
            else:
                self._jobs[job] = model_thread().submit(self._run, job, emit)
        try:
            pending: Event | None = None
            while True:
                item = pending if pending is not None else await queue.get()
                pending = None
                # Text that piled up while the client was being served goes out as one
                # piece: under load, fewer and larger chunks keep the event loop ahead.
                while isinstance(item, str) and not queue.empty():
                    more = queue.get_nowait()
                    if not isinstance(more, str):
                        pending = more
                        break
                    item = _joined(item, more)
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            job.stop.set()
            with self._jobs_lock:
                self._listeners.pop(job, None)

    def close(self, timeout: float = 10.0) -> None:
        """Stop every job and wait (up to `timeout` seconds) until the model thread has
        ended them, so the process never exits with MLX mid-step; end the preparer."""
        with self._jobs_lock:
            pending = dict(self._jobs)
        for job in pending:
            job.stop.set()  # queued jobs then end at once, running ones at the next token
        self._preparer.shutdown(wait=False, cancel_futures=True)
        wait(pending.values(), timeout=timeout)
        self.persist()

    def persist(self) -> None:
        """With a cache folder, write the prompt caches memory holds there (on the model
        thread, which owns their arrays), so they survive a restart. The app does this
        when it shuts down, and `close` again (entries already written are skipped)."""
        if self.cache.disk is None:
            return
        try:
            model_thread().submit(self.cache.persist).result(timeout=PERSIST_TIMEOUT)
        except Exception:  # stopping anyway: the entries are only lost time
            logger.exception("prompt cache: could not write the pool to the cache folder")

    def abandon(self, error: BaseException) -> None:
        """End every job with `error` without the model thread, which cannot end them any
        more (a split model's rank failed and left it blocked in MLX, see
        `launch.Ranks.on_stuck`): their clients hear it at once and the queue empties."""
        answer = rank_failure(error) or error
        with self._jobs_lock:
            listeners = list(self._listeners.items())
            self._jobs.clear()
        for job, emit in listeners:
            job.stop.set()
            emit(answer)

    def _give_back(self) -> None:
        """A reserved place comes back (`Slot`: under the jobs lock)."""
        self._reserved -= 1

    def _run(self, job: Job, emit: Callable[[Event], None]) -> None:
        """One job alone, through `stream_tokens`."""
        try:
            finished = Finished.cancelled(job) if job.stop.is_set() else self._generate(job, emit)
        except BaseException as e:
            e = rank_failure(e) or e
            self._done(job, e)
            emit(e)
            return
        self._done(job, finished)
        emit(finished)

    def _done(self, job: Job, result: Finished | BaseException) -> None:
        """Unlist a job that has ended, and record and log how (before its client hears)."""
        with self._jobs_lock:
            future = self._jobs.pop(job, None)
        if isinstance(result, Finished):
            self.finished.append(result)
            self.drafted += result.drafted
            self.accepted += result.accepted
            drafts = (
                f", {result.accepted} of {result.drafted} drafted tokens accepted"
                if result.drafted
                else ""
            )
            logger.info(
                "%s: %d prompt tokens (%d cached), %d generated at %.1f tokens/s in a batch "
                "of up to %d%s, finish: %s",
                job.id,
                result.prompt_tokens,
                result.cached_tokens,
                result.completion_tokens,
                result.generation_tps,
                result.batch_size,
                drafts,
                result.finish_reason,
            )
            for observe in self.observers:
                try:
                    observe(result)
                except Exception:  # a broken observer must not lose the reply
                    logger.exception("an observer of finished jobs failed")
        if isinstance(future, _Resolved):  # the model thread resolves the others itself
            future.set_result(None)

    def _generate(self, job: Job, emit: Callable[[Event], None]) -> Finished:
        """Check out a cache, prefill what it lacks, stream, and pool the cache again
        holding exactly the prompt and reply tokens (stream_tokens keeps `held` in step)."""
        checkout = self.cache.checkout(job.tokens)
        cache, reused = checkout.cache, checkout.reused
        # the prompt as it will be read: echoed replies as the model wrote them
        tokens = job.tokens = checkout.tokens
        job.turns = checkout.turns
        held = tokens[:reused]
        reserve = len(tokens) + job.params.max_tokens
        plan = self.planner.plan(reserve, self.kv_bits)
        self.cache.shrink(max(plan.budget - plan.total, 0))  # this request's memory first

        last = None
        try:
            for chunk in stream_tokens(
                self.model,
                tokens[reused:],
                job.params,
                prompt_cache=cache,
                cache_tokens=held,
                prefill_step_size=plan.chunk,
                logits_processors=job.processors,
                should_stop=job.stop.is_set,
                logprobs=job.logprobs,
                draft=self.drafter if job.speculative else None,
                num_draft_tokens=self.num_draft_tokens,
            ):
                last = chunk
                if chunk.logprobs:
                    emit(Text(chunk.text, chunk.logprobs))
                elif chunk.text:
                    emit(chunk.text)
            reason = last.finish_reason if last and last.finish_reason else "cancelled"
        except GenerationCancelled:
            reason = "cancelled"
        reply = tuple(held[len(tokens) :])
        # The cache may hold one token more or fewer than we saw (the last one sampled):
        # make the two agree before pooling it.
        length = cache_length(cache)
        if length < len(held):
            held = held[:length]
        elif length > len(held):
            trim_cache(cache, length - len(held))
        eos = self.model.tokenizer.eos_token_ids
        complete = reason == "stop" and not (last and last.stop_string)
        turns = finished_turns(job, reply, eos, complete=complete)
        self.cache.checkin(cache, held, len(tokens), turns)
        return Finished(
            job_id=job.id,
            finish_reason=reason,
            prompt_tokens=len(tokens),
            cached_tokens=reused,
            completion_tokens=last.generation_tokens if last else 0,
            time_to_first_token=last.time_to_first_token if last else 0.0,
            generation_tps=last.generation_tps if last else 0.0,
            stop_sequence=last.stop_string if last and reason == "stop" else None,
            reply_tokens=reply,
            drafted=last.drafted if last else 0,
            accepted=last.accepted if last else 0,
        )


class _Resolved(Future):
    """A batched job's future, resolved by the engine when the job ends."""


def _prefill_step() -> int:
    """Prompt tokens each sequence reads per step while others decode: small enough that
    a step stays short (decoding sequences wait for it), large enough to read quickly."""
    import mlx.core as mx

    return 512 if mx.metal.is_available() else 256


def _joined(text: str, more: str) -> str:
    """Two pieces of generated text as one, keeping their tokens' log probabilities
    (`str + Text` is a plain str: joined that way, logprobs were lost under load)."""
    if isinstance(text, Text) or isinstance(more, Text):
        scored = getattr(text, "logprobs", ()) + getattr(more, "logprobs", ())
        return Text(text + more, scored)
    return text + more


def _is_path(name: str) -> bool:
    """Whether a name the model answers to is a place on this machine (`serve --model
    ./folder`) rather than a store name or a Hugging Face repo id."""
    from pathlib import Path

    if name.startswith(("/", ".", "~")) or "\\" in name:
        return True
    try:
        return Path(name).expanduser().exists()
    except OSError:  # a name too long or odd for the filesystem: not a path we serve
        return False


def _longest_token(model: Model) -> int:
    """The most characters one token stands for (byte-level vocabularies spell each byte
    as one character, so this bounds the decoded text too): a prompt of more characters
    than the context times this cannot fit, whatever it says. 128 for Qwen3."""
    try:
        vocab = model.tokenizer.get_vocab()
    except AttributeError:  # not a Hugging Face tokenizer: no bound from characters
        return 1 << 20
    return max(map(len, vocab), default=1)
