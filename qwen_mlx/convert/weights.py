"""The weights of a conversion: which layers are quantized how (as `mlx_lm.convert`
decides, plus group-size fallbacks), the output tensors and shards that makes, and the
streaming write: one source tensor at a time, cast, quantized with `mx.quantize`, appended
to the output and hashed as it goes."""

from __future__ import annotations

import json
import re
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fileio import sha256_file
from ..store.manifest import Quantization
from ..store.safetensors_header import read_header
from .checkpoint import Checkpoint
from .progress import Progress, ProgressFn
from .tensorfile import TensorFileWriter, TensorSpec

MAX_SHARD_BYTES = 5 << 30  # mlx-lm's shard size


_DTYPE_CODES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


_DTYPE_NAMES = {code: name for name, code in _DTYPE_CODES.items()}


_FLOAT_CODES = {"BF16", "F16", "F32", "F64"}


FALLBACK_GROUP_SIZES = (64, 32)  # tried, below the requested one, for layers it does not fit


@dataclass(frozen=True)
class WeightPlan:
    """What to write: output specs per shard and how each source tensor maps onto them."""

    quant: dict[str, dict[str, Any]]  # module path -> {"bits", "group_size", "mode"}
    shards: list[list[TensorSpec]]
    sources: list[tuple[str, str]]  # (file, tensor name) in processing order
    dtype: str | None  # what every float tensor is cast to; None keeps each one's own


def _layer_list(paths: list[str]) -> str:
    """`model.layers.*.mlp.up_proj` for the same module in every layer."""
    shown = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", p) for p in paths))
    return ", ".join(shown[:6]) + (f" and {len(shown) - 6} more" if len(shown) > 6 else "")


def _quant_plan(
    model: Any, bits: int, group_size: int, recipe: str | None, mode: str = "affine"
) -> tuple[dict[str, dict[str, Any]], int, list[str]]:
    """Which modules get quantized, with which settings, as mlx_lm's quantize_model
    decides, except for layers `group_size` does not fit (see the module docstring).
    The MX and NV formats have one group size each, so they fall back to none.
    Returns the plan, the group size used and warnings."""
    from mlx_lm.convert import mixed_quant_predicate_builder

    sizes = {
        path: module.weight.shape[-1]
        for path, module in model.named_modules()
        if hasattr(module, "to_quantized")
    }
    fallbacks = FALLBACK_GROUP_SIZES if mode == "affine" else ()
    groups = [group_size, *(g for g in fallbacks if g < group_size)]
    fits = {p: n for p, n in sizes.items() if any(n % g == 0 for g in groups)}
    # Every candidate is a multiple of the last one, so some candidate divides them all.
    group = next(g for g in groups if all(n % g == 0 for n in fits.values()))
    predicate = mixed_quant_predicate_builder(recipe, model, group) if recipe else None
    plan: dict[str, dict[str, Any]] = {}
    for path, module in model.named_modules():
        if path not in fits:
            continue
        params = {"group_size": group, "bits": bits, "mode": mode}
        if predicate is not None:
            choice = predicate(path, module)
            if choice is False:
                continue
            if isinstance(choice, dict):
                params = choice
        plan[path] = params
    warnings = []
    unfit = [p for p in sizes if p not in fits]
    odd = sorted({n for n in sizes.values() if n % group_size})
    if not plan and sizes:
        warnings.append(
            f"No layer can be quantized: their input sizes ({', '.join(map(str, odd))}) are "
            f"not multiples of {groups[-1]}. The model is written unquantized, and named so."
        )
        return plan, group, warnings
    if group != group_size:
        warnings.append(
            f"--q-group-size {group_size} does not divide the input size of every layer "
            f"({', '.join(map(str, odd))}); all layers are quantized with group size {group} "
            f"instead, and the name says g{group}."
        )
    if unfit:
        unfit_sizes = ", ".join(map(str, sorted({sizes[p] for p in unfit})))
        warnings.append(
            f"{len(unfit)} of {len(sizes)} layers stay unquantized, as no group size "
            f"({', '.join(map(str, groups))}) divides their input size ({unfit_sizes}): "
            f"{_layer_list(unfit)}."
        )
    return plan, group, warnings


def plan_weights(
    ckpt: Checkpoint,
    *,
    bits: int | None,
    group_size: int,
    recipe: str | None,
    dtype: str | None,
    mode: str = "affine",
) -> tuple[WeightPlan, Quantization, list[str]]:
    """What to write, the quantization it amounts to, and warnings. `bits` None writes
    an unquantized copy; `dtype` None keeps each tensor's float type."""
    import importlib

    arch = importlib.import_module(f"mlx_lm.models.{ckpt.model_type}")
    model = arch.Model(arch.ModelArgs.from_dict(ckpt.config))  # parameters stay lazy: no memory
    quant: dict[str, dict[str, Any]] = {}
    group, warnings = group_size, []
    if bits:
        quant, group, warnings = _quant_plan(model, bits, group_size, recipe, mode)
    keep = set(model.sanitize(dict.fromkeys(ckpt.tensors)))
    sources: list[tuple[str, str]] = []
    specs: list[TensorSpec] = []
    floats: Counter[str] = Counter()  # parameters per float type written
    for file in ckpt.weight_files:
        header, _ = read_header(ckpt.path / file)
        header.pop("__metadata__", None)
        for tensor in sorted(header, key=lambda k: header[k]["data_offsets"][0]):
            if tensor not in keep:
                continue
            sources.append((file, tensor))
            spec = ckpt.tensors[tensor]
            code = spec.dtype
            if spec.dtype in _FLOAT_CODES:
                code = _DTYPE_CODES[dtype] if dtype else ("F32" if code == "F64" else code)
                floats[code] += _numel(spec.shape)
            module, _, param = tensor.rpartition(".")
            q = quant.get(module) if param == "weight" else None
            if q is not None:
                rows, cols = spec.shape
                groups = cols // q["group_size"]
                specs.append(TensorSpec(tensor, "U32", (rows, cols * q["bits"] // 32)))
                if q["mode"] == "affine":
                    specs += [
                        TensorSpec(f"{module}.scales", code, (rows, groups)),
                        TensorSpec(f"{module}.biases", code, (rows, groups)),
                    ]
                else:  # one 8-bit floating-point scale per group, no bias
                    specs.append(TensorSpec(f"{module}.scales", "U8", (rows, groups)))
            else:
                specs.append(TensorSpec(tensor, code, spec.shape))
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > MAX_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    written = dtype or (_DTYPE_NAMES[floats.most_common(1)[0][0]] if floats else "bfloat16")
    quantization = Quantization(
        dtype=written,
        bits=bits if quant else None,
        group_size=group if quant else None,
        mode=mode if quant else None,
        recipe=recipe if quant else None,
    )
    return WeightPlan(quant, shards, sources, dtype), quantization, warnings


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_weights(
    ckpt: Checkpoint,
    plan: WeightPlan,
    out: Path,
    progress: ProgressFn,
    hash_sources: bool,
) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Stream every tensor from source to output.

    Source tensors load lazily (`mx.load`) and are dropped as soon as they are written,
    so memory holds about one tensor. Two helper threads overlap the I/O with the
    quantization: one hashes the source files, one writes and hashes the output.
    Returns the output files' sha256, the source files' sha256 (when `hash_sources`)
    and the output file names.
    """
    import mlx.core as mx

    target = getattr(mx, plan.dtype) if plan.dtype else None
    names = _shard_names(len(plan.shards))
    total = sum((ckpt.path / f).stat().st_size for f in ckpt.weight_files)
    order: dict[str, list[str]] = {}
    for file, tensor in plan.sources:
        order.setdefault(file, []).append(tensor)
    writers = [
        TensorFileWriter(out / name, specs, metadata={"format": "mlx"})
        for name, specs in zip(names, plan.shards, strict=True)
    ]
    shard_of = {spec.name: i for i, specs in enumerate(plan.shards) for spec in specs}
    done = 0
    with ThreadPoolExecutor(1) as hashing, ThreadPoolExecutor(1) as writing:
        src_futures = {
            f: hashing.submit(sha256_file, ckpt.path / f) for f in ckpt.weight_files if hash_sources
        }
        pending: deque[Future] = deque()
        try:
            for file in ckpt.weight_files:
                arrays = mx.load(str(ckpt.path / file))  # lazy: nothing is read yet
                for tensor in order.get(file, []):
                    array = arrays.pop(tensor)
                    done += ckpt.tensors[tensor].nbytes
                    progress(Progress("convert", done, total, tensor))
                    if target is not None and mx.issubdtype(array.dtype, mx.floating):
                        array = array.astype(target)
                    elif array.dtype == mx.float64:  # safetensors output has no F64 here
                        array = array.astype(mx.float32)
                    module, _, param = tensor.rpartition(".")
                    q = plan.quant.get(module) if param == "weight" else None
                    if q is not None:
                        wq, scales, *biases = mx.quantize(
                            array, group_size=q["group_size"], bits=q["bits"], mode=q["mode"]
                        )
                        outputs = [(tensor, wq), (f"{module}.scales", scales)]
                        outputs += [(f"{module}.biases", b) for b in biases]
                    else:
                        outputs = [(tensor, array)]
                    mx.eval([a for _, a in outputs])
                    del array
                    for name, result in outputs:
                        writer = writers[shard_of[name]]
                        pending.append(writing.submit(writer.write, name, result))
                    del outputs
                    while len(pending) > 3:  # bound what waits in memory for the disk
                        pending.popleft().result()
                del arrays
            while pending:
                pending.popleft().result()
            out_hashes = {w.path.name: w.close() for w in writers}
            progress(Progress("convert", total, total))  # all written
        except BaseException:
            for future in pending:
                future.cancel()
            for w in writers:
                w.abort()
            raise
        src_hashes = {f: future.result() for f, future in src_futures.items()}
    return out_hashes, src_hashes, names


def write_config(ckpt: Checkpoint, plan: WeightPlan, out: Path) -> None:
    from mlx_lm.utils import save_config

    config = dict(ckpt.config)
    if plan.quant:
        first = next(iter(plan.quant.values()))
        quant: dict[str, Any] = {
            "group_size": first["group_size"],
            "bits": first["bits"],
            "mode": first["mode"],
        }
        if any(q != first for q in plan.quant.values()):
            quant |= plan.quant  # per-layer settings, as mlx-lm writes them for recipes
        config["quantization"] = quant
    save_config(config, config_path=out / "config.json")


def differing_layers(plan: WeightPlan) -> dict[str, Any]:
    """The layers whose settings differ from config.json's top-level ones (a recipe's)."""
    if not plan.quant:
        return {}
    first = next(iter(plan.quant.values()))
    return {path: q for path, q in plan.quant.items() if q != first}


@dataclass(frozen=True)
class BitsCount:
    """What a model's weight matrices store, in bits, and how many weights they hold:
    every byte of each layer (the packed weights, and their scales and biases when
    quantized; an unquantized layer's full-precision weights), with the token embedding
    counted apart from the linear layers. Norms (vectors, never quantized) are not
    weight matrices and are left out of both.

    `per_weight` counts the embedding (it is stored, and in a tied model it is also the
    output layer); `per_weight_linear` counts the linear layers alone. A `--target-bpw`
    budget holds both ways."""

    linear_bits: int
    linear_weights: int
    embedding_bits: int = 0
    embedding_weights: int = 0

    @property
    def per_weight(self) -> float:
        weights = self.linear_weights + self.embedding_weights
        return (self.linear_bits + self.embedding_bits) / weights if weights else 0.0

    @property
    def per_weight_linear(self) -> float:
        return self.linear_bits / self.linear_weights if self.linear_weights else 0.0

    def __add__(self, other: BitsCount) -> BitsCount:
        return BitsCount(
            self.linear_bits + other.linear_bits,
            self.linear_weights + other.linear_weights,
            self.embedding_bits + other.embedding_bits,
            self.embedding_weights + other.embedding_weights,
        )


def is_embedding(path: str) -> bool:
    """The token embedding (`model.embed_tokens`); an untied `lm_head` is a linear layer."""
    return path.rsplit(".", 1)[-1] == "embed_tokens"


def layer_bits(
    rows: int, cols: int, bits: int | None, group_size: int | None, scale_bits: int
) -> int:
    """Bits a weight matrix stores: `bits` per weight and, per group of `group_size`, a
    scale and a bias of `scale_bits` each (affine); unquantized (`bits` None) it stores
    `scale_bits` per weight, its float type's width."""
    if bits is None:
        return rows * cols * scale_bits
    return rows * cols * bits + 2 * rows * (cols // group_size) * scale_bits


def count_bits(folder: str | Path) -> BitsCount:
    """Count a model folder's weight matrices from its safetensors headers (nothing is
    loaded) and config.json's quantization: every tensor of a module whose weight is a
    matrix (weight, scales, biases, bias) at its stored size."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    quant = config.get("quantization") or config.get("quantization_config") or {}
    sizes: dict[str, int] = {}  # tensor name -> bytes
    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        header, _ = read_header(file)
        header.pop("__metadata__", None)
        for name, entry in header.items():
            start, end = entry["data_offsets"]
            sizes[name] = end - start
            shapes[name] = tuple(entry["shape"])
    count = BitsCount(0, 0)
    for name, shape in shapes.items():
        module, _, param = name.rpartition(".")
        if param != "weight" or len(shape) != 2:
            continue
        stored = sum(sizes.get(f"{module}.{p}", 0) for p in ("weight", "scales", "biases", "bias"))
        rows, cols = shape
        if f"{module}.scales" in sizes:  # packed: 32 // bits weights per uint32
            layer = quant.get(module, quant)
            bits = layer.get("bits") if isinstance(layer, dict) else None
            if not bits:
                raise ValueError(f"{folder}: {module} is quantized but config.json has no bits.")
            cols = cols * 32 // bits
        if is_embedding(module):
            count += BitsCount(0, 0, stored * 8, rows * cols)
        else:
            count += BitsCount(stored * 8, rows * cols)
    return count


def write_index(out: Path, plan: WeightPlan, shard_files: list[str]) -> None:

    weight_map = {
        spec.name: file
        for file, specs in zip(shard_files, plan.shards, strict=True)
        for spec in specs
    }
    total = sum(s.nbytes for specs in plan.shards for s in specs)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))
