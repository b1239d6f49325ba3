"""Load a model and generate text: `load`, `generate`, `stream_generate`, `SamplingParams`.

A model reference is a store name (`qwen3-4b-instruct` for the family's latest, or a full
name), a folder, or a Hugging Face repo id of an MLX model. Sampling defaults come from the
model's `generation_config.json`. The token loop is mlx-lm's `generate_step`; stop strings,
stats and the chat template are ours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DamagedModelError, GenerationCancelled, ModelNotFoundError
from ..store import resolve
from ..store.manifest import Manifest, manifest_sha256, read_manifest, verify_files

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import mlx.nn as nn

Message = dict[str, Any]
Prompt = str | Sequence[Message] | Sequence[int]
_REPLY_MARK = "\x00qwen-mlx-reply-{}\x00"


_PENALTIES = ("repetition_penalty", "presence_penalty", "frequency_penalty")


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. `Model.default_params` fills these from generation_config.json.

    `temperature=0` is greedy. `stop` strings end the reply and are not part of it.
    `top_k=0` turns top-k off, and so does a `top_k` at or above the model's vocabulary
    (it keeps every token: the same distribution); `stream_tokens` clamps it there.
    """

    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    min_p: float = 0.0
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    max_tokens: int = 1024
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        for name in ("temperature", "top_p", "min_p", *_PENALTIES):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not _finite(value)):
                raise ValueError(f"{name} must be a finite number, not {value!r}.")
        for name in ("top_k", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be an integer, not {value!r}.")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)
        ):
            raise ValueError(f"seed must be an integer, not {self.seed!r}.")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0.")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1].")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0 (0 turns it off).")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1].")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0 (1 turns it off).")
        if self.max_tokens == 0 or self.max_tokens < -1:
            raise ValueError("max_tokens must be positive (or -1 for no limit).")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty.")

    def replace(self, **changes: Any) -> SamplingParams:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"Unknown sampling parameter(s): {', '.join(sorted(unknown))}.")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_generation_config(cls, config: dict[str, Any]) -> SamplingParams:
        """Defaults from a Hugging Face generation_config.json dict."""
        values: dict[str, Any] = {}
        for ours, theirs in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
            ("min_p", "min_p"),
            ("repetition_penalty", "repetition_penalty"),
            ("presence_penalty", "presence_penalty"),
            ("max_tokens", "max_new_tokens"),
        ):
            if config.get(theirs) is not None:
                values[ours] = config[theirs]
        if config.get("do_sample") is False:
            values["temperature"] = 0.0
        if values.get("repetition_penalty") == 1.0:
            values.pop("repetition_penalty")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Model:
    """A loaded model: the MLX module, its tokenizer, config and (if stored) manifest."""

    model: nn.Module
    tokenizer: Any  # mlx_lm TokenizerWrapper
    config: dict[str, Any]
    path: Path
    manifest: Manifest | None = None
    generation_config: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    # State helpers keep per model (recent document conversations), freed with the model.
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else self.path.name

    @property
    def ref(self) -> str:
        """What loads this model again from anywhere: its store name when it sits in the
        store, else its folder."""
        from ..store import home

        folder = self.path.resolve()
        if self.manifest and folder.is_relative_to((home() / "models").resolve()):
            return self.manifest.name
        return str(folder)

    @property
    def default_params(self) -> SamplingParams:
        return SamplingParams.from_generation_config(self.generation_config)

    @property
    def context_length(self) -> int:
        """Tokens the model can attend to (after any YaRN extension)."""
        return int(self.config.get("max_position_embeddings", 32768))

    @property
    def quantization_label(self) -> str:
        q = self.config.get("quantization")
        if not q:
            return str(self.config.get("torch_dtype", "bf16"))
        return f"{q['bits']}-bit g{q['group_size']}"

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The conversation as the chat template renders it."""
        kwargs: dict[str, Any] = {"add_generation_prompt": add_generation_prompt}
        if tools:
            kwargs["tools"] = list(tools)
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, **kwargs)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def render_tokens(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """Token ids of the rendered conversation, reusing the exact ids the model produced
        for earlier replies (`"_token_ids"` on an assistant message).

        Re-encoding a reply's text does not always give back the tokens the model sampled,
        and every difference would make the prefix cache re-read from there. The template
        still renders everything: replies are swapped for markers, the text around them is
        encoded, and each reply's own ids go in between. If the markers would render any
        differently from the real text, this falls back to encoding the whole text.
        """
        real = self.render(messages, tools=tools, add_generation_prompt=add_generation_prompt)
        spliced = [
            i
            for i, m in enumerate(messages)
            if m.get("role") == "assistant"
            and m.get("_token_ids")
            and isinstance(m.get("content"), str)
        ]
        if not spliced:
            return self.encode(real)
        marks = {i: _REPLY_MARK.format(i) for i in spliced}
        marked = [dict(m, content=marks[i]) if i in marks else m for i, m in enumerate(messages)]
        text = self.render(marked, tools=tools, add_generation_prompt=add_generation_prompt)
        rebuilt = text
        for i, mark in marks.items():
            if text.count(mark) != 1:
                return self.encode(real)
            rebuilt = rebuilt.replace(mark, messages[i]["content"])
        if rebuilt != real:
            return self.encode(real)
        tokens: list[int] = []
        pos = 0
        for i, mark in marks.items():
            at = text.index(mark, pos)
            tokens += self.encode(text[pos:at]) + list(messages[i]["_token_ids"])
            pos = at + len(mark)
        return tokens + self.encode(text[pos:])

    def prompt_tokens(
        self, prompt: Prompt, tools: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        """Token ids for raw text, a list of chat messages, or ids passed through."""
        if isinstance(prompt, str):
            return self.encode(prompt)
        items = list(prompt)
        if items and all(isinstance(t, int) for t in items):
            return items
        return self.render_tokens(items, tools=tools)


def load(
    ref: str | Path,
    *,
    verify: bool = False,
    context_extension: float | None = None,
    revision: str | None = None,
    home: str | Path | None = None,
    lazy: bool = False,
) -> Model:
    """Load a model by store name, family id (its latest), folder or Hugging Face repo id.

    A stored model's files are checked against its manifest first: sizes always (cheap),
    sha256 too with `verify=True`. `context_extension=F` applies YaRN rope scaling by F
    to reach F x the model's native context, as Qwen's model card documents.
    """
    from mlx_lm.utils import load as mlx_load

    folder = resolve(ref, home=home, revision=revision)
    manifest = read_manifest(folder)
    if manifest is None:
        _check_model_folder(folder)
        if verify:
            logger.warning(
                "%s has no manifest.json: there are no checksums to verify it against "
                "(`qwen-mlx models import` adds it to the store with one).",
                folder,
            )
    else:
        problems = verify_files(folder, manifest, full=verify)
        if problems:
            listed = "; ".join(map(str, problems[:5]))
            raise DamagedModelError(
                f"{manifest.name} at {folder} does not match its manifest: {listed}. "
                f"Run `qwen-mlx models verify {manifest.name}` for details, then convert it "
                "again or remove it."
            )
    overrides = yarn_overrides(folder, context_extension) if context_extension else None
    module, tokenizer, config = mlx_load(
        str(folder), model_config=overrides, lazy=lazy, return_config=True
    )
    gen_file = folder / "generation_config.json"
    generation_config = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    return Model(
        model=module,
        tokenizer=tokenizer,
        config=config,
        path=folder,
        manifest=manifest,
        generation_config=generation_config,
        fingerprint=_with_extension(
            manifest_sha256(folder) or _fingerprint(folder), context_extension
        ),
    )


def _check_model_folder(folder: Path) -> None:
    missing = [
        what
        for what, present in (
            ("config.json", (folder / "config.json").is_file()),
            ("weights (*.safetensors)", any(folder.glob("*.safetensors"))),
        )
        if not present
    ]
    if missing:
        raise ModelNotFoundError(
            f"{folder} is not a model folder: it has no {' and no '.join(missing)}. Convert "
            "a Hugging Face checkpoint with `qwen-mlx convert --hf-path PATH_OR_REPO`, or "
            "name a stored model (see `qwen-mlx models list`)."
        )


def yarn_overrides(folder: Path, factor: float) -> dict[str, Any]:
    """Config changes for YaRN rope scaling by `factor` (Qwen's model card recipe)."""
    if factor <= 1:
        raise ValueError("context_extension must be greater than 1.")
    config = json.loads((folder / "config.json").read_text())
    native = int(config.get("max_position_embeddings", 32768))
    return {
        "rope_scaling": {
            "rope_type": "yarn",
            "type": "yarn",
            "factor": float(factor),
            "original_max_position_embeddings": native,
        },
        "max_position_embeddings": int(native * factor),
    }


def _with_extension(fingerprint: str, factor: float | None) -> str:
    """YaRN changes every position's rotation: a KV cache computed with one factor is
    wrong under another, so the factor is part of the model's identity."""
    if not factor:
        return fingerprint
    return hashlib.sha256(f"{fingerprint}:yarn:{float(factor)}".encode()).hexdigest()


def _fingerprint(folder: Path) -> str:
    """Identity of a folder without a manifest: its config and its weight files' sizes."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        stat = f.stat()
        digest.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


# -- generation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationChunk:
    """One step of `stream_generate`: new text and the running stats.

    `finish_reason` is None until the last chunk, then "stop" (end of turn or a stop
    string), "length" (max_tokens) or "cancelled".
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


class _StopMatcher:
    """Holds back text that could be the start of a stop string spanning tokens."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, whether a stop string was hit)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out = self.pending[: min(hits)]
            self.pending = ""
            return out, True
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(s[:n]):
                    keep = n
                    break
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def resolve_params(
    model: Model, params: SamplingParams | None, overrides: dict[str, Any]
) -> SamplingParams:
    return (params or model.default_params).replace(**overrides)


def make_sampling(
    params: SamplingParams, extra_processors: Sequence[Callable] = ()
) -> tuple[Callable, list[Callable]]:
    """mlx-lm's sampler and logits processors for these parameters. The sampler leaves
    MLX's global random state usable even when it raises (see `_keeps_random_state`)."""
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    sampler = make_sampler(
        temp=params.temperature, top_p=params.top_p, min_p=params.min_p, top_k=params.top_k
    )
    processors = make_logits_processors(
        repetition_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
    )
    return _keeps_random_state(sampler), [*processors, *extra_processors]


def _keeps_random_state(sampler: Callable) -> Callable:
    """`sampler`, restoring `mx.random.state` if it raises.

    mlx-lm compiles its top-k and min-p filters with the random state as input and
    output; an exception while tracing one leaves a tracer placeholder in the global
    state, and every later sampled call in the process then fails. The key is held by
    reference (no evaluation per token) and put back only on failure.
    """
    import mlx.core as mx

    def sample(logprobs: Any) -> Any:
        key = mx.random.state[0]
        try:
            return sampler(logprobs)
        except BaseException:
            high, low = key.tolist()  # seed() rebuilds exactly this key: [seed >> 32, low]
            mx.random.seed((high << 32) | low)
            raise

    return sample


def sampling_for(model: Model, params: SamplingParams) -> SamplingParams:
    """`params` as they apply to `model`: a `top_k` at or above its vocabulary keeps every
    token, so it becomes 0 (off), the same distribution (mlx-lm refuses such a top_k)."""
    vocab = int(model.config.get("vocab_size") or 0)
    if vocab and params.top_k >= vocab:
        return replace(params, top_k=0)
    return params


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
) -> Iterator[GenerationChunk]:
    """Generate from token ids, optionally continuing a KV cache (updated in place).

    `cache_tokens`, the ids `prompt_cache` holds, is kept in step with it, whatever
    happens: each prefill chunk and each token fed to the model (the end-of-turn token
    included) is appended as the cache takes it. `should_stop` is polled between prefill
    chunks (raising GenerationCancelled) and between tokens (finish "cancelled").
    `on_token` sees each token as the model takes it (benchmarks time them).
    """
    import mlx.core as mx
    from mlx_lm.generate import generate_step, generation_stream, wired_limit

    if not tokens:
        raise ValueError("The prompt is empty.")
    params = sampling_for(model, params)
    sampler, processors = make_sampling(params, logits_processors)
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

    def chunk(text: str, token: int | None, reason: str | None = None) -> GenerationChunk:
        elapsed = time.perf_counter() - start - ttft
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
            for token, _ in steps:
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
    **overrides: Any,
) -> Iterator[GenerationChunk]:
    """Stream a reply: raw text, chat messages (through the chat template with the
    generation prompt) or token ids. Keyword overrides change single sampling parameters:
    `stream_generate(model, messages, temperature=0.2, max_tokens=64)`. `json_schema`
    constrains the reply to JSON valid for that schema (finish_reason "length" means it
    ran out of tokens first). `should_stop` is polled as in `stream_tokens`."""
    params = resolve_params(model, params, overrides)
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


# -- KV caches (kept here so that only this module and convert.py touch mlx-lm) ---------------


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reuse_cache(cache: list[Any], held: list[int], tokens: Sequence[int], *, keep_one: bool) -> int:
    """Trim `cache` (and `held`, the ids it holds, in place) to the longest prefix it
    shares with `tokens`; return that length. With `keep_one`, at least one token is left
    for the model to read (generation needs something new to start from)."""
    reuse = common_prefix(tokens, held)
    if keep_one:
        reuse = min(reuse, len(tokens) - 1)
    trim_cache(cache, len(held) - reuse)
    del held[reuse:]
    return reuse


def make_cache(model: Model, kv_bits: int | None = None) -> list[Any]:
    """An empty KV cache for `model`: bf16, or quantized to `kv_bits` from the first token
    (so a long prefill never holds a bf16 copy of the cache)."""
    from mlx_lm.models.cache import QuantizedKVCache, make_prompt_cache

    from .memory import kv_group_size

    if kv_bits is None:
        return make_prompt_cache(model.model)
    group = kv_group_size(model.model.args.head_dim)
    return [QuantizedKVCache(group_size=group, bits=kv_bits) for _ in model.model.layers]


def cache_length(cache: list[Any]) -> int:
    return cache[0].offset if cache else 0


def cache_nbytes(cache: list[Any]) -> int:
    """Bytes the cache's arrays hold, spare capacity included."""
    return sum(c.nbytes for c in cache)


def trim_cache(cache: list[Any], n: int) -> None:
    """Drop the last `n` tokens from the cache, in place."""
    from mlx_lm.models.cache import trim_prompt_cache

    if n > 0:
        trim_prompt_cache(cache, n)


def requantize_cache(model: Model, cache: list[Any], kv_bits: int) -> list[Any]:
    """The same cache at a lower precision (bf16 -> 8/4-bit, or 8-bit -> 4-bit)."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    from .memory import kv_group_size

    group_size = kv_group_size(model.model.args.head_dim)
    out = []
    for c in cache:
        if isinstance(c, KVCache):
            out.append(c.to_quantized(group_size=group_size, bits=kv_bits))
            continue
        assert isinstance(c, QuantizedKVCache)
        q = QuantizedKVCache(group_size=group_size, bits=kv_bits)
        q.offset = c.offset
        if c.keys is not None:
            keys, values = c.keys_and_values() if c.offset else (c.keys, c.values)
            dense = [
                mx.dequantize(*t, group_size=c.group_size, bits=c.bits) for t in (keys, values)
            ]
            q.keys, q.values = (mx.quantize(d, group_size=group_size, bits=kv_bits) for d in dense)
        out.append(q)
    return out


def save_cache(path: str | Path, cache: list[Any], metadata: dict[str, str]) -> None:
    from mlx_lm.models.cache import save_prompt_cache

    save_prompt_cache(str(path), cache, metadata)


def load_cache(path: str | Path) -> tuple[list[Any], dict[str, str]]:
    from mlx_lm.models.cache import load_prompt_cache

    return load_prompt_cache(str(path), return_metadata=True)


def prefill(
    model: Model,
    tokens: Sequence[int],
    cache: list[Any],
    *,
    cache_tokens: list[int] | None = None,
    step: int = 2048,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Run the model over `tokens` into `cache`, in chunks of `step`, without sampling.

    `cache_tokens` (the ids the cache holds) grows chunk by chunk; `progress(done, total)`
    follows each chunk; `should_stop` ends the work between chunks (GenerationCancelled).
    """
    import mlx.core as mx
    from mlx_lm.generate import generation_stream, wired_limit

    total = len(tokens)
    done = 0
    with wired_limit(model.model, [generation_stream]), mx.stream(generation_stream):
        while done < total:
            n = min(step, total - done)
            model.model(mx.array(list(tokens[done : done + n]))[None], cache=cache)
            mx.eval([c.state for c in cache])
            if cache_tokens is not None:
                cache_tokens.extend(tokens[done : done + n])
            done += n
            if progress is not None:
                progress(done, total)
            mx.clear_cache()
            if should_stop is not None and should_stop() and done < total:
                raise GenerationCancelled("Stopped while reading.")
