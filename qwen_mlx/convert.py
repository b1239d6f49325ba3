"""Hugging Face Qwen3 checkpoint -> MLX, quantized, written atomically into the store.

The weights stream through one tensor at a time: each source tensor is read (hashing the
source file as it goes), cast, quantized with `mx.quantize` exactly as `mlx_lm.convert`
does, and appended to the output safetensors (hashing the output as it goes). Peak memory
is about one source tensor, and every byte is read and hashed once.

Everything is written into a temporary sibling of the output folder, which is renamed into
place only when complete, so Ctrl-C, an exception or a full disk leave nothing behind.

`python -m qwen_mlx.convert --help` lists the flags; each maps onto a keyword of `convert`.
"""

from __future__ import annotations

import errno
import shutil
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import hub, naming
from .checkpoint import Checkpoint, inspect_checkpoint
from .errors import InsufficientDiskError, InvalidNameError, OutputExistsError
from .fileio import sha256_file
from .manifest import (
    Manifest,
    Quantization,
    SourceInfo,
    detect_license,
    hash_files,
    now_iso,
    tool_versions,
)
from .store import Store, check_replaceable, install
from .tensorfile import TensorFileWriter, TensorSpec, read_header

Q_BITS = (2, 3, 4, 5, 6, 8)
Q_GROUP_SIZES = (32, 64, 128)
DTYPES = ("bfloat16", "float16", "float32")
RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")
MAX_SHARD_BYTES = 5 << 30  # mlx-lm's shard size
_DTYPE_CODES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
_FLOAT_CODES = {"BF16", "F16", "F32", "F64"}


@dataclass(frozen=True)
class Progress:
    """A progress event: `stage` is download, validate, convert, hash, quality or done."""

    stage: str
    done: int = 0
    total: int = 0
    detail: str = ""


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    manifest: Manifest
    registered: bool
    became_latest: bool
    seconds: float


@dataclass(frozen=True)
class _Plan:
    """What to write: output specs per shard and how each source tensor maps onto them."""

    quant: dict[str, dict[str, Any]]  # module path -> {"bits", "group_size", "mode"}
    shards: list[list[TensorSpec]]
    sources: list[tuple[str, str]]  # (file, tensor name) in processing order
    dtype: str


def default_report() -> bool:
    """The quality report costs a fraction of a second with Metal, minutes on a CPU."""
    import mlx.core as mx

    return mx.metal.is_available()


def _check_options(q_bits: int, q_group_size: int, dtype: str | None, recipe: str | None) -> None:
    if q_bits not in Q_BITS:
        raise ValueError(f"--q-bits must be one of {Q_BITS}, not {q_bits}.")
    if q_group_size not in Q_GROUP_SIZES:
        raise ValueError(f"--q-group-size must be one of {Q_GROUP_SIZES}, not {q_group_size}.")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}.")
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, not {recipe!r}.")


def output_name(
    source: hub.FetchedSource, name: str | None, quantization: Quantization
) -> naming.ModelName:
    """The store name of the converted model: the source's name plus `-mlx-<quant>`."""
    try:
        base = naming.parse(name) if name else naming.name_from_source(source.label)
    except InvalidNameError as e:
        if name:
            raise
        raise InvalidNameError(
            f"Cannot name the model after {source.label!r}: {e} "
            "Pass --name, e.g. --name qwen3-4b-instruct-2507."
        ) from e
    if base.format:
        return base
    tag = naming.quant_tag(
        bits=quantization.bits,
        group_size=quantization.group_size,
        recipe=quantization.recipe,
        dtype=quantization.dtype,
    )
    return base.with_format("mlx", tag)


def _quant_plan(config: dict[str, Any], bits: int, group_size: int, recipe: str | None):
    """Which modules get quantized, with which settings; mirrors mlx_lm's quantize_model."""
    import importlib

    from mlx_lm.convert import mixed_quant_predicate_builder

    arch = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    model = arch.Model(arch.ModelArgs.from_dict(config))  # parameters stay lazy: no memory
    predicate = mixed_quant_predicate_builder(recipe, model, group_size) if recipe else None
    plan: dict[str, dict[str, Any]] = {}
    for path, module in model.named_modules():
        if not hasattr(module, "to_quantized") or module.weight.shape[-1] % group_size:
            continue
        params = {"group_size": group_size, "bits": bits, "mode": "affine"}
        if predicate is not None:
            choice = predicate(path, module)
            if choice is False:
                continue
            if isinstance(choice, dict):
                params = choice
        plan[path] = params
    return model, plan


def _plan(ckpt: Checkpoint, quantization: Quantization) -> tuple[_Plan, Any]:
    if quantization.bits:
        model, quant = _quant_plan(
            ckpt.config, quantization.bits, quantization.group_size, quantization.recipe
        )
    else:
        import importlib

        arch = importlib.import_module(f"mlx_lm.models.{ckpt.config['model_type']}")
        model, quant = arch.Model(arch.ModelArgs.from_dict(ckpt.config)), {}
    keep = set(model.sanitize(dict.fromkeys(ckpt.tensors)))
    code = _DTYPE_CODES[quantization.dtype]
    sources: list[tuple[str, str]] = []
    specs: list[TensorSpec] = []
    for file in ckpt.weight_files:
        header, _ = read_header(ckpt.path / file)
        header.pop("__metadata__", None)
        for tensor in sorted(header, key=lambda k: header[k]["data_offsets"][0]):
            if tensor not in keep:
                continue
            sources.append((file, tensor))
            spec = ckpt.tensors[tensor]
            module, _, param = tensor.rpartition(".")
            q = quant.get(module) if param == "weight" else None
            if q is not None:
                rows, cols = spec.shape
                groups = cols // q["group_size"]
                specs += [
                    TensorSpec(tensor, "U32", (rows, cols * q["bits"] // 32)),
                    TensorSpec(f"{module}.scales", code, (rows, groups)),
                    TensorSpec(f"{module}.biases", code, (rows, groups)),
                ]
            else:
                dtype = code if spec.dtype in _FLOAT_CODES else spec.dtype
                specs.append(TensorSpec(tensor, dtype, spec.shape))
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > MAX_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return _Plan(quant, shards, sources, quantization.dtype), model


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def _check_disk(folder: Path, needed: int) -> None:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed * 1.02 + (16 << 20):
        raise InsufficientDiskError(
            f"Converting needs about {_gb(needed)} free in {probe}, but only {_gb(free)} is "
            "free. Free some space or choose another --mlx-path."
        )


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _write_weights(
    ckpt: Checkpoint,
    plan: _Plan,
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

    target = getattr(mx, plan.dtype)
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
                    if mx.issubdtype(array.dtype, mx.floating):
                        array = array.astype(target)
                    module, _, param = tensor.rpartition(".")
                    q = plan.quant.get(module) if param == "weight" else None
                    if q is not None:
                        wq, scales, biases = mx.quantize(
                            array, group_size=q["group_size"], bits=q["bits"], mode=q["mode"]
                        )
                        outputs = [
                            (tensor, wq),
                            (f"{module}.scales", scales),
                            (f"{module}.biases", biases),
                        ]
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
        except BaseException:
            for future in pending:
                future.cancel()
            for w in writers:
                w.abort()
            raise
        src_hashes = {f: future.result() for f, future in src_futures.items()}
    return out_hashes, src_hashes, names


def _write_config(ckpt: Checkpoint, plan: _Plan, out: Path) -> None:
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


def _check_output(final: Path, force: bool) -> None:
    if not final.exists():
        return
    if not force:
        raise OutputExistsError(
            f"Cannot save to {final}: it already exists. Pass --force to replace it, "
            "or choose another --mlx-path."
        )
    check_replaceable(final)


def _bits_per_weight(plan: _Plan, parameters: int) -> float:
    weight_bytes = sum(s.nbytes for shard in plan.shards for s in shard)
    return round(weight_bytes * 8 / parameters, 3)


def convert(
    hf_path: str,
    *,
    mlx_path: str | Path | None = None,
    revision: str | None = None,
    quantize: bool = True,
    q_bits: int = 4,
    q_group_size: int = 64,
    recipe: str | None = None,
    dtype: str | None = None,
    name: str | None = None,
    force: bool = False,
    report: bool = False,
    home: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> ConvertResult:
    """Convert a Hugging Face Qwen3 checkpoint (folder or repo id) to MLX.

    Args:
        mlx_path: output folder; by default the store place for the model's name.
        quantize: False writes an unquantized copy in `dtype`.
        recipe: one of mlx-lm's mixed-precision recipes (`mixed_4_6`, ...).
        name: the source's name (`qwen3-4b-instruct-2507`) when the folder name is not one.
        force: replace an existing output.
        report: run the calibration text through source and output (quality report).
        home: store root; `$QWEN_MLX_HOME` by default.
    """
    started = time.perf_counter()
    progress = progress or (lambda _p: None)
    _check_options(q_bits, q_group_size, dtype, recipe)

    store = Store(home)
    if not Path(hf_path).expanduser().exists() and (quantize or dtype or mlx_path):
        # A download can be gigabytes: refuse an existing output before fetching, when its
        # name does not depend on the checkpoint (an unquantized copy takes its dtype).
        planned = Quantization(
            dtype=dtype or "bfloat16",
            bits=q_bits if quantize else None,
            group_size=q_group_size if quantize else None,
            recipe=recipe if quantize else None,
        )
        try:
            early = output_name(hub.FetchedSource(Path(hf_path), hf_path), name, planned)
        except InvalidNameError:
            early = None  # reported with its fix once the source is known
        if mlx_path or early is not None:
            _check_output(Path(mlx_path).expanduser() if mlx_path else store.path_for(early), force)

    progress(Progress("download", detail=hf_path))
    source = hub.fetch(hf_path, revision=revision)
    progress(Progress("validate", detail=str(source.path)))
    ckpt = inspect_checkpoint(source.path)
    dtype = dtype or ckpt.config.get("torch_dtype") or "bfloat16"
    if dtype not in DTYPES:
        dtype = "bfloat16"
    quantization = Quantization(
        dtype=dtype,
        bits=q_bits if quantize else None,
        group_size=q_group_size if quantize else None,
        mode="affine" if quantize else None,
        recipe=recipe if quantize else None,
    )
    out_name = output_name(source, name, quantization)
    final = Path(mlx_path).expanduser() if mlx_path else store.path_for(out_name)
    _check_output(final, force)
    plan, _ = _plan(ckpt, quantization)
    small_files = [f for f in ckpt.all_files() if f not in ckpt.weight_files]
    needed = sum(s.nbytes for shard in plan.shards for s in shard)
    needed += sum((ckpt.path / f).stat().st_size for f in small_files)
    _check_disk(final.parent, needed)

    try:
        with store.staging(final) as tmp:
            cached = {f: hub.cached_sha256(ckpt.path / f) for f in ckpt.weight_files}
            hash_sources = not all(cached.values())
            out_hashes, src_hashes, shard_files = _write_weights(
                ckpt, plan, tmp, progress, hash_sources
            )
            if not hash_sources:
                src_hashes = {f: h for f, h in cached.items() if h}
            _write_config(ckpt, plan, tmp)
            copied = [
                f for f in small_files if f not in ("config.json", "model.safetensors.index.json")
            ]
            for f in copied:
                shutil.copyfile(ckpt.path / f, tmp / f)
            if len(shard_files) > 1:
                _write_index(tmp, plan, shard_files)
            for f in small_files:
                src_hashes[f] = sha256_file(ckpt.path / f)
            quantization = replace(
                quantization, bits_per_weight=_bits_per_weight(plan, ckpt.parameters)
            )
            quality = None
            if report:
                from .quality import check_quality, evaluate

                progress(Progress("quality"))
                quality = evaluate(ckpt.path, tmp)
                check_quality(quality)
            outputs = sorted(p.name for p in tmp.iterdir() if p.is_file())
            total = sum((tmp / f).stat().st_size for f in outputs)
            done = 0

            def tick(n: int) -> None:
                nonlocal done
                done += n
                progress(Progress("hash", done, total))

            manifest = Manifest(
                name=str(out_name),
                family=out_name.family_id,
                variant=out_name.variant,
                release=out_name.release,
                parameters=ckpt.parameters,
                context_length=int(ckpt.config.get("max_position_embeddings", 0)),
                quantization=quantization,
                source=SourceInfo(
                    repo=source.repo_id,
                    path=None if source.repo_id else str(source.path),
                    revision=source.revision,
                    files=dict(sorted(src_hashes.items())),
                ),
                files=tuple(hash_files(tmp, outputs, tick, known=out_hashes)),
                quality=quality,
                tools=tool_versions(),
                license=detect_license(ckpt.path),
                created_at=now_iso(),
            )
            manifest.write(tmp)
            install(tmp, final, replace=force)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise InsufficientDiskError(
                f"The disk filled up while writing {final}; nothing was left behind. "
                "Free some space and run the conversion again."
            ) from e
        raise
    registered = became_latest = False
    if mlx_path is None:
        became_latest = store.register(final, manifest, event="converted")
        registered = True
    store.close()
    progress(Progress("done", detail=str(final)))
    return ConvertResult(final, manifest, registered, became_latest, time.perf_counter() - started)


def _write_index(out: Path, plan: _Plan, shard_files: list[str]) -> None:
    import json

    weight_map = {
        spec.name: file
        for file, specs in zip(shard_files, plan.shards, strict=True)
        for spec in specs
    }
    total = sum(s.nbytes for specs in plan.shards for s in specs)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))


if __name__ == "__main__":
    from .commands.convert import main

    raise SystemExit(main())
