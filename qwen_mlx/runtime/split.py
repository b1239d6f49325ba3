"""How a dense Qwen3 model splits across ranks, in figures only (no MLX, no files): which
splits its shape allows, how many layers each rank of a pipeline runs, and what one rank's
share holds. The memory planner, the loader of a share (`sharding.py`) and the KV cache's
split (`cachesplit.py`) all count with these.

Tensor parallel divides every layer's attention heads among the ranks; pipeline parallel
gives each rank a block of layers, as mlx-lm's `PipelineMixin` does (rank 0 runs the last
block).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import UnsupportedModelError
from .distributed import PIPELINE, TENSOR

SUPPORTED = ("qwen3",)


def check_split(config: dict[str, Any], ranks: int, mode: str) -> None:
    """Refuse a split the model's shape does not allow, saying which one would work."""
    if config.get("model_type") not in SUPPORTED:
        raise UnsupportedModelError(
            f"Splitting a {config.get('model_type')!r} model across ranks is not supported "
            "(qwen-mlx splits dense Qwen3 models)."
        )
    layers = int(config["num_hidden_layers"])
    if mode == PIPELINE:
        if layers < ranks:
            raise ValueError(f"A pipeline of {ranks} ranks needs at least {ranks} layers.")
        return
    if mode != TENSOR:
        raise ValueError(f"mode must be {TENSOR!r} or {PIPELINE!r}, not {mode!r}.")
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads", heads))
    if heads % ranks or kv_heads % ranks:
        raise ValueError(
            f"Tensor parallelism splits the {kv_heads} KV heads (and {heads} query heads) "
            f"evenly; {ranks} ranks do not divide them. Use a rank count that does "
            f"(2, 4 or 8 for Qwen3-4B), or --pipeline."
        )


def pipeline_split(layers: int, ranks: int) -> list[int]:
    """Layers per rank, as mlx-lm's PipelineMixin splits them (the low ranks, which run
    the last layers, take the extra ones)."""
    base, extra = divmod(layers, ranks)
    return [base + (1 if r < extra else 0) for r in range(ranks)]


def rank_layers(layers: int, rank: int, ranks: int, mode: str) -> range:
    """The checkpoint layers `rank` reads: all (tensor parallel) or its block (pipeline:
    rank 0 runs the last layers, rank N-1 the first)."""
    if mode == TENSOR:
        return range(layers)
    split = pipeline_split(layers, ranks)
    start = sum(split[rank + 1 :])
    return range(start, start + split[rank])


def rank_shape(shape: Any, ranks: int, mode: str, layers: int | None = None) -> Any:
    """The figures of one rank's share (what its KV cache and attention hold): the heads
    split (tensor parallel), or its block of layers (pipeline; the largest block unless
    `layers` says)."""
    if ranks <= 1:
        return shape
    if mode == TENSOR:
        return replace(shape, heads=shape.heads // ranks, kv_heads=shape.kv_heads // ranks)
    return replace(shape, layers=layers or max(pipeline_split(shape.layers, ranks)))
