"""`models import FILE.gguf`: a Qwen3 GGUF (ours, llama.cpp's, an Ollama or LM Studio
download) -> an MLX version in the store, whose manifest's source is the GGUF's sha256.

The file's own metadata is checked first (architecture `qwen3`, hyperparameters that
agree with the tensors, a context length, a byte-level BPE tokenizer with the Qwen2
pre-tokenizer, a chat template that parses), and anything else is refused with the reason.
A chat template that runs past the bounds of a render (convert.template) on a test
conversation is replaced by Qwen's known one, and the result says so.

Tensors: F32, F16 and BF16 are kept as floats. Q8_0 and Q4_0 are carried over directly:
their blocks of 32 (a scale `d` and codes `q`, weight = d * q) are MLX's affine
quantization with group size 32 (scale d, bias -128 d or -8 d, codes shifted to unsigned),
so the codes and scales are the file's, bit for bit. K-quants (and the other types gguf-py
reads) are dequantized and re-quantized with MLX at group size 32, which rounds again; the
result says which tensors that was.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    ChatTemplateError,
    InvalidCheckpointError,
    OutputExistsError,
    UnsupportedModelError,
)
from ..fileio import sha256_file
from ..store import Store, install, naming
from ..store.manifest import Manifest, Quantization, SourceInfo, hash_files
from .gguf_export import QWEN2_SPLIT
from .progress import Progress, ProgressFn
from .tensorfile import TensorFileWriter, TensorSpec

if TYPE_CHECKING:
    import numpy as np

ARCH = "qwen3"
GROUP = 32
# Re-quantization bits for the types that cannot be carried over exactly.
_REQUANT_BITS = {"Q2_K": 4, "Q3_K": 4, "Q4_K": 4, "Q5_K": 5, "Q6_K": 6, "Q4_1": 4}
_REQUANT_BITS |= {"Q5_0": 5, "Q5_1": 5, "IQ4_NL": 4, "IQ4_XS": 4}
_FLOATS = ("F32", "F16", "BF16")
# The quantization at the end of GGUF file names: -Q4_K_M, -IQ4_XS, -UD-Q4_K_XL, -BF16, .f16
_QUANT_SUFFIX = re.compile(r"[-.](?:ud-)?(?:i?q\d+(?:_[a-z0-9]+)*|bf16|fp16|f16|f32)$", re.I)


@dataclass(frozen=True)
class GGUFImport:
    """What `import_gguf` wrote."""

    path: Path
    manifest: Manifest
    became_latest: bool
    requantized: dict[str, str] = field(default_factory=dict)  # tensor -> "Q4_K -> 4-bit g32"
    notes: tuple[str, ...] = ()


# -- reading the file -----------------------------------------------------------------------


class _File:
    """A GGUF file's metadata and tensors (memory-mapped by gguf-py's reader)."""

    def __init__(self, path: Path) -> None:
        import gguf

        try:
            self.reader = gguf.GGUFReader(path)
        except (ValueError, OSError, IndexError) as e:
            raise InvalidCheckpointError(f"{path} is not a readable GGUF file ({e}).") from e
        self.path = path
        self.tensors = {t.name: t for t in self.reader.tensors}

    def get(self, key: str, default: Any = None) -> Any:
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise InvalidCheckpointError(f"{self.path} has no {key} in its metadata.")
        return value


def read_config(file: _File) -> dict[str, Any]:
    """A Hugging Face Qwen3 config.json from the GGUF metadata, checked against the tensors."""
    arch = file.get("general.architecture")
    if arch != ARCH:
        raise UnsupportedModelError(
            f"{file.path} holds a {arch!r} model (general.architecture); only Qwen3 GGUF "
            "files ('qwen3') can be imported."
        )
    p = f"{ARCH}."
    hidden = int(file.require(p + "embedding_length"))
    heads = int(file.require(p + "attention.head_count"))
    kv_heads = int(file.get(p + "attention.head_count_kv", heads))
    head_dim = int(file.get(p + "attention.key_length", hidden // heads))
    layers = int(file.require(p + "block_count"))
    context = int(file.get(p + "context_length", 0) or 0)
    if context <= 0:
        raise InvalidCheckpointError(
            f"{file.path} has no {p}context_length: it is not a complete Qwen3 GGUF."
        )
    if int(file.get(p + "attention.value_length", head_dim)) != head_dim:
        raise UnsupportedModelError(f"{file.path}: key and value head sizes differ; not Qwen3.")
    embd = file.tensors.get("token_embd.weight")
    q = file.tensors.get("blk.0.attn_q.weight")
    if embd is None or q is None:
        raise InvalidCheckpointError(f"{file.path} lacks token_embd or blk.0.attn_q tensors.")
    vocab = int(embd.shape[1])
    if int(q.shape[1]) != heads * head_dim or int(embd.shape[0]) != hidden:
        raise InvalidCheckpointError(
            f"{file.path}: its tensors do not match its metadata (attn_q has "
            f"{int(q.shape[1])} rows, expected {heads} heads x {head_dim})."
        )
    config: dict[str, Any] = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": ARCH,
        "hidden_size": hidden,
        "intermediate_size": int(file.require(p + "feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": context,
        "rms_norm_eps": float(file.get(p + "attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(file.get(p + "rope.freq_base", 1_000_000.0)),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in file.tensors,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
    }
    if str(file.get(p + "rope.scaling.type", "")) == "yarn":
        config["rope_scaling"] = {
            "rope_type": "yarn",
            "factor": float(file.require(p + "rope.scaling.factor")),
            "original_max_position_embeddings": int(
                file.require(p + "rope.scaling.original_context_length")
            ),
        }
    return config


# -- the tokenizer --------------------------------------------------------------------------


def write_tokenizer(file: _File, out: Path, context: int) -> list[str]:
    """tokenizer.json and tokenizer_config.json from the GGUF's vocabulary; returns notes."""
    import gguf
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    model, pre = file.get("tokenizer.ggml.model"), file.get("tokenizer.ggml.pre")
    if model != "gpt2" or pre not in ("qwen2", "gpt-2"):
        raise UnsupportedModelError(
            f"{file.path} has a {model!r} tokenizer with the {pre!r} pre-tokenizer; a Qwen3 "
            "GGUF has 'gpt2' (byte-level BPE) with 'qwen2' (or 'gpt-2')."
        )
    tokens: list[str] = file.require("tokenizer.ggml.tokens")
    types: list[int] = list(file.require("tokenizer.ggml.token_type"))
    merges: list[str] = file.require("tokenizer.ggml.merges")
    t = gguf.TokenType
    entries = list(enumerate(zip(tokens, types, strict=True)))
    normal = {tok: i for i, (tok, ty) in entries if ty == t.NORMAL}
    kept = (t.CONTROL, t.USER_DEFINED)
    added = [(i, tok, ty == t.CONTROL) for i, (tok, ty) in entries if ty in kept]
    # Written as JSON with explicit ids: added tokens may sit anywhere in the vocabulary
    # (at the end in Qwen's own, at the start in a tokenizer trained with them).
    shell = Tokenizer(models.BPE())
    if pre == "qwen2":  # Qwen's own: NFC, then its split
        shell.normalizer = normalizers.NFC()
        shell.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        shell.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    shell.decoder = decoders.ByteLevel()
    shell.post_processor = processors.ByteLevel(trim_offsets=False)
    data = json.loads(shell.to_str())
    data["model"]["vocab"] = {**normal, **{text: i for i, text, _ in added}}
    data["model"]["merges"] = [m.split(" ", 1) for m in merges]
    data["added_tokens"] = [
        {
            "id": i,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": special,
        }
        for i, text, special in sorted(added)
    ]
    try:
        tok = Tokenizer.from_str(json.dumps(data))
    except Exception as e:  # the tokenizers library's own error type is not exported
        raise InvalidCheckpointError(
            f"{file.path}: its vocabulary and merges do not make a tokenizer ({e})."
        ) from e
    for i, text, _ in added:
        if tok.token_to_id(text) != i:
            raise InvalidCheckpointError(
                f"{file.path}: token {text!r} appears twice in its vocabulary."
            )
    tok.save(str(out / "tokenizer.json"))

    def text_of(key: str) -> str | None:
        i = file.get(key)
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    notes = []
    template = file.get("tokenizer.chat_template")
    if template is None:
        notes.append("the file has no chat template: chat will not work, plain prompts will")
    else:
        special = {"eos_token": text_of("tokenizer.ggml.eos_token_id")}
        template, note = _usable_template(file.path, template, special)
        notes += [note] if note else []
    config = {
        "add_bos_token": bool(file.get("tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {
                "content": text,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
            for i, text, special in added
        },
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": text_of("tokenizer.ggml.eos_token_id"),
        "errors": "replace",
        "model_max_length": context,
        "pad_token": text_of("tokenizer.ggml.padding_token_id"),
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    if template is not None:
        config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return notes


def _usable_template(path: Path, template: Any, special: dict[str, Any]) -> tuple[str, str]:
    """The file's chat template if it renders test conversations within the bounds every
    render has (convert.template), else Qwen's known one, with a note saying why. A
    template that does not parse means a damaged file: refused."""
    import jinja2

    from .template import FAMILY_TEMPLATE_NAME, check, family_template

    try:
        if not isinstance(template, str):
            raise ChatTemplateError(f"it is a {type(template).__name__}, not text")
        check(template, variables=special)
    except jinja2.TemplateSyntaxError as e:
        raise InvalidCheckpointError(
            f"{path}: its chat template does not parse ({e}); fix the file's "
            "tokenizer.chat_template or import another copy."
        ) from e
    except ChatTemplateError as e:
        known = family_template(ARCH)
        assert known is not None
        return known, (
            f"the file's chat template was refused ({e}): the model uses "
            f"{FAMILY_TEMPLATE_NAME} instead"
        )
    return template, ""


def generation_config(file: _File) -> dict[str, Any]:
    """generation_config.json from `general.sampling.*` and the end-of-turn ids."""
    gen: dict[str, Any] = {}
    eos = [file.get(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")]
    pad = file.get("tokenizer.ggml.padding_token_id")
    ids = list(dict.fromkeys(int(i) for i in [*eos, pad] if i is not None))
    if ids:
        gen["eos_token_id"] = ids
    if pad is not None:
        gen["pad_token_id"] = int(pad)
    for key, name in (("temp", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        value = file.get(f"general.sampling.{key}")
        if value is not None:
            gen[name] = round(float(value), 6) if name != "top_k" else int(value)
    if gen.get("temperature"):
        gen["do_sample"] = True
    return gen


# -- the tensors ----------------------------------------------------------------------------


def _hf_names(layers: int, tied: bool) -> dict[str, str]:
    """GGUF tensor name -> Hugging Face name, from gguf-py's own name map."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, layers)
    hf = ["model.embed_tokens.weight", "model.norm.weight"]
    if not tied:
        hf.append("lm_head.weight")
    for i in range(layers):
        p = f"model.layers.{i}"
        hf += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"]
        hf += [f"{p}.self_attn.{m}.weight" for m in ("q_proj", "k_proj", "v_proj", "o_proj")]
        hf += [f"{p}.self_attn.{m}.weight" for m in ("q_norm", "k_norm")]
        hf += [f"{p}.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")]
    return {names.get_name(n, try_suffixes=(".weight",)): n for n in hf}


@dataclass(frozen=True)
class _Planned:
    gguf_name: str
    hf_name: str
    kind: str  # "float", "exact" or "requant"
    bits: int | None
    source_type: str
    specs: tuple[TensorSpec, ...]


def _plan(file: _File, config: dict[str, Any], dtype: str) -> list[_Planned]:
    names = _hf_names(config["num_hidden_layers"], config["tie_word_embeddings"])
    missing = sorted(set(names) - set(file.tensors))
    if missing:
        raise InvalidCheckpointError(
            f"{file.path} lacks tensors a Qwen3 needs: {', '.join(missing[:5])}."
        )
    extra = sorted(set(file.tensors) - set(names) - {"rope_freqs.weight"})
    if extra:
        raise UnsupportedModelError(
            f"{file.path} has tensors a plain Qwen3 does not ({', '.join(extra[:5])})."
        )
    code = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[dtype]
    plan = []
    for gname, hname in names.items():
        t = file.tensors[gname]
        ttype = t.tensor_type.name
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists ne, innermost first
        module = hname.rpartition(".")[0]
        if ttype in _FLOATS or len(shape) == 1:
            spec = TensorSpec(hname, code, shape)
            plan.append(_Planned(gname, hname, "float", None, ttype, (spec,)))
            continue
        if ttype in ("Q8_0", "Q4_0"):
            kind, bits = "exact", 8 if ttype == "Q8_0" else 4
        elif ttype in _REQUANT_BITS:
            kind, bits = "requant", _REQUANT_BITS[ttype]
        else:
            raise UnsupportedModelError(
                f"{file.path}: tensor {gname} is {ttype}, which cannot be imported (F16, BF16, "
                "Q8_0 and Q4_0 import directly; K-quants are re-quantized)."
            )
        rows, cols = shape
        if cols % GROUP:
            raise UnsupportedModelError(
                f"{file.path}: {gname} has rows of {cols}, not whole groups of {GROUP}."
            )
        groups = cols // GROUP
        specs = (
            TensorSpec(hname, "U32", (rows, cols * bits // 32)),
            TensorSpec(f"{module}.scales", "F16", (rows, groups)),
            TensorSpec(f"{module}.biases", "F16", (rows, groups)),
        )
        plan.append(_Planned(gname, hname, kind, bits, ttype, specs))
    return plan


def _convert(file: _File, p: _Planned, dtype: str) -> Iterator[Any]:
    """The MLX arrays of one planned tensor, in the order of its specs."""
    import gguf
    import mlx.core as mx
    import numpy as np

    t = file.tensors[p.gguf_name]
    if p.kind == "float":
        shape = p.specs[0].shape
    else:
        shape = (p.specs[0].shape[0], p.specs[1].shape[1] * GROUP)
    if p.kind == "float":
        data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        yield mx.array(data.astype(np.float32)).astype(getattr(mx, dtype))
    elif p.kind == "requant":
        data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        w, scales, biases = mx.quantize(
            mx.array(data).astype(mx.float16), group_size=GROUP, bits=p.bits
        )
        yield from (w, scales, biases)
    else:
        yield from _repack(np.asarray(t.data), t.tensor_type, shape, p.bits)


def _repack(raw: np.ndarray, qtype: Any, shape: tuple[int, int], bits: int) -> Iterator[Any]:
    """Q8_0 / Q4_0 blocks as MLX affine codes, scales and biases (see the module docstring)."""
    import gguf
    import mlx.core as mx
    import numpy as np

    rows, cols = shape
    _, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = raw.reshape(rows, cols // GROUP, size)
    d = blocks[..., :2].copy().view(np.float16)[..., 0]
    qs = blocks[..., 2:]
    if bits == 4:  # byte j holds element j (low nibble) and element j + 16 (high nibble)
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
        offset = 8
    else:
        codes = (qs.view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        offset = 128
    per_word = 32 // bits
    codes = codes.reshape(rows, cols // per_word, per_word).astype(np.uint32)
    packed = np.zeros(codes.shape[:2], np.uint32)
    for k in range(per_word):  # element k of a word sits at bits [bits * k, bits * (k + 1))
        packed |= codes[..., k] << np.uint32(bits * k)
    yield mx.array(packed)
    yield mx.array(d)
    yield mx.array((-offset * d.astype(np.float32)).astype(np.float16))


# -- naming ---------------------------------------------------------------------------------


def _quant_tag(plan: list[_Planned], dtype: str) -> tuple[Quantization, dict[str, Any] | None]:
    """The model's quantization (the bits most weights have) and config.json's entry,
    with per-layer settings for the layers that differ."""
    counts: Counter[int] = Counter()
    for p in plan:
        if p.bits:
            counts[p.bits] += p.specs[0].shape[0] * p.specs[1].shape[1]
    if not counts:
        return Quantization(dtype=dtype), None
    bits = counts.most_common(1)[0][0]
    entry: dict[str, Any] = {"group_size": GROUP, "bits": bits, "mode": "affine"}
    for p in plan:
        if p.bits and p.bits != bits:
            module = p.hf_name.rpartition(".")[0]
            entry[module] = {"group_size": GROUP, "bits": p.bits, "mode": "affine"}
    return Quantization(dtype=dtype, bits=bits, group_size=GROUP, mode="affine"), entry


def import_name(
    file: _File, requested: str | None, quantization: Quantization, parameters: int, sha: str
) -> tuple[naming.ModelName, str]:
    """`--name`, else the name our export wrote (general.name), else one read off the
    file name (`Qwen3-4B-Instruct-2507-Q4_0.gguf`) or made from the metadata."""
    from .names import with_quant

    own = str(file.get("general.name") or "")
    if not requested and naming.is_name(own):
        base = naming.parse(own)
        base = naming.ModelName(base.family, base.size, base.variant, base.release)
        return with_quant(base, quantization), ""
    release = next(sha[:n] for n in range(7, 41) if re.search("[0-9]", sha[:n]))
    base, note = naming.name_for(
        requested,
        _QUANT_SUFFIX.sub("", file.path.stem) or file.path.stem,
        family=ARCH,
        parameters=parameters,
        release=release,
        release_from="the start of the file's sha256",
        hint=own or None,
    )
    return with_quant(base, quantization), note


# -- the import -----------------------------------------------------------------------------


def import_gguf(
    path: str | Path,
    *,
    name: str | None = None,
    force: bool = False,
    home: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> GGUFImport:
    """Import a Qwen3 GGUF file into the store as an MLX model (see the module docstring)."""
    from .names import check_name_free

    progress = progress or (lambda _p: None)
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise InvalidCheckpointError(f"{source} is not a file.")
    file = _File(source)
    config = read_config(file)
    types = Counter(t.tensor_type.name for t in file.tensors.values())
    dtype = "bfloat16" if types.get("BF16") else "float16"
    config["torch_dtype"] = dtype
    plan = _plan(file, config, dtype)
    quantization, qentry = _quant_tag(plan, dtype)
    if qentry:
        config["quantization"] = qentry
    parameters = sum(int(t.n_elements) for t in file.tensors.values())
    progress(Progress("hash", detail=str(source)))
    sha = sha256_file(source)
    model_name, note = import_name(file, name, quantization, parameters, sha)
    if note:
        progress(Progress("name", detail=f"{model_name} ({note})"))
    requantized = {
        p.gguf_name: f"{p.source_type} -> {p.bits}-bit g{GROUP}"
        for p in plan
        if p.kind == "requant"
    }
    notes = []
    if requantized:
        kinds = sorted({p.source_type for p in plan if p.kind == "requant"})
        notes.append(
            f"{len(requantized)} tensors ({', '.join(kinds)}) were dequantized and re-quantized "
            f"to MLX group size {GROUP} (not bit-exact)"
        )
    store = Store(home)
    try:
        check_name_free(store, model_name, repo=None, path=str(source), force=force)
        final = store.path_for(model_name)
        if final.exists() and not force:
            raise OutputExistsError(
                f"{model_name} is already in the store at {final}; pass --force to replace it."
            )
        with store.staging(final) as tmp:
            notes += write_tokenizer(file, tmp, config["max_position_embeddings"])
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            gen = generation_config(file)
            if gen:
                (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
            specs = [s for p in plan for s in p.specs]
            weights = tmp / "model.safetensors"
            writer = TensorFileWriter(weights, specs, metadata={"format": "mlx"})
            import mlx.core as mx

            total, done = sum(s.nbytes for s in specs), 0
            try:
                for p in plan:
                    arrays = list(_convert(file, p, dtype))
                    mx.eval(arrays)
                    for spec, array in zip(p.specs, arrays, strict=True):
                        writer.write(spec.name, array)
                        done += spec.nbytes
                    progress(Progress("convert", done, total, p.gguf_name))
                weights_sha = writer.close()
            except BaseException:
                writer.abort()
                raise
            files = sorted(f.name for f in tmp.iterdir() if f.is_file())
            manifest = Manifest.new(
                model_name,
                parameters=parameters,
                config=config,
                quantization=Quantization(
                    dtype=quantization.dtype,
                    bits=quantization.bits,
                    group_size=quantization.group_size,
                    mode=quantization.mode,
                    bits_per_weight=round(total * 8 / max(parameters, 1), 3),
                ),
                source=SourceInfo(path=str(source), files={source.name: sha}),
                files=hash_files(tmp, files, known={"model.safetensors": weights_sha}),
            )
            manifest.write(tmp)
            install(tmp, final, replace=force)
        became_latest = store.register(final, manifest, event="imported")
    finally:
        store.close()
    return GGUFImport(final, manifest, became_latest, requantized, tuple(notes))
