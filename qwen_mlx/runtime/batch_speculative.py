"""Prompt-lookup speculation inside the continuous batch: `SpeculativeBatch`, mlx-lm's
`GenerationBatch` (the decoding half of its `BatchGenerator`) with rounds in which every
sequence that has a draft gets it verified, all rows in one forward pass.

Each sequence drafts on its own: a `LookupDrafter` over its prompt and reply, and a
`_Controller` (the single-stream one, `speculative.py`) that picks its draft length
from its match strength and acceptance. A round feeds each row its pending token and its
draft, padded at the end to the longest; each row keeps the drafted tokens that equal the
model's greedy pick, plus the model's own next token (pending, as mlx-lm keeps it), and
its cache drops the rest (`kv_batch.trim_rows`: rows keep different counts). A round
where no row would draft is mlx-lm's own pipelined step, untouched.

A sampled sequence keeps a drafted token d with probability p(d) (lookup's draft is a
point mass) and otherwise draws from p without d, renormalised; after its last kept
draft one token comes from p: speculative sampling (Leviathan et al. 2023), so its tokens
follow p exactly. p is its sampler's distribution (`speculative.make_dist`: top-p,
min-p, top-k, temperature) and the uniform draws come from the sequence's own key (its
seed's, or one drawn from MLX's global key when it has none), whatever else shares the
batch.

Cost, per batch size: a drafting round's time against a plain step's, measured at this
batch size (buckets 1, 2, 3-4, 5-8, 9-16, 17+) and shared by the rows' controllers, so
where a wider pass costs nearly its width in plain steps (a big batch is compute bound)
they stop drafting; before any measurement a prior that grows with the batch.

Which sequences draft: those without logits processors. One with processors (a JSON
schema, a repetition penalty) decodes without drafting inside the same rounds (its row is
fed its pending token only; position 0 of the pass is what a plain step would compute),
so its output is what it is without speculation; the decoder says which sequences draft
(`BatchDecoder.drafting`).
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
    _best_k,
    _bucket,
    _Controller,
    _sample,
)

_SIZES = (1, 2, 4, 8, 16)  # batch-size buckets for the measured costs: 1, 2, 3-4, 5-8, ...


def _size_bucket(size: int) -> int:
    return sum(size > s for s in _SIZES)


@dataclass
class _Costs:
    """Round times at one batch size: plain steps (seconds) and drafting rounds
    (seconds, drafted width), in the shape `_Controller.cost` reads."""

    plain: deque[float] = field(default_factory=lambda: deque(maxlen=15))
    drafting: dict[str, deque[tuple[float, int]]] = field(
        default_factory=lambda: {"lookup": deque(maxlen=15), "model": deque(maxlen=15)}
    )


@dataclass(eq=False)
class _Row:
    """One sequence's drafter, controller and counts."""

    lookup: LookupDrafter
    control: _Controller
    dist: Any = None  # a sampled sequence's distribution (logits -> p), None for greedy
    key: Any = None  # and its own random key
    drafted: int = 0
    accepted: int = 0

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

    def _init_spec(self) -> None:
        self.rows: dict[int, _Row] = {}
        self.costs: dict[int, _Costs] = {}
        self.done_counts: dict[int, tuple[int, int]] = {}

    @classmethod
    def empty(cls, model: Any, fallback_sampler: Any) -> SpeculativeBatch:
        batch = super().empty(model, fallback_sampler)
        batch._init_spec()
        return batch

    def register(
        self,
        uid: int,
        k_max: int = DEFAULT_DRAFT_TOKENS["lookup"],
        *,
        params: Any = None,
        adaptive: bool = True,
    ) -> None:
        """Make sequence `uid` draft, at most `k_max` tokens a round; `params` (its
        SamplingParams) when it samples."""
        import mlx.core as mx

        from .speculative import make_dist

        dist = make_dist(params) if params is not None else None
        key = None
        if dist is not None:
            seed = params.seed
            if seed is None:
                seed = mx.random.randint(0, 1 << 31, shape=()).item()
            key = mx.random.key(seed)
        control = _Controller(k_max, lookup=True, model=False, adaptive=adaptive)
        self.rows[uid] = _Row(LookupDrafter(), control, dist, key)

    def counts(self, uid: int) -> tuple[int, int]:
        """(drafted, accepted) of a sequence leaving the batch (then forgotten)."""
        if uid in self.done_counts:
            return self.done_counts.pop(uid)
        row = self.rows.pop(uid, None)
        return (row.drafted, row.accepted) if row else (0, 0)

    def filter(self, keep: list[int]) -> None:
        for i, uid in enumerate(self.uids):
            if i not in keep and uid in self.rows:
                row = self.rows.pop(uid)
                self.done_counts[uid] = (row.drafted, row.accepted)
        super().filter(keep)

    # -- rounds ------------------------------------------------------------------------

    def _costs(self) -> _Costs:
        bucket = _size_bucket(len(self.uids))
        costs = self.costs.get(bucket)
        if costs is None:
            costs = self.costs[bucket] = _Costs()
        return costs

    def _control(self, row: _Row, costs: _Costs) -> _Controller:
        """The row's controller reading this batch size's measured costs; before any,
        a prior whose per-token cost grows with the batch (a CPU's pass of B rows of
        1 + k tokens is compute bound sooner the more rows it has)."""
        control = row.control
        control.plain, control.drafting = costs.plain, costs.drafting
        size = len(self.uids)
        control.prior = {
            "lookup": (0.1, min(0.25 * size**0.5, 0.9)),
            "model": control.prior["model"],
        }
        return control

    def _left(self, i: int) -> int:
        """Tokens row i may still emit after its pending one."""
        return self.max_tokens[i] - self._num_tokens[i] - 1

    def _would_draft(self, costs: _Costs) -> bool:
        """Whether some row would draft, judged on the tokens already read (the pending
        ones are still being computed): a plain step keeps mlx-lm's pipelining."""
        for i, uid in enumerate(self.uids):
            row = self.rows.get(uid)
            if row is None or self._left(i) < 1:
                continue
            pos, length = row.lookup.find(self.tokens[i])
            if pos < 0:
                continue
            control = self._control(row, costs)
            if not control.adaptive:
                return True
            k, _ = _best_k(
                lambda j, c=control, n=length: c.buckets[_bucket(n + j)].alpha,
                control.cost("lookup"),
                min(control.k_max, self._left(i)),
            )
            if k or control.skipped[_bucket(length)] >= 16:
                return True
        return False

    def next(self) -> list[GenerationBatch.Response]:
        if not self.uids:
            return []
        costs = self._costs()
        if not self.rows or not self._would_draft(costs):
            start = time.perf_counter()
            responses = super().next()
            costs.plain.append(time.perf_counter() - start)
            return responses
        return self._round(costs)

    def _round(self, costs: _Costs) -> list[GenerationBatch.Response]:
        """One verify pass over every row's draft (none for most rows, perhaps)."""
        import mlx.core as mx

        mx.eval(self._next_tokens, self._next_logprobs)
        start = time.perf_counter()
        last = self._next_tokens.tolist()
        last_logprobs = self._next_logprobs
        drafts: list[list[int]] = []
        choices: list[Any] = []
        for i, uid in enumerate(self.uids):
            row = self.rows.get(uid)
            choice = None
            draft: list[int] = []
            if row is not None and self._left(i) > 0:
                control = self._control(row, costs)
                choice = control.choose(row.lookup, [*self.tokens[i], last[i]], self._left(i))
                if choice.k > 0 and choice.source == "lookup":
                    draft = row.lookup.continuation(choice.pos, choice.k)
            drafts.append(draft)
            choices.append(choice)
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
                    n, pending[i] = _judge(row, logits[i, : len(d) + 1], d)
                pending_logprobs[i] = logprobs[i, n]
                row.drafted += len(d)
                row.accepted += n
                row.control.observe(choices[i], len(d), n)
            else:
                pending[i] = int(pending[i].item())
                if choices[i] is not None:
                    self.rows[self.uids[i]].control.observe(choices[i], 0, 0)
            emitted.append([last[i], *d[:n]])
            emitted_logprobs.append([last_logprobs[i], *(logprobs[i, j] for j in range(n))])
            surplus.append(width - 1 - n)
        trim_rows(self.prompt_cache, surplus)
        self._next_tokens = mx.array(pending, dtype=mx.uint32)
        self._next_logprobs = pending_logprobs
        mx.eval([c.state for c in self.prompt_cache], self._next_logprobs)
        if width > 1:  # else every row changed its mind on its pending token: no measure
            costs.drafting["lookup"].append((time.perf_counter() - start, width - 1))
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


def _judge(row: _Row, logits: Any, draft: list[int]) -> tuple[int, int]:
    """Speculative sampling of a point-mass draft: (drafted tokens kept, the token after
    them), from `logits` at the draft's positions and one more."""
    import mlx.core as mx
    import numpy as np

    p = np.array(row.dist(logits.astype(mx.float32)))
    u = row.uniforms(2 * len(draft) + 2)
    n = 0
    while n < len(draft):
        d = draft[n]
        if u[2 * n] < p[n, d]:
            n += 1
            continue
        residual = p[n].copy()
        residual[d] = 0.0
        if residual.sum() <= 0:
            residual = p[n]
        return n, _sample(residual, u[2 * n + 1])
    return n, _sample(p[n], u[2 * n + 1])


__all__ = ["SpeculativeBatch"]
