"""Measure prefill and decode speed, and decode against the memory-bandwidth ceiling.

Decoding one token reads every weight and the whole KV cache once, so a machine whose
memory moves B bytes/s cannot decode faster than B / (weights + KV cache bytes) tokens/s.
The share of that ceiling a run reaches says how much is left to gain. B is Apple's
published figure for the chip when we know it, otherwise a copy measured here.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import Model

GB = 1e9

# Unified memory bandwidth in GB/s as Apple states it in each chip's press release or the
# Mac tech specs pages (support.apple.com/specs); M1's 68.25 is its LPDDR4X-4266 on a
# 128-bit bus, the figure commonly cited for it. Two chips come in two bins with different
# memory buses; the CPU bin follows the GPU bin, so the CPU core count tells them apart:
# M3 Max 14-core CPU/30-core GPU 300, 16-core/40-core 400; M4 Max 14-core/32-core 410,
# 16-core/40-core 546. With the core count unknown we take the higher figure, so that the
# share of the ceiling errs low rather than past 100%.
PUBLISHED_BANDWIDTH: dict[str, float | dict[int, float]] = {
    "M1": 68.25,
    "M1 Pro": 200,
    "M1 Max": 400,
    "M1 Ultra": 800,
    "M2": 100,
    "M2 Pro": 200,
    "M2 Max": 400,
    "M2 Ultra": 800,
    "M3": 100,
    "M3 Pro": 150,
    "M3 Max": {14: 300, 16: 400},
    "M3 Ultra": 819,
    "M4": 120,
    "M4 Pro": 273,
    "M4 Max": {14: 410, 16: 546},
    "M5": 153,
}
_CHIP = re.compile(r"\bM(\d+)(?:\s+(Pro|Max|Ultra))?\b", re.IGNORECASE)
_FILLER = (
    "Unified memory lets the GPU read the same weights as the CPU without copies. "
    "Decoding is limited by how fast memory delivers them, prefill by arithmetic. "
)


@dataclass(frozen=True)
class Bandwidth:
    """Memory bandwidth and where the figure comes from ("published" or "measured")."""

    bytes_per_second: float
    source: str
    device: str
    note: str = ""

    @property
    def gb_per_second(self) -> float:
        return self.bytes_per_second / GB


@dataclass(frozen=True)
class RunStats:
    """One measured generation."""

    prompt_tokens: int
    generation_tokens: int
    prefill_tps: float
    decode_tps: float
    time_to_first_token: float  # seconds
    peak_memory: int  # bytes
    drafted: int = 0  # speculative decoding: draft tokens proposed and kept
    accepted: int = 0


@dataclass(frozen=True)
class BenchResult:
    """Runs of one model at one prompt and generation length, and the bandwidth ceiling."""

    model: str
    quantization: str
    prompt_tokens: int
    generation_tokens: int
    weights_bytes: int  # read per decoded token
    kv_bytes_per_token: int
    bandwidth: Bandwidth
    runs: tuple[RunStats, ...] = field(default_factory=tuple)
    draft: str | None = None  # "lookup", a draft model's name, or None

    @property
    def acceptance_rate(self) -> float:
        drafted = sum(r.drafted for r in self.runs)
        return sum(r.accepted for r in self.runs) / drafted if drafted else 0.0

    @property
    def prefill_tps(self) -> float:
        return statistics.median(r.prefill_tps for r in self.runs)

    @property
    def decode_tps(self) -> float:
        return statistics.median(r.decode_tps for r in self.runs)

    @property
    def time_to_first_token(self) -> float:
        return statistics.median(r.time_to_first_token for r in self.runs)

    @property
    def peak_memory(self) -> int:
        return max(r.peak_memory for r in self.runs)

    @property
    def decode_context(self) -> float:
        """Mean tokens in the KV cache over the decode steps."""
        return self.prompt_tokens + self.generation_tokens / 2

    @property
    def bytes_per_token(self) -> float:
        return self.weights_bytes + self.kv_bytes_per_token * self.decode_context

    @property
    def ceiling_tps(self) -> float:
        return self.bandwidth.bytes_per_second / self.bytes_per_token

    @property
    def bandwidth_share(self) -> float:
        return self.decode_tps / self.ceiling_tps

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bandwidth"]["gb_per_second"] = self.bandwidth.gb_per_second
        for name in (
            "prefill_tps",
            "decode_tps",
            "time_to_first_token",
            "peak_memory",
            "decode_context",
            "bytes_per_token",
            "ceiling_tps",
            "bandwidth_share",
            "acceptance_rate",
        ):
            out[name] = getattr(self, name)
        return out


# -- bandwidth --------------------------------------------------------------------------------


def _chip(device: str) -> str | None:
    """The table key ("M2 Pro") of an Apple chip name ("Apple M2 Pro"), else None."""
    match = _CHIP.search(device) if "apple" in device.lower() else None
    if match is None:
        return None
    tier = match.group(2)
    return f"M{match.group(1)}" + (f" {tier.capitalize()}" if tier else "")


def published_bandwidth(device: str, *, cpu_cores: int | None = None) -> float | None:
    """Apple's published bandwidth in GB/s for a chip name like "Apple M2 Pro", else None."""
    figure = PUBLISHED_BANDWIDTH.get(_chip(device) or "")
    if isinstance(figure, dict):
        return figure.get(cpu_cores or 0, max(figure.values()))
    return figure


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def device_name() -> str:
    """The chip's name ("Apple M2 Pro") on a Mac, else MLX's device name or the platform."""
    if sys.platform == "darwin":
        brand = _sysctl("machdep.cpu.brand_string")
        if brand:
            return brand
    import mlx.core as mx

    return str(mx.device_info().get("device_name") or sys.platform)


def measure_copy_bandwidth(size: int = 128 << 20, repeats: int = 5) -> float:
    """Bytes/s of a large array copy (bytes read + bytes written), best of `repeats`."""
    import numpy as np

    src = np.ones(size // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def machine_bandwidth() -> Bandwidth:
    """The published figure for a known Apple chip, otherwise a measured copy."""
    device = device_name()
    cores = _sysctl("hw.physicalcpu") if sys.platform == "darwin" else None
    cpu_cores = int(cores) if cores and cores.isdigit() else None
    chip = _chip(device)
    figure = published_bandwidth(device, cpu_cores=cpu_cores)
    if chip and figure is not None:
        bins = PUBLISHED_BANDWIDTH[chip]
        note = ""
        if isinstance(bins, dict):
            note = f"{cpu_cores}-core CPU bin" if cpu_cores in bins else "bin unknown: higher"
        return Bandwidth(figure * GB, "published", device, note)
    note = "numpy copy, read + write"
    if chip:
        note += f"; {chip} is not in the published table"
    return Bandwidth(measure_copy_bandwidth(), "measured", device, note)


# -- runs -------------------------------------------------------------------------------------


def mask_tokens(token_ids: Sequence[int]) -> Callable[[Any, Any], Any]:
    """A logits processor that makes `token_ids` impossible, so generation runs its length."""
    import mlx.core as mx

    ids = sorted(set(token_ids))
    masks: dict[int, Any] = {}

    def processor(tokens: Any, logits: Any) -> Any:
        vocab = logits.shape[-1]
        if vocab not in masks:
            mask = mx.zeros((vocab,), dtype=logits.dtype)
            if ids:
                mask[mx.array([i for i in ids if i < vocab])] = -mx.inf
            masks[vocab] = mask
        return logits + masks[vocab]

    return processor


def synthetic_prompt(model: Model, n: int) -> list[int]:
    """Exactly `n` token ids of ordinary English text."""
    text = model.encode(_FILLER)
    return (text * (n // len(text) + 1))[:n]


def measure_run(
    model: Model,
    prompt: Sequence[int],
    generation_tokens: int,
    *,
    draft: Any = None,
    num_draft_tokens: int | None = None,
) -> RunStats:
    """One greedy generation of exactly `generation_tokens` after `prompt`, end of turn
    masked, through the runtime's token loop (speculative with `draft`)."""
    import mlx.core as mx

    from . import SamplingParams, stream_tokens

    params = SamplingParams(temperature=0.0, max_tokens=generation_tokens)
    arrivals: list[float] = []
    mx.clear_cache()
    if hasattr(draft, "reset"):
        draft.reset()  # a draft model starts each run with an empty cache, as the model does
    start = time.perf_counter()
    chunks = stream_tokens(
        model,
        prompt,
        params,
        logits_processors=[mask_tokens(model.tokenizer.eos_token_ids)],
        on_token=lambda _: arrivals.append(time.perf_counter()),
        draft=draft,
        num_draft_tokens=num_draft_tokens,
    )
    last = deque(chunks, maxlen=1).pop()  # the final chunk holds the stats
    peak = mx.get_peak_memory()
    if last.generation_tokens != generation_tokens or len(arrivals) != generation_tokens:
        raise RuntimeError(
            f"Generation stopped after {last.generation_tokens} of {generation_tokens} tokens "
            f"({last.finish_reason})."
        )
    ttft = arrivals[0] - start
    decode = arrivals[-1] - arrivals[0]
    return RunStats(
        prompt_tokens=last.prompt_tokens,
        generation_tokens=last.generation_tokens,
        prefill_tps=len(prompt) / ttft,
        decode_tps=(generation_tokens - 1) / decode if decode > 0 else 0.0,
        time_to_first_token=ttft,
        peak_memory=int(peak),
        drafted=last.drafted,
        accepted=last.accepted,
    )


def _weights_read_per_token(model: Model) -> int:
    """Bytes of weights one decode step reads: all of them, except an untied input
    embedding, of which a step reads one row."""
    from mlx.utils import tree_flatten

    from .memory import MemoryPlanner

    weights = MemoryPlanner.for_model(model).weights
    if model.config.get("tie_word_embeddings", True):
        return weights
    embedding = sum(
        v.nbytes for k, v in tree_flatten(model.model.parameters()) if ".embed_tokens." in f".{k}"
    )
    return weights - embedding


def run_bench(
    model: Model,
    *,
    prompt_tokens: int = 512,
    generation_tokens: int = 128,
    repeat: int = 3,
    bandwidth: Bandwidth | None = None,
    progress: Callable[[int, int], None] | None = None,
    draft: Any = None,
    num_draft_tokens: int | None = None,
) -> BenchResult:
    """Warm up once, then measure `repeat` runs; figures are their medians. With
    `draft` ("lookup", a draft Model or a drafter) decoding is speculative."""
    from .memory import MemoryPlanner

    check_lengths(prompt_tokens, generation_tokens, repeat)
    if prompt_tokens + generation_tokens > model.context_length:
        raise ValueError(
            f"{prompt_tokens} + {generation_tokens} tokens exceed the model's context of "
            f"{model.context_length}."
        )
    planner = MemoryPlanner.for_model(model)
    if draft is not None:
        from .speculative import make_drafter

        draft = make_drafter(model, draft)
    prompt = synthetic_prompt(model, prompt_tokens)
    spec = {"draft": draft, "num_draft_tokens": num_draft_tokens}
    measure_run(model, prompt[: min(prompt_tokens, 32)], 2, **spec)  # compile, allocate once
    runs = []
    for i in range(repeat):
        if progress is not None:
            progress(i, repeat)
        runs.append(measure_run(model, prompt, generation_tokens, **spec))
    return BenchResult(
        model=model.name,
        quantization=model.quantization_label,
        prompt_tokens=prompt_tokens,
        generation_tokens=generation_tokens,
        weights_bytes=_weights_read_per_token(model),
        kv_bytes_per_token=planner.kv_per_token(),
        bandwidth=bandwidth or machine_bandwidth(),
        runs=tuple(runs),
        draft=None if draft is None else getattr(getattr(draft, "draft", None), "name", "lookup"),
    )


def check_lengths(prompt_tokens: int, generation_tokens: int, repeat: int) -> None:
    """Refuse lengths that cannot be measured, before any model is loaded."""
    if prompt_tokens < 1:
        raise ValueError("The prompt needs at least 1 token.")
    if generation_tokens < 2:
        raise ValueError("Generate at least 2 tokens: decode speed is timed between tokens.")
    if repeat < 1:
        raise ValueError("repeat must be at least 1.")
