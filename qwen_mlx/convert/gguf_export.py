"""Export a stored Qwen3 model to GGUF, llama.cpp's file format (what Ollama and LM Studio
load), with the `gguf` package (llama.cpp's own gguf-py) writing the file.

The file is laid out as llama.cpp's `convert_hf_to_gguf.py` lays out a Qwen3: architecture
`qwen3`, its hyperparameters under `qwen3.*`, tensors named by gguf-py's own name map
(`blk.N.attn_q`, `token_embd`, ...), norms in F32, the byte-level BPE tokenizer
(`gpt2` model, `qwen2` pre-tokenizer, tokens with their types, merges, special ids),
the chat template, and the generation defaults (`general.sampling.*`).

The weights come from the best source there is: the original Hugging Face files when the
manifest's source is still on disk (the HF cache, or the folder it was converted from)
with the same sha256, else the MLX weights themselves, dequantized. Quantization is gguf-py's
(f16, bf16, q8_0, q4_0); q4_k_m needs a k-quant quantizer, which gguf-py does not have, so
it is made by llama.cpp's own `llama_model_quantize` from an f16 export when llama-cpp-python
is installed (the `interop` extra).

q4_0 keeps the output projection (the embedding, when tied) in Q8_0: llama.cpp's own
quantizer keeps it in Q6_K for the same reason (it is the layer most sensitive to
rounding), and gguf-py cannot write Q6_K.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OutputExistsError, UnsupportedModelError
from ..fileio import sha256_file
from ..store import Store, naming
from ..store.manifest import Manifest, Quantization, SourceInfo, hash_files
from .progress import Progress, ProgressFn

if TYPE_CHECKING:
    import numpy as np

GGUF_QUANTS = ("f16", "bf16", "q8_0", "q4_0", "q4_k_m")
ARCH = "qwen3"
# Qwen2/Qwen3's pre-tokenizer split, which llama.cpp calls "qwen2"; a plain GPT-2 byte-level
# split is "gpt-2" (the one that a tokenizer trained with `ByteLevel(use_regex=True)` has).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# What each export writes, and whether gguf-py can quantize it.
_FILE_TYPES = {"f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}
_FILE_TYPES |= {"q4_0": "MOSTLY_Q4_0", "q4_k_m": "MOSTLY_Q4_K_M"}
_BITS = {"f16": None, "bf16": None, "q8_0": 8, "q4_0": 4, "q4_k_m": 4}


@dataclass(frozen=True)
class WeightSource:
    """Where the exported weights are read from, and a phrase saying so."""

    path: Path
    original: bool  # the Hugging Face files, not the MLX copy
    description: str


@dataclass(frozen=True)
class GGUFExport:
    """What `export_gguf` wrote."""

    name: naming.ModelName
    folder: Path  # the store version (or the --output folder)
    file: Path  # the .gguf
    source: WeightSource
    manifest: Manifest | None  # None for --output
    reused: bool = False  # the version was already in the store and was kept


def gguf_name(name: naming.ModelName, quant: str) -> naming.ModelName:
    """`qwen3-4b-instruct-2507-mlx-q4-g64` -> `qwen3-4b-instruct-2507-gguf-q4_0`."""
    return name.with_format("gguf", quant, name.revision)


def gguf_file_name(name: naming.ModelName) -> str:
    return f"{str(name).split('@')[0]}.gguf"


def is_gguf_file_path(path: Path) -> bool:
    """Whether an --output path names the .gguf file itself rather than a folder: it ends
    in `.gguf` and is not a folder already."""
    return path.suffix.lower() == ".gguf" and not path.is_dir()


def check_quant(quant: str) -> None:
    if quant not in GGUF_QUANTS:
        raise ValueError(f"--quant must be one of {', '.join(GGUF_QUANTS)}, not {quant!r}.")


# -- the source -----------------------------------------------------------------------------


def best_source(folder: Path, manifest: Manifest | None) -> WeightSource:
    """The original Hugging Face files when the manifest's source is still on disk with the
    sha256 it recorded (the HF cache, or the local folder converted from), else `folder`."""
    if manifest is not None and manifest.source.files:
        for candidate in _original_candidates(manifest.source):
            if _matches(candidate, manifest.source.files):
                where = manifest.source.repo or str(candidate)
                return WeightSource(candidate, True, f"the original Hugging Face files ({where})")
    quantized = bool(_read_json(folder / "config.json").get("quantization"))
    what = "the MLX weights, dequantized" if quantized else "the MLX weights"
    reason = " (the original files are not on this machine)" if manifest is not None else ""
    return WeightSource(folder, False, what + reason)


def _original_candidates(source: SourceInfo) -> Iterator[Path]:
    if source.repo and source.revision:
        try:
            from huggingface_hub import snapshot_download

            yield Path(
                snapshot_download(source.repo, revision=source.revision, local_files_only=True)
            )
        except Exception:  # not in the cache (or no cache at all): try the next one
            pass
    if source.path and Path(source.path).is_dir():
        yield Path(source.path)


def _matches(folder: Path, files: dict[str, str]) -> bool:
    """Whether every weight file the manifest recorded is in `folder` with its sha256 (the
    HF cache names weight blobs by their sha256, so those cost nothing to check)."""
    from ..store import hub

    weights = {f: h for f, h in files.items() if f.endswith(".safetensors")}
    if not weights or not (folder / "config.json").is_file():
        return False
    for name, digest in weights.items():
        file = folder / name
        if not file.is_file():
            return False
        if (hub.cached_sha256(file) or sha256_file(file)) != digest:
            return False
    return True


def _read_json(file: Path) -> dict[str, Any]:
    return json.loads(file.read_text()) if file.is_file() else {}


# -- tensors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tensor:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]  # logical (rows, cols), as the model uses it
    qtype: Any  # gguf.GGMLQuantizationType
    file: str


def _plan(source: Path, config: dict[str, Any], quant: str) -> list[_Tensor]:
    """Every tensor to write, in the source's order, with its GGUF name and type."""
    import gguf
    from safetensors import safe_open

    from .checkpoint import _weight_files

    layers = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, layers)
    quantized = config.get("quantization") or {}
    tied = bool(config.get("tie_word_embeddings", False))
    plan = []
    for file in _weight_files(source):
        with safe_open(source / file, framework="numpy") as f:
            keys = list(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        for key in keys:
            module, _, param = key.rpartition(".")
            if param in ("scales", "biases") or "rotary_emb" in key:
                continue
            if tied and module == "lm_head":
                continue  # llama.cpp reuses token_embd, as mlx-lm does
            gguf_key = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if gguf_key is None:
                raise UnsupportedModelError(
                    f"{source / file} holds tensor {key!r}, which a Qwen3 GGUF has no place "
                    "for; only plain Qwen3 checkpoints can be exported."
                )
            shape = shapes[key]
            if f"{module}.scales" in shapes:  # packed MLX weight: 32 / bits values per uint32
                bits = (quantized.get(module) or {}).get("bits") or quantized["bits"]
                shape = (shape[0], shape[1] * 32 // bits)
            is_output = module == "lm_head" or (tied and module == "model.embed_tokens")
            plan.append(
                _Tensor(key, gguf_key, shape, _tensor_type(gguf_key, shape, quant, is_output), file)
            )
    return plan


def _tensor_type(name: str, shape: tuple[int, ...], quant: str, is_output: bool) -> Any:
    """As convert_hf_to_gguf.py decides: 1-D tensors and norms in F32, the rest in the
    requested type when its block fits the rows, else F16."""
    import gguf

    q = gguf.GGMLQuantizationType
    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return q.F32
    wanted = {"f16": q.F16, "bf16": q.BF16, "q8_0": q.Q8_0, "q4_0": q.Q4_0, "q4_k_m": q.F16}
    qtype = wanted[quant]
    if qtype == q.Q4_0 and is_output:
        qtype = q.Q8_0  # see the module docstring
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else q.F16


def _nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= d
    return n // block * size


def _arrays(source: Path, config: dict[str, Any], plan: list[_Tensor]) -> Iterator[np.ndarray]:
    """Each planned tensor as float32 numpy, one at a time (MLX weights dequantized)."""
    import mlx.core as mx
    import numpy as np

    quantized = config.get("quantization") or {}
    loaded: dict[str, dict[str, Any]] = {}
    for t in plan:
        if t.file not in loaded:
            loaded = {t.file: mx.load(str(source / t.file))}  # lazy; one file at a time
        arrays = loaded[t.file]
        module = t.hf_name.rpartition(".")[0]
        a = arrays[t.hf_name]
        if f"{module}.scales" in arrays:
            q = {**quantized, **(quantized.get(module) or {})}
            a = mx.dequantize(
                a,
                arrays[f"{module}.scales"],
                arrays.get(f"{module}.biases"),
                group_size=q["group_size"],
                bits=q["bits"],
                mode=q.get("mode", "affine"),
            )
        yield np.array(a.astype(mx.float32))


def _encode(array: np.ndarray, qtype: Any) -> np.ndarray:
    import gguf
    import numpy as np

    q = gguf.GGMLQuantizationType
    if qtype == q.F32:
        return array.astype(np.float32)
    if qtype == q.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array, qtype)


# -- metadata -------------------------------------------------------------------------------


def vocab(folder: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """The token strings and types, as convert_hf_to_gguf.py's `get_vocab_base` makes them:
    every id below `vocab_size`, `[PAD<i>]` (UNUSED) for the model's padding rows, added
    tokens CONTROL when special or shaped like `<|...|>`, else USER_DEFINED."""
    import gguf
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    added = tok.get_added_tokens_decoder()
    if by_id and max(by_id) >= vocab_size:
        raise UnsupportedModelError(
            f"{folder}: the tokenizer has ids up to {max(by_id)} but the model's vocab_size "
            f"is {vocab_size}; the checkpoint is inconsistent."
        )
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(token)
        if i in added:
            looks_special = token.startswith("<|") and token.endswith("|>")
            special = added[i].special or looks_special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def pre_tokenizer(folder: Path) -> str:
    """llama.cpp's name for the pre-tokenizer in `folder`'s tokenizer.json: what
    convert_hf_to_gguf.py finds by hashing a test text, found here from the JSON itself."""
    pre = _read_json(folder / "tokenizer.json").get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    split = (steps[0].get("pattern") or {}).get("Regex")
    if (
        kinds == ["Split", "ByteLevel"]
        and not steps[1].get("use_regex", True)
        and (split == QWEN2_SPLIT)
    ):
        return "qwen2"
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    raise UnsupportedModelError(
        f"{folder / 'tokenizer.json'} has a pre-tokenizer ({', '.join(map(str, kinds))}) that "
        "is neither Qwen's nor GPT-2's, so llama.cpp would split text differently; it cannot "
        "be exported to GGUF."
    )


def _add_metadata(
    writer: Any,
    source: Path,
    tokenizer_dir: Path,
    config: dict[str, Any],
    name: naming.ModelName,
    quant: str,
    license: str | None,
) -> None:
    import gguf

    writer.add_name(str(name))
    writer.add_basename(name.family_id)
    writer.add_size_label(name.size.upper())
    if license:
        writer.add_license(license)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config.get("num_key_value_heads", config["num_attention_heads"])))
    # transformers 5 writes rope_parameters, earlier versions rope_theta / rope_scaling
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    theta = config.get("rope_theta") or rope.get("rope_theta") or 1_000_000.0
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    head_dim = int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if rope.get("rope_type", rope.get("type")) == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    writer.add_file_type(int(getattr(gguf.LlamaFileType, _FILE_TYPES[quant])))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types = vocab(tokenizer_dir, int(config["vocab_size"]))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tokenizer_dir))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=len(tokens))
    tok_config = _read_json(tokenizer_dir / "tokenizer_config.json")
    if "add_bos_token" not in tok_config:
        special.add_special_token["bos"] = False  # Qwen never prepends one
    special.add_to_gguf(writer, quiet=True)

    generation = _read_json(source / "generation_config.json")
    for key, add in (
        ("temperature", writer.add_sampling_temp),
        ("top_p", writer.add_sampling_top_p),
        ("top_k", writer.add_sampling_top_k),
        ("min_p", writer.add_sampling_min_p),
        ("repetition_penalty", writer.add_sampling_penalty_repeat),
    ):
        if isinstance(generation.get(key), int | float):
            add(generation[key])


# -- writing --------------------------------------------------------------------------------


def write_gguf(
    source: Path,
    out: Path,
    *,
    quant: str,
    name: naming.ModelName,
    tokenizer_dir: Path | None = None,
    license: str | None = None,
    progress: ProgressFn | None = None,
) -> None:
    """Write the Qwen3 model in `source` (HF or MLX folder) to the GGUF file `out`,
    streaming one tensor at a time (memory holds about one tensor)."""
    import gguf

    check_quant(quant)
    progress = progress or (lambda _p: None)
    config = _read_json(source / "config.json")
    if config.get("model_type") != ARCH:
        raise UnsupportedModelError(
            f"{source} holds a {config.get('model_type')!r} model; only Qwen3 models can be "
            "exported to GGUF here."
        )
    if quant == "q4_k_m":
        _write_k_quant(
            source, out, name=name, tokenizer_dir=tokenizer_dir, license=license, progress=progress
        )
        return
    plan = _plan(source, config, quant)
    writer = gguf.GGUFWriter(path=None, arch=ARCH)
    _add_metadata(writer, source, tokenizer_dir or source, config, name, quant, license)
    for t in plan:
        writer.add_tensor_info(
            t.gguf_name, t.shape, _float32(), _nbytes(t.shape, t.qtype), raw_dtype=t.qtype
        )
    total = sum(_nbytes(t.shape, t.qtype) for t in plan)
    done = 0
    try:
        writer.write_header_to_file(out)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t, array in zip(plan, _arrays(source, config, plan), strict=True):
            data = _encode(array, t.qtype)
            writer.write_tensor_data(data)
            done += data.nbytes
            progress(Progress("convert", done, total, t.gguf_name))
        writer.flush()
        assert writer.fout is not None
        for f in writer.fout:
            os.fsync(f.fileno())
    finally:
        writer.close()


def _float32() -> Any:
    import numpy as np

    return np.dtype(np.float32)


def _write_k_quant(
    source: Path,
    out: Path,
    *,
    name: naming.ModelName,
    tokenizer_dir: Path | None,
    license: str | None,
    progress: ProgressFn,
) -> None:
    """q4_k_m: an f16 export re-quantized by llama.cpp's own quantizer."""
    _need_llama_cpp()
    f16 = out.with_name(out.name + ".f16")
    try:
        write_gguf(
            source,
            f16,
            quant="f16",
            name=name,
            tokenizer_dir=tokenizer_dir,
            license=license,
            progress=progress,
        )
        progress(Progress("quantize", detail="q4_k_m with llama.cpp's llama_model_quantize"))
        llama_quantize(f16, out, "q4_k_m")
    finally:
        f16.unlink(missing_ok=True)


def _need_llama_cpp() -> None:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise UnsupportedModelError(
            "q4_k_m needs llama.cpp's k-quant quantizer, which the gguf package does not "
            "have: install it with `pip install 'qwen-mlx[interop]'` (llama-cpp-python), or "
            "export q4_0 or q8_0."
        )


_LLAMA_FTYPES = {"q4_0": 2, "q8_0": 7, "q4_k_m": 15}


def llama_quantize(src: Path, dst: Path, quant: str) -> None:
    """Quantize a GGUF with llama.cpp's `llama_model_quantize` (llama-cpp-python)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _LLAMA_FTYPES[quant]
    params.nthread = os.cpu_count() or 1
    code = llama_cpp.llama_model_quantize(
        str(src).encode(), str(dst).encode(), ctypes.byref(params)
    )
    if code != 0:
        raise UnsupportedModelError(f"llama.cpp could not quantize {src} to {quant} (code {code}).")


# -- into the store -------------------------------------------------------------------------


def export_gguf(
    ref: str,
    *,
    quant: str,
    output: str | Path | None = None,
    force: bool = False,
    reuse: bool = False,
    home: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> GGUFExport:
    """Export the stored model `ref` (a name or family id) to GGUF: a `gguf-<quant>`
    version of the same release in the store (manifest, sha256, registered, never made
    latest), or a file in the `output` folder; an `output` ending in `.gguf` (and not an
    existing folder) is the file itself. A folder also gets an Ollama `Modelfile` next to
    the GGUF. `reuse` keeps a stored version of that name as it is."""
    from .engines import MODELFILE, write_modelfile

    check_quant(quant)
    if quant == "q4_k_m":
        _need_llama_cpp()
    progress = progress or (lambda _p: None)
    store = Store(home)
    try:
        folder, manifest = store.manifest(ref)
        name = naming.parse(manifest.name)
        if name.format == "gguf":
            raise ValueError(f"{name} is GGUF already; export an MLX version of it instead.")
        out_name = gguf_name(name, quant)
        final = Path(output).expanduser() if output else store.path_for(out_name)
        file_name = gguf_file_name(out_name)
        alone = is_gguf_file_path(final) if output is not None else False
        if alone:  # --output m.gguf: that file, and nothing beside it
            final, file_name = final.parent, final.name
        if output is None and final.exists():
            if reuse:
                _, kept = store.manifest(str(out_name))
                source = WeightSource(final, False, "the stored version, kept as it is")
                return GGUFExport(out_name, final, final / file_name, source, kept, reused=True)
            if not force:
                raise OutputExistsError(
                    f"{out_name} is already in the store at {final}; pass --force to "
                    "export it again."
                )
        if output is not None and not force:
            for existing in [final / file_name] + ([] if alone else [final / MODELFILE]):
                if existing.exists() or existing.is_symlink():
                    raise OutputExistsError(
                        f"{existing} already exists; pass --force to replace it."
                    )
        source = best_source(folder, manifest)
        progress(Progress("validate", detail=f"reading {source.description}"))
        with store.staging(final) if output is None else _plain_staging(final) as tmp:
            write_gguf(
                source.path,
                tmp / file_name,
                quant=quant,
                name=out_name,
                tokenizer_dir=folder,
                license=manifest.license,
                progress=progress,
            )
            if not alone:
                write_modelfile(tmp, file_name, folder)
            if output is not None:
                for f in sorted(tmp.iterdir()):
                    os.replace(f, final / f.name)
                return GGUFExport(out_name, final, final / file_name, source, None)
            files = sorted(p.name for p in tmp.iterdir() if p.is_file())
            progress(Progress("hash", detail=file_name))
            entries = hash_files(tmp, files)
            gguf_bytes = next(e.size for e in entries if e.path == file_name)
            out_manifest = Manifest(
                name=str(out_name),
                family=out_name.family_id,
                variant=out_name.variant,
                release=out_name.release,
                parameters=manifest.parameters,
                context_length=manifest.context_length,
                quantization=Quantization(
                    dtype="float16" if quant != "bf16" else "bfloat16",
                    bits=_BITS[quant],
                    group_size=32 if quant in ("q8_0", "q4_0") else None,
                    mode=f"gguf-{quant}",
                    bits_per_weight=round(gguf_bytes * 8 / max(manifest.parameters, 1), 3),
                ),
                source=_source_info(source, folder, manifest),
                files=tuple(entries),
                tools={**manifest.tools, **_gguf_version()},
                license=manifest.license,
                created_at=_now(),
            )
            out_manifest.write(tmp)
            from ..store import install

            install(tmp, final, replace=force)
        store.register(final, out_manifest, event="exported", set_latest=False)
        return GGUFExport(out_name, final, final / file_name, source, out_manifest)
    finally:
        store.close()


def _source_info(source: WeightSource, folder: Path, manifest: Manifest) -> SourceInfo:
    """The original's provenance; the files are what was actually read."""
    if source.original:
        return manifest.source
    return SourceInfo(
        repo=manifest.source.repo,
        path=str(folder),
        revision=manifest.source.revision,
        files={f.path: f.sha256 for f in manifest.files if f.path.endswith(".safetensors")},
    )


def _gguf_version() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {"gguf": version("gguf")}
    except PackageNotFoundError:
        return {}


def _now() -> str:
    from ..fileio import now_iso

    return now_iso()


class _plain_staging:
    """A temporary folder inside `final` (created if needed) for an --output export; its
    files are renamed into `final` when complete, and it is deleted either way. Its name
    carries our pid, so the next export into `final` deletes one a killed export left."""

    def __init__(self, final: Path) -> None:
        self.final = final

    def __enter__(self) -> Path:
        import uuid

        from ..store.staging import PARTIAL_MARK, clean_partials

        self.final.mkdir(parents=True, exist_ok=True)
        clean_partials(self.final, swaps=False)
        self.tmp = self.final / f".export{PARTIAL_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, *_exc: object) -> None:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)
