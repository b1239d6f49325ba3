"""How tokens are picked: `SamplingParams` (checked where they enter) and mlx-lm's
sampler and logits processors built from them, guarded so that a failure leaves MLX's
random state usable."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

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
        """The parameters as JSON would give them back (stop strings as a list)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["stop"] = list(self.stop)
        return values


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
