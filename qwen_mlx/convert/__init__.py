"""Hugging Face Qwen3 checkpoint -> MLX, quantized, written atomically into the store.

The weights stream through one tensor at a time: each source tensor is read (hashing the
source file as it goes), cast, quantized with `mx.quantize` exactly as `mlx_lm.convert`
does, and appended to the output safetensors (hashing the output as it goes). Peak memory
is about one source tensor, and every byte is read and hashed once.

Float types follow `mlx_lm.convert`: `dtype`, else the config's `torch_dtype`, casts every
float tensor; otherwise (transformers 5 writes `dtype`, which mlx-lm ignores) each tensor
keeps its own type, and quantization scales and biases take their weight's type.

A layer whose input size the group size does not divide cannot be quantized. mlx-lm leaves
such layers unquantized and says nothing; we quantize the whole model with the largest
group size of (requested, 64, 32) that divides every layer that can be quantized, leave
the rest unquantized, say so in a warning, and name the output after what was written.

Everything is written into a temporary sibling of the output folder, which is renamed into
place only when complete, so Ctrl-C, an exception or a full disk leave nothing behind.

`python -m qwen_mlx.convert --help` lists the flags; each maps onto a keyword of `convert`.
"""

from __future__ import annotations

import errno
import re
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import DamagedModelError, InsufficientDiskError, OutputExistsError
from ..fileio import sha256_file
from ..store import Store, check_replaceable, hub, install, naming
from ..store.manifest import (
    Manifest,
    Quantization,
    SourceInfo,
    detect_license,
    hash_files,
    now_iso,
    read_manifest,
    tool_versions,
)
from .checkpoint import Checkpoint, inspect_checkpoint
from .tensorfile import TensorFileWriter, TensorSpec, read_header

Q_BITS = (2, 3, 4, 5, 6, 8)
Q_GROUP_SIZES = (32, 64, 128)
DTYPES = ("bfloat16", "float16", "float32")
RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")
MAX_SHARD_BYTES = 5 << 30  # mlx-lm's shard size
_DTYPE_CODES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
_DTYPE_NAMES = {code: name for name, code in _DTYPE_CODES.items()}
_FLOAT_CODES = {"BF16", "F16", "F32", "F64"}
FALLBACK_GROUP_SIZES = (64, 32)  # tried, below the requested one, for layers it does not fit


@dataclass(frozen=True)
class Progress:
    """A progress event: `stage` is download, validate, convert, hash, quality or done;
    `name` (detail: the name chosen and how) and `warning` (detail: what to know) are
    one-off notices."""

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
    name_note: str = ""  # how the name was chosen when it was derived or made to fit
    warnings: tuple[str, ...] = ()
    latest: str | None = None  # the family's latest afterwards, when registered
    kept_because: str | None = None  # why it did not become latest
    frozen: bool = False  # its family is pinned or frozen


@dataclass(frozen=True)
class _Plan:
    """What to write: output specs per shard and how each source tensor maps onto them."""

    quant: dict[str, dict[str, Any]]  # module path -> {"bits", "group_size", "mode"}
    shards: list[list[TensorSpec]]
    sources: list[tuple[str, str]]  # (file, tensor name) in processing order
    dtype: str | None  # what every float tensor is cast to; None keeps each one's own


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


def target_dtype(dtype: str | None, config: dict[str, Any]) -> str | None:
    """What every float tensor is cast to, decided as `mlx_lm.convert` decides: `dtype`,
    else the config's `torch_dtype` (or its text_config's `dtype`); None keeps each
    tensor's own type (a transformers 5 config says `dtype`, which mlx-lm ignores)."""
    chosen = dtype or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    return chosen if chosen in DTYPES else None


def fallback_release(source: hub.FetchedSource, ckpt: Checkpoint) -> tuple[str, str]:
    """The release for a source whose name has none, and what it is: the source's commit
    (short), or the date its weights were written, so converting the same folder again
    finds the same name."""
    if source.revision and re.fullmatch(r"[0-9a-f]{40}", source.revision):
        short = next(
            (source.revision[:n] for n in range(7, 41) if re.search("[0-9]", source.revision[:n])),
            None,
        )
        if short:
            return short, "the source's commit"
    stamp = max((ckpt.path / f).stat().st_mtime for f in ckpt.weight_files)
    return datetime.fromtimestamp(stamp).strftime("%Y%m%d"), "the date its weights were written"


def _with_quant(base: naming.ModelName, quantization: Quantization) -> naming.ModelName:
    if base.format:
        return base
    tag = naming.quant_tag(
        bits=quantization.bits,
        group_size=quantization.group_size,
        recipe=quantization.recipe,
        dtype=quantization.dtype,
    )
    return base.with_format("mlx", tag)


def output_name(
    source: hub.FetchedSource, name: str | None, quantization: Quantization, ckpt: Checkpoint
) -> tuple[naming.ModelName, str]:
    """The store name of the converted model (the source's name plus `-mlx-<quant>`) and a
    sentence saying how it was chosen ("" when the name or the source's name was one)."""
    release, release_from = fallback_release(source, ckpt)
    base, note = naming.name_for(
        name,
        source.label,
        family=ckpt.model_type,
        parameters=ckpt.parameters,
        release=release,
        release_from=release_from,
        hint=ckpt.config.get("_name_or_path"),
    )
    return _with_quant(base, quantization), note


def _known_name(hf_path: str, name: str | None, quantization: Quantization):
    """The output's name when it is known before the checkpoint is (a name or repo name
    that follows the convention), else None."""
    text = name or hf_path.rstrip("/").rsplit("/", 1)[-1]
    return _with_quant(naming.parse(text), quantization) if naming.is_name(text) else None


def _same_source(info: SourceInfo, repo: str | None, path: str | None) -> bool:
    if info.repo or repo:
        return info.repo == repo
    return info.path is None or path is None or Path(info.path) == Path(path)


def check_name_free(
    store: Store,
    name: naming.ModelName,
    *,
    repo: str | None,
    path: str | None,
    force: bool,
) -> None:
    """Refuse to put a model into the store under a name that a model from another
    source holds, naming both and suggesting a name that is free. The same source again
    is `_check_output`'s "already exists"."""
    final = store.path_for(name)
    if force or not final.is_dir():
        return
    try:
        existing = read_manifest(final)
    except DamagedModelError:
        return  # its source is unknown; _check_output refuses it as an existing output
    if existing is None or _same_source(existing.source, repo, path):
        return
    word = repo.split("/")[0] if repo else "local"
    free = naming.distinct(
        naming.ModelName(name.family, name.size, name.variant, name.release),
        word,
        lambda n: store.path_for(n.with_format(name.format, name.quant, name.revision)).exists(),
    )
    theirs = existing.source.repo or existing.source.path
    raise OutputExistsError(
        f"{name} is already in the store, from {theirs}; {repo or path} would get the same "
        f"name. Pass --name {free} to keep both, or --force to replace it."
    )


def _layer_list(paths: list[str]) -> str:
    """`model.layers.*.mlp.up_proj` for the same module in every layer."""
    shown = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", p) for p in paths))
    return ", ".join(shown[:6]) + (f" and {len(shown) - 6} more" if len(shown) > 6 else "")


def _quant_plan(
    model: Any, bits: int, group_size: int, recipe: str | None
) -> tuple[dict[str, dict[str, Any]], int, list[str]]:
    """Which modules get quantized, with which settings, as mlx_lm's quantize_model
    decides, except for layers `group_size` does not fit (see the module docstring).
    Returns the plan, the group size used and warnings."""
    from mlx_lm.convert import mixed_quant_predicate_builder

    sizes = {
        path: module.weight.shape[-1]
        for path, module in model.named_modules()
        if hasattr(module, "to_quantized")
    }
    groups = [group_size, *(g for g in FALLBACK_GROUP_SIZES if g < group_size)]
    fits = {p: n for p, n in sizes.items() if any(n % g == 0 for g in groups)}
    # Every candidate is a multiple of the last one, so some candidate divides them all.
    group = next(g for g in groups if all(n % g == 0 for n in fits.values()))
    predicate = mixed_quant_predicate_builder(recipe, model, group) if recipe else None
    plan: dict[str, dict[str, Any]] = {}
    for path, module in model.named_modules():
        if path not in fits:
            continue
        params = {"group_size": group, "bits": bits, "mode": "affine"}
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


def _plan(
    ckpt: Checkpoint,
    *,
    bits: int | None,
    group_size: int,
    recipe: str | None,
    dtype: str | None,
) -> tuple[_Plan, Quantization, list[str]]:
    """What to write, the quantization it amounts to, and warnings. `bits` None writes
    an unquantized copy; `dtype` None keeps each tensor's float type."""
    import importlib

    arch = importlib.import_module(f"mlx_lm.models.{ckpt.model_type}")
    model = arch.Model(arch.ModelArgs.from_dict(ckpt.config))  # parameters stay lazy: no memory
    quant: dict[str, dict[str, Any]] = {}
    group, warnings = group_size, []
    if bits:
        quant, group, warnings = _quant_plan(model, bits, group_size, recipe)
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
                specs += [
                    TensorSpec(tensor, "U32", (rows, cols * q["bits"] // 32)),
                    TensorSpec(f"{module}.scales", code, (rows, groups)),
                    TensorSpec(f"{module}.biases", code, (rows, groups)),
                ]
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
        mode="affine" if quant else None,
        recipe=recipe if quant else None,
    )
    return _Plan(quant, shards, sources, dtype), quantization, warnings


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


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
    set_latest: bool | None = None,
    report: bool = False,
    home: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> ConvertResult:
    """Convert a Hugging Face Qwen3 checkpoint (folder or repo id) to MLX.

    Args:
        mlx_path: output folder; by default the store place for the model's name.
        quantize: False writes an unquantized copy.
        recipe: one of mlx-lm's mixed-precision recipes (`mixed_4_6`, ...).
        dtype: the float type of every unquantized tensor and of the scales; by default
            the config's `torch_dtype`, else each tensor's own, as mlx-lm decides.
        name: the source's name (`qwen3-4b-instruct-2507`); by default the folder or repo
            name, or one made from the checkpoint (its config, parameter count, folder
            name, commit or date; see `naming.name_for`). A name that does not fit the
            convention is made to fit; `ConvertResult.name_note` says how.
        force: replace an existing output.
        set_latest: True makes the conversion its family's latest, False never; None
            (the default) when that is what a user expects (`naming.why_not_latest`).
        report: run the calibration text through source and output (quality report).
        home: store root; `$QWEN_MLX_HOME` by default.
    """
    started = time.perf_counter()
    progress = progress or (lambda _p: None)
    _check_options(q_bits, q_group_size, dtype, recipe)

    store = Store(home)
    out_dir = Path(mlx_path).expanduser() if mlx_path else None
    if not Path(hf_path).expanduser().exists() and (quantize or dtype or mlx_path):
        # A download can be gigabytes: refuse an existing output before fetching, when its
        # name does not depend on the checkpoint (an unquantized copy takes its dtype).
        planned = Quantization(
            dtype=dtype or "bfloat16",
            bits=q_bits if quantize else None,
            group_size=q_group_size if quantize else None,
            recipe=recipe if quantize else None,
        )
        early = None if out_dir else _known_name(hf_path, name, planned)
        if early is not None:
            check_name_free(store, early, repo=hf_path, path=None, force=force)
        if out_dir or early is not None:
            _check_output(out_dir or store.path_for(early), force)

    progress(Progress("download", detail=hf_path))
    source = hub.fetch(hf_path, revision=revision)
    progress(Progress("validate", detail=str(source.path)))
    ckpt = inspect_checkpoint(source.path)
    plan, quantization, warnings = _plan(
        ckpt,
        bits=q_bits if quantize else None,
        group_size=q_group_size,
        recipe=recipe,
        dtype=target_dtype(dtype, ckpt.config),
    )
    out_name, name_note = output_name(source, name, quantization, ckpt)
    progress(Progress("name", detail=f"{out_name} ({name_note})" if name_note else str(out_name)))
    for warning in warnings:
        progress(Progress("warning", detail=warning))
    final = out_dir or store.path_for(out_name)
    if out_dir is None:
        source_path = None if source.repo_id else str(source.path)
        check_name_free(store, out_name, repo=source.repo_id, path=source_path, force=force)
    _check_output(final, force)
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
    registered = became_latest = frozen = False
    latest = kept_because = None
    if out_dir is None:
        became_latest = store.register(final, manifest, event="converted", set_latest=set_latest)
        registered = True
        latest, kept_because, frozen = _latest_after(store, out_name, became_latest)
    store.close()
    progress(Progress("done", detail=str(final)))
    return ConvertResult(
        final,
        manifest,
        registered,
        became_latest,
        time.perf_counter() - started,
        name_note=name_note,
        warnings=tuple(warnings),
        latest=latest,
        kept_because=kept_because,
        frozen=frozen,
    )


def _latest_after(
    store: Store, name: naming.ModelName, became_latest: bool
) -> tuple[str | None, str | None, bool]:
    """The family's latest after registering `name`, why `name` is not it, and whether
    the family is pinned or frozen."""
    current = store.latest(name.family_id)
    latest = str(current) if current else None
    if became_latest:
        return latest, None, False
    policy, pinned = store.registry.family(name.family_id)
    if pinned or policy == "frozen":
        return latest, f"{name.family_id} is pinned or frozen", True
    return latest, naming.why_not_latest(name, current) or "set_latest was False", False


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
