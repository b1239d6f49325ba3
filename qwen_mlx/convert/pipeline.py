"""The conversion: Hugging Face Qwen3 checkpoint -> MLX, quantized, written atomically
into the store. `convert` runs it as steps, one function each: check the request, fetch
the checkpoint, inspect it, plan the weights, name the output, stage a folder, write the
weights, run the quality report, write the manifest (installing the folder), register it.

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

Other formats than affine (`q_mode`: mxfp4, nvfp4, mxfp8) stream the same way. A learned
method (`method`: awq, gptq, dwq, dynamic; see `quant.py`) needs the whole model in memory
and a calibration text; it runs mlx-lm's implementation inside the same staging folder,
after a check that it fits the memory budget the caller passes (the CLI passes the memory
planner's).

Everything is written into a temporary sibling of the output folder, which is renamed into
place only when complete, so Ctrl-C, an exception or a full disk leave nothing behind.

`python -m qwen_mlx.convert --help` lists the flags; each maps onto a keyword of `convert`.
"""

from __future__ import annotations

import errno
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InsufficientDiskError, InsufficientMemoryError, OutputExistsError
from ..fileio import human_bytes, sha256_file
from ..store import Store, check_replaceable, hub, install, naming
from ..store.manifest import (
    Manifest,
    QualityReport,
    Quantization,
    SourceInfo,
    hash_files,
)
from .checkpoint import Checkpoint, inspect_checkpoint
from .names import check_name_free, known_name, output_name
from .progress import Progress, ProgressFn
from .quant import (
    CalibrationText,
    QuantOptions,
    method_memory,
    read_calibration,
    resolve_options,
    write_learned,
)
from .weights import (
    WeightPlan,
    count_bits,
    differing_layers,
    plan_weights,
    write_config,
    write_index,
    write_weights,
)

if TYPE_CHECKING:
    from ..store.hub import FetchedSource
    from .quality import HeldOut

Q_BITS = (2, 3, 4, 5, 6, 8)
Q_GROUP_SIZES = (16, 32, 64, 128)  # which ones a mode takes: quant.MODES
DTYPES = ("bfloat16", "float16", "float32")
RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")


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


def default_report() -> bool:
    """The quality report costs a fraction of a second with Metal, minutes on a CPU."""
    import mlx.core as mx

    return mx.metal.is_available()


def quantized_prefill_is_slow() -> bool:
    """True without Metal (Linux): MLX's CPU backend reads prompts through a quantized
    model about 30x slower than through a bf16 one (mlx-lm's own path is as slow)."""
    import mlx.core as mx

    return not mx.metal.is_available()


def _check_options(
    q_bits: int | None, q_group_size: int | None, dtype: str | None, recipe: str | None
) -> None:
    if q_bits is not None and q_bits not in Q_BITS:
        raise ValueError(f"--q-bits must be one of {Q_BITS}, not {q_bits}.")
    if q_group_size is not None and q_group_size not in Q_GROUP_SIZES:
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


def _check_disk(folder: Path, needed: int) -> None:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed * 1.02 + (16 << 20):
        raise InsufficientDiskError(
            f"Converting needs about {human_bytes(needed)} free in {probe}, but only "
            f"{human_bytes(free)} is "
            "free. Free some space or choose another --mlx-path."
        )


def _check_output(final: Path, force: bool) -> None:
    if not final.exists():
        return
    if not force:
        raise OutputExistsError(
            f"Cannot save to {final}: it already exists. Pass --force to replace it, "
            "or choose another --mlx-path."
        )
    check_replaceable(final)


@dataclass(frozen=True)
class ConvertRequest:
    """What a conversion was asked for: `convert`'s keyword arguments (see there), as
    one value the steps read."""

    hf_path: str
    mlx_path: str | Path | None = None
    revision: str | None = None
    quantize: bool = True
    q_bits: int | None = None
    q_group_size: int | None = None
    q_mode: str = "affine"
    method: str | None = None
    target_bpw: float | None = None
    calibration: str | Path | None = None
    heldout: str | Path | Sequence[str | Path] | None = None
    memory_budget: int | None = None
    recipe: str | None = None
    dtype: str | None = None
    name: str | None = None
    force: bool = False
    set_latest: bool | None = None
    report: bool = False
    home: str | Path | None = None

    @property
    def out_dir(self) -> Path | None:
        """The output folder the caller chose; None: the store's place for the name."""
        return Path(self.mlx_path).expanduser() if self.mlx_path else None

    @property
    def is_local(self) -> bool:
        """Whether the source is a folder here (nothing to download)."""
        return Path(self.hf_path).expanduser().exists()


def convert(
    hf_path: str,
    *,
    mlx_path: str | Path | None = None,
    revision: str | None = None,
    quantize: bool = True,
    q_bits: int | None = None,
    q_group_size: int | None = None,
    q_mode: str = "affine",
    method: str | None = None,
    target_bpw: float | None = None,
    calibration: str | Path | None = None,
    heldout: str | Path | Sequence[str | Path] | None = None,
    memory_budget: int | None = None,
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
        q_bits, q_group_size: by default the mode's (4 and 64 for affine, 4 and 32 for
            mxfp4, 4 and 16 for nvfp4, 8 and 32 for mxfp8).
        q_mode: mlx's quantization mode, one of `quant.Q_MODES`.
        method: a learned method, one of `quant.METHODS` (affine only); None rounds to
            nearest, streaming.
        target_bpw: bits per weight `method="dynamic"` aims at.
        calibration: a text or JSONL file the method calibrates on (default: the
            packaged calibration text).
        heldout: the text of the quality report, or several texts (one report each;
            default: the packaged held-out text); none may be the calibration text.
        memory_budget: bytes a method may take (refused before loading when it would
            not fit); None does not check.
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
    request = ConvertRequest(
        hf_path,
        mlx_path=mlx_path,
        revision=revision,
        quantize=quantize,
        q_bits=q_bits,
        q_group_size=q_group_size,
        q_mode=q_mode,
        method=method,
        target_bpw=target_bpw,
        calibration=calibration,
        heldout=heldout,
        memory_budget=memory_budget,
        recipe=recipe,
        dtype=dtype,
        name=name,
        force=force,
        set_latest=set_latest,
        report=report,
        home=home,
    )
    return run_conversion(request, progress or (lambda _p: None))


def run_conversion(request: ConvertRequest, progress: ProgressFn) -> ConvertResult:
    """The steps of `convert`, in order. What can be refused is refused before the
    download (an output whose name is known already) and before the write (a name that
    is taken, a disk too small); the write happens in a staging folder that becomes the
    output only once the manifest is in it."""
    started = time.perf_counter()
    inputs = _check(request)
    store = Store(request.home)
    _refuse_known_output(request, inputs.options, store)
    source = _fetch(request, progress)
    ckpt = _inspect(source, progress)
    planned = _plan(request, inputs.options, ckpt)
    target = _name(request, store, source, ckpt, planned, progress)
    with _stage(store, target) as tmp:
        written = _write(request, inputs, ckpt, planned, tmp, progress)
        quality = _quality(request, inputs, ckpt, tmp, progress)
        manifest = _manifest(target, source, ckpt, written, quality, tmp, progress)
        install(tmp, target.path, replace=request.force)
    registered = _register(request, store, target, manifest)
    store.close()
    progress(Progress("done", detail=str(target.path)))
    return ConvertResult(
        path=target.path,
        manifest=manifest,
        registered=registered.registered,
        became_latest=registered.became_latest,
        seconds=time.perf_counter() - started,
        name_note=target.note,
        warnings=tuple(written.warnings),
        latest=registered.latest,
        kept_because=registered.kept_because,
        frozen=registered.frozen,
    )


# -- check --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Inputs:
    """The request's options checked, and the texts it names read, before any work."""

    options: QuantOptions
    calibration: CalibrationText | None  # with a learned method
    heldouts: list[HeldOut]  # with the quality report: one report each


def _check(request: ConvertRequest) -> _Inputs:
    _check_options(request.q_bits, request.q_group_size, request.dtype, request.recipe)
    opts = resolve_options(
        mode=request.q_mode,
        bits=request.q_bits,
        group_size=request.q_group_size,
        method=request.method,
        target_bpw=request.target_bpw,
        recipe=request.recipe,
        calibration=request.calibration,
    )
    calibration_text = read_calibration(request.calibration) if request.method else None
    heldout_texts: list[HeldOut] = []
    if request.report or request.heldout:
        from .quality import read_heldouts

        heldout_texts = read_heldouts(request.heldout)
        for held in heldout_texts:
            if calibration_text is not None and held.sha256 == calibration_text.sha256:
                raise ValueError(
                    f"The held-out text {held.source} is the calibration text; pass another "
                    "--heldout file, so the report measures what calibration did not see."
                )
    return _Inputs(opts, calibration_text, heldout_texts)


def _refuse_known_output(request: ConvertRequest, opts: QuantOptions, store: Store) -> None:
    """A download can be gigabytes: refuse an existing output before fetching, when its
    name does not depend on the checkpoint (an unquantized copy takes its dtype)."""
    if request.is_local or not (request.quantize or request.dtype or request.mlx_path):
        return
    quantize = request.quantize
    planned = Quantization(
        dtype=request.dtype or "bfloat16",
        bits=opts.bits if quantize else None,
        group_size=opts.group_size if quantize else None,
        mode=opts.mode if quantize else None,
        recipe=request.recipe if quantize else None,
        method=request.method if quantize else None,
        target_bpw=opts.target_bpw if quantize else None,
    )
    out_dir = request.out_dir
    early = None if out_dir else known_name(request.hf_path, request.name, planned)
    if early is not None:
        check_name_free(store, early, repo=request.hf_path, path=None, force=request.force)
    if out_dir or early is not None:
        _check_output(out_dir or store.path_for(early), request.force)


# -- fetch, inspect, plan -----------------------------------------------------------------


def _fetch(request: ConvertRequest, progress: ProgressFn) -> FetchedSource:
    if not request.is_local:  # a local folder has nothing to download
        at = f" at {request.revision}" if request.revision else ""
        progress(Progress("download", detail=request.hf_path + at))
    return hub.fetch(request.hf_path, revision=request.revision)


def _inspect(source: FetchedSource, progress: ProgressFn) -> Checkpoint:
    progress(Progress("validate", detail=str(source.path)))
    return inspect_checkpoint(source.path)


@dataclass
class _ConversionPlan:
    """What will be written: the weights' plan, the quantization the manifest records,
    and what to know about it."""

    weights: WeightPlan
    quantization: Quantization
    warnings: list[str]


def _plan(request: ConvertRequest, opts: QuantOptions, ckpt: Checkpoint) -> _ConversionPlan:
    method = request.method
    plan, quantization, warnings = plan_weights(
        ckpt,
        bits=opts.bits if request.quantize else None,
        group_size=opts.group_size,
        recipe=request.recipe,
        dtype=target_dtype(request.dtype, ckpt.config),
        mode=opts.mode,
    )
    if method and not request.quantize:
        raise ValueError(f"--method {method} quantizes; drop --no-quantize or --method.")
    if method and not plan.quant:
        raise ValueError(
            f"No layer of this model can be quantized, so --method {method} has nothing to do."
        )
    if method:
        quantization = replace(quantization, method=method, target_bpw=opts.target_bpw)
        float_bytes = 2 * ckpt.parameters
        needed_memory = method_memory(method, float_bytes)
        budget = request.memory_budget
        if budget is not None and needed_memory > budget:
            raise InsufficientMemoryError(
                f"--method {method} holds the whole model while it calibrates, about "
                f"{human_bytes(needed_memory)}, but the memory budget is "
                f"{human_bytes(budget)}. Use round-to-nearest (no --method) or a "
                "machine with more memory."
            )
    return _ConversionPlan(plan, quantization, warnings)


# -- name, stage --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """Where the conversion goes: its name, how the name was chosen, its folder."""

    name: naming.ModelName
    note: str
    path: Path


def _name(
    request: ConvertRequest,
    store: Store,
    source: FetchedSource,
    ckpt: Checkpoint,
    planned: _ConversionPlan,
    progress: ProgressFn,
) -> _Target:
    """The output's name and folder, refused if taken or if the disk cannot hold it."""
    out_name, name_note = output_name(source, request.name, planned.quantization, ckpt)
    progress(Progress("name", detail=f"{out_name} ({name_note})" if name_note else str(out_name)))
    for warning in planned.warnings:
        progress(Progress("warning", detail=warning))
    final = request.out_dir or store.path_for(out_name)
    if request.out_dir is None:
        source_path = None if source.repo_id else str(source.path)
        check_name_free(store, out_name, repo=source.repo_id, path=source_path, force=request.force)
    _check_output(final, request.force)
    needed = sum(s.nbytes for shard in planned.weights.shards for s in shard)
    needed += sum((ckpt.path / f).stat().st_size for f in _small_files(ckpt))
    _check_disk(final.parent, needed)
    return _Target(out_name, name_note, final)


def _small_files(ckpt: Checkpoint) -> list[str]:
    """The checkpoint's files other than the weights (config, tokenizer, ...)."""
    return [f for f in ckpt.all_files() if f not in ckpt.weight_files]


@contextmanager
def _stage(store: Store, target: _Target) -> Iterator[Path]:
    """The staging folder, a temporary sibling of the output: deleted unless installed
    (see `Store.staging`), and a disk that fills up while writing it said as such."""
    try:
        with store.staging(target.path) as tmp:
            yield tmp
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise InsufficientDiskError(
                f"The disk filled up while writing {target.path}; nothing was left behind. "
                "Free some space and run the conversion again."
            ) from e
        raise


# -- write, quality, manifest -------------------------------------------------------------


@dataclass
class _Written:
    """What the write produced: sha256 of the output files it hashed while writing and
    of every source file, the quantization as written, and the warnings."""

    hashes: dict[str, str]
    sources: dict[str, str]
    quantization: Quantization
    warnings: list[str]


def _write(
    request: ConvertRequest,
    inputs: _Inputs,
    ckpt: Checkpoint,
    planned: _ConversionPlan,
    tmp: Path,
    progress: ProgressFn,
) -> _Written:
    """The weights and config (streamed, or by a learned method), the small files, the
    index of a sharded output, and the source files' hashes."""
    plan, quantization, warnings = planned.weights, planned.quantization, planned.warnings
    cached = {f: hub.cached_sha256(ckpt.path / f) for f in ckpt.weight_files}
    hash_sources = not all(cached.values())
    if request.method:
        assert inputs.calibration is not None
        learned = write_learned(
            ckpt, inputs.options, inputs.calibration, plan.dtype, tmp, progress, hash_sources
        )
        out_hashes, src_hashes, shard_files = learned.hashes, learned.sources, []
        warnings = [*warnings, *learned.warnings]
        quantization = replace(
            quantization,
            layers=learned.layers or None,
            calibration=learned.calibration,
        )
    else:
        out_hashes, src_hashes, shard_files = write_weights(ckpt, plan, tmp, progress, hash_sources)
        write_config(ckpt, plan, tmp)
        quantization = replace(quantization, layers=differing_layers(plan) or None)
    bits = count_bits(tmp)  # every byte each matrix stores, with and without the embedding
    quantization = replace(
        quantization,
        bits_per_weight=round(bits.per_weight, 3),
        bits_per_weight_linear=round(bits.per_weight_linear, 3),
    )
    if not hash_sources:
        src_hashes = {f: h for f, h in cached.items() if h}
    small_files = _small_files(ckpt)
    copied = [f for f in small_files if f not in ("config.json", "model.safetensors.index.json")]
    for f in copied:
        shutil.copyfile(ckpt.path / f, tmp / f)
    if len(shard_files) > 1:
        write_index(tmp, plan, shard_files)
    for f in small_files:
        src_hashes[f] = sha256_file(ckpt.path / f)
    return _Written(out_hashes, src_hashes, quantization, warnings)


def _quality(
    request: ConvertRequest, inputs: _Inputs, ckpt: Checkpoint, tmp: Path, progress: ProgressFn
) -> list[QualityReport]:
    """Each held-out text through the source and the output, one report each; numbers that
    say the weights are broken fail the conversion (`check_quality`)."""
    if not request.report:
        return []
    from .quality import check_quality, evaluate_texts

    texts = "the held-out text" if len(inputs.heldouts) == 1 else "the held-out texts"
    progress(Progress("quality", detail=f"{texts}, through both models"))
    reports = evaluate_texts(ckpt.path, tmp, inputs.heldouts)
    for each in reports:
        check_quality(each)
    return reports


def _manifest(
    target: _Target,
    source: FetchedSource,
    ckpt: Checkpoint,
    written: _Written,
    quality: list[QualityReport],
    tmp: Path,
    progress: ProgressFn,
) -> Manifest:
    """manifest.json in the staging folder: every output file with its sha256 (hashing
    those the write did not), the source and its hashes, the quality report."""
    outputs = sorted(p.name for p in tmp.iterdir() if p.is_file())
    total = sum((tmp / f).stat().st_size for f in outputs)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        progress(Progress("hash", done, total))

    manifest = Manifest.new(
        target.name,
        parameters=ckpt.parameters,
        config=ckpt.config,
        quantization=written.quantization,
        source=SourceInfo(
            repo=source.repo_id,
            path=None if source.repo_id else str(source.path),
            revision=source.revision,
            files=dict(sorted(written.sources.items())),
        ),
        files=hash_files(tmp, outputs, tick, known=written.hashes),
        quality=quality[0] if quality else None,
        quality_others=quality[1:],
        license_from=ckpt.path,
    )
    manifest.write(tmp)
    return manifest


# -- register -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Registered:
    """What registering did: nothing for an output outside the store."""

    registered: bool = False
    became_latest: bool = False
    latest: str | None = None  # the family's latest afterwards
    kept_because: str | None = None  # why it did not become latest
    frozen: bool = False  # its family is pinned or frozen


def _register(
    request: ConvertRequest, store: Store, target: _Target, manifest: Manifest
) -> _Registered:
    if request.out_dir is not None:
        return _Registered()
    became_latest = store.register(
        target.path, manifest, event="converted", set_latest=request.set_latest
    )
    latest, kept_because, frozen = _latest_after(store, target.name, became_latest)
    return _Registered(True, became_latest, latest, kept_because, frozen)


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
