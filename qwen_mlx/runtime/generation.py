"""Generate text: `stream_tokens` (token ids in, chunks out, a KV cache continued in
place), `stream_generate` (text, messages or ids) and `generate`.

The token loop is mlx-lm's `generate_step`; stop strings, stats and the chat template are
ours.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import GenerationCancelled
from .distributed import leader_of, shared_sampler
from .model import Model, Prompt, resolve_params, sampling_for
from .sampling import SamplingParams, make_sampling


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token's log probability under the model (after logits processors, before
    temperature), and the `top` most likely tokens at that step as (id, logprob)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class GenerationChunk:
    """One step of `stream_generate`: new text and the running stats.

    `finish_reason` is None until the last chunk, then "stop" (end of turn or a stop
    string), "length" (max_tokens) or "cancelled"; `stop_string` names the stop string
    that ended it, if one did. With `stream_tokens(logprobs=k)`, `logprobs` holds the
    tokens sampled since the previous chunk (a token whose text is still incomplete, or
    held back, comes with a later chunk).
    """

    text: str
    token: int | None
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: float  # GB
    time_to_first_token: float  # seconds
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    stop_string: str | None = None
    # Speculative decoding (0 without it): draft tokens proposed and kept so far.
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def held_back(text: str, markers: Sequence[str]) -> int:
    """How many characters at the end of `text` could be the start of one of `markers`
    (a stop string, a `<tool_call>` tag) completed by text still to come: a stream holds
    them back until it knows."""
    keep = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), keep, -1):
            if text.endswith(marker[:n]):
                keep = n
                break
    return keep


class _StopMatcher:
    """Holds back text that could be the start of a stop string spanning tokens."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.pending = ""
        self.hit: str | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, whether a stop string was hit)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [(i, s) for s, i in ((s, self.pending.find(s)) for s in self.stops) if i >= 0]
        if hits:
            at, self.hit = min(hits)
            out = self.pending[:at]
            self.pending = ""
            return out, True
        keep = held_back(self.pending, self.stops)
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def stream_tokens(
    model: Model,
    tokens: Sequence[int],
    params: SamplingParams,
    *,
    prompt_cache: list[Any] | None = None,
    cache_tokens: list[int] | None = None,
    prefill_step_size: int = 2048,
    prompt_progress: Callable[[int, int], None] | None = None,
    logits_processors: Sequence[Callable] = (),
    should_stop: Callable[[], bool] | None = None,
    on_token: Callable[[int], None] | None = None,
    logprobs: int | None = None,
    draft: Any = None,
    num_draft_tokens: int | None = None,
) -> Iterator[GenerationChunk]:
    """Generate from token ids, optionally continuing a KV cache (updated in place).

    `draft` turns on speculative decoding ("lookup", a draft `Model`, a store reference,
    or a drafter from `speculative.make_drafter`); `num_draft_tokens` caps how many it
    proposes per round (adaptive below that). The output is the same either way.

    `cache_tokens`, the ids `prompt_cache` holds, is kept in step with it, whatever
    happens: each prefill chunk and each token fed to the model (the end-of-turn token
    included) is appended as the cache takes it. `should_stop` is polled between prefill
    chunks (raising GenerationCancelled) and between tokens (finish "cancelled").
    `on_token` sees each token as the model takes it (benchmarks time them). With
    `logprobs` (0 to 20), each chunk carries its tokens' log probabilities and that many
    most likely alternatives (see `GenerationChunk`); such a call decodes without `draft`
    (speculative rounds do not keep each step's distribution).
    """
    import mlx.core as mx
    from mlx_lm.generate import generate_step, generation_stream, wired_limit

    if not tokens:
        raise ValueError("The prompt is empty.")
    leader = leader_of(model)
    if leader is not None:  # split across ranks that this process drives: all of them run it
        yield from leader.stream(
            tokens,
            params,
            prompt_cache=prompt_cache,
            cache_tokens=cache_tokens,
            prefill_step_size=prefill_step_size,
            prompt_progress=prompt_progress,
            logits_processors=logits_processors,
            should_stop=should_stop,
            on_token=on_token,
            logprobs=logprobs,
            draft=draft,
            num_draft_tokens=num_draft_tokens,
        )
        return
    drafter = stats = None
    if draft is not None and logprobs is None:  # scoring needs each step's distribution
        from .speculative import SpeculativeStats, make_drafter, uses_cache_bits

        drafter = make_drafter(
            model, draft, kv_bits=uses_cache_bits(prompt_cache) if prompt_cache else None
        )
        stats = SpeculativeStats()
    params = sampling_for(model, params)
    sampler, processors = make_sampling(params, logits_processors)
    sampler = shared_sampler(model, sampler)
    if params.seed is not None:
        mx.random.seed(params.seed)
    mx.reset_peak_memory()
    detokenizer = model.tokenizer.detokenizer
    eos = model.tokenizer.eos_token_ids
    stops = _StopMatcher(params.stop)
    start = time.perf_counter()
    ttft = prompt_tps = 0.0
    n = 0
    finish: str | None = None
    stop_hit = False
    scored: list[TokenLogprob] = []

    def chunk(text: str, token: int | None, reason: str | None = None) -> GenerationChunk:
        elapsed = time.perf_counter() - start - ttft
        taken = tuple(scored)
        scored.clear()
        return GenerationChunk(
            text=text,
            token=token,
            prompt_tokens=len(tokens),
            prompt_tps=prompt_tps,
            generation_tokens=n,
            generation_tps=n / elapsed if elapsed > 0 else 0.0,
            peak_memory=mx.get_peak_memory() / 1e9,
            time_to_first_token=ttft,
            finish_reason=reason,
            logprobs=taken,
            stop_string=stops.hit if reason == "stop" else None,
            drafted=stats.drafted if stats else 0,
            accepted=stats.accepted if stats else 0,
        )

    held = cache_tokens if cache_tokens is not None else []
    base = len(held)

    def on_prefill(done: int, total: int) -> None:
        # generate_step reports each chunk once the cache holds it; the last piece of the
        # prompt goes in with the first sampled token (see below).
        if done < total:
            del held[base:]
            held.extend(tokens[:done])
            if should_stop is not None and should_stop():
                raise GenerationCancelled("Stopped during the prefill.")
        if prompt_progress is not None:
            prompt_progress(done, total)

    with wired_limit(model.model, [generation_stream]):
        if drafter is not None:
            from mlx_lm.models.cache import make_prompt_cache

            from .speculative import speculative_step

            if prompt_cache is None:
                prompt_cache = make_prompt_cache(model.model)
            steps = speculative_step(
                tokens,
                model,
                drafter,
                params=params,
                processors=processors,
                prompt_cache=prompt_cache,
                history=held[:base],
                max_tokens=params.max_tokens,
                num_draft_tokens=num_draft_tokens,
                prefill_step_size=prefill_step_size,
                prompt_progress=on_prefill,
                stats=stats,
            )
        else:
            steps = generate_step(
                mx.array(list(tokens)),
                model.model,
                max_tokens=params.max_tokens,
                sampler=sampler,
                logits_processors=processors or None,
                prompt_cache=prompt_cache,
                prefill_step_size=prefill_step_size,
                prompt_progress_callback=on_prefill,
            )
        try:
            for token, distribution in steps:
                if n == 0:
                    ttft = time.perf_counter() - start
                    prompt_tps = len(tokens) / ttft if ttft > 0 else 0.0
                    if len(tokens) >= 64:  # long enough to measure the prefill rate
                        model.memo["prefill_tps"] = prompt_tps
                    del held[base:]
                    held.extend(tokens)
                # generate_step feeds each token to the model before yielding it.
                held.append(token)
                if on_token is not None:
                    on_token(token)
                if token in eos:
                    finish = "stop"
                    break
                n += 1
                if logprobs is not None:
                    scored.append(score_token(token, distribution, logprobs))
                detokenizer.add_token(token)
                text, stop_hit = stops.feed(detokenizer.last_segment)
                if text:
                    yield chunk(text, token)
                if stop_hit:
                    finish = "stop"
                    break
                if n == params.max_tokens:
                    finish = "length"
                    break
                if should_stop is not None and should_stop():
                    finish = "cancelled"
                    break
        finally:
            steps.close()
    tail = ""
    if not stop_hit:
        detokenizer.finalize()
        tail, stop_hit = stops.feed(detokenizer.last_segment)
        if not stop_hit:
            tail += stops.flush()
    yield chunk(tail, None, finish or "length")


def score_token(token: int, distribution: Any, top: int) -> TokenLogprob:
    """`token`'s log probability in `distribution` (a vocabulary's log-softmax) and the
    `top` most likely tokens, best first."""
    import mlx.core as mx

    chosen = distribution[token]
    if top <= 0:
        return TokenLogprob(token, chosen.item())
    top = min(top, distribution.size)
    ids = mx.argpartition(-distribution, top - 1)[:top]
    values = distribution[ids]
    mx.eval(ids, values, chosen)  # one evaluation for all three
    best = sorted(zip(ids.tolist(), values.tolist(), strict=True), key=lambda p: -p[1])
    return TokenLogprob(token, chosen.item(), tuple(best))


def stream_generate(
    model: Model,
    prompt: Prompt,
    params: SamplingParams | None = None,
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    json_schema: dict[str, Any] | str | None = None,
    prompt_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    prefill_step_size: int = 2048,
    draft: Any = None,
    num_draft_tokens: int | None = None,
    **overrides: Any,
) -> Iterator[GenerationChunk]:
    """Stream a reply: raw text, chat messages (through the chat template with the
    generation prompt) or token ids. Keyword overrides change single sampling parameters:
    `stream_generate(model, messages, temperature=0.2, max_tokens=64)`. `json_schema`
    constrains the reply to JSON valid for that schema (finish_reason "length" means it
    ran out of tokens first). `should_stop` is polled as in `stream_tokens`.

    `draft="lookup"` (prompt lookup), a draft `Model` or a store reference turns on
    speculative decoding: same output, several tokens per forward pass; the last chunk
    has `drafted`, `accepted` and `acceptance_rate`. A draft whose tokenizer differs
    is refused (TokenizerMismatchError) before any work."""
    params = resolve_params(model, params, overrides)
    if draft is not None:
        from .speculative import make_drafter

        draft = make_drafter(model, draft)
    tokens = model.prompt_tokens(prompt, tools=tools)
    processors = []
    if json_schema is not None:
        from .structured import JsonSchemaProcessor

        processors.append(JsonSchemaProcessor(model, json_schema))
    yield from stream_tokens(
        model,
        tokens,
        params,
        prompt_progress=prompt_progress,
        logits_processors=processors,
        should_stop=should_stop,
        prefill_step_size=prefill_step_size,
        draft=draft,
        num_draft_tokens=num_draft_tokens,
    )


def timely_chunk(model: Model, seconds: float = 0.5, *, largest: int = 2048) -> int:
    """A prefill chunk that this machine reads in about `seconds`, from the model's last
    measured prefill rate, so that progress on a long prompt moves at least that often
    (on a CPU a 2048-token chunk of a 4B model takes half a minute). Before any
    measurement: the largest chunk with Metal, 128 tokens without."""
    import mlx.core as mx

    rate = model.memo.get("prefill_tps")
    if not rate:
        return largest if mx.metal.is_available() else 128
    return int(min(max(rate * seconds, 32), largest))


def generate(
    model: Model, prompt: Prompt, params: SamplingParams | None = None, **overrides: Any
) -> str:
    """The whole reply as one string (see `stream_generate`)."""
    return "".join(c.text for c in stream_generate(model, prompt, params, **overrides))
