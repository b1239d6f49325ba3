"""GPTQ (Frantar et al., 2022) into mlx's affine format, for `--method gptq` and
`dynamic-gptq`.

Ours rather than mlx-lm's `mlx_lm.quant.gptq`, which leaves out what matters most for a
small Qwen3 at 4 bits:

- the token embedding. mlx-lm's GPTQ takes only `nn.Linear` layers and rounds the
  embedding to nearest; in a tied model that matrix is also the output layer, and on the
  tiny trained Qwen3 it carries 40% of round-to-nearest's KL divergence (a quarter of the
  weights; about a tenth of Qwen3-4B's). Here it is quantized first, as the output layer
  it is, on the float model's last hidden states, and the layers after it are then
  calibrated on what the quantized embedding gives them;
- the order: mlx-lm collects every layer's statistics from the float model in one pass
  (and so holds all of them at once, 20 GB for Qwen3-4B). Here the decoder blocks go one
  at a time, each on the outputs of the blocks already quantized, so a block corrects for
  the error before it and memory holds one block's statistics;
- each group's range: searched (shrunk from its min/max where that rounds the group with
  less error) and held fixed while GPTQ updates the columns; and columns are processed by
  decreasing activation energy ("act-order"), which needs those fixed ranges to keep
  mlx's contiguous groups.

The arithmetic is numpy on the CPU (float32 weights, float64 factorizations); the model's
forward passes are mlx's. Packing is mlx's layout for 2, 4 and 8 bits.
"""

from __future__ import annotations

from typing import Any

from .progress import Progress, ProgressFn

DAMP = 0.01  # of the Hessian's mean diagonal, added to it
BLOCK = 128  # columns updated together
# Each group's range is its min/max times one of these: the one that rounds it best.
RANGE_SHRINK = (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.79)
BATCH = 8  # calibration windows run at once
GPTQ_BITS = (2, 4, 8)  # what the packer (and mlx-lm's) writes


def group_ranges(w: Any, bits: int, group: int, stored: Any) -> tuple[Any, Any]:
    """Per-group scale and bias (mlx's affine: w = scale * q + bias) of each row of `w`:
    the min/max range, shrunk where that rounds the group with less squared error,
    rounded through the stored float type so GPTQ uses the values that are written."""
    import mlx.core as mx
    import numpy as np

    rows, cols = w.shape
    wg = w.reshape(rows, cols // group, group)
    top = 2**bits - 1
    lo, hi = wg.min(-1), wg.max(-1)
    best = None
    for shrink in RANGE_SHRINK:
        scale = np.maximum((hi - lo) * shrink / top, 1e-8)
        bias = lo * shrink
        scale = np.array(mx.array(scale).astype(stored).astype(mx.float32))
        bias = np.array(mx.array(bias).astype(stored).astype(mx.float32))
        scale = np.where(scale == 0, 1e-8, scale)  # a constant group: any scale does
        q = np.clip(np.round((wg - bias[..., None]) / scale[..., None]), 0, top)
        error = ((q * scale[..., None] + bias[..., None] - wg) ** 2).sum(-1)
        if best is None:
            best = (error, scale, bias)
        else:
            better = error < best[0]
            best = (
                np.where(better, error, best[0]),
                np.where(better, scale, best[1]),
                np.where(better, bias, best[2]),
            )
    assert best is not None
    return best[1].astype(np.float32), best[2].astype(np.float32)


def gptq_matrix(w: Any, hessian: Any, bits: int, group: int, stored: Any) -> tuple[Any, Any, Any]:
    """Quantize one weight matrix (rows x columns, float32) given the Gram matrix of its
    inputs (columns x columns): integer codes, scales and biases.

    GPTQ's lazy-batch form: columns in order of decreasing input energy, each rounded
    with its group's fixed range, its error spread over the columns not yet rounded
    through the Cholesky factor of the inverse Hessian."""
    import numpy as np

    w = np.array(w, dtype=np.float32, copy=True)
    h = np.array(hessian, dtype=np.float64, copy=True)
    rows, cols = w.shape
    dead = np.diag(h) == 0  # inputs that never fire: any weight does
    h[dead, dead] = 1
    w[:, dead] = 0
    scale, bias = group_ranges(w, bits, group, stored)
    order = np.argsort(-np.diag(h), kind="stable")
    w = w[:, order]
    h = h[order][:, order]
    h[np.diag_indices(cols)] += DAMP * np.mean(np.diag(h))
    inverse = np.linalg.inv(np.linalg.cholesky(h))
    upper = np.linalg.cholesky(inverse.T @ inverse).T.astype(np.float32)
    top = 2**bits - 1
    groups = order // group
    codes = np.zeros((rows, cols), dtype=np.uint32)
    for start in range(0, cols, BLOCK):
        end = min(start + BLOCK, cols)
        block = w[:, start:end].copy()
        errors = np.zeros_like(block)
        factor = upper[start:end, start:end]
        for i in range(end - start):
            g = groups[start + i]
            column = block[:, i]
            q = np.clip(np.round((column - bias[:, g]) / scale[:, g]), 0, top)
            codes[:, start + i] = q
            error = (column - (q * scale[:, g] + bias[:, g])) / factor[i, i]
            block[:, i:] -= np.outer(error, factor[i, i:])
            errors[:, i] = error
        w[:, end:] -= errors @ upper[start:end, end:]
    codes = codes[:, np.argsort(order)]
    return codes, scale, bias


def pack(codes: Any, bits: int) -> Any:
    """mlx's affine packing for 2, 4 and 8 bits: 32 // bits codes per uint32, the first
    in the lowest bits."""
    import numpy as np

    per = 32 // bits
    rows, cols = codes.shape
    shifts = np.arange(per, dtype=np.uint32) * bits
    return (codes.reshape(rows, cols // per, per).astype(np.uint32) << shifts).sum(
        -1, dtype=np.uint32
    )


def _quantized(module: Any, codes: Any, scale: Any, bias: Any, bits: int, group: int) -> Any:
    """`module` (nn.Linear or nn.Embedding) as its quantized kind holding these codes."""
    import mlx.core as mx

    layer = module.to_quantized(group_size=group, bits=bits)
    dtype = layer.scales.dtype
    layer.weight = mx.array(pack(codes, bits))
    layer.scales = mx.array(scale).astype(dtype)
    layer.biases = mx.array(bias).astype(dtype)
    return layer


class _Gram:
    """X^T X of a layer's inputs (float32), summed as calibration runs. Layers fed the
    same array (q, k and v; gate and up) share one product through `shared`."""

    def __init__(self, shared: dict[int, Any] | None = None) -> None:
        self.sum: Any = None
        self.count = 0
        self.shared = shared if shared is not None else {}

    def add(self, x: Any) -> None:
        import mlx.core as mx

        key = id(x)
        if key in self.shared and self.shared[key][0] is x:
            gram = self.shared[key][1]
        else:
            flat = x.reshape(-1, x.shape[-1]).astype(mx.float32)
            gram = flat.T @ flat
            self.shared[key] = (x, gram)
        self.sum = gram if self.sum is None else self.sum + gram
        self.count += x.size // x.shape[-1]
        mx.eval(self.sum)

    def mean(self) -> Any:
        import numpy as np

        return np.array(self.sum, dtype=np.float64) / max(self.count, 1)


def _catcher(module: Any, gram: _Gram) -> Any:
    import mlx.nn as nn

    class Catcher(nn.Module):
        def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
            gram.add(x)
            return module(x, *args, **kwargs)

    return Catcher()


def gptq_quantize(
    model: Any,
    data: Any,
    bits: int,
    group: int,
    stored: Any,
    progress: ProgressFn,
    skip: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    """Quantize `model` (an mlx-lm Qwen3) in place with GPTQ on the calibration windows
    `data`: the tied embedding first, then each decoder block on the quantized blocks'
    outputs, then an untied output layer. Layers in `skip`, or already quantized, are
    left as they are; `stored` is the float type scales and biases are written in."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.models.base import create_attention_mask

    inner = model.model
    blocks = list(inner.layers)
    batches = [data[i : i + BATCH] for i in range(0, data.shape[0], BATCH)]
    linear_count = sum(
        1
        for block in blocks
        for _, m in tree_flatten(block.leaf_modules(), is_leaf=nn.Module.is_module)
        if isinstance(m, nn.Linear)
    )
    total, done = linear_count + 2, 0

    def step(detail: str) -> None:
        nonlocal done
        done += 1
        progress(Progress("gptq", min(done, total), total, detail))

    tied = "lm_head" not in model
    embed_path = "model.embed_tokens"
    if tied and isinstance(inner.embed_tokens, nn.Embedding) and embed_path not in skip:
        gram = _Gram()
        for batch in batches:  # the float model's last hidden states: the output layer's input
            gram.add(inner(batch))
        codes, scale, bias = gptq_matrix(
            _numpy(inner.embed_tokens.weight), gram.mean(), bits, group, stored
        )
        inner.embed_tokens = _quantized(inner.embed_tokens, codes, scale, bias, bits, group)
        mx.eval(inner.embed_tokens.parameters())
    step(embed_path)

    hidden = [inner.embed_tokens(batch) for batch in batches]
    mx.eval(hidden)
    for index, block in enumerate(blocks):
        prefix = f"model.layers.{index}"
        leaves = tree_flatten(block.leaf_modules(), is_leaf=nn.Module.is_module)
        todo = [
            (path, module)
            for path, module in leaves
            if isinstance(module, nn.Linear) and f"{prefix}.{path}" not in skip
        ]
        shared: dict[int, Any] = {}
        grams = {path: _Gram(shared) for path, _ in todo}
        block.update_modules(tree_unflatten([(p, _catcher(m, grams[p])) for p, m in todo]))
        for h in hidden:
            mx.eval(block(h, create_attention_mask(h, None), None))
            shared.clear()
        quantized = []
        for path, module in todo:
            codes, scale, bias = gptq_matrix(
                _numpy(module.weight), grams[path].mean(), bits, group, stored
            )
            quantized.append((path, _quantized(module, codes, scale, bias, bits, group)))
            del grams[path]
            step(f"{prefix}.{path}")
        block.update_modules(tree_unflatten(quantized))
        hidden = [block(h, create_attention_mask(h, None), None) for h in hidden]
        mx.eval(hidden)
    if not tied and isinstance(model.lm_head, nn.Linear) and "lm_head" not in skip:
        gram = _Gram()
        for h in hidden:
            gram.add(inner.norm(h))
        codes, scale, bias = gptq_matrix(
            _numpy(model.lm_head.weight), gram.mean(), bits, group, stored
        )
        model.lm_head = _quantized(model.lm_head, codes, scale, bias, bits, group)
    step("lm_head")


def _numpy(array: Any) -> Any:
    import mlx.core as mx
    import numpy as np

    return np.array(array.astype(mx.float32))
