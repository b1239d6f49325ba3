"""Speculative decoding: a drafter proposes k tokens, the model checks them in one pass.

Two drafters: `LookupDrafter` (prompt lookup: the tokens that followed an earlier
occurrence of the current n-gram in the prompt and the reply so far; nearly free) and
`ModelDrafter` (a small model sharing the tokenizer, with its own KV cache, reused across
calls when the history shares a prefix). A draft model also looks up: where the text
repeats, a lookup draft is free and usually longer.

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

Adaptive, round by round (`_Controller`): measured round costs and acceptance feed a cost
model (expected tokens per round over its cost in plain steps) that picks each round's
draft length, 0 when drafting does not pay. Lookup is judged by the length of its match
(a long match is right far more often than a 2-gram), a draft model by its recent
acceptance, with probes that back off while they fail. Plain steps run as mlx-lm's
`generate_step` runs them: each started before the last one's token is read, so the
model computes while Python works; a round that drafts cannot overlap so.

Where the time goes, measured with the trained pair on this project's CPU backend: the
model's forward pass, not Python (a profile of a round puts over 90% in the evaluation). A
forward pass of 1 + k tokens costs about 1.2 + 0.27 k plain steps there (a 4M-parameter
model's matrix products take time in proportion to the tokens), so a one-token draft
must be right about half the time to pay, and a long lookup match pays most. On a GPU reading
a 4B model's weights a pass of 1 + k tokens costs little more than one (memory bound):
drafting pays at a far lower acceptance and longer drafts pay, which the measured costs
show the controller at once.
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
    """Prompt lookup: find an earlier occurrence of the history's last n-gram and propose
    what followed it.

    The candidates are the last occurrences of the final 2-, 3-, 4- and 8-gram; the one
    whose match reaches furthest back wins, and that length (capped at `max_match`) is
    the draft's strength: on the trained pair's replies a first draft token is right
    about half the time after a 2-token match and nineteen times in twenty after 12 or
    more, so the controller drafts by it. A draft that runs into the present continues
    with itself (a period shorter than the draft repeats, as in "25 25 25").
    """

    kind = "lookup"
    NGRAMS = (8, 4, 3, 2)

    def __init__(self, *, max_ngram: int = 8, min_ngram: int = 2, max_match: int = 32) -> None:
        self.ngrams = tuple(n for n in self.NGRAMS if min_ngram <= n <= max_ngram)
        if not self.ngrams:
            raise ValueError(f"No n-gram size between {min_ngram} and {max_ngram}.")
        self.max_match = max_match
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
        index = self._index
        for end in range(self._indexed, len(h) - 1):
            for n in self.ngrams:
                if end - n + 1 >= 0:
                    index[tuple(h[end - n + 1 : end + 1])] = end
        self._indexed = max(len(h) - 1, 0)

    def find(self, history: Sequence[int]) -> tuple[int, int]:
        """(position of the match's last token, how many tokens it matches backwards),
        or (-1, 0) without one."""
        if not history:
            return -1, 0
        self._sync(history)
        h = self._history
        last = len(h) - 1
        best, length = -1, 0
        for n in self.ngrams:
            if n > len(h):
                continue
            pos = self._index.get(tuple(h[-n:]))
            if pos is None or pos == best:
                continue
            m = n
            while m < self.max_match and pos - m >= 0 and h[pos - m] == h[last - m]:
                m += 1
            if m > length:
                best, length = pos, m
        return best, length

    def continuation(self, pos: int, k: int) -> list[int]:
        """The `k` tokens that followed position `pos` (continuing with themselves where
        they reach the present)."""
        h = self._history
        out: list[int] = []
        for i in range(pos + 1, pos + 1 + k):
            out.append(h[i] if i < len(h) else out[i - len(h)])
        return out

    def propose(self, history: Sequence[int], k: int, dist: Any = None) -> tuple[Any, Any]:
        """Up to `k` token ids (a list) and None (a point-mass draft has no q)."""
        if k <= 0:
            return [], None
        pos, _ = self.find(history)
        return (self.continuation(pos, k) if pos >= 0 else []), None


class ModelDrafter:
    """A small model that shares the tokenizer drafts autoregressively from its own KV
    cache, which it keeps in step with the history (longest shared prefix reused).

    After a stretch without drafting the draft has fallen behind; it catches up on at
    most `window` tokens (a fresh cache over the recent history rather than all it
    missed), so a probe after a long plain stretch costs a short read, not the stretch.
    Its proposals may then see less context; the reply cannot change (every token is
    the model's).
    """

    kind = "model"

    def __init__(self, draft: Model, *, kv_bits: int | None = None, window: int = 32) -> None:
        self.draft = draft
        self.kv_bits = kv_bits
        self.window = window
        self.cache: list[Any] | None = None
        self.held: list[int] = []
        self.base = 0  # where in the history the draft's cache starts
        self.lookup = LookupDrafter()  # where the text repeats, lookup drafts for free
        self.started = False  # whether this generation has read its prompt into the draft
        self._share: float | None = None

    def reset(self) -> None:
        self.cache = None
        self.held = []
        self.base = 0

    def begin(self) -> None:
        """A new generation: its first catch-up reads all the draft has not seen (the
        prompt of a new turn), later ones at most `window`."""
        self.started = False

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

        if self.cache is not None:
            # A round cut short may have left drafts in the cache that `held` never got.
            trim_cache(self.cache, cache_length(self.cache) - len(self.held))
            if self.base and (len(history) <= self.base or history[self.base] != self.held[0]):
                self.reset()
        if self.cache is not None:
            reuse_cache(self.cache, self.held, history[self.base :], keep_one=True)
            lag = len(history) - self.base - len(self.held)
            if self.held and self.started and lag > self.window:
                self.reset()
                self.base = len(history) - self.window
        if self.cache is None:
            self.cache = make_cache(self.draft, self.kv_bits)
            self.held = []
        rest = list(history[self.base + len(self.held) :])
        while len(rest) > step:
            self.draft.model(mx.array(rest[:step])[None], cache=self.cache)
            mx.eval([c.state for c in self.cache])
            self.held.extend(rest[:step])
            rest = rest[step:]
        logits = self.draft.model(mx.array(rest)[None], cache=self.cache)[0, -1]
        self.held.extend(rest)
        self.started = True
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
        planner = MemoryPlanner.for_model(model, budget, kv_bits=kv_bits, **extra)
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


# Lookup match strength: buckets of the backward match length (2, 3, 4-5, 6-11, 12+), and
# the acceptance each starts from before this reply measures its own (about what the
# trained pair's replies show; a weak prior: a few rounds of evidence outweigh it). A
# draft token i places after a match of length L is judged by bucket L + i: if the
# tokens before it were right, the match reaching it is that much longer.
_MATCH_BUCKETS = (2, 3, 4, 6, 12)
_MATCH_PRIOR = (0.5, 0.65, 0.7, 0.85, 0.95)


def _bucket(length: int) -> int:
    return max(sum(length >= b for b in _MATCH_BUCKETS) - 1, 0)


def _best_k(
    alphas: Callable[[int], float], cost: tuple[float, float], cap: int
) -> tuple[int, float]:
    """The draft length that pays best (0: none pays by 5%) and its speed, in tokens per
    plain-step time: E[tokens per round] / (1 + f + k * r) for `cost` = (f, r), where
    draft token i is kept with probability `alphas(i)` if the ones before it were."""
    best_k, best = 0, 1.0
    expected, survive = 1.0, 1.0
    fixed, per_token = cost
    for k in range(1, cap + 1):
        survive *= min(alphas(k - 1), 0.99)
        expected += survive
        speed = expected / (1 + fixed + k * per_token)
        if speed > best * 1.05:
            best_k, best = k, speed
    return best_k, best


def _fit_cost(
    samples: Sequence[tuple[int, float]], prior: tuple[float, float], floor: float
) -> tuple[float, float]:
    """(f, r) of a drafting round's added cost f + m * r (in plain steps) from (m, added)
    samples: a least-squares line where the draft lengths vary enough, else r from the
    median with the prior's f. One sample leans on the prior as much as on itself."""
    fixed, per_token = prior
    n = len(samples)
    if n == 0:
        return prior
    ms = [m for m, _ in samples]
    if n >= 4 and max(ms) - min(ms) >= 2:
        mean_m = statistics.fmean(ms)
        mean_a = statistics.fmean(a for _, a in samples)
        var = sum((m - mean_m) ** 2 for m in ms)
        slope = sum((m - mean_m) * (a - mean_a) for m, a in samples) / var
        slope = max(slope, floor)
        return min(max(mean_a - slope * mean_m, 0.0), 2.0), slope
    measured = max(statistics.median((a - fixed) / m for m, a in samples), floor)
    return fixed, measured if n >= 2 else (per_token + measured) / 2


@dataclass
class _Choice:
    """What one round drafts: `k` tokens from `source` ("lookup" or "model"; None for a
    plain step), and for lookup the match (its last token's position, its length)."""

    k: int = 0
    source: str | None = None
    length: int = 0
    pos: int = -1
    probe: bool = False


class _Acceptance:
    """Decayed counts of kept and examined draft positions: alpha = kept / examined."""

    def __init__(self, prior: float, weight: float = 2.0) -> None:
        self.kept = prior * weight
        self.examined = weight

    @property
    def alpha(self) -> float:
        return self.kept / self.examined

    def add(self, kept: bool) -> None:
        """One draft position judged."""
        self.kept = 0.95 * self.kept + kept
        self.examined = 0.95 * self.examined + 1


class _Controller:
    """Chooses each round's draft from measured round times and acceptance.

    Cost: what a drafting round adds to the median plain round, per source, as a line
    f + m * r in plain steps (f: a round that drafts at all loses the step started
    ahead and, on a CPU, runs a slower kernel; r: each drafted token, its share of the
    longer verify pass and a draft model's step). Speed of k drafted tokens relative to
    plain: E[tokens per round] / (1 + f + k * r), E the expected tokens kept plus one.
    Medians and a prior, because a shared machine's timings are noisy. A round's
    acceptance counts before the next round is chosen (`observe`), its time once the
    next one starts (`timed`).

    Lookup: acceptance per match-strength bucket, chosen each round from the match it
    has (no match: a plain step, free). A draft model: one acceptance; when drafting
    does not pay it stops, and probes with one token after `probe_every` plain rounds,
    twice as long after each probe that does not bring drafting back. With both (a
    draft model also looks up), the round takes whichever pays more.
    """

    def __init__(
        self,
        k_max: int,
        *,
        lookup: bool,
        model: bool,
        adaptive: bool = True,
        probe_every: int = 48,
        model_floor: float = 0.1,
    ) -> None:
        self.k_max = k_max
        self.adaptive = adaptive
        self.lookup = lookup
        self.model = model
        self.probe_every = probe_every
        # Noisy timings can make the added cost look like nothing, and drafting then
        # never stops: a drafted token costs at least this share of a plain step.
        self.floor = {"lookup": 0.05, "model": model_floor}
        # Before any measurement (a CPU runs a small model's verify at about this cost;
        # a GPU reading a big model's weights much less, which the timings then show).
        # A draft model's token adds its step to a lookup token's verify cost.
        self.prior = {"lookup": (0.1, 0.25), "model": (0.1, model_floor + 0.25)}
        self.plain: deque[float] = deque(maxlen=15)
        self.drafting: dict[str, deque[tuple[float, int]]] = {
            "lookup": deque(maxlen=15),
            "model": deque(maxlen=15),
        }
        self.buckets = [_Acceptance(p) for p in _MATCH_PRIOR]
        self.skipped = [0] * len(_MATCH_PRIOR)  # matches not drafted since the last probe
        self.model_acceptance = _Acceptance(0.5)
        self.idle = 0  # plain rounds since the draft model last drafted
        self.model_rounds = 0
        self.interval = probe_every

    def cost(self, source: str) -> tuple[float, float]:
        """(f, r): a drafting round of m tokens costs 1 + f + m * r plain steps."""
        rounds = self.drafting[source]
        if not self.plain or not rounds:
            return self.prior[source]
        plain = max(statistics.median(self.plain), 1e-9)
        samples = [(m, min(max(s - plain, 0.0) / plain, 4 * m)) for s, m in rounds]
        return _fit_cost(samples, self.prior[source], self.floor[source])

    def choose(self, lookup: Any, history: Sequence[int], left: int) -> _Choice:
        """The next round's draft for `history`, at most `left` tokens."""
        cap = min(self.k_max, left)
        if cap <= 0:
            return _Choice()
        best, choice = 1.0, _Choice()
        if self.lookup:
            pos, length = lookup.find(history)
            if pos >= 0:
                b = _bucket(length)
                if not self.adaptive:
                    return _Choice(cap, "lookup", length, pos)
                k, speed = _best_k(
                    lambda i: self.buckets[_bucket(length + i)].alpha, self.cost("lookup"), cap
                )
                if k:
                    best, choice = speed, _Choice(k, "lookup", length, pos)
                elif self.skipped[b] >= 16:
                    choice = _Choice(1, "lookup", length, pos, probe=True)
                else:
                    self.skipped[b] += 1
                    choice = _Choice(0, None, length, pos)
        if self.model:
            if not self.adaptive:
                return choice if choice.k else _Choice(cap, "model")
            if not self.model_rounds:
                # The first round reads the prompt into the draft; the prior cost, then
                # measured ones, decide the rest.
                return _Choice(1, "model")
            alpha = self.model_acceptance.alpha
            k, speed = _best_k(lambda i: alpha, self.cost("model"), cap)
            if k and speed > best:
                return _Choice(k, "model")
            if not k and not choice.k and self.idle >= self.interval:
                return _Choice(1, "model", probe=True)
        return choice

    def observe(self, choice: _Choice, proposed: int, accepted: int) -> None:
        """What a round kept of `proposed` drafted tokens (by `choice`): known as soon as
        it is verified, before the next round is chosen."""
        if not self.adaptive:
            return
        if proposed == 0:
            self.idle += 1
            return
        if choice.source == "lookup":
            for i in range(min(accepted + 1, proposed)):  # the positions judged
                self.buckets[_bucket(choice.length + i)].add(i < accepted)
            self.skipped[_bucket(choice.length)] = 0
            return
        for i in range(min(accepted + 1, proposed)):
            self.model_acceptance.add(i < accepted)
        self.idle = 0
        self.model_rounds += 1
        if choice.probe:  # back off while probes do not bring drafting back
            alpha = self.model_acceptance.alpha
            pays = _best_k(lambda i: alpha, self.cost("model"), self.k_max)[0] > 0
            self.interval = self.probe_every if pays else min(2 * self.interval, 1024)

    def timed(self, choice: _Choice, proposed: int, seconds: float) -> None:
        """What a round cost, from its start to the next one's (the consumer's handling
        of its tokens included, with or without a step started ahead)."""
        if not self.adaptive:
            return
        if proposed == 0:
            self.plain.append(seconds)
        else:
            self.drafting[choice.source].append((seconds, proposed))


def _round_clock() -> Callable[[], float]:
    """What a round costs: with MLX on the CPU, this process's CPU time (on a shared
    machine other programs' load moves wall-clock time by 2-3x, and the work is what
    drafting trades); with a GPU, wall-clock time (its work is not CPU time)."""
    import mlx.core as mx

    return time.process_time if mx.default_device() == mx.cpu else time.perf_counter


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
    # A draft model also looks up (ModelDrafter.lookup).
    lookup = drafter if drafter.kind == "lookup" else getattr(drafter, "lookup", None)
    with_model = drafter.kind == "model"
    if hasattr(drafter, "begin"):
        drafter.begin()
    control = _Controller(
        max(int(k_max), 0),
        lookup=lookup is not None,
        model=with_model,
        adaptive=adaptive,
        # A draft model's step reads its weights at least: their share of the model's,
        # plus the longer verify pass.
        model_floor=0.05 + drafter.weight_share(model) if with_model else 0.1,
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
    seen = len(context)  # the cache must end holding these plus the tokens yielded
    in_cache = seen - 1
    # Logits for the position after y (fed already), computed or in flight: the next
    # round is a plain step. `streak`: that round may start the one after it too, as
    # mlx-lm's generate_step does (the model works while Python builds the next graph).
    ahead = None
    streak = False
    choice: _Choice | None = None  # the next round's draft, when chosen ahead
    first = True
    clock = _round_clock()

    def greedy(rows: Any) -> Any:
        # As mlx-lm's greedy sampler picks: the argmax of the log-softmax in the model's
        # dtype (another rounding could break a near tie the other way).
        return mx.argmax(rows - mx.logsumexp(rows, axis=-1, keepdims=True), axis=-1)

    def pick(row: Any) -> Any:
        """A plain step's token from one row of logits, in the graph (no evaluation)."""
        if dist is None:
            return greedy(row)
        return mx.random.categorical(mx.log(dist(row.astype(mx.float32))))

    def processed(i: int, extra: list[int], logits: Any) -> Any:
        row = logits[i : i + 1]
        if processors:
            toks = mx.array(ptoks + extra)
            for p in processors:
                row = p(toks, row)
        return row

    try:
        last_round: tuple[_Choice, int, float] | None = None
        while max_tokens < 0 or emitted < max_tokens:
            start = clock()
            if last_round is not None:
                control.timed(last_round[0], last_round[1], start - last_round[2])
            left = max_tokens - emitted if max_tokens >= 0 else 1 << 30
            with mx.stream(generation_stream):
                if ahead is not None:
                    round_choice, drafts, q, d_arr = _Choice(), [], None, None
                    logits = ahead
                    ahead = None
                else:
                    round_choice = choice or control.choose(lookup, context, left - 1)
                    k = min(round_choice.k, left - 1)
                    drafts, q = [], None
                    if k > 0 and round_choice.source == "lookup":
                        drafts = lookup.continuation(round_choice.pos, k)
                    elif k > 0:
                        drafts, q = drafter.propose(context, k, dist)
                    if isinstance(drafts, list):
                        d_arr = mx.array(drafts, dtype=mx.uint32) if drafts else None
                    else:
                        d_arr = drafts
                    inp = mx.array([y], dtype=mx.uint32)
                    if d_arr is not None:
                        inp = mx.concatenate([inp, d_arr])
                    logits = net(inp[None], cache=prompt_cache)[0]
                    in_cache += inp.size
                choice = None
                m = d_arr.size if d_arr is not None else 0
                out: list[int] = []
                n = 0
                if m == 0 and not processors:
                    tok = pick(logits[-1:])
                    if streak and left > 1:
                        # Start the next plain step on this one's token before reading it.
                        ahead = net(tok.reshape(1, 1).astype(mx.uint32), cache=prompt_cache)
                        ahead = ahead[0]
                        mx.async_eval(ahead)
                        in_cache += 1
                    out = [int(tok.item())]
                else:
                    draft_list = d_arr.tolist() if d_arr is not None else []
                    if isinstance(drafter, ModelDrafter) and round_choice.source == "model":
                        drafter.settle(draft_list)
                    if dist is None and not processors:
                        best = greedy(logits).tolist()
                        while n < m and best[n] == draft_list[n]:
                            n += 1
                        out = [*draft_list[:n], best[n]]
                    elif dist is None:
                        while True:
                            row = processed(n, draft_list[:n], logits)
                            t = int(greedy(row).item())
                            if n < m and t == draft_list[n]:
                                n += 1
                                continue
                            out = [*draft_list[:n], t]
                            break
                    else:
                        logits = logits.astype(mx.float32)  # p as exactly as we can have it
                        qn = np.array(q) if q is not None else None
                        if qn is not None and qn.shape[1] != logits.shape[-1]:
                            # A draft whose embedding is padded differently: same tokens.
                            width = logits.shape[-1]
                            qn = np.pad(qn[:, :width], ((0, 0), (0, max(width - qn.shape[1], 0))))
                        us = np.array(mx.random.uniform(shape=(2 * (m + 1),)))
                        if not processors:
                            pall = np.array(dist(logits))
                        while True:
                            p = (
                                np.array(dist(processed(n, draft_list[:n], logits)))[0]
                                if processors
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
            stats.k = m
            control.observe(round_choice, m, n)
            # The first round also reads the prompt into the draft: not a measure of time.
            last_round = None if first else (round_choice, m, start)
            if first and prompt_progress is not None:
                prompt_progress(total, total)
            first = False
            # The cache now holds y and all m drafts; keep y and the n kept ones.
            trim_cache(prompt_cache, m - n)
            in_cache -= m - n
            out = out[: max(left, 0)]
            context.extend(out)
            ptoks.extend(out)
            y = out[-1]
            after = left - len(out)  # tokens still allowed after this round
            if ahead is not None:
                # A plain step is already under way; it may start the next only while
                # the drafts would not pay.
                streak = control.choose(lookup, context, after - 1).k == 0
            elif after > 0:
                choice = control.choose(lookup, context, after - 1)
                if choice.k == 0:
                    # A plain step next: start it now, so the model works while the
                    # consumer handles these tokens.
                    with mx.stream(generation_stream):
                        ahead = net(mx.array([[y]], dtype=mx.uint32), cache=prompt_cache)
                        ahead = ahead[0]
                    mx.async_eval(ahead)
                    in_cache += 1
                    streak = True
                    choice = None
            for t in out:
                emitted += 1
                yield t, None
    finally:
        # Leave the cache holding the prompt and exactly the tokens yielded.
        want = seen + emitted
        if in_cache > want:
            trim_cache(prompt_cache, in_cache - want)
        elif in_cache < want and emitted:
            with mx.stream(generation_stream):
                net(mx.array([context[want - 1]])[None], cache=prompt_cache)
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
