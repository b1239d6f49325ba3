"""Many sequences decoded together: `BatchDecoder` (the server's scheduler drives it one
step at a time) and `batch_generate` (a list of prompts in, a list of results out).

Decoding reads every weight once per step, whatever the number of sequences, so a batch
of eight costs little more than one. The batch itself is mlx-lm's `BatchGenerator`: its
batch KV caches (left-padded, merged and split as sequences come and go), its prefill in
chunks interleaved with decode steps (each call does one decode step for the running
sequences and one prefill chunk for those still reading their prompt), its per-sequence
samplers, logits processors and max_tokens.

What is ours:
- Long prompts are read here, a chunk per step, and handed to the BatchGenerator only for
  their last chunk. Its prefill reads up to `prefill_batch` prompts together, each to its
  end, and one that arrives while those slots are taken waits for one of them to finish
  reading: behind eight long prompts a short request waited for whole prefills (minutes
  on a CPU). Here its slots only ever hold prompts of one chunk or less, which leave
  after a step, so a short prompt starts reading at once and has its first token a few
  steps later, however many long prompts are being read. Among those, each step reads a
  chunk of the one with the least left to read, and every other step of the one waiting
  longest, so none starves.
- Seeds per sequence. mlx-lm's server refuses to batch a seeded request, since its
  samplers draw from MLX's one global key. Here each seeded sequence owns its key: the
  global key is swapped for it around that sequence's draw and the advanced key kept, so
  a seeded sequence draws the same numbers as it would alone (`mx.random.seed(seed)` and
  `stream_tokens`), whatever else shares the batch. Its text is then the same too, up to
  the last bits of batched arithmetic, which can differ from one request's alone.
- Stop strings on the text (across tokens), stats per sequence, and the KV cache handed
  back at the end holding exactly the ids it has read (for a prompt-cache pool).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .distributed import leader_of, shared_sampler
from .generation import TokenLogprob, _StopMatcher, score_token
from .model import resolve_params, sampling_for
from .sampling import SamplingParams, make_sampling

if TYPE_CHECKING:
    from .model import Model, Prompt

DEFAULT_MAX_BATCH = 32  # as mlx-lm's server decodes at most
DEFAULT_PREFILL_BATCH = 8  # prompts read together (mlx-lm's default)
NO_LIMIT = 1 << 30  # max_tokens=-1


@dataclass(frozen=True)
class BatchResult:
    """One prompt's reply from `batch_generate`."""

    text: str
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    drafted: int = 0  # with a draft: tokens drafted for this reply, and those kept
    accepted: int = 0


@dataclass(frozen=True)
class SequenceEvent:
    """What a decode step gave one sequence: new text, and on its last event the finish
    reason, its stats and its KV cache (holding exactly `cache_tokens`)."""

    uid: int
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float = 0.0
    generation_tps: float = 0.0
    cache: list[Any] | None = None
    cache_tokens: list[int] | None = None
    # With `add(..., logprobs=k)`: the log probabilities of the tokens behind `text`.
    logprobs: tuple[TokenLogprob, ...] = ()
    stop_string: str | None = None  # on the last event: the stop string that ended it
    reply_tokens: tuple[int, ...] = ()  # on the last event: the ids generated (end of turn too)
    drafted: int = 0  # on the last event: draft tokens proposed for it and kept (lookup)
    accepted: int = 0


@dataclass(eq=False)
class _Reading:
    """A long prompt being read here, chunk by chunk, before it joins the batch."""

    tokens: list[int]
    cache: list[Any]
    done: int  # tokens the cache holds
    max_tokens: int
    sampler: Any
    processors: list[Callable]
    order: int  # arrival
    drafts: bool = False  # speculates by prompt lookup (see `BatchDecoder`)

    @property
    def left(self) -> int:
        return len(self.tokens) - self.done


@dataclass(eq=False)
class _Sequence:
    uid: int
    prompt_tokens: int
    cached: int
    params: SamplingParams
    detokenizer: Any
    stops: _StopMatcher
    added: float = field(default_factory=time.perf_counter)
    first: float | None = None
    generated: int = 0
    logprobs: int | None = None  # score each token, with this many alternatives
    scored: list[TokenLogprob] = field(default_factory=list)  # not yet sent with text
    reply: list[int] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0

    def taken(self) -> tuple[TokenLogprob, ...]:
        taken = tuple(self.scored)
        self.scored.clear()
        return taken

    def stats(self, reason: str, text: str = "", cache=None, tokens=None) -> SequenceEvent:
        now = time.perf_counter()
        ttft = (self.first or now) - self.added
        elapsed = now - (self.first or now)
        return SequenceEvent(
            uid=self.uid,
            text=text,
            finish_reason=reason,
            prompt_tokens=self.prompt_tokens,
            cached_tokens=self.cached,
            completion_tokens=self.generated,
            time_to_first_token=ttft,
            generation_tps=self.generated / elapsed if elapsed > 0 else 0.0,
            cache=cache,
            cache_tokens=list(tokens) if tokens is not None else None,
            logprobs=self.taken(),
            stop_string=self.stops.hit if reason == "stop" else None,
            reply_tokens=tuple(self.reply),
            drafted=self.drafted,
            accepted=self.accepted,
        )


class BatchDecoder:
    """Sequences decoded together on one model; `add` them at any time, call `step`.

    Not thread-safe: one thread (the model thread) makes every call. `max_batch` bounds
    the sequences decoding at once (more wait inside, in order); `prefill_step_size` the
    tokens of a prompt read per step: a prompt longer than that is read here a chunk per
    step, the rest with the batch's own prefill (see the module docstring).

    `kv_bits` (8 or 4) quantizes the KV of the sequences it starts (`make_cache`); a cache
    passed to `add` must have the same precision. `draft="lookup"` makes sequences without
    logits processors speculate by prompt lookup, each on its own, verified together
    (`batch_speculative.py`; at most `num_draft_tokens` a round; greedy ones write what
    they write alone, sampled ones follow their distribution); the others decode as
    without it, and `drafting(uid)` says which do. `draft=` a loaded draft `Model` (same
    tokenizer) drafts for them instead, from a batch cache of its own at `kv_bits`, one
    batched draft step per drafted position (at most `num_draft_tokens`, default 4); the
    draft caches of the last sequences that finished are kept for their next turns, at
    most `draft_keep_bytes` of them (None: up to 8 caches, whatever their size;
    `draft_kept_bytes` says what they hold).
    """

    def __init__(
        self,
        model: Model,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        prefill_step_size: int = 512,
        prefill_batch: int = DEFAULT_PREFILL_BATCH,
        kv_bits: int | None = None,
        draft: Any = None,
        num_draft_tokens: int | None = None,
        draft_keep_bytes: int | None = None,
        adaptive: bool = True,
    ) -> None:
        from mlx_lm.generate import BatchGenerator

        draft_model = _draft_model(model, draft)
        self.model = model
        self.kv_bits = kv_bits
        self.prefill_step_size = prefill_step_size
        self._gen = BatchGenerator(
            model.model,
            stop_tokens=[[t] for t in model.tokenizer.eos_token_ids],
            sampler=shared_sampler(model, None),  # a split model's ranks take rank 0's tokens
            completion_batch_size=max_batch,
            prefill_batch_size=min(prefill_batch, max_batch),
            prefill_step_size=prefill_step_size,
        )
        self._seqs: dict[int, _Sequence] = {}  # by our uid: reading here, or in the batch
        self._reading: dict[int, _Reading] = {}
        self._in_batch: dict[int, int] = {}  # the BatchGenerator's uid -> ours
        self._uids = 0
        self._steps = 0
        self._spec = None
        self.num_draft_tokens = num_draft_tokens
        self.adaptive = adaptive  # False: draft all a match offers (tests of the method)
        if draft is not None:
            from .batch_speculative import SpeculativeBatch

            self._spec = SpeculativeBatch.empty(
                model.model,
                self._gen.sampler,
                draft=draft_model,
                draft_bits=kv_bits,
                keep_bytes=draft_keep_bytes,
            )
            self._gen._generation_batch = self._spec

    def __len__(self) -> int:
        """Sequences added and not finished (reading their prompt or decoding)."""
        return len(self._seqs)

    def add(
        self,
        tokens: Sequence[int],
        params: SamplingParams,
        *,
        logits_processors: Sequence[Callable] = (),
        cache: list[Any] | None = None,
        cached: int = 0,
        logprobs: int | None = None,
        speculative: bool = True,
    ) -> int:
        """Queue a sequence: `tokens` is the whole prompt, of which `cache` (a KV cache of
        the decoder's precision, as `make_cache` gives) already holds the first `cached`.
        With `logprobs` (0 to 20), its events carry each token's log probability and that
        many of the likeliest alternatives, as `stream_tokens` gives them. `speculative=
        False` keeps it from drafting in a decoder that drafts. Returns its uid."""
        if len(tokens) <= cached:
            raise ValueError("The prompt must have a token the cache does not hold.")
        tokens = list(tokens)
        params = sampling_for(self.model, params)
        sampler, processors = make_sampling(params, logits_processors)
        if params.temperature == 0:
            sampler = None  # mlx-lm's greedy default: one argmax for all such rows
        elif params.seed is not None:
            sampler = _seeded(params, params.seed)
        if sampler is not None:
            sampler = shared_sampler(self.model, sampler)
        max_tokens = NO_LIMIT if params.max_tokens == -1 else params.max_tokens
        uid, self._uids = self._uids, self._uids + 1
        self._seqs[uid] = _Sequence(
            uid,
            len(tokens),
            cached,
            params,
            self.model.tokenizer.detokenizer,
            _StopMatcher(params.stop),
            logprobs=logprobs,
        )
        if cache is None:
            from .cache import make_cache

            cache = make_cache(self.model, self.kv_bits)
        drafts = self._spec is not None and speculative and not processors
        reading = _Reading(tokens, cache, cached, max_tokens, sampler, processors, uid, drafts)
        if reading.left > self.prefill_step_size:
            self._reading[uid] = reading
        else:
            self._join(uid, reading)
        return uid

    def cancel(self, uid: int) -> SequenceEvent | None:
        """End a sequence now (finish "cancelled"); its event carries its cache."""
        seq = self._seqs.pop(uid, None)
        if seq is None:
            return None
        reading = self._reading.pop(uid, None)
        if reading is not None:
            tokens = reading.tokens[: reading.done]
            return seq.stats("cancelled", cache=reading.cache, tokens=tokens)
        cache, tokens = self._remove(uid, seq)
        return seq.stats("cancelled", cache=cache, tokens=tokens)

    def step(self) -> list[SequenceEvent]:
        """A chunk of one long prompt read here, then one decode step for the decoding
        sequences and one prefill chunk for those the batch is reading: the text each
        got, and an event with stats for each that finished."""
        self._read_a_chunk()
        _, responses = self._gen.next()
        events: list[SequenceEvent] = []
        for r in responses:
            uid = self._in_batch.get(r.uid)
            seq = self._seqs.get(uid) if uid is not None else None
            if seq is None:
                continue
            if seq.first is None:
                seq.first = time.perf_counter()
            detok = seq.detokenizer
            seq.reply.append(r.token)
            if r.finish_reason == "stop":  # an end-of-turn token: not part of the text
                detok.finalize()
            else:
                seq.generated += 1
                if seq.logprobs is not None:
                    seq.scored.append(score_token(r.token, r.logprobs, seq.logprobs))
                detok.add_token(r.token)
                if r.finish_reason is not None:
                    detok.finalize()
            text, stop_hit = seq.stops.feed(detok.last_segment)
            if r.finish_reason is None and not stop_hit:
                if text:
                    events.append(SequenceEvent(uid, text, logprobs=seq.taken()))
                continue
            del self._seqs[uid]
            if stop_hit:  # the end of the text, whatever else this token did
                reason = "stop"
                if r.finish_reason is None:  # the batch still has it
                    cache, tokens = self._remove(uid, seq)
                else:
                    cache, tokens = r.prompt_cache, r.all_tokens
                    del self._in_batch[r.uid]
                    self._count(r.uid, seq)
            else:
                reason, cache, tokens = r.finish_reason, r.prompt_cache, r.all_tokens
                del self._in_batch[r.uid]
                self._count(r.uid, seq)
                text += seq.stops.flush()
            events.append(seq.stats(reason, text, cache, tokens))
        return events

    def close(self) -> None:
        self._seqs.clear()
        self._reading.clear()
        self._in_batch.clear()
        self._gen.close()

    def _read_a_chunk(self) -> None:
        """Read one chunk of a long prompt (the one with least left, or every other step
        the one waiting longest); once what is left fits a chunk, it joins the batch."""
        if not self._reading:
            return
        import mlx.core as mx

        self._steps += 1
        if self._steps % 2:
            uid = min(self._reading, key=lambda u: (self._reading[u].left, self._reading[u].order))
        else:
            uid = min(self._reading, key=lambda u: self._reading[u].order)
        reading = self._reading[uid]
        chunk = reading.tokens[reading.done : reading.done + self.prefill_step_size]
        with mx.stream(self._gen.stream):
            self.model.model(mx.array(chunk)[None], cache=reading.cache)
            mx.eval([c.state for c in reading.cache])
        reading.done += len(chunk)
        if reading.left <= self.prefill_step_size:
            del self._reading[uid]
            self._join(uid, reading)

    def _join(self, uid: int, reading: _Reading) -> None:
        """Hand a sequence to the BatchGenerator with what is left of its prompt."""
        (theirs,) = self._gen.insert_segments(
            segments=[[reading.tokens[reading.done :]]],
            max_tokens=[reading.max_tokens],
            caches=[reading.cache],
            all_tokens=[reading.tokens[: reading.done]],
            samplers=[reading.sampler],
            logits_processors=[reading.processors],
        )
        self._in_batch[theirs] = uid
        if reading.drafts:
            seq = self._seqs[uid]
            k = {} if self.num_draft_tokens is None else {"k_max": self.num_draft_tokens}
            sampled = seq.params if seq.params.temperature != 0 else None
            self._spec.register(theirs, params=sampled, adaptive=self.adaptive, **k)

    @property
    def draft_kept_bytes(self) -> int:
        """Bytes of the draft caches kept for next turns (0 without a draft model)."""
        return self._spec.draft_kept_bytes if self._spec is not None else 0

    def drafting(self, uid: int) -> bool:
        """Whether sequence `uid` speculates (see the class docstring)."""
        theirs = next((t for t, ours in self._in_batch.items() if ours == uid), None)
        return self._spec is not None and theirs is not None and theirs in self._spec.rows

    def _remove(self, uid: int, seq: _Sequence) -> tuple[list[Any] | None, list[int] | None]:
        theirs = next((t for t, ours in self._in_batch.items() if ours == uid), None)
        if theirs is None:
            return None, None
        del self._in_batch[theirs]
        caches = self._gen.remove([theirs], return_prompt_caches=True)
        self._count(theirs, seq)
        cache, tokens = caches.get(theirs, (None, None))
        return cache, list(tokens) if tokens is not None else None

    def _count(self, theirs: int, seq: _Sequence) -> None:
        """A sequence leaving the batch takes its drafted and accepted counts along."""
        if self._spec is not None:
            seq.drafted, seq.accepted = self._spec.counts(theirs)


def _draft_model(model: Model, draft: Any) -> Any:
    """The draft `Model` a batch drafts with: None for prompt lookup (`"lookup"` or a
    `LookupDrafter`) or no drafting; a loaded Model, a store reference (loaded), or a
    `ModelDrafter`'s, checked to share `model`'s tokenizer."""
    from .model import Model as Loaded
    from .model import load
    from .speculative import LookupDrafter, ModelDrafter, check_tokenizers

    lookup = isinstance(draft, LookupDrafter) or (isinstance(draft, str) and draft == "lookup")
    if draft is None or lookup:
        return None
    if isinstance(draft, ModelDrafter):
        draft = draft.draft
    elif isinstance(draft, str):
        draft = load(draft)
    if not isinstance(draft, Loaded):
        raise ValueError(
            "A batch speculates by prompt lookup (draft='lookup') or with a loaded draft "
            f"Model, not {draft!r}."
        )
    check_tokenizers(model, draft)
    return draft


def open_decoder(model: Model, **options: Any) -> BatchDecoder:
    """A BatchDecoder on `model`; for a model split across ranks that this process
    drives, one whose every call the other ranks make too (`mirror.MirroredDecoder`,
    with the same methods)."""
    leader = leader_of(model)
    if leader is not None:
        return leader.decoder(**options)
    return BatchDecoder(model, **options)


def _seeded(params: SamplingParams, seed: int) -> Callable:
    """mlx-lm's sampler chain for `params` (as `make_sampler` builds it) drawing from its
    own key, split per draw exactly as MLX splits its global key after `mx.random.seed`
    (see the module docstring)."""
    import mlx.core as mx
    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

    filters: list[Callable] = []
    if 0 < params.top_p < 1.0:
        filters.append(lambda x: apply_top_p(x, params.top_p))
    if params.min_p != 0.0:
        filters.append(lambda x: apply_min_p(x, params.min_p))
    if params.top_k > 0:
        filters.append(lambda x: apply_top_k(x, params.top_k))
    scale = 1.0 / params.temperature
    key = [mx.random.key(seed)]

    def sample(logprobs: Any) -> Any:
        for f in filters:
            logprobs = f(logprobs)
        key[0], draw = mx.random.split(key[0])
        return mx.random.categorical(logprobs * scale, key=draw)

    return sample


def batch_generate(
    model: Model,
    prompts: Sequence[Prompt],
    params: SamplingParams | Sequence[SamplingParams] | None = None,
    *,
    progress: bool | Callable[[int, int], None] = True,
    max_batch: int = DEFAULT_MAX_BATCH,
    prefill_step_size: int = 512,
    kv_bits: int | None = None,
    draft: Any = None,
    num_draft_tokens: int | None = None,
    **overrides: Any,
) -> list[BatchResult]:
    """Replies to many prompts (raw text, chat messages or token ids), decoded together.

    `params` is one SamplingParams for all, one per prompt, or None (the model's
    defaults); keyword overrides apply to each (`temperature=0`, `max_tokens=64`).
    `progress=True` shows a bar (a widget in notebooks); a callable gets (done, total)
    as prompts finish. Greedy replies are the same as `generate` gives one at a time.
    Sequences are admitted while the memory planner says their KV (prompt + max_tokens
    each) fits beside the weights. `kv_bits` (8 or 4) quantizes the KV (admission counts
    its bytes); `draft="lookup"` makes each prompt speculate by prompt lookup on its own,
    a draft `Model` (or its store reference, or a drafter from `make_drafter`) with that
    model, at most `num_draft_tokens` a round (`BatchDecoder`); each result counts the
    tokens drafted for it and those kept.
    """
    from .memory import MemoryPlanner

    prompts = list(prompts)
    if params is None or isinstance(params, SamplingParams):
        each = [resolve_params(model, params, overrides)] * len(prompts)
    else:
        each = [resolve_params(model, p, overrides) for p in params]
        if len(each) != len(prompts):
            raise ValueError(
                f"Got {len(prompts)} prompts but {len(each)} SamplingParams: pass one per "
                "prompt, or a single one for all."
            )
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1.")
    tokens = [model.prompt_tokens(p) for p in prompts]
    for i, t in enumerate(tokens):
        if not t:
            raise ValueError(f"Prompt {i} is empty.")
    planner = MemoryPlanner.for_model(model, kv_bits=kv_bits)
    room = planner.budget.bytes - planner.weights
    per_token = planner.kv_per_token()

    def reserve(i: int) -> int:
        limit = each[i].max_tokens if each[i].max_tokens > 0 else model.context_length
        return per_token * (len(tokens[i]) + limit)

    report = _progress(progress, len(prompts))
    results: dict[int, BatchResult] = {}
    options: dict[str, Any] = {"kv_bits": kv_bits} if kv_bits is not None else {}
    if draft is not None:
        options.update(draft=draft, num_draft_tokens=num_draft_tokens)
    decoder = open_decoder(
        model, max_batch=max_batch, prefill_step_size=prefill_step_size, **options
    )
    parts: dict[int, list[str]] = {}
    index: dict[int, int] = {}
    reserved: dict[int, int] = {}
    pending = list(range(len(prompts)))
    try:
        while pending or len(decoder):
            while pending and (
                not reserved or sum(reserved.values()) + reserve(pending[0]) <= room
            ):
                i = pending.pop(0)
                uid = decoder.add(tokens[i], each[i])
                index[uid], parts[uid], reserved[uid] = i, [], reserve(i)
            for event in decoder.step():
                parts[event.uid].append(event.text)
                if event.finish_reason is None:
                    continue
                del reserved[event.uid]
                results[index[event.uid]] = BatchResult(
                    "".join(parts.pop(event.uid)),
                    event.finish_reason,
                    event.prompt_tokens,
                    event.completion_tokens,
                    event.drafted,
                    event.accepted,
                )
                report(len(results))
    finally:
        decoder.close()
        report(None)
    return [results[i] for i in range(len(prompts))]


def _progress(progress: bool | Callable[[int, int], None], total: int) -> Callable:
    """report(done) as prompts finish, report(None) at the end."""
    if callable(progress):

        def call(done: int | None) -> None:
            if done is not None:
                progress(done, total)

        return call
    if not progress:
        return lambda done: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="prompt", desc="generating")

    def update(done: int | None) -> None:
        if done is None:
            bar.close()
        else:
            bar.update(done - bar.n)

    return update
