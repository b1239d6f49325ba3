"""The runtime layer: load a model and generate with it.

- `model.py`: `load(ref)` -> `Model`; the chat template with exact reuse of reply tokens,
  YaRN, the fingerprint a KV cache belongs to.
- `sampling.py`: `SamplingParams` and the samplers built from them.
- `generation.py`: `stream_tokens`, `stream_generate`, `generate`.
- `batch.py`: many sequences decoded together (`BatchDecoder`, `batch_generate`).
- `cache.py`: KV caches (make, reuse a prefix, trim, requantize, prefill, save, load).
  `kv_batch.py`: a quantized KV cache for mlx-lm's batch (`BatchQuantizedKVCache`) and
  per-row trimming (`trim_rows`). `ragged.py`: a prototype batch cache whose rows end apart.
- `batch_speculative.py`: prompt lookup per sequence inside the batch (`SpeculativeBatch`).
- `memory.py`: the memory planner. `structured.py`: JSON-schema constrained decoding.
- `speculative.py`: speculative decoding (prompt lookup, a draft model).
- `compare.py`: KL, top-1 and perplexity of conversions against their source (`models compare`).
- `thread.py`: the one model thread of a process with a UI or a server. `bench.py`: speed.
- One model across several processes or Macs (mx.distributed): `launch.py` starts the
  ranks (`Ranks`, `HostFile`), `sharding.py` loads a rank's share, `mirror.py` replays
  rank 0's calls on the others, `cachesplit.py` gathers and scatters split KV caches,
  `distributed.py` holds what they share, `follower.py` is a follower rank's process.

Only this package and `convert/` import mlx-lm (import-linter checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "BatchDecoder": "batch",
    "BatchResult": "batch",
    "batch_generate": "batch",
    "cache_length": "cache",
    "cache_nbytes": "cache",
    "common_prefix": "cache",
    "load_cache": "cache",
    "make_cache": "cache",
    "prefill": "cache",
    "requantize_cache": "cache",
    "reuse_cache": "cache",
    "save_cache": "cache",
    "trim_cache": "cache",
    "GenerationChunk": "generation",
    "TokenLogprob": "generation",
    "generate": "generation",
    "stream_generate": "generation",
    "stream_tokens": "generation",
    "timely_chunk": "generation",
    "HostFile": "launch",
    "Ranks": "launch",
    "Message": "messages",
    "Model": "model",
    "Prompt": "model",
    "load": "model",
    "resolve_params": "model",
    "sampling_for": "model",
    "yarn_overrides": "model",
    "SamplingParams": "sampling",
    "make_sampling": "sampling",
    "LookupDrafter": "speculative",
    "ModelDrafter": "speculative",
    "SpeculativeStats": "speculative",
    "check_tokenizers": "speculative",
    "make_drafter": "speculative",
}

__all__ = [
    "BatchDecoder",
    "BatchResult",
    "GenerationChunk",
    "HostFile",
    "LookupDrafter",
    "Message",
    "Model",
    "ModelDrafter",
    "Prompt",
    "Ranks",
    "SamplingParams",
    "SpeculativeStats",
    "TokenLogprob",
    "batch_generate",
    "cache_length",
    "cache_nbytes",
    "check_tokenizers",
    "common_prefix",
    "generate",
    "load",
    "load_cache",
    "make_cache",
    "make_drafter",
    "make_sampling",
    "prefill",
    "requantize_cache",
    "resolve_params",
    "reuse_cache",
    "sampling_for",
    "save_cache",
    "stream_generate",
    "stream_tokens",
    "timely_chunk",
    "trim_cache",
    "yarn_overrides",
]

if TYPE_CHECKING:
    from .batch import BatchDecoder, BatchResult, batch_generate
    from .cache import (
        cache_length,
        cache_nbytes,
        common_prefix,
        load_cache,
        make_cache,
        prefill,
        requantize_cache,
        reuse_cache,
        save_cache,
        trim_cache,
    )
    from .generation import (
        GenerationChunk,
        TokenLogprob,
        generate,
        stream_generate,
        stream_tokens,
        timely_chunk,
    )
    from .launch import HostFile, Ranks
    from .messages import Message
    from .model import Model, Prompt, load, yarn_overrides
    from .sampling import SamplingParams, make_sampling
    from .speculative import (
        LookupDrafter,
        ModelDrafter,
        SpeculativeStats,
        check_tokenizers,
        make_drafter,
    )

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
