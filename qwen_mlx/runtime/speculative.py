"""Speculative decoding: a drafter proposes k tokens, the model checks them in one pass.

Two drafters: `LookupDrafter` (prompt lookup: the tokens that followed the last
occurrence of the current n-gram in the prompt and the reply so far; nearly free) and
`ModelDrafter` (a small model sharing the tokenizer, with its own KV cache, reused across
calls when the history shares a prefix).

Exact by construction. Greedy: a draft token is kept only while it equals the model's own
argmax at that position, so the reply is token for token the one plain decoding gives
(on the CPU backend a k-token forward pass gives bit-identical logits to k one-token
passes; tests check the identity). Sampled: speculative sampling with rejection (Leviathan
et al. 2023, Chen et al. 2023): draft token d drawn from q is kept with probability
min(1, p(d)/q(d)), else a token is drawn from max(p - q, 0) renormalised, and after k kept
tokens one more comes from p; lookup's q is a point mass. p is the sampler's distribution
exactly as mlx-lm's `make_sampler` builds it (top-p, min-p, top-k, then temperature), after
the logits processors, which run position by position in the order plain decoding calls
them and only up to the first rejected token, so stateful ones (the JSON-schema matcher)
never see a token that is not kept.

After each round the model's cache is trimmed back to the kept tokens (`trim_prompt_cache`,
bf16 or quantized KV); when the consumer stops, the cache holds the prompt and exactly
the tokens yielded, as after plain decoding.

Adaptive k: the round times and the acceptance rate feed a cost model (expected tokens
per round over its cost relative to a plain step); k moves to the best value up to the
maximum, and to 0 (plain steps, with an occasional probe) when drafting does not pay.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import TokenizerMismatchError
from .model import Model
from .sampling import SamplingParams

if TYPE_CHECKING:
    from .memory import Budget, MemoryPlanner

DEFAULT_DRAFT_TOKENS = {"lookup": 8, "model": 4}


@dataclass
class SpeculativeStats:
    """Draft tokens proposed and kept so far in one generation."""

    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    k: int = 0  # the draft length the adaptive controller is at now

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class LookupDrafter:
    """Prompt lookup: find the last earlier occurrence of the history's final n-gram
    (longest first, `max_ngram` down to `min_ngram`) and propose what followed it."""

    kind = "lookup"

    def __init__(self, *, max_ngram: int = 3, min_ngram: int = 2) -> None:
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self._index: dict[tuple[int, ...], int] = {}
        self._history: list[int] = []
        self._indexed = 0

    def _sync(self, history: Sequence[int]) -> None:
        h = self._history
        # Within a generation the history only grows; anything else starts afresh (a
        # stale index could only give worse drafts, never a different reply).
        if len(history) < len(h) or (h and (history[len(h) - 1] != h[-1] or history[0] != h[0])):
            self._index.clear()
            self._indexed = 0
            h.clear()
        h.extend(history[len(h) :])
        # Index the n-grams ending at every position but the last (the one looked up).
        for end in range(self._indexed, len(h) - 1):
            for n in range(self.min_ngram, self.max_ngram + 1):
                if end - n + 1 < 0:
                    break
                self._index[tuple(h[end - n + 1 : end + 1])] = end
        self._indexed = max(len(h) - 1, 0)

    def propose(self, history: Sequence[int], k: int, dist: Any = None) -> tuple[Any, Any]:
        """Up to `k` token ids (a list) and None (a point-mass draft has no q)."""
        if k <= 0 or not history:
            return [], None
        self._sync(history)
        h = self._history
        for n in range(min(self.max_ngram, len(h)), self.min_ngram - 1, -1):
            pos = self._index.get(tuple(h[-n:]))
            if pos is not None:
                return h[pos + 1 : pos + 1 + k], None
        return [], None


class ModelDrafter:
    """A small model that shares the tokenizer drafts autoregressively from its own KV
    cache, which it keeps in step with the history (longest shared prefix reused)."""

    kind = "model"

    def __init__(self, draft: Model, *, kv_bits: int | None = None) -> None:
        self.draft = draft
        self.kv_bits = kv_bits
        self.cache: list[Any] | None = None
        self.held: list[int] = []
        self._share: float | None = None

    def reset(self) -> None:
        self.cache = None
        self.held = []

    def weight_share(self, model: Model) -> float:
        """The draft's weight bytes over the model's."""
        from mlx.utils import tree_flatten

        def nbytes(m: Model) -> int:
            return sum(v.nbytes for _, v in tree_flatten(m.model.parameters()))

        if self._share is None:
            self._share = nbytes(self.draft) / max(nbytes(model), 1)
        return self._share

    def _catch_up(self, history: Sequence[int], step: int = 2048) -> Any:
        """Feed the draft what it has not seen of `history`; return its last logits."""
        import mlx.core as mx

        from .cache import cache_length, make_cache, reuse_cache, trim_cache

        if self.cache is None:
            self.cache = make_cache(self.draft, self.kv_bits)
            self.held = []
        # A round cut short may have left drafts in the cache that `held` never got.
        trim_cache(self.cache, cache_length(self.cache) - len(self.held))
        reuse_cache(self.cache, self.held, history, keep_one=True)
        rest = list(history[len(self.held) :])
        while len(rest) > step:
            self.draft.model(mx.array(rest[:step])[None], cache=self.cache)
            mx.eval([c.state for c in self.cache])
            self.held.extend(rest[:step])
            rest = rest[step:]
        logits = self.draft.model(mx.array(rest)[None], cache=self.cache)[0, -1]
        self.held.extend(rest)
        return logits

    def propose(self, history: Sequence[int], k: int, dist: Any = None) -> tuple[Any, Any]:
        """`k` draft tokens (an mx array, not yet evaluated) and their distributions q
        (k x vocab, None when greedy). The draft's cache ends holding history + all but
        the last draft token."""
        import mlx.core as mx

        if k <= 0:
            return [], None
        logits = self._catch_up(history)
        tokens, qs = [], []
        for i in range(k):
            if dist is None:
                y = mx.argmax(logits, axis=-1)
            else:
                q = dist(logits[None])[0]
                qs.append(q)
                y = mx.random.categorical(mx.log(q))
            tokens.append(y)
            if i < k - 1:
                logits = self.draft.model(y.reshape(1, 1), cache=self.cache)[0, -1]
        out = mx.stack(tokens).astype(mx.uint32)
        mx.async_eval(out)
        # `held` gets the fed drafts once their values are known (see `settle`).
        return out, (mx.stack(qs) if qs else None)

    def settle(self, drafts: list[int]) -> None:
        """Record the draft tokens fed to the draft's cache (all but the last)."""
        self.held.extend(drafts[:-1])


def check_tokenizers(model: Model, draft: Model) -> None:
    """A draft must share the model's tokenizer (same ids for the same text)."""
    a, b = model.tokenizer, draft.tokenizer
    if (
        a.eos_token_ids != b.eos_token_ids
        or a.vocab_size != b.vocab_size
        or (a.get_vocab() != b.get_vocab())
    ):
        raise TokenizerMismatchError(
            f"The draft model {draft.name} does not share {model.name}'s tokenizer; pick a "
            "draft from the same model family (same vocabulary and special tokens)."
        )


def make_drafter(model: Model, draft: Any, *, kv_bits: int | None = None) -> Any:
    """A drafter for `draft`: "lookup", a loaded `Model`, a store reference (loaded), or
    a drafter object passed through (a ChatSession keeps its own across turns)."""
    if draft is None:
        return None
    if hasattr(draft, "propose"):
        if isinstance(draft, ModelDrafter):
            check_tokenizers(model, draft.draft)
        return draft
    if isinstance(draft, str) and draft == "lookup":
        return LookupDrafter()
    if isinstance(draft, str):
        from .model import load

        draft = load(draft)
    if not isinstance(draft, Model):
        raise TypeError(f"draft must be 'lookup', a Model or a model reference, not {draft!r}.")
    check_tokenizers(model, draft)
    return ModelDrafter(draft, kv_bits=kv_bits)


def drafter_and_planner(
    model: Model,
    draft: Any,
    *,
    kv_bits: int | None = None,
    planner: MemoryPlanner | None = None,
    budget: Budget | None = None,
) -> tuple[Any, MemoryPlanner]:
    """A drafter for `draft` (see `make_drafter`; None: no speculative decoding) and the
    memory planner that counts a draft model's weights beside `model`'s: `planner` when
    one is given, else a new one (against `budget`, else the machine's)."""
    drafter = make_drafter(model, draft, kv_bits=kv_bits)
    if planner is None:
        from .memory import MemoryPlanner

        draft_model = getattr(drafter, "draft", None)
        extra = {"draft": draft_model} if draft_model is not None else {}
        planner = MemoryPlanner.for_model(model, budget, **extra)
    return drafter, planner


def make_dist(params: SamplingParams) -> Callable[[Any], Any] | None:
    """The sampler's distribution over the vocabulary (rows of logits -> probabilities),
    built the way mlx-lm's `make_sampler` filters; None for greedy."""
    if params.temperature == 0:
        return None
    import mlx.core as mx
    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

    def dist(logits: Any) -> Any:
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if 0 < params.top_p < 1.0:
            logprobs = apply_top_p(logprobs, params.top_p)
        if params.min_p != 0.0:
            logprobs = apply_min_p(logprobs, params.min_p, 1)
        if params.top_k > 0:
            logprobs = apply_top_k(logprobs, params.top_k)
        return mx.softmax(logprobs.astype(mx.float32) * (1 / params.temperature), axis=-1)

    return dist


class _Controller:
    """Picks k each round from measured round times and the acceptance rate.

    Acceptance: decayed counts of kept and examined draft positions (a prior of one in
    two). Cost: the medians of recent plain and drafting rounds, the difference spread
    over the tokens drafted per round (a draft model's steps and the longer verify pass).
    Speed of k relative to plain: E[tokens per round] / (1 + k * added / plain), with
    E = (1 - a^(k+1)) / (1 - a). Medians, because a shared machine's timings are noisy.
    """

    def __init__(
        self,
        k_max: int,
        *,
        adaptive: bool = True,
        probe_every: int = 16,
        start: int = 2,
        min_ratio: float = 0.1,
    ) -> None:
        # Noisy timings can make the added cost look like nothing, and drafting then never
        # stops: each drafted token is taken to cost at least `min_ratio` of a plain step.
        self.min_ratio = min_ratio
        self.k_max = k_max
        self.adaptive = adaptive
        self.probe_every = probe_every
        # Start short: the first rounds measure, and a long draft that fails costs most.
        self.start = min(k_max, start)
        self.k = self.start if adaptive else k_max
        self.kept = 1.0
        self.examined = 2.0
        self.plain: deque[float] = deque(maxlen=9)
        self.extra: deque[tuple[float, int]] = deque(maxlen=9)  # (seconds, drafted)
        self.idle = 0  # plain rounds since the last drafting one

    @property
    def alpha(self) -> float:
        return self.kept / self.examined

    def update(self, k: int, proposed: int, accepted: int, seconds: float) -> None:
        if not self.adaptive:
            return
        if proposed == 0:
            self.plain.append(seconds)
            self.idle += 1
        else:
            self.idle = 0
            self.kept = 0.9 * self.kept + accepted
            self.examined = 0.9 * self.examined + accepted + (accepted < proposed)
            self.extra.append((seconds, proposed))
        self.k = self._choose()

    def _choose(self) -> int:
        if not self.plain:
            return 0  # measure a plain step first
        if not self.extra:
            return self.start
        a = min(self.alpha, 0.99)
        # Medians of whole rounds of each kind: one slow round moves neither.
        plain = statistics.median(self.plain)
        drafting = statistics.median(s for s, _ in self.extra)
        per_round = statistics.mean(p for _, p in self.extra)
        ratio = max((drafting - plain) / per_round / max(plain, 1e-9), self.min_ratio)
        best_k, best = 0, 1.0
        for k in range(1, self.k_max + 1):
            speed = (1 - a ** (k + 1)) / (1 - a) / (1 + k * ratio)
            if speed > best * 1.05:
                best_k, best = k, speed
        if best_k == 0 and self.idle >= self.probe_every:
            return 1  # probe now and then: the text may start to repeat
        return best_k


def _sample(probs: np.ndarray, u: float) -> int:
    cdf = np.cumsum(probs, dtype=np.float64)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(probs) - 1))


def speculative_step(
    prompt: Sequence[int],
    model: Model,
    drafter: Any,
    *,
    params: SamplingParams,
    processors: Sequence[Callable] = (),
    prompt_cache: list[Any],
    history: Sequence[int] = (),
    max_tokens: int = 256,
    num_draft_tokens: int | None = None,
    adaptive: bool = True,
    prefill_step_size: int = 2048,
    prompt_progress: Callable[[int, int], None] | None = None,
    stats: SpeculativeStats | None = None,
) -> Iterator[tuple[int, None]]:
    """Yield (token id, None) pairs as mlx-lm's `generate_step` would, several tokens
    per forward pass of the model.

    Tokens are picked from `params`' distribution (mlx-lm's sampler, made explicit for
    the rejection test) after `processors`. `history` is what `prompt_cache` held before
    `prompt` (the drafters see it too); `stats` is updated as rounds go. See the module
    docstring for the method.
    """
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    from .cache import trim_cache

    net = model.model
    stats = stats if stats is not None else SpeculativeStats()
    dist = make_dist(params)
    k_max = num_draft_tokens if num_draft_tokens is not None else DEFAULT_DRAFT_TOKENS[drafter.kind]
    # A draft model's probe also reads what it missed meanwhile: probe it less often.
    lookup = drafter.kind == "lookup"
    control = _Controller(
        max(int(k_max), 0),
        adaptive=adaptive,
        probe_every=16 if lookup else 48,
        start=2 if lookup else 1,
        # A draft model's step reads its weights at least: their share of the model's,
        # plus the longer verify pass.
        min_ratio=0.1 if lookup else 0.05 + drafter.weight_share(model),
    )
    context = list(history) + list(prompt)  # every token the model has seen or will
    ptoks = list(prompt)  # what mlx-lm's processors see: this call's prompt and reply
    total = len(prompt)
    if prompt_progress is not None:
        prompt_progress(0, total)
    with mx.stream(generation_stream):
        done = 0
        while total - done > 1:
            n = min(prefill_step_size, total - done - 1)
            net(mx.array(list(prompt[done : done + n]))[None], cache=prompt_cache)
            mx.eval([c.state for c in prompt_cache])
            done += n
            if prompt_progress is not None:
                prompt_progress(done, total)
            mx.clear_cache()
    y = prompt[-1]  # the last token, not yet in the cache
    emitted = 0
    unfed = False  # whether the last yielded token is still outside the cache
    ahead = None  # logits of a plain step started before the last tokens were yielded
    in_cache = len(context) - 1
    first = True

    def processed(i: int, extra: list[int], logits: Any) -> Any:
        row = logits[i : i + 1]
        if processors:
            toks = mx.array(ptoks + extra)
            for p in processors:
                row = p(toks, row)
        return row

    try:
        last_round: tuple[int, int, int, float] | None = None
        while max_tokens < 0 or emitted < max_tokens:
            start = time.perf_counter()
            if last_round is not None:
                # A round costs from its start to the next one's: the consumer's handling
                # of its tokens included, with or without a step started ahead.
                k, m, n, began = last_round
                control.update(k, m, n, start - began)
            left = max_tokens - emitted if max_tokens >= 0 else 1 << 30
            k = min(control.k, left - 1)
            with mx.stream(generation_stream):
                drafts, q = drafter.propose(context, k, dist) if k > 0 else ([], None)
                if isinstance(drafts, list):
                    d_arr = mx.array(drafts, dtype=mx.uint32) if drafts else None
                else:
                    d_arr = drafts
                if ahead is None:
                    inp = mx.array([y], dtype=mx.uint32)
                    if d_arr is not None:
                        inp = mx.concatenate([inp, d_arr])
                    logits = net(inp[None], cache=prompt_cache)[0].astype(mx.float32)
                    in_cache += inp.size
                elif d_arr is None:
                    logits = ahead  # y went in while the last round's tokens were yielded
                else:
                    rest = net(d_arr[None], cache=prompt_cache)[0].astype(mx.float32)
                    logits = mx.concatenate([ahead, rest])
                    in_cache += d_arr.size
                ahead = None
                unfed = False
                draft_list = d_arr.tolist() if d_arr is not None else []
                m = len(draft_list)
                if isinstance(drafter, ModelDrafter) and m:
                    drafter.settle(draft_list)
                out: list[int] = []
                if dist is None and not processors:
                    best = mx.argmax(logits, axis=-1).tolist()
                    n = 0
                    while n < m and best[n] == draft_list[n]:
                        n += 1
                    out = [*draft_list[:n], best[n]]
                elif dist is None:
                    n = 0
                    while True:
                        row = processed(n, draft_list[:n], logits)
                        t = int(mx.argmax(row, axis=-1).item())
                        if n < m and t == draft_list[n]:
                            n += 1
                            continue
                        out = [*draft_list[:n], t]
                        break
                else:
                    qn = np.array(q) if q is not None else None
                    if qn is not None and qn.shape[1] != logits.shape[-1]:
                        # A draft whose embedding is padded differently: same tokens.
                        width = logits.shape[-1]
                        qn = np.pad(qn[:, :width], ((0, 0), (0, max(width - qn.shape[1], 0))))
                    us = np.array(mx.random.uniform(shape=(2 * (m + 1),)))
                    if not processors:
                        pall = np.array(dist(logits))
                    n = 0
                    while True:
                        p = (
                            np.array(dist(processed(n, draft_list[:n], logits)))[0]
                            if (processors)
                            else pall[n]
                        )
                        if n == m:
                            out = [*draft_list[:n], _sample(p, us[2 * n + 1])]
                            break
                        d = draft_list[n]
                        qd = qn[n, d] if qn is not None else 1.0
                        if qd > 0 and us[2 * n] < p[d] / qd:
                            n += 1
                            continue
                        residual = np.maximum(p - qn[n], 0) if qn is not None else p.copy()
                        if qn is None:
                            residual[d] = 0.0
                        if residual.sum() <= 0:
                            residual = p
                        out = [*draft_list[:n], _sample(residual, us[2 * n + 1])]
                        break
            stats.drafted += m
            stats.accepted += n
            stats.rounds += 1
            # The first round also reads the prompt into the draft: not a measure.
            last_round = None if first else (k, m, n, start)
            if first and prompt_progress is not None:
                prompt_progress(total, total)
            stats.k = control.k
            first = False
            # The cache now holds y and all m drafts; keep y and the n kept ones.
            trim_cache(prompt_cache, m - n)
            in_cache -= m - n
            if control.k == 0 and (max_tokens < 0 or emitted + len(out) < max_tokens):
                # A plain step next: start it now, as mlx-lm's generate_step does, so the
                # model works while the consumer handles these tokens.
                with mx.stream(generation_stream):
                    ahead = net(mx.array([[out[-1]]], dtype=mx.uint32), cache=prompt_cache)
                    ahead = ahead[0].astype(mx.float32)
                mx.async_eval(ahead)
                in_cache += 1
            for j, t in enumerate(out):
                if j == len(out) - 1 and ahead is None:
                    unfed = True
                context.append(t)
                ptoks.append(t)
                emitted += 1
                yield t, None
                if max_tokens >= 0 and emitted >= max_tokens:
                    break
            y = out[-1]
    finally:
        # Leave the cache holding the prompt and exactly the tokens yielded.
        extra = in_cache - (len(context) - (1 if unfed else 0))
        if extra > 0:
            trim_cache(prompt_cache, extra)
        if unfed and emitted:
            with mx.stream(generation_stream):
                net(mx.array([context[-1]])[None], cache=prompt_cache)
                mx.eval([c.state for c in prompt_cache])


def uses_cache_bits(cache: list[Any]) -> int | None:
    """The bits of a quantized KV cache (None for bf16): the draft's cache matches it."""
    return getattr(cache[0], "bits", None) if cache else None


__all__ = [
    "LookupDrafter",
    "ModelDrafter",
    "SpeculativeStats",
    "check_tokenizers",
    "drafter_and_planner",
    "make_drafter",
    "speculative_step",
]
