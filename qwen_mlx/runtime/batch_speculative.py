"""Speculation inside the continuous batch: `SpeculativeBatch`, mlx-lm's
`GenerationBatch` (the decoding half of its `BatchGenerator`) with rounds in which every
sequence that has a draft gets it verified, all rows in one forward pass. The drafts come
from prompt lookup (below), or from a draft model shared by the batch (at the end).

Each sequence drafts on its own: a `LookupDrafter` over its prompt and reply, and a
`_Controller` (the single-stream one, `speculative.py`) that picks its draft length
from its match strength and acceptance. A round feeds each row its pending token and its
draft, padded at the end to the longest; each row keeps the drafted tokens that equal the
model's greedy pick, plus the model's own next token (pending, as mlx-lm keeps it), and
its cache drops the rest (`kv_batch.trim_rows`: rows keep different counts). A round
where no row would draft is mlx-lm's own pipelined step, untouched.

A row without a match in a round that drafts is padded to the width anyway, and padding
costs what a draft costs: it drafts what followed its last token's previous occurrence
instead (a filler, with its own acceptance), which is sometimes right.

A sampled sequence keeps a drafted token d with probability p(d) (lookup's draft is a
point mass) and otherwise draws from p without d, renormalised; after its last kept
draft one token comes from p: speculative sampling (Leviathan et al. 2023), so its tokens
follow p exactly. p is its sampler's distribution (`speculative.make_dist`: top-p,
min-p, top-k, temperature) and the uniform draws come from the sequence's own key (its
seed's, or one drawn from MLX's global key when it has none), whatever else shares the
batch.

Adaptive per batch: the width of a round is paid by every row (a row without a draft is
padded), so the batch decides it. A round of width 1 + k costs 1 + f + k r plain steps,
(f, r) fitted from round times measured at this batch size (buckets 1, 2, 3-4, 5-8, 9-16,
17+; before any, the single-stream prior with r growing as the square root of the batch,
as a CPU's compute-bound pass does); it yields the B pending tokens plus each row's
expected kept drafts (its match strength's acceptance, learned per sequence by its
`_Controller`). The round drafts the k that pays best, by 5% at least over a plain step,
or not at all: a big batch where few rows have a strong match, or where a wider pass
costs nearly its width (compute bound), decodes plainly. A batch size that has not
drafted for 64 rounds with matches to hand probes one short round to measure its cost.

Which sequences draft: those without logits processors. One with processors (a JSON
schema, a repetition penalty) decodes without drafting inside the same rounds (its row is
fed its pending token only; position 0 of the pass is what a plain step would compute),
so its output is what it is without speculation; the decoder says which sequences draft
(`BatchDecoder.drafting`).

A draft model (`empty(..., draft=Model)`) keeps a batch cache of its own, row for row
with the model's (bf16, or quantized as the model's at `draft_bits`): a joining sequence's
tokens are read into a cache of the draft's and merged in as mlx-lm merges the model's,
a leaving one filtered out. The draft caches of the last few sequences to leave are
kept with their tokens, so one that joins with such a prefix (an agent's next turn,
which the model reads from the prompt-cache pool) has the draft read only what is new.
Its rows may lag behind the model's (plain steps do not run the draft; a row that kept
its whole draft never read the last token): a round first feeds each drafting row what
it has not read and its pending token, right padded to the longest and trimmed per row,
then k - 1 batched steps, one per drafted position; after the verify pass each row's
draft cache is trimmed to what its sequence kept (`trim_rows`). A draft model also
looks up, as alone (`speculative.ModelDrafter`): a row whose lookup match is likelier
than the draft model's acceptance drafts what followed the match, and the draft reads
those tokens in its steps; when every row looks up, the draft model sits the round out
and its rows catch up the next time it runs. A sampled sequence
draws its drafts from its sampler's distribution q of the draft's logits with its own
key, and keeps d with probability min(1, p(d) / q(d)). The round's k is chosen as
lookup's is, each row's chance its sequence's measured acceptance, the cost measured
with the draft's steps in it (before any, the lookup prior plus a tenth of a plain step
per drafted position).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from mlx_lm.generate import GenerationBatch

from .kv_batch import trim_rows
from .speculative import (
    DEFAULT_DRAFT_TOKENS,
    LookupDrafter,
    _Acceptance,
    _bucket,
    _Choice,
    _Controller,
    _fit_cost,
    _sample,
)

_PRIOR = (0.1, 0.25)  # (f, r) before any round is measured: the single-stream prior...


def _prior(size: int) -> tuple[float, float]:
    """...with r growing with the batch: a CPU's pass over B rows of 1 + k tokens is
    compute bound (measured with the trained pair: r about 0.25 alone, 0.5 at 4 and 8
    rows); where the real cost is lower (a GPU reading a big model's weights), a probe
    measures it and drafting starts."""
    return _PRIOR[0], min(_PRIOR[1] * size**0.5, 0.75)


_FLOOR = 0.05  # a drafted position costs at least this share of a plain step
_PROBE_AFTER = 64  # rounds with matches but no drafting before a probe

_KEY_OFFSET = 0x9E3779B97F4A7C15  # a sequence's drafting key: its seed, moved off the sampler's
_MODEL_STEP = 0.1  # a draft model's step per drafted position (prior), in plain steps
_DRAFT_PREFILL = 512  # prompt tokens a draft model reads per pass when a sequence joins
_DRAFT_KEEP = 8  # draft caches kept of sequences that left (see `_init_spec`)

_SIZES = (1, 2, 4, 8, 16)  # batch-size buckets for the measured costs: 1, 2, 3-4, 5-8, ...


def _size_bucket(size: int) -> int:
    return sum(size > s for s in _SIZES)


@dataclass
class _Costs:
    """Round times at one batch size: plain steps (seconds) and drafting rounds
    (seconds, drafted width), in the shape `_Controller.cost` reads."""

    plain: deque[float] = field(default_factory=lambda: deque(maxlen=15))
    drafting: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=15))
    skipped: int = 0  # rounds since the last drafting one, with matches to hand
    step: float = 0.0  # a draft model's step per drafted position, in plain steps (prior)

    def fitted(self, size: int) -> tuple[float, float]:
        """(f, r): a round drafting k tokens per row of a batch of `size` costs
        1 + f + k r plain steps."""
        import statistics

        fixed, per_token = _prior(size)
        prior = (fixed, per_token + self.step)
        if not self.plain or not self.drafting:
            return prior
        plain = max(statistics.median(self.plain), 1e-9)
        samples = [(m, min(max(t - plain, 0.0) / plain, 4 * m)) for t, m in self.drafting]
        return _fit_cost(samples, prior, _FLOOR + self.step)


@dataclass(eq=False)
class _Row:
    """One sequence's drafter, controller and counts."""

    lookup: LookupDrafter
    control: _Controller
    dist: Any = None  # a sampled sequence's distribution (logits -> p), None for greedy
    key: Any = None  # and its own random key
    drafted: int = 0
    accepted: int = 0
    seen: dict[int, int] = field(default_factory=dict)  # token -> its last position
    indexed: int = 0
    held: int = 0  # with a draft model: tokens of the sequence its draft cache holds

    def last_occurrence(self, history: list[int]) -> int:
        """Where the last token of `history` occurred before, or -1 (the history only
        grows between calls, as the lookup's does)."""
        for j in range(self.indexed, len(history) - 1):
            self.seen[history[j]] = j
        self.indexed = max(len(history) - 1, self.indexed)
        return self.seen.get(history[-1], -1) if history else -1

    def uniforms(self, n: int) -> Any:
        """`n` uniform draws from this sequence's key (advanced)."""
        import mlx.core as mx
        import numpy as np

        self.key, draw = mx.random.split(self.key)
        return np.array(mx.random.uniform(shape=(n,), key=draw))


class SpeculativeBatch(GenerationBatch):
    """A GenerationBatch whose rounds verify drafts of different lengths (see the module
    docstring). `register(uid, k_max)` makes a sequence draft; `counts(uid)` gives its
    drafted and accepted tokens."""

    def _init_spec(
        self, draft: Any = None, draft_bits: int | None = None, keep_bytes: int | None = None
    ) -> None:
        self.rows: dict[int, _Row] = {}
        self.costs: dict[int, _Costs] = {}
        # Fillers: a row without a lookup match in a round that drafts anyway pays for
        # its padding; the tokens after its last token's previous occurrence cost no
        # more, and are sometimes right.
        self.filler = _Acceptance(0.2)
        self.done_counts: dict[int, tuple[int, int]] = {}
        # A draft model (a `Model`) shared by the batch, its batch cache row for row
        # with the model's (`draft_cache`, at `draft_bits`); None: prompt lookup.
        self.draft = draft
        self.draft_bits = draft_bits
        self.draft_cache: list[Any] = []
        # The draft caches of sequences that left, with the tokens they hold (newest
        # last): a sequence joining with one of them as its prefix (an agent's next
        # turn) reads only the rest into the draft. `draft_read` counts what it read.
        # At most `_DRAFT_KEEP` of them, and at most `keep_bytes` in all (None: no bound
        # but the count): the oldest go first; `draft_kept_bytes` is what they hold.
        self.draft_kept: deque[tuple[list[int], list[Any], int]] = deque()
        self.draft_keep_bytes = keep_bytes
        self.draft_kept_bytes = 0
        self.draft_read = 0

    @classmethod
    def empty(
        cls,
        model: Any,
        fallback_sampler: Any,
        *,
        draft: Any = None,
        draft_bits: int | None = None,
        keep_bytes: int | None = None,
    ) -> SpeculativeBatch:
        batch = super().empty(model, fallback_sampler)
        batch._init_spec(draft, draft_bits, keep_bytes)
        return batch

    def register(
        self,
        uid: int,
        k_max: int | None = None,
        *,
        params: Any = None,
        adaptive: bool = True,
    ) -> None:
        """Make sequence `uid` draft, at most `k_max` tokens a round (lookup's or a draft
        model's default); `params` (its SamplingParams) when it samples. Before its rows
        join the batch (`extend`): a draft model reads its prompt then."""
        import mlx.core as mx

        from .speculative import make_dist

        by_model = self.draft is not None
        if k_max is None:
            k_max = DEFAULT_DRAFT_TOKENS["model" if by_model else "lookup"]
        dist = make_dist(params) if params is not None else None
        key = None
        if dist is not None:
            seed = params.seed
            if seed is None:
                seed = mx.random.randint(0, 1 << 31, shape=()).item()
            # Not the sampler's own key (`batch._seeded` draws from key(seed)): a draft
            # drawn with the numbers that drew the token before it would depend on it.
            key = mx.random.key((seed + _KEY_OFFSET) % (1 << 64))
        control = _Controller(k_max, lookup=not by_model, model=by_model, adaptive=adaptive)
        self.rows[uid] = _Row(LookupDrafter(), control, dist, key)

    def counts(self, uid: int) -> tuple[int, int]:
        """(drafted, accepted) of a sequence leaving the batch (then forgotten)."""
        if uid in self.done_counts:
            return self.done_counts.pop(uid)
        row = self.rows.pop(uid, None)
        return (row.drafted, row.accepted) if row else (0, 0)

    def extend(self, batch: GenerationBatch) -> None:
        """Sequences joining (their prompts read): with a draft model, it reads each
        drafting one's tokens into a cache of its own, and those join its batch cache as
        the model's join its (a sequence that does not draft gets an empty row)."""
        super().extend(batch)
        if self.draft is None or not batch.uids:
            return
        import mlx.core as mx
        from mlx_lm.generate import _extend_cache, _merge_caches

        from .cache import make_cache

        caches = []
        for uid, tokens in zip(batch.uids, batch.tokens, strict=True):
            row = self.rows.get(uid)
            held, cache = self._kept_prefix(tokens) if row is not None else (0, None)
            if cache is None:
                cache = make_cache(self.draft, self.draft_bits)
            if row is not None:
                for i in range(held, len(tokens), _DRAFT_PREFILL):
                    self.draft.model(mx.array(tokens[i : i + _DRAFT_PREFILL])[None], cache=cache)
                    mx.eval([c.state for c in cache])
                self.draft_read += len(tokens) - held
                row.held = len(tokens)
            caches.append(cache)
        self.draft_cache = _extend_cache(self.draft_cache, _merge_caches(caches))

    def _kept_prefix(self, tokens: list[int]) -> tuple[int, Any]:
        """The kept draft cache sharing the longest prefix with `tokens` (taken out and
        cut to that prefix) and the prefix's length; (0, None) when none shares one."""
        from .cache import trim_cache

        best, shared = -1, 0
        for j, (held, _, _) in enumerate(self.draft_kept):
            n = 0
            for a, b in zip(held, tokens, strict=False):
                if a != b:
                    break
                n += 1
            if n > shared:
                best, shared = j, n
        if best < 0:
            return 0, None
        held, cache, nbytes = self.draft_kept[best]
        del self.draft_kept[best]
        self.draft_kept_bytes -= nbytes
        trim_cache(cache, len(held) - shared)
        return shared, cache

    def _keep_draft(self, i: int, row: _Row) -> None:
        """Row i leaving: its draft cache, cut to the tokens its sequence kept, is kept."""
        from .cache import cache_nbytes, trim_cache

        if not self.draft_cache or not row.held:
            return
        tokens = self.tokens[i][: row.held]
        cache = [c.extract(i) for c in self.draft_cache]
        trim_cache(cache, row.held - len(tokens))  # a stop inside the last round's run
        nbytes = cache_nbytes(cache)
        budget = self.draft_keep_bytes
        if budget is not None and nbytes > budget:
            return  # more than all the room: the next turn reads its prompt again
        self.draft_kept.append((tokens, cache, nbytes))
        self.draft_kept_bytes += nbytes
        while len(self.draft_kept) > _DRAFT_KEEP or (
            budget is not None and self.draft_kept_bytes > budget
        ):
            self.draft_kept_bytes -= self.draft_kept.popleft()[2]

    def filter(self, keep: list[int]) -> None:
        for i, uid in enumerate(self.uids):
            if i not in keep and uid in self.rows:
                row = self.rows.pop(uid)
                self.done_counts[uid] = (row.drafted, row.accepted)
                if self.draft is not None:
                    self._keep_draft(i, row)
        if self.draft is not None:
            if not keep:
                self.draft_cache = []
            else:
                for c in self.draft_cache:
                    c.filter(keep)
        super().filter(keep)

    # -- rounds ------------------------------------------------------------------------

    def _costs(self) -> _Costs:
        bucket = _size_bucket(len(self.uids))
        costs = self.costs.get(bucket)
        if costs is None:
            step = _MODEL_STEP if self.draft is not None else 0.0
            costs = self.costs[bucket] = _Costs(step=step)
        return costs

    def _left(self, i: int) -> int:
        """Tokens row i may still emit after its pending one."""
        return self.max_tokens[i] - self._num_tokens[i] - 1

    def _plan(self, costs: _Costs, histories: list[list[int]]) -> tuple[int, list[Any]]:
        """The round's draft length k (0: a plain step) and each row's lookup match
        (position, length), or None, for these histories (see the module docstring)."""
        matches: list[Any] = []
        for i, uid in enumerate(self.uids):
            row = self.rows.get(uid)
            match = None
            if row is not None and self._left(i) > 0:
                pos, length = row.lookup.find(histories[i])
                if pos >= 0:
                    match = (pos, length)
                else:
                    pos = row.last_occurrence(histories[i])
                    match = (pos, 0) if pos >= 0 else None  # a filler (length 0)
            matches.append(match)
        rows = [
            (
                self.rows[self.uids[i]],
                m[1],
                min(self.rows[self.uids[i]].control.k_max, self._left(i)),
            )
            for i, m in enumerate(matches)
            if m is not None
        ]
        if not any(length for _, length, _ in rows):  # fillers alone never start a round
            return 0, matches
        k_max = max(cap for _, _, cap in rows)
        if not rows[0][0].control.adaptive:
            return k_max, matches
        size = len(self.uids)
        fixed, per_token = costs.fitted(size)
        survive = [1.0] * len(rows)
        gain, best_k, best = 0.0, 0, 1.0
        for k in range(1, k_max + 1):
            for j, (row, length, cap) in enumerate(rows):
                if k <= cap:
                    alpha = (
                        row.control.buckets[_bucket(length + k - 1)].alpha
                        if length
                        else self.filler.alpha
                    )
                    survive[j] *= min(alpha, 0.99)
                    gain += survive[j]
            speed = (size + gain) / (size * (1 + fixed + k * per_token))
            if speed > best * 1.05:
                best_k, best = k, speed
        if best_k == 0 and costs.skipped >= _PROBE_AFTER:
            best_k = min(2, k_max)  # a probe: this batch size's cost may be out of date
        return best_k, matches

    def next(self) -> list[GenerationBatch.Response]:
        if not self.uids:
            return []
        costs = self._costs()
        # Judged on the tokens already read (the pending ones are still being computed),
        # so a plain step keeps mlx-lm's pipelining.
        if self.rows and self.draft is not None:
            k, caps = self._model_plan(costs)
            if k:
                return self._model_round(costs, k, caps)
            if any(caps):
                costs.skipped += 1
        elif self.rows:
            k, matches = self._plan(costs, self.tokens)
            if k:
                return self._round(costs)
            if any(m is not None for m in matches):
                costs.skipped += 1
        start = time.perf_counter()
        responses = super().next()
        costs.plain.append(time.perf_counter() - start)
        return responses

    def _round(self, costs: _Costs) -> list[GenerationBatch.Response]:
        """One verify pass over every row's lookup draft (none for most rows, perhaps)."""
        import mlx.core as mx

        mx.eval(self._next_tokens, self._next_logprobs)
        start = time.perf_counter()
        last = self._next_tokens.tolist()
        k, matches = self._plan(costs, [[*t, y] for t, y in zip(self.tokens, last, strict=True)])
        drafts: list[list[int]] = []
        choices: list[Any] = []
        for i, uid in enumerate(self.uids):
            match, choice, draft = matches[i], None, []
            if k and match is not None:
                row = self.rows[uid]
                choice = _Choice(min(k, self._left(i)), "lookup", match[1], match[0])
                draft = row.lookup.continuation(match[0], choice.k)
                if not match[1]:
                    choice.source = None  # a filler: judged apart from real matches
            drafts.append(draft)
            choices.append(choice)

        def judged(i: int, row: _Row, proposed: int, kept: int) -> None:
            if choices[i].source is not None:
                row.control.observe(choices[i], proposed, kept)
            else:
                for j in range(min(kept + 1, proposed)):
                    self.filler.add(j < kept)

        return self._verify(costs, start, last, drafts, judged)

    # -- a draft model -------------------------------------------------------------------

    def _model_plan(self, costs: _Costs) -> tuple[int, list[int]]:
        """With a draft model: the round's draft length k (0: a plain step) and each
        row's cap (0 for a row that does not draft). Every drafting row's next token
        has the same chance, its sequence's measured acceptance (the first round
        drafts one token, to learn it)."""
        caps = []
        for i, uid in enumerate(self.uids):
            row = self.rows.get(uid)
            caps.append(min(row.control.k_max, self._left(i)) if row is not None else 0)
        k_max = max(caps, default=0)
        if not k_max:
            return 0, caps
        rows = [(self.rows[uid], cap) for uid, cap in zip(self.uids, caps, strict=True) if cap]
        if not rows[0][0].control.adaptive:
            return k_max, caps
        size = len(self.uids)
        fixed, per_token = costs.fitted(size)
        # Each row's chance for its j-th drafted token: its lookup match's where the
        # text repeats and that is likelier (judged on the tokens read so far), else
        # the draft model's measured acceptance.
        chances = []
        for i, uid in enumerate(self.uids):
            if not caps[i]:
                continue
            row = self.rows[uid]
            model = min(row.control.model_acceptance.alpha, 0.99)
            _, length = row.lookup.find(self.tokens[i])
            if length and row.control.buckets[_bucket(length)].alpha > model:
                buckets = row.control.buckets
                chances.append(lambda j, b=buckets, n=length: min(b[_bucket(n + j)].alpha, 0.99))
            else:
                chances.append(lambda j, a=model: a)
        survive = [1.0] * len(rows)
        gain, best_k, best = 0.0, 0, 1.0
        for k in range(1, k_max + 1):
            for j, (_, cap) in enumerate(rows):
                if k <= cap:
                    survive[j] *= chances[j](k - 1)
                    gain += survive[j]
            speed = (size + gain) / (size * (1 + fixed + k * per_token))
            if speed > best * 1.05:
                best_k, best = k, speed
        if best_k == 0 and (
            costs.skipped >= _PROBE_AFTER or any(not row.control.model_rounds for row, _ in rows)
        ):
            # A probe: acceptance and this batch size's cost may be out of date, or a
            # sequence has not drafted yet (its first round learns its acceptance).
            best_k = 1
        return best_k, caps

    def _model_round(self, costs: _Costs, k: int, caps: list[int]) -> list[Any]:
        """k batched draft-model steps for every row, then one verify pass.

        The draft's cache first catches up: each drafting row is fed what it has not
        read of its tokens and its pending one (right padded to the longest, the padding
        trimmed per row), whose logits give its first draft token; then k - 1 steps feed
        the drafts. After the verify pass each row's draft cache keeps what its
        sequence kept (`trim_rows`): its pending token and its kept drafts, but the last
        draft, which it never read (it is fed on the next round's catch-up)."""
        import mlx.core as mx

        mx.eval(self._next_tokens, self._next_logprobs)
        start = time.perf_counter()
        last = self._next_tokens.tolist()
        lengths = [len(t) for t in self.tokens]
        # Rows whose text repeats draft by lookup where its match is likelier than the
        # draft model (a point mass: the draft model reads its tokens all the same).
        looked: dict[int, _Choice] = {}
        for i, uid in enumerate(self.uids):
            row = self.rows.get(uid)
            if row is None or not caps[i]:
                continue
            pos, length = row.lookup.find([*self.tokens[i], last[i]])
            model = row.control.model_acceptance.alpha
            if pos >= 0 and row.control.buckets[_bucket(length)].alpha > model:
                looked[i] = _Choice(caps[i], "lookup", length, pos)
        by_model = any(caps[i] and i not in looked for i in range(len(self.uids)))
        qs: list[dict[int, Any]] = []
        # With every row looking up, the draft model sits the round out (its rows catch
        # up when next it runs).
        drafted, since = (
            self._model_drafts(k, last, looked, qs) if by_model else ([[]] * len(last), None)
        )
        if since is not None:
            # Rows read a stretch of plain steps: a one-off cost, not what a round of
            # drafting costs (which would then look too dear to start again).
            start = since
        drafts = []
        for i, uid in enumerate(self.uids):
            if i in looked:
                drafts.append(self.rows[uid].lookup.continuation(looked[i].pos, min(k, caps[i])))
            else:
                drafts.append(drafted[i][: caps[i]])

        def judged(i: int, row: _Row, proposed: int, kept: int) -> None:
            choice = looked.get(i) or _Choice(proposed, "model")
            row.control.observe(choice, proposed, kept)

        def settle(kept: list[int]) -> None:
            if not by_model:
                return
            surplus = []
            for i, uid in enumerate(self.uids):
                row = self.rows.get(uid)
                if row is None:
                    surplus.append(k)
                    continue
                read = min(kept[i], k - 1)
                row.held = lengths[i] + 1 + read
                surplus.append(k - 1 - read)
            trim_rows(self.draft_cache, surplus)

        def q_of(i: int, n: int) -> Any:
            if i in looked or not qs or i not in qs[0]:
                return None
            return mx.stack([qs[j][i] for j in range(n)])

        return self._verify(costs, start, last, drafts, judged, settle=settle, q_of=q_of)

    def _model_drafts(
        self, k: int, last: list[int], looked: dict[int, _Choice], qs: list[Any]
    ) -> tuple[list[list[int]], float | None]:
        """The draft model's k tokens for every row (a row drafting by lookup is fed its
        lookup tokens instead): the catch-up pass, then k - 1 batched steps. `qs` gets
        each step's distributions of the sampled rows. And when the catch-up read more
        than a round leaves behind, the time it ended."""
        import mlx.core as mx

        feeds = []
        for i, uid in enumerate(self.uids):
            row = self.rows.get(uid)
            # A row that does not draft reads a placeholder, dropped after the round.
            feeds.append([*self.tokens[i][row.held :], last[i]] if row else [last[i]])
        width = max(len(f) for f in feeds)
        inputs = mx.array([f + f[-1:] * (width - len(f)) for f in feeds], dtype=mx.uint32)
        logits = self.draft.model(inputs, cache=self.draft_cache)
        ends = mx.array([len(f) - 1 for f in feeds])
        logits = mx.take_along_axis(logits, ends[:, None, None], axis=1)[:, 0]
        trim_rows(self.draft_cache, [width - len(f) for f in feeds])
        since = None
        if width > 2:
            mx.eval(logits, [c.state for c in self.draft_cache])
            since = time.perf_counter()
        lookups = None
        if looked:
            lookups = [
                self.rows[uid].lookup.continuation(looked[i].pos, k) if i in looked else [0] * k
                for i, uid in enumerate(self.uids)
            ]
            mask = mx.array([i in looked for i in range(len(self.uids))])
        columns = []
        for j in range(k):
            tokens, q = self._draw(logits)
            if lookups is not None:
                column = mx.array([t[j] for t in lookups], dtype=mx.uint32)
                tokens = mx.where(mask, column, tokens)
            columns.append(tokens)
            qs.append(q)
            if j < k - 1:
                logits = self.draft.model(tokens[:, None], cache=self.draft_cache)[:, -1]
        return mx.stack(columns, axis=1).tolist(), since

    def _draw(self, logits: Any) -> tuple[Any, dict[int, Any]]:
        """Each row's draft token from the draft's `logits` (B x vocab): its argmax, or
        for a sampled sequence a draw from its sampler's distribution q of them (with
        its own key); and those rows' q."""
        import mlx.core as mx

        greedy = mx.argmax(logits, axis=-1).astype(mx.uint32)
        sampled = [i for i, uid in enumerate(self.uids) if uid in self.rows and self.rows[uid].dist]
        if not sampled:
            return greedy, {}
        columns, qs = [], {}
        for i, uid in enumerate(self.uids):
            if i not in sampled:
                columns.append(greedy[i : i + 1])
                continue
            row = self.rows[uid]
            q = row.dist(logits[i : i + 1].astype(mx.float32))[0]
            row.key, draw = mx.random.split(row.key)
            columns.append(mx.random.categorical(mx.log(q), key=draw).astype(mx.uint32)[None])
            qs[i] = q
        return mx.concatenate(columns), qs

    # -- verifying -----------------------------------------------------------------------

    def _verify(
        self,
        costs: _Costs,
        start: float,
        last: list[int],
        drafts: list[list[int]],
        judged: Any,
        *,
        settle: Any = None,
        q_of: Any = None,
    ) -> list[GenerationBatch.Response]:
        """One pass of the model over every row's pending token and draft: each row
        keeps the drafts it accepts and the model's next token; `judged(i, row,
        proposed, kept)` for each row that drafted, `settle(kept)` before the caches
        are evaluated, `q_of(i, n)` a sampled row's draft distributions (None: a point
        mass)."""
        import mlx.core as mx

        last_logprobs = self._next_logprobs
        width = 1 + max(len(d) for d in drafts)
        inputs = mx.array(
            [[t, *d, *[t] * (width - 1 - len(d))] for t, d in zip(last, drafts, strict=True)],
            dtype=mx.uint32,
        )
        logits = self.model(inputs, cache=self.prompt_cache)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        # As mlx-lm's greedy sampler picks: the argmax of the log-softmax, model dtype.
        best = mx.argmax(logprobs, axis=-1)
        pending: list[Any] = []
        pending_logprobs: list[Any] = []
        for i in range(len(self.uids)):
            if drafts[i]:
                pending.append(None)  # from `best`, once the drafts are judged
                pending_logprobs.append(None)
                continue
            row_logprobs = logprobs[i : i + 1, 0]
            processors = self.logits_processors[i] if self.logits_processors else ()
            if processors:
                context = self._token_context[i].update_and_fetch(inputs[i : i + 1, 0])
                row_logits = logits[i : i + 1, 0]
                for processor in processors:
                    row_logits = processor(context, row_logits)
                row_logprobs = row_logits - mx.logsumexp(row_logits, axis=-1, keepdims=True)
            sampler = (self.samplers[i] if self.samplers else None) or self.fallback_sampler
            pending.append(sampler(row_logprobs))
            pending_logprobs.append(row_logprobs[0])
        best_list = best.tolist()
        mx.eval([p for p in pending if p is not None])
        emitted: list[list[int]] = []
        emitted_logprobs: list[list[Any]] = []
        surplus: list[int] = []
        kept: list[int] = []
        for i in range(len(self.uids)):
            d = drafts[i]
            n = 0
            if d:
                row = self.rows[self.uids[i]]
                if row.dist is None:
                    while n < len(d) and best_list[i][n] == d[n]:
                        n += 1
                    pending[i] = best_list[i][n]
                else:
                    q = q_of(i, len(d)) if q_of is not None else None
                    n, pending[i] = _judge(row, logits[i, : len(d) + 1], d, q)
                pending_logprobs[i] = logprobs[i, n]
                row.drafted += len(d)
                row.accepted += n
                judged(i, row, len(d), n)
            else:
                pending[i] = int(pending[i].item())
            emitted.append([last[i], *d[:n]])
            emitted_logprobs.append([last_logprobs[i], *(logprobs[i, j] for j in range(n))])
            surplus.append(width - 1 - n)
            kept.append(n)
        trim_rows(self.prompt_cache, surplus)
        if settle is not None:
            settle(kept)
        self._next_tokens = mx.array(pending, dtype=mx.uint32)
        self._next_logprobs = pending_logprobs
        mx.eval([c.state for c in self.prompt_cache], self._next_logprobs)
        if self.draft is not None:
            mx.eval([c.state for c in self.draft_cache])
        if width > 1:  # else no row has a match with its pending token: no measure
            costs.drafting.append((time.perf_counter() - start, width - 1))
            costs.skipped = 0
        return self._respond(emitted, emitted_logprobs)

    def _respond(
        self, emitted: list[list[int]], emitted_logprobs: list[list[Any]]
    ) -> list[GenerationBatch.Response]:
        """Responses for each row's tokens in order, ending a row at its stop token or
        max_tokens (its cache then handed back holding exactly the tokens it emitted)."""
        from .cache import trim_cache

        keep, responses = [], []
        for i, uid in enumerate(self.uids):
            finish = None
            for j, token in enumerate(emitted[i]):
                self._num_tokens[i] += 1
                self.tokens[i].append(token)
                if self._num_tokens[i] >= self.max_tokens[i]:
                    finish = "length"
                if self._matchers[i].advance(token):
                    finish = "stop"
                if finish is None:
                    responses.append(
                        self.Response(uid, token, emitted_logprobs[i][j], None, None, None)
                    )
                    continue
                cache = self.extract_cache(i)
                extra = len(emitted[i]) - 1 - j
                if extra:
                    trim_cache(cache, extra)
                    del self.tokens[i][-extra:]
                responses.append(
                    self.Response(uid, token, emitted_logprobs[i][j], finish, cache, self.tokens[i])
                )
                break
            if finish is None:
                keep.append(i)
        if len(keep) < len(self.uids):
            self.filter(keep)
        return responses


def _judge(row: _Row, logits: Any, draft: list[int], q: Any = None) -> tuple[int, int]:
    """Speculative sampling of a draft: (drafted tokens kept, the token after them), from
    `logits` at the draft's positions and one more. `q` (len(draft) x vocab) is the
    distribution each draft token was drawn from; None, a point mass (lookup). A draft
    token d is kept with probability min(1, p(d) / q(d)); at the first rejection the
    next token comes from max(p - q, 0) renormalised, after the last kept one from p."""
    import mlx.core as mx
    import numpy as np

    p = np.array(row.dist(logits.astype(mx.float32)))
    qs = np.array(q) if q is not None else None
    u = row.uniforms(2 * len(draft) + 2)
    n = 0
    while n < len(draft):
        d = draft[n]
        chance = p[n, d] if qs is None else p[n, d] / max(qs[n, d], 1e-30)
        if u[2 * n] < chance:
            n += 1
            continue
        residual = p[n].copy()
        if qs is None:
            residual[d] = 0.0
        else:
            residual = np.maximum(residual - qs[n], 0.0)
        if residual.sum() <= 0:
            residual = p[n]
        return n, _sample(residual, u[2 * n + 1])
    return n, _sample(p[n], u[2 * n + 1])


__all__ = ["SpeculativeBatch"]
