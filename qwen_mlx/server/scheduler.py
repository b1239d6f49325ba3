"""Continuous batching for the server: concurrent requests decode together on the model
thread, in one `runtime.BatchDecoder`.

A loop runs on the model thread while there is work. Each turn it admits waiting jobs
(in arrival order) while the memory planner says the KV of every sequence fits: each
sequence reserves its prompt plus its max_tokens, so a running batch never grows past
the budget; a job that does not fit waits. An admitted job takes the longest cached
prefix from the prompt-cache pool (the pool first shrinks to what the batch leaves).
Then the loop ends sequences whose client has gone, runs one step (a decode step for
the decoding sequences and a prefill chunk for those still reading, so a new request
joins without stalling the others), sends each its text, and gives finished sequences'
caches back to the pool.

The decoder comes from `decoder_factory`: `runtime.batch.open_decoder` gives a model split
across ranks one whose every call the other ranks make too, so the loop is the same.

A crash inside a step fails the sequences of that batch (a 500, each in its protocol's
error shape) and the loop goes on with a fresh batch for the jobs still waiting: the
server never keeps answering /health while generating nothing.

With a quantized KV cache (`kv_bits`) the batch holds 8- or 4-bit KV (`kv_batch.py`) and
admission counts its bytes. With `draft="lookup"` each sequence speculates by prompt
lookup inside the batch, with `draft` a loaded draft model that model drafts for every
sequence (`runtime/batch_speculative.py`: greedy ones exactly, sampled ones by rejection
sampling); a job that asked for no drafting, or one with a schema or penalty,
decodes without it, and the log says so. `Finished.drafted` / `accepted` count each job's drafts.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..runtime import Model
from ..runtime.batch import BatchDecoder, SequenceEvent, open_decoder
from ..runtime.memory import MemoryPlanner
from ..runtime.thread import model_thread
from .cache_pool import PromptCachePool
from .errors import APIError, rank_failure
from .jobs import Event, Finished, Job, Text
from .turns import finished_turns

logger = logging.getLogger(__name__)

DEFAULT_TOKENS_PER_SEQUENCE = 4096  # what the default --max-batch plans each sequence for
MAX_BATCH_CAP = 32  # as mlx-lm's server decodes at most
QUEUE_PER_SLOT = 4  # default --max-queue: this many waiting requests per batch slot


def default_max_batch(planner: MemoryPlanner) -> int:
    """Sequences of DEFAULT_TOKENS_PER_SEQUENCE whose bf16 KV fits beside the weights
    (1 to 32): 5 for Qwen3-4B at 4 bits on an 8 GB Mac, 15 on 16 GB, 32 from 32 GB."""
    room = planner.budget.bytes - planner.weights
    per_sequence = planner.kv_per_token() * DEFAULT_TOKENS_PER_SEQUENCE
    return max(1, min(MAX_BATCH_CAP, room // max(per_sequence, 1)))


def _why_plain(job: Job) -> str:
    """Why a job in a drafting batch decodes without drafts."""
    if not job.speculative:
        return "the request turned speculation off"
    if job.processors:
        return "a schema or penalty shapes its tokens"
    return "it could not draft"


def default_max_queue(max_batch: int) -> int:
    return QUEUE_PER_SLOT * max_batch


@dataclass(eq=False)
class _Entry:
    job: Job
    emit: Callable[[Event], None]
    done: Callable[[Job, Finished | BaseException], None]
    reserve: int  # tokens of KV it may come to hold: prompt + max_tokens
    uid: int = -1
    reused: int = 0
    batch_size: int = 1


class Scheduler:
    """Runs jobs together in one batch of at most `max_batch` (see the module docstring).
    `submit` is safe from any thread; the loop runs on the model thread."""

    def __init__(
        self,
        model: Model,
        pool: PromptCachePool,
        planner: MemoryPlanner,
        *,
        max_batch: int,
        prefill_step_size: int,
        decoder_factory: Callable[..., BatchDecoder] = open_decoder,
        kv_bits: int | None = None,
        draft: Any = None,
        num_draft_tokens: int | None = None,
        draft_keep_bytes: int | None = None,
    ) -> None:
        self.model = model
        self.kv_bits = kv_bits
        self.draft = draft
        self.num_draft_tokens = num_draft_tokens
        self.draft_keep_bytes = draft_keep_bytes  # the kept draft caches' share of the pool
        # `open_decoder`: a model split across ranks gets a decoder whose calls they all make
        self.decoder_factory = decoder_factory
        self.pool = pool
        self.planner = planner
        self.max_batch = max_batch
        self.prefill_step_size = prefill_step_size
        self.restarts = 0  # batches failed by a crash, each followed by a fresh one
        self._waiting: deque[_Entry] = deque()
        self._active: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self._running = False
        self._decoder: BatchDecoder | None = None

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    @property
    def draft_kept_bytes(self) -> int:
        """Bytes of the draft model's caches kept for next turns (see `draft_keep_bytes`)."""
        return getattr(self._decoder, "draft_kept_bytes", 0)

    @property
    def batch_size(self) -> int:
        """Sequences in the batch now (reading their prompt or decoding)."""
        with self._lock:
            return len(self._active)

    def submit(
        self,
        job: Job,
        emit: Callable[[Event], None],
        done: Callable[[Job, Finished | BaseException], None],
    ) -> None:
        """Queue `job`: its text goes to `emit`, and `done` gets its Finished record (or
        the error that ended it) before `emit` does."""
        limit = job.params.max_tokens if job.params.max_tokens > 0 else self.model.context_length
        entry = _Entry(job, emit, done, len(job.tokens) + limit)
        with self._lock:
            self._waiting.append(entry)
            start, self._running = not self._running, True
        if start:
            model_thread().submit(self._loop)

    # -- the loop, on the model thread --------------------------------------------------------

    def _loop(self) -> None:
        """One step, then the next one queued behind whatever else waits for the model
        thread (a web chat's turn, a model load), so the batch never starves other work."""
        try:
            more = self._turn()
        except BaseException as e:  # the loop must outlive any step
            self._fail_batch(e)
            more = True
        if more:
            model_thread().submit(self._loop)

    def _turn(self) -> bool:
        with self._lock:
            if not self._waiting and not self._active:
                self._running = False
                return False
            gone = [e for e in self._waiting if e.job.stop.is_set()]
            for entry in gone:
                self._waiting.remove(entry)
            admitted = self._admit()
        self.pool.spill()
        for entry in gone:
            self._finish(entry, None)
        if self._decoder is None and (admitted or self._active):
            try:
                self._decoder = self.decoder_factory(self.model, **self._decoder_options())
            except Exception as e:
                for entry in admitted:  # not in the batch yet: _fail_batch would miss them
                    self._fail(entry, e)
                raise
        decoder = self._decoder
        for entry in admitted:
            try:
                checkout = self.pool.checkout(entry.job.tokens)
                entry.reused = checkout.reused
                # the prompt as it will be read: echoed replies as the model wrote them
                entry.job.tokens, entry.job.turns = checkout.tokens, checkout.turns
                entry.uid = decoder.add(
                    entry.job.tokens,
                    entry.job.params,
                    logits_processors=entry.job.processors,
                    cache=checkout.cache,
                    cached=checkout.reused,
                    logprobs=entry.job.logprobs,
                    **({"speculative": entry.job.speculative} if self.draft is not None else {}),
                )
                if self.draft is not None and not decoder.drafting(entry.uid):
                    logger.info(
                        "%s: decodes without drafting (%s)", entry.job.id, _why_plain(entry.job)
                    )
            except Exception as e:  # this job's own problem: the batch goes on
                logger.exception("%s: could not join the batch", entry.job.id)
                self._fail(entry, e)
                continue
            with self._lock:
                self._active[entry.uid] = entry
        for uid, entry in list(self._active.items()):
            if entry.job.stop.is_set():
                self._finish(entry, decoder.cancel(uid))
        if decoder is None or not len(decoder):
            return True
        size = len(decoder)
        for entry in self._active.values():
            entry.batch_size = max(entry.batch_size, size)
        for event in decoder.step():
            entry = self._active.get(event.uid)
            if entry is None:
                continue
            if event.logprobs:
                entry.emit(Text(event.text, event.logprobs))
            elif event.text:
                entry.emit(event.text)
            if event.finish_reason is not None:
                self._finish(entry, event)
        return True

    def _admit(self) -> list[_Entry]:
        """Waiting jobs that fit beside the batch, in order (called holding the lock)."""
        admitted: list[_Entry] = []
        held = sum(e.reserve for e in self._active.values())
        while self._waiting and len(self._active) + len(admitted) < self.max_batch:
            entry = self._waiting[0]
            plan = self.planner.plan(held + entry.reserve, self.kv_bits)
            if (self._active or admitted) and not plan.fits_memory:
                break  # it waits for room; the ones behind it wait their turn
            self._waiting.popleft()
            admitted.append(entry)
            held += entry.reserve
            # under the lock: what it evicts goes to disk after (`_turn`); the draft
            # caches kept for next turns hold their part of the room
            room = plan.budget - plan.total - self.draft_kept_bytes
            self.pool.shrink(max(room, 0), defer=True)
        return admitted

    def _finish(self, entry: _Entry, event: SequenceEvent | None) -> None:
        """Pool the sequence's cache, record how it ended and tell its client."""
        with self._lock:
            self._active.pop(entry.uid, None)
        job = entry.job
        if event is None:  # it never ran
            finished = Finished.cancelled(job)
        else:
            if event.cache is not None and event.cache_tokens:
                complete = event.finish_reason == "stop" and not event.stop_string
                eos = self.model.tokenizer.eos_token_ids
                turns = finished_turns(job, event.reply_tokens, eos, complete=complete)
                try:
                    self.pool.checkin(event.cache, event.cache_tokens, len(job.tokens), turns)
                except Exception:  # the reply is complete: losing its cache costs only time
                    logger.exception("%s: could not pool its KV cache", job.id)
            finished = Finished(
                job_id=job.id,
                finish_reason=event.finish_reason or "cancelled",
                prompt_tokens=event.prompt_tokens,
                cached_tokens=event.cached_tokens,
                completion_tokens=event.completion_tokens,
                time_to_first_token=event.time_to_first_token,
                generation_tps=event.generation_tps,
                batch_size=entry.batch_size,
                stop_sequence=event.stop_string,
                reply_tokens=event.reply_tokens,
                drafted=event.drafted,
                accepted=event.accepted,
            )
        entry.done(job, finished)
        entry.emit(finished)

    def _decoder_options(self) -> dict:
        options = {"max_batch": self.max_batch, "prefill_step_size": self.prefill_step_size}
        if self.kv_bits is not None:
            options["kv_bits"] = self.kv_bits
        if self.draft is not None:
            options.update(draft=self.draft, num_draft_tokens=self.num_draft_tokens)
            if self.draft_keep_bytes is not None:
                options["draft_keep_bytes"] = self.draft_keep_bytes
        return options

    def _fail_batch(self, error: BaseException) -> None:
        """A step crashed: its sequences get a 500, and the next turn starts a new batch."""
        logger.error("the generation loop failed; restarting it", exc_info=error)
        self.restarts += 1
        decoder, self._decoder = self._decoder, None
        with self._lock:
            failed = list(self._active.values())
            self._active.clear()
        if decoder is not None:
            try:
                decoder.close()
            except Exception:  # already failing; the batch is dropped anyway
                logger.exception("closing the failed batch")
        for entry in failed:
            self._fail(entry, error)

    def _fail(self, entry: _Entry, error: BaseException) -> None:
        failure = rank_failure(error) or APIError(
            500,
            "The server had an error while generating this reply. Try again.",
            type="server_error",
        )
        failure.__cause__ = error
        entry.done(entry.job, failure)
        entry.emit(failure)
