"""Loading one rank's share of a model, a layer at a time, and the Qwen3 pipeline split
(the figures of a split, which ones a shape allows and each rank's layers, are `split.py`'s).

Tensor parallel (the default): every layer's attention heads and MLP columns are split
across the ranks (mlx-lm's `Model.shard`), so each holds 1/N of the layers' weights and
of the KV cache (Qwen3-4B's 8 KV heads: 4 each on 2 Macs, 2 each on 4), and every layer
sums its partial results across the group: two small collectives per layer per step.

Pipeline parallel (`mode="pipeline"`): each rank runs a contiguous block of layers and
passes the hidden state on (one send per step); each holds its layers' weights and KV
cache. mlx-lm splits DeepSeek and a few others this way but not Qwen3; `_pipeline_classes`
adds the split with mlx-lm's own `PipelineMixin`. Ranks are computed one after another,
so this saves memory, not time, for a single sequence.

Both keep the embedding, the final norm and the head on every rank (each computes the
logits and so can run the same sampling step). Loading builds the model lazily, splits
it, then reads the weights one layer at a time: a rank never holds more than its share
plus one layer of the checkpoint (mlx-lm's `sharded_load` evaluates them all at once).
Each rank checks the files it reads against the manifest (sizes always, sha256 with
`verify`) and the ranks compare model fingerprints before any of them runs a step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DamagedModelError
from .distributed import PIPELINE, TENSOR
from .split import check_split, rank_layers, rank_shape

if TYPE_CHECKING:
    import mlx.nn as nn

    from ..store.manifest import Manifest

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def files_for_rank(folder: Path, layers: range) -> set[str]:
    """The weight files holding `layers` and the tensors outside the layers."""
    from ..store.safetensors_header import read_header

    needed: set[str] = set()
    for file in sorted(folder.glob("*.safetensors")):
        header, _ = read_header(file)
        for name in header:
            if name == "__metadata__":
                continue
            m = _LAYER.search(name)
            if m is None or int(m.group(1)) in layers:
                needed.add(file.name)
                break
    return needed


def check_rank_files(
    folder: Path, manifest: Manifest | None, needed: set[str], *, verify: bool
) -> None:
    """This rank's files against the manifest: every file's size, and with `verify` the
    sha256 of the files it reads (a pipeline rank hashes only its own layers' files)."""
    from ..store.manifest import sha256_file, verify_files

    if manifest is None:
        return
    problems = [str(p) for p in verify_files(folder, manifest, full=False)]
    if verify and not problems:
        for entry in manifest.files:
            reads = entry.path in needed or not entry.path.endswith(".safetensors")
            if reads and sha256_file(folder / entry.path) != entry.sha256:
                problems.append(f"{entry.path}: sha256 differs (contents changed)")
    if problems:
        raise DamagedModelError(
            f"{manifest.name} at {folder} does not match its manifest: "
            f"{'; '.join(problems[:5])}. Run `qwen-mlx models verify {manifest.name}` on "
            "that machine, then copy or convert it again."
        )


def load_share(
    folder: Path,
    group: Any,
    *,
    mode: str = TENSOR,
    model_config: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, dict[str, Any], int]:
    """This rank's share of the model in `folder`: (module, config, the most memory the
    load added at any moment). The module is split for `group` and its weights are read
    one tensor at a time, a layer after another."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load_model

    mx.reset_peak_memory()
    before = mx.get_active_memory()  # what this process held already (another model, say)
    classes = _pipeline_classes if mode == PIPELINE else None
    kwargs = {"get_model_classes": classes} if classes else {}
    model, config = load_model(folder, lazy=True, model_config=model_config, **kwargs)
    check_split(config, group.size(), mode)
    if mode == TENSOR:
        model.shard(group)
    else:
        model.model.pipeline(group)
    layers = [layer for layer in model.model.layers if layer is not None]
    outside = {k: v for k, v in model.parameters().items() if k != "model"}
    outside["model"] = {k: v for k, v in model.model.parameters().items() if k != "layers"}
    # One tensor at a time: evaluated together, the tensors of one file are read as one.
    for _, array in tree_flatten(outside):
        mx.eval(array)
    for i, layer in enumerate(layers):
        for _, array in tree_flatten(layer.parameters()):
            mx.eval(array)
        mx.clear_cache()  # the whole tensors this layer's share was cut from
        if progress is not None:
            progress(i + 1, len(layers))
    return model, config, mx.get_peak_memory() - before


def share_bytes(module: nn.Module) -> tuple[int, int]:
    """(bytes of this rank's weights, bytes of its largest layer)."""
    from mlx.utils import tree_flatten

    total = sum(v.nbytes for _, v in tree_flatten(module.parameters()))
    layers = [layer for layer in module.model.layers if layer is not None]
    largest = max(
        (sum(v.nbytes for _, v in tree_flatten(layer.parameters())) for layer in layers),
        default=0,
    )
    return total, largest


def checkpoint_layer_bytes(folder: Path) -> int:
    """Bytes of the checkpoint's largest layer, as stored (before any split)."""
    from ..store.safetensors_header import read_header

    per_layer: dict[int, int] = {}
    for file in sorted(folder.glob("*.safetensors")):
        header, _ = read_header(file)
        for name, meta in header.items():
            m = _LAYER.search(name) if name != "__metadata__" else None
            if m is not None:
                start, end = meta["data_offsets"]
                per_layer[int(m.group(1))] = per_layer.get(int(m.group(1)), 0) + end - start
    return max(per_layer.values(), default=0)


_CLASSES: dict[str, Any] = {}


def _pipeline_classes(config: dict[str, Any]) -> tuple[type, type]:
    """mlx-lm's Qwen3 with the pipeline split (built on first use: no mlx-lm at import)."""
    if "model" not in _CLASSES:
        _CLASSES["model"] = _build_pipeline_qwen3()
    from mlx_lm.models import qwen3

    return _CLASSES["model"], qwen3.ModelArgs


def _build_pipeline_qwen3() -> type:
    import mlx.core as mx
    from mlx_lm.models import qwen3
    from mlx_lm.models.base import create_attention_mask
    from mlx_lm.models.pipeline import PipelineMixin

    class PipelineQwen3Model(qwen3.Qwen3Model):
        """Qwen3's layers, of which this rank runs one block (see PipelineMixin)."""

        pipeline_layers = PipelineMixin.pipeline_layers

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self.pipeline_rank, self.pipeline_size = 0, 1
            self.start_idx, self.end_idx = 0, None
            self.group = None

        def pipeline(self, group: Any, split: list[int] | None = None) -> None:
            """Keep this rank's block of layers (and the group, for the collectives)."""
            self.group = group
            PipelineMixin.pipeline(self, group, split)

        def __call__(self, inputs: Any, cache: Any = None, input_embeddings: Any = None) -> Any:
            h = input_embeddings if input_embeddings is not None else self.embed_tokens(inputs)
            rank, size, group = self.pipeline_rank, self.pipeline_size, self.group
            layers = self.pipeline_layers
            if cache is None:
                cache = [None] * len(layers)
            mask = create_attention_mask(h, cache[0])
            if rank < size - 1:  # the hidden state from the rank before (higher rank)
                h = mx.distributed.recv_like(h, rank + 1, group=group)
            for layer, c in zip(layers, cache, strict=True):
                h = layer(h, mask, c)
            if rank != 0:
                h = mx.distributed.send(h, rank - 1, group=group)
                # A prefill evaluates only the caches: they must wait for the send too.
                last = cache[-1]
                keys = getattr(last, "keys", None)
                if isinstance(keys, mx.array):
                    last.keys = mx.depends(keys, h)
                elif isinstance(keys, tuple | list) and keys:  # quantized: packed, scales, biases
                    last.keys = type(keys)([mx.depends(keys[0], h), *keys[1:]])
            if size > 1:  # rank 0's final hidden state, on every rank
                h = mx.distributed.all_gather(h, group=group)[: h.shape[0]]
            return self.norm(h)

    class PipelineQwen3(qwen3.Model):
        """mlx-lm's Qwen3 Model with PipelineQwen3Model inside; `layers` (what KV caches
        are made for) are this rank's."""

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self.model = PipelineQwen3Model(args)

        @property
        def layers(self) -> list[Any]:
            return self.model.pipeline_layers

    return PipelineQwen3


def load_rank(
    folder: Path,
    manifest: Manifest | None,
    group: Any,
    *,
    mode: str,
    verify: bool,
    model_config: dict[str, Any] | None,
) -> tuple[nn.Module, Any, dict[str, Any], int]:
    """This rank's share of the model in `folder`, after checking the files it reads:
    (module, tokenizer, config, peak bytes while loading)."""
    import json

    from mlx_lm.utils import load_tokenizer

    config = json.loads((folder / "config.json").read_text()) | (model_config or {})
    check_split(config, group.size(), mode)
    layers = rank_layers(int(config["num_hidden_layers"]), group.rank(), group.size(), mode)
    needed = files_for_rank(folder, layers)
    check_rank_files(folder, manifest, needed, verify=verify)
    module, config, peak = load_share(folder, group, mode=mode, model_config=model_config)
    tokenizer = load_tokenizer(folder, eos_token_ids=config.get("eos_token_id"))
    return module, tokenizer, config, peak


def join_ranks(model: Any, group: Any, mode: str, peak: int) -> Any:
    """The `Shard` of a model loaded on every rank of `group`: the ranks tell each other
    what they hold, and refuse to run if they did not load the same model."""
    import socket

    from .distributed import RankInfo, Shard, exchange
    from .memory import ModelShape, kv_bytes_per_token, machine_budget

    weights, _ = share_bytes(model.model)
    budget = machine_budget()
    layers = [layer for layer in model.model.model.layers if layer is not None]
    shape = rank_shape(ModelShape.from_config(model.config), group.size(), mode, len(layers))
    mine = {
        "host": socket.gethostname(),
        "weights_bytes": weights,
        "peak_bytes": int(peak),
        "budget_bytes": budget.bytes,
        "memory_bytes": budget.total,
        "kv_per_token": kv_bytes_per_token(shape),
        "fingerprint": _identity(model),
        "layers": len(layers),
        "name": model.name,
    }
    facts = exchange(group, mine)
    different = [i for i, f in enumerate(facts) if f["fingerprint"] != facts[0]["fingerprint"]]
    if different:
        other = facts[different[0]]
        raise DamagedModelError(
            f"The ranks loaded different models: rank 0 has {facts[0]['name']} "
            f"({facts[0]['fingerprint'][:12]}), rank {different[0]} ({other['host']}) has "
            f"{other['name']} ({other['fingerprint'][:12]}). Put the same version on every "
            "machine (`qwen-mlx models list` shows them), or pass the exact name."
        )
    ranks = tuple(
        RankInfo(rank=i, **{k: v for k, v in f.items() if k != "name"}) for i, f in enumerate(facts)
    )
    return Shard(group=group, mode=mode, ranks=ranks)


def _identity(model: Any) -> str:
    """What must be equal on every rank: the manifest's hash, or (a folder without one,
    copied to each machine) its config and weight files' names and sizes."""
    import hashlib

    if model.manifest is not None:
        return model.fingerprint
    digest = hashlib.sha256((model.path / "config.json").read_bytes())
    for f in sorted(model.path.glob("*.safetensors")):
        digest.update(f"{f.name}:{f.stat().st_size}".encode())
    digest.update(str(model.config.get("rope_scaling")).encode())
    return digest.hexdigest()
