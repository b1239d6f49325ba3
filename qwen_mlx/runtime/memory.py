"""The memory planner: how many tokens of context fit in this machine's memory.

Three things take memory while a conversation runs: the weights, the KV cache (a fixed
number of bytes per token that depends on its precision), and the attention working space
of a prefill chunk (the score matrix of one layer, chunk x context per head). The budget
is Metal's recommended working set where Metal is present, otherwise physical memory
minus headroom for the OS and other programs.

For Qwen3-4B (36 layers, 8 KV heads of 128): 2 x 36 x 8 x 128 = 73,728 values per token,
so 144 KiB per token in bf16 and 36 GiB at 262,144 tokens; 8-bit KV needs 76.5 KiB and
4-bit 40.5 KiB per token (a scale and a bias in bf16 per 64 values included).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

KV_BITS = (None, 8, 4)  # bf16, then the quantized precisions, most precise first
KV_GROUP_SIZE = 64
SEQUENCE_TOKENS = 4096  # what "how many sequences fit" plans each sequence for
BATCH_CHUNK = 512  # a batch's prefill chunk (BatchDecoder's prefill_step_size)
_GIB = 1 << 30
# Scores of one layer: float32 scores and their softmax live at the same time.
_SCORE_BYTES = 4 * 2
MIN_CHUNK = 64
MAX_CHUNK = 2048


@dataclass(frozen=True)
class ModelShape:
    """The figures of a model that decide its memory use."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    context_length: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        heads = config["num_attention_heads"]
        return cls(
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            hidden=config["hidden_size"],
            context_length=int(config.get("max_position_embeddings", 32768)),
        )


_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def estimate_weights_bytes(
    config: dict[str, Any], *, bits: int | None = None, group_size: int | None = None
) -> int:
    """Bytes of a dense Qwen3's weights, from its config alone (no weight files needed).

    Quantized at `bits` (default: the config's own `quantization`, if any) as mlx-lm does:
    every linear layer and the embedding, with a scale and a bias per group; norms stay in
    the float type.
    """
    outside, layer = estimate_weights_parts(config, bits=bits, group_size=group_size)
    return outside + layer * int(config["num_hidden_layers"])


def estimate_weights_parts(
    config: dict[str, Any], *, bits: int | None = None, group_size: int | None = None
) -> tuple[int, int]:
    """(bytes outside the layers: embedding, head, final norm; bytes of one layer), as
    `estimate_weights_bytes` counts them."""
    quant = config.get("quantization") or {}
    bits = bits or quant.get("bits")
    group_size = group_size or quant.get("group_size") or 64
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    float_bytes = _DTYPE_BYTES.get(dtype, 2)
    shape = ModelShape.from_config(config)
    vocab, hidden = int(config["vocab_size"]), shape.hidden
    q_out, kv_out = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    inter = int(config["intermediate_size"])
    matrices = [(vocab, hidden)]  # the embedding
    if not config.get("tie_word_embeddings", False):
        matrices.append((vocab, hidden))
    layer = [(q_out, hidden), (kv_out, hidden), (kv_out, hidden), (hidden, q_out)]
    layer += [(inter, hidden), (inter, hidden), (hidden, inter)]

    def matrix_bytes(rows: int, cols: int) -> float:
        if not bits or cols % group_size:
            return rows * cols * float_bytes
        return rows * cols * bits / 8 + rows * (cols // group_size) * 2 * float_bytes

    outside = sum(matrix_bytes(r, c) for r, c in matrices) + hidden * float_bytes
    one_layer = sum(matrix_bytes(r, c) for r, c in layer)
    one_layer += (2 * hidden + 2 * shape.head_dim) * float_bytes  # its norms
    return int(outside), int(one_layer)


def weights_parts_on_disk(folder: Any) -> tuple[int, list[int]] | None:
    """(bytes of the tensors outside the layers, bytes of each layer) in a folder's
    safetensors files (headers only), or None if it has none."""
    import re
    from pathlib import Path

    from ..store.safetensors_header import read_header

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    outside, layers = 0, {}
    for file in files:
        header, _ = read_header(file)
        header.pop("__metadata__", None)
        for name, meta in header.items():
            start, end = meta["data_offsets"]
            m = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
            if m is None:
                outside += end - start
            else:
                layers[int(m.group(1))] = layers.get(int(m.group(1)), 0) + end - start
    return outside, [layers[i] for i in sorted(layers)]


def rank_weights_bytes(outside: int, layers: list[int], ranks: int, mode: str) -> int:
    """Bytes of weights the busiest rank holds: everything outside the layers (each rank
    keeps the embedding and the head) plus 1/N of every layer (tensor parallel; the small
    norms, which every rank keeps whole, are counted split) or its block of layers
    (pipeline: the largest block)."""
    if ranks <= 1:
        return outside + sum(layers)
    if mode == "tensor":
        return outside + -(-sum(layers) // ranks)
    from .split import pipeline_split

    split, at, largest = pipeline_split(len(layers), ranks), 0, 0
    for count in reversed(split):  # rank N-1 runs the first layers
        largest = max(largest, sum(layers[at : at + count]))
        at += count
    return outside + largest


def weights_bytes_on_disk(folder: Any) -> int | None:
    """Bytes of the tensors in a folder's safetensors files (headers only), or None if it
    has none."""
    from pathlib import Path

    from ..store.safetensors_header import read_header

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        header, _ = read_header(file)
        header.pop("__metadata__", None)
        total += sum(end - start for start, end in (t["data_offsets"] for t in header.values()))
    return total


def kv_group_size(head_dim: int) -> int:
    """Values sharing one scale and bias in a quantized KV cache (64, or 32 for small heads)."""
    for size in (KV_GROUP_SIZE, 32):
        if head_dim % size == 0:
            return size
    raise ValueError(
        f"A quantized KV cache needs head_dim divisible by 32 (this model: {head_dim})."
    )


def kv_bytes_per_token(
    shape: ModelShape, kv_bits: int | None = None, *, dtype_bytes: int = 2
) -> int:
    """Bytes of KV cache per token: keys and values of every layer."""
    values = shape.layers * 2 * shape.kv_heads * shape.head_dim
    if kv_bits is None:
        return values * dtype_bytes
    group = kv_group_size(shape.head_dim)
    return values * kv_bits // 8 + (values // group) * 2 * dtype_bytes


def attention_workspace(shape: ModelShape, chunk: int, context: int) -> int:
    """Working space of attention for a `chunk` of new tokens against `context` tokens.

    Conservative: the unfused path (CPU, and the quantized-KV path on Metal) materialises
    the scores of one layer for every head.
    """
    return shape.heads * chunk * context * _SCORE_BYTES + 4 * chunk * shape.hidden * 4


@dataclass(frozen=True)
class Budget:
    """Memory the planner may use, and where that figure comes from."""

    bytes: int
    total: int
    source: str  # "metal-recommended-working-set" or "physical-memory-minus-headroom"


def physical_memory() -> int:
    if sys.platform == "darwin":
        import subprocess

        out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip().isdigit():
            return int(out.stdout.strip())
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def mac_budget(memory_gib: float) -> Budget:
    """The budget of a Mac with this much unified memory: Metal's recommended working set
    as macOS sets it on Apple Silicon, about two thirds of memory below 36 GB and three
    quarters from 36 GB (`sysctl iogpu.wired_limit_mb` can raise it)."""
    if memory_gib <= 0:
        raise ValueError("A Mac's memory is a positive number of GB.")
    total = int(memory_gib * _GIB)
    share = 3 / 4 if memory_gib >= 36 else 2 / 3
    return Budget(int(total * share), total, f"metal-working-set-of-a-{memory_gib:g}-gb-mac")


def machine_budget() -> Budget:
    """Metal's recommended working set, or physical memory minus max(20%, 2 GiB)."""
    import mlx.core as mx

    if mx.metal.is_available():
        info = mx.device_info()
        recommended = info.get("max_recommended_working_set_size")
        if recommended:
            total = int(info.get("memory_size", recommended))
            return Budget(int(recommended), total, "metal-recommended-working-set")
    total = physical_memory()
    headroom = max(total // 5, 2 * _GIB)
    return Budget(max(total - headroom, 0), total, "physical-memory-minus-headroom")


@dataclass(frozen=True)
class Plan:
    """What a context of `context_tokens` costs with `kv_bits` KV, and whether it fits."""

    context_tokens: int
    kv_bits: int | None
    weights: int
    kv_cache: int
    workspace: int
    chunk: int
    budget: int
    context_limit: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.workspace

    @property
    def fits_memory(self) -> bool:
        return self.total <= self.budget

    @property
    def fits_context(self) -> bool:
        return self.context_tokens <= self.context_limit

    @property
    def fits(self) -> bool:
        return self.fits_memory and self.fits_context


def kv_label(kv_bits: int | None) -> str:
    return "bf16" if kv_bits is None else f"{kv_bits}-bit"


class _Own:
    """The planner's own KV precision (an argument left out); None is bf16."""


_OWN: Any = _Own()


class MemoryPlanner:
    """Plans contexts for one model on one machine.

    `kv_bits` is the KV precision its plans assume when a call names none (bf16, 8 or 4):
    a server that stores its KV at 8 bits admits requests by 8-bit bytes, about half of
    bf16's, so about twice as many sequences or twice the context fit.
    """

    def __init__(
        self,
        shape: ModelShape,
        weights_bytes: int,
        budget: Budget,
        *,
        dtype_bytes: int = 2,
        draft_shape: ModelShape | None = None,
        kv_bits: int | None = None,
    ) -> None:
        if kv_bits not in KV_BITS:
            raise ValueError(f"kv_bits must be one of 8, 4 or None (bf16), not {kv_bits!r}.")
        self.shape = shape
        self.weights = weights_bytes
        self.budget = budget
        self.dtype_bytes = dtype_bytes
        self.kv_bits = kv_bits
        # A speculative draft model: its weights are in `weights_bytes`, its KV cache
        # (one entry per context token too) in `kv_per_token`.
        self.draft_shape = draft_shape

    @classmethod
    def for_model(
        cls,
        model: Any,
        budget: Budget | None = None,
        *,
        draft: Any = None,
        kv_bits: int | None = None,
    ) -> MemoryPlanner:
        """From a loaded `Model` (and a draft `Model`, if any): configs and array bytes.

        A model split across ranks is planned for its tightest rank: that rank's share of
        the weights and of the KV cache, against that rank's machine (see `for_shard`)."""
        from mlx.utils import tree_flatten

        def nbytes(m: Any) -> int:
            return sum(v.nbytes for _, v in tree_flatten(m.model.parameters()))

        shard = getattr(model, "shard", None)
        if shard is not None and shard.ranks:
            return cls.for_shard(model.config, shard, budget)
        weights = nbytes(model) + (nbytes(draft) if draft is not None else 0)
        return cls(
            ModelShape.from_config(model.config),
            weights,
            budget or machine_budget(),
            draft_shape=ModelShape.from_config(draft.config) if draft is not None else None,
            kv_bits=kv_bits,
        )

    @classmethod
    def for_shard(cls, config: dict[str, Any], shard: Any, budget: Budget | None = None) -> Any:
        """The planner of a split model's tightest rank (the least room beside its share
        of the weights): each sequence's KV cache is split across all ranks, so the one
        with least room decides what fits."""
        from .split import rank_shape

        def room(info: Any) -> int:
            own = budget.bytes if budget is not None else info.budget_bytes
            return own - info.weights_bytes

        tight = min(shard.ranks, key=room)
        shape = rank_shape(ModelShape.from_config(config), shard.size, shard.mode, tight.layers)
        own = budget or Budget(
            tight.budget_bytes, tight.memory_bytes, f"rank {tight.rank} ({tight.host})"
        )
        return cls(shape, tight.weights_bytes, own)

    def kv_per_token(self, kv_bits: int | None = _OWN) -> int:
        kv_bits = self.kv_bits if kv_bits is _OWN else kv_bits
        own = kv_bytes_per_token(self.shape, kv_bits, dtype_bytes=self.dtype_bytes)
        if self.draft_shape is None:
            return own
        return own + kv_bytes_per_token(self.draft_shape, kv_bits, dtype_bytes=self.dtype_bytes)

    def draft_kv_share(self, kv_bits: int | None = _OWN) -> float:
        """The draft model's part of `kv_per_token` (0 without one)."""
        if self.draft_shape is None:
            return 0.0
        kv_bits = self.kv_bits if kv_bits is _OWN else kv_bits
        draft = kv_bytes_per_token(self.draft_shape, kv_bits, dtype_bytes=self.dtype_bytes)
        return draft / self.kv_per_token(kv_bits)

    def chunk_for(self, context_tokens: int, kv_bits: int | None = _OWN) -> int:
        """The largest prefill chunk (<= 2048) whose working space fits what is left."""
        kv_bits = self.kv_bits if kv_bits is _OWN else kv_bits
        free = self.budget.bytes - self.weights - self.kv_per_token(kv_bits) * context_tokens
        per_token = max(attention_workspace(self.shape, 1, max(context_tokens, 1)), 1)
        chunk = min(MAX_CHUNK, free // per_token) if free > 0 else 0
        return max(int(chunk) // MIN_CHUNK * MIN_CHUNK, MIN_CHUNK)

    def plan(self, context_tokens: int, kv_bits: int | None = _OWN) -> Plan:
        kv_bits = self.kv_bits if kv_bits is _OWN else kv_bits
        chunk = self.chunk_for(context_tokens, kv_bits)
        return Plan(
            context_tokens=context_tokens,
            kv_bits=kv_bits,
            weights=self.weights,
            kv_cache=self.kv_per_token(kv_bits) * context_tokens,
            workspace=attention_workspace(
                self.shape, min(chunk, max(context_tokens, 1)), context_tokens
            ),
            chunk=chunk,
            budget=self.budget.bytes,
            context_limit=self.shape.context_length,
        )

    def max_context(self, kv_bits: int | None = _OWN) -> int:
        """The longest context that fits, up to the model's own context length."""
        kv_bits = self.kv_bits if kv_bits is _OWN else kv_bits
        if not self.plan(1, kv_bits).fits_memory:
            return 0
        lo, hi = 1, self.shape.context_length
        if self.plan(hi, kv_bits).fits_memory:
            return hi
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.plan(mid, kv_bits).fits_memory:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def max_sequences(self, tokens: int = SEQUENCE_TOKENS, kv_bits: int | None = _OWN) -> int:
        """How many sequences of `tokens` tokens each (prompt and reply) fit at once: their
        KV beside the weights and one prefill chunk's working space."""
        kv_bits = self.kv_bits if kv_bits is _OWN else kv_bits
        if tokens <= 0:
            raise ValueError("A sequence holds at least one token.")
        workspace = attention_workspace(self.shape, min(BATCH_CHUNK, tokens), tokens)
        room = self.budget.bytes - self.weights - workspace
        return max(room // (self.kv_per_token(kv_bits) * tokens), 0)
