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

        with open(path, "rb") as f:
            head = f.read(8)
        if head[:4] != b"GGUF":
            raise InvalidCheckpointError(
                f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')."
            )
        version = int.from_bytes(head[4:8], "little") if len(head) == 8 else 0
        # A version whose low half is 0 is the other byte order, which the reader handles.
        if version & 0xFFFF and version not in getattr(gguf, "READER_SUPPORTED_VERSIONS", (2, 3)):
            raise UnsupportedModelError(
                f"{path} is a GGUF of version {version}; the gguf package here reads versions 2 "
                "and 3. Upgrade it (`pip install -U gguf`) or export the file again with a "
                "current llama.cpp."
            )
        try:
            self.reader = gguf.GGUFReader(path)
        except OSError:
            raise
        except Exception as e:  # numpy's errors about the bytes it was given, which say little
            size = path.stat().st_size
            raise InvalidCheckpointError(
                f"{path} is a truncated or damaged GGUF file ({size:,} bytes): its header, "
                "metadata or tensor data end early or do not add up. Download or export it "
                "again."
            ) from e
        self.path = path
        self.tensors = {t.name: t for t in self.reader.tensors}

    def get(self, key: str, default: Any = None) -> Any:
        f = self.reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception as e:  # a field whose bytes do not decode
            raise InvalidCheckpointError(f"{self.path}: its {key} cannot be read ({e}).") from e

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise InvalidCheckpointError(f"{self.path} has no {key} in its metadata.")
        return value

    def count(self, key: str, default: int | None = None) -> int:
        """A whole number above 0 from the metadata (`default` when absent)."""
        value = self.get(key, default) if default is not None else self.require(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidCheckpointError(
                f"{self.path}: its {key} is {value!r}, not a whole number above 0; the file's "
                "metadata is damaged."
            )
        return value

    def real(self, key: str, default: float | None = None) -> float:
        """A number from the metadata (`default` when absent)."""
        value = self.get(key, default) if default is not None else self.require(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise InvalidCheckpointError(
                f"{self.path}: its {key} is {value!r}, not a number; the file's metadata is "
                "damaged."
            )
        return float(value)


def read_config(file: _File) -> dict[str, Any]:
    """A Hugging Face Qwen3 config.json from the GGUF metadata, checked against the tensors."""
    arch = file.get("general.architecture")
    if arch != ARCH:
        raise UnsupportedModelError(
            f"{file.path} holds a {arch!r} model (general.architecture); only Qwen3 GGUF "
            "files ('qwen3') can be imported."
        )
    p = f"{ARCH}."
    hidden = file.count(p + "embedding_length")
    heads = file.count(p + "attention.head_count")
    kv_heads = file.count(p + "attention.head_count_kv", heads)
    head_dim = file.count(p + "attention.key_length", max(hidden // heads, 1))
    layers = file.count(p + "block_count")
    if file.get(p + "context_length") is None:
        raise InvalidCheckpointError(
            f"{file.path} has no {p}context_length: it is not a complete Qwen3 GGUF."
        )
    context = file.count(p + "context_length")
    if heads % kv_heads:
        raise InvalidCheckpointError(
            f"{file.path}: its {heads} attention heads do not share {kv_heads} key/value heads "
            "evenly (attention.head_count_kv); the file's metadata is damaged."
        )
    if file.count(p + "attention.value_length", head_dim) != head_dim:
        raise UnsupportedModelError(f"{file.path}: key and value head sizes differ; not Qwen3.")
    embd = file.tensors.get("token_embd.weight")
    q = file.tensors.get("blk.0.attn_q.weight")
    if embd is None or q is None:
        raise InvalidCheckpointError(f"{file.path} lacks token_embd or blk.0.attn_q tensors.")
    if len(embd.shape) != 2 or len(q.shape) != 2:
        raise InvalidCheckpointError(
            f"{file.path}: token_embd and blk.0.attn_q are not matrices; the file is damaged."
        )
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
        "intermediate_size": file.count(p + "feed_forward_length"),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": context,
        "rms_norm_eps": file.real(p + "attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": file.real(p + "rope.freq_base", 1_000_000.0),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in file.tensors,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
    }
    if str(file.get(p + "rope.scaling.type", "")) == "yarn":
        config["rope_scaling"] = {
            "rope_type": "yarn",
            "factor": file.real(p + "rope.scaling.factor"),
            "original_max_position_embeddings": file.count(
                p + "rope.scaling.original_context_length"
            ),
        }
    return config


# -- the tokenizer --------------------------------------------------------------------------


_SPECIAL_IDS = ("bos", "eos", "eot", "padding")


def check_tokenizer(file: _File, vocab: int) -> None:
    """Refuse a vocabulary the model cannot use, before anything is written: not Qwen's
    kind of tokenizer, token types or merges that do not add up, more tokens than the
    embedding has rows, special token ids outside the vocabulary."""
    model, pre = file.get("tokenizer.ggml.model"), file.get("tokenizer.ggml.pre")
    if model != "gpt2" or pre not in ("qwen2", "gpt-2"):
        raise UnsupportedModelError(
            f"{file.path} has a {model!r} tokenizer with the {pre!r} pre-tokenizer; a Qwen3 "
            "GGUF has 'gpt2' (byte-level BPE) with 'qwen2' (or 'gpt-2')."
        )
    damaged = "the file's metadata is damaged"
    tokens = file.require("tokenizer.ggml.tokens")
    types = file.require("tokenizer.ggml.token_type")
    merges = file.require("tokenizer.ggml.merges")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise InvalidCheckpointError(f"{file.path}: tokenizer.ggml.tokens is not a list of texts.")
    if not isinstance(types, list) or len(types) != len(tokens):
        n = len(types) if isinstance(types, list) else 0
        raise InvalidCheckpointError(
            f"{file.path}: tokenizer.ggml.token_type has {n:,} entries for {len(tokens):,} "
            f"tokens; {damaged}."
        )
    if len(tokens) > vocab:
        raise InvalidCheckpointError(
            f"{file.path}: its vocabulary has {len(tokens):,} tokens but token_embd has rows "
            f"for {vocab:,}; {damaged}."
        )
    for m in merges if isinstance(merges, list) else [merges]:
        if not isinstance(m, str) or not all(m.partition(" ")[::2]):
            raise InvalidCheckpointError(
                f"{file.path}: its merge {m!r} is not two tokens separated by a space; {damaged}."
            )
    for kind in _SPECIAL_IDS:
        key = f"tokenizer.ggml.{kind}_token_id"
        i = file.get(key)
        if i is not None and (
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(tokens)
        ):
            raise InvalidCheckpointError(
                f"{file.path}: its {key} is {i!r}, but the vocabulary has {len(tokens):,} "
                f"tokens; {damaged}."
            )


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

    pre = file.get("tokenizer.ggml.pre")  # checked, with the rest, by check_tokenizer
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


def _expected_shapes(config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each Hugging Face tensor's shape as the config says it must be, and which of the
    GGUF's metadata says so."""
    p = f"{ARCH}."
    h, ff, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    d = config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    width = f"{p}embedding_length {h}"
    ffn = f"{p}feed_forward_length {ff}, {width}"
    heads = f"{p}attention.head_count x key_length {q}, {width}"
    kv_heads = f"{p}attention.head_count_kv x key_length {kv}, {width}"
    rows = f"{vocab} tokens, {width}"
    shapes = {
        "model.embed_tokens.weight": ((vocab, h), rows),
        "lm_head.weight": ((vocab, h), rows),
        "model.norm.weight": ((h,), width),
    }
    for i in range(config["num_hidden_layers"]):
        m = f"model.layers.{i}"
        shapes |= {
            f"{m}.input_layernorm.weight": ((h,), width),
            f"{m}.post_attention_layernorm.weight": ((h,), width),
            f"{m}.self_attn.q_proj.weight": ((q, h), heads),
            f"{m}.self_attn.k_proj.weight": ((kv, h), kv_heads),
            f"{m}.self_attn.v_proj.weight": ((kv, h), kv_heads),
            f"{m}.self_attn.o_proj.weight": ((h, q), heads),
            f"{m}.self_attn.q_norm.weight": ((d,), f"{p}attention.key_length {d}"),
            f"{m}.self_attn.k_norm.weight": ((d,), f"{p}attention.key_length {d}"),
            f"{m}.mlp.gate_proj.weight": ((ff, h), ffn),
            f"{m}.mlp.up_proj.weight": ((ff, h), ffn),
            f"{m}.mlp.down_proj.weight": ((h, ff), ffn),
        }
    return shapes


def _dims(shape: tuple[int, ...]) -> str:
    return " x ".join(map(str, shape))


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
    expected = _expected_shapes(config)
    plan = []
    for gname, hname in names.items():
        t = file.tensors[gname]
        ttype = t.tensor_type.name
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists ne, innermost first
        want, why = expected[hname]
        if shape != want:
            raise InvalidCheckpointError(
                f"{file.path}: tensor {gname} is {_dims(shape)}, but the metadata ({why}) makes "
                f"it {_dims(want)}; the file's metadata and tensors disagree, so the model "
                "could not load."
            )
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


def _converted(file: _File, p: _Planned, dtype: str) -> list[Any]:
    """The MLX arrays of one planned tensor, evaluated; a tensor whose data does not
    decode as its type and shape is a damaged file, said so."""
    import mlx.core as mx

    try:
        arrays = list(_convert(file, p, dtype))
        mx.eval(arrays)
    except (ValueError, TypeError, IndexError) as e:
        raise InvalidCheckpointError(
            f"{file.path}: tensor {p.gguf_name} ({p.source_type}) cannot be read: its data "
            "does not match its type and shape; the file is damaged."
        ) from e
    return arrays


def _count_nonfinite(arrays: list[Any]) -> int:
    """NaN and infinite values in the floating-point arrays (weights, scales, biases)."""
    import mlx.core as mx

    floats = [a for a in arrays if mx.issubdtype(a.dtype, mx.floating)]
    return sum(int(mx.sum(mx.logical_not(mx.isfinite(a))).item()) for a in floats)


def _refuse_nonfinite(file: _File, tensor: str, count: int, force: bool) -> None:
    """NaN or infinite weights make every reply NaN (or the tokens they touch nonsense):
    refused, as llama.cpp's tensor check refuses them, unless --force (to look into it)."""
    if not force:
        raise InvalidCheckpointError(
            f"{file.path}: tensor {tensor} holds {count:,} NaN or infinite values; a model "
            "with them answers with NaN, not text, so it was not imported. Import it anyway "
            "with --force (to look into it), or get another copy of the file."
        )


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
    from .names import check_name_free, claimed_name

    progress = progress or (lambda _p: None)
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise InvalidCheckpointError(f"{source} is not a file.")
    file = _File(source)
    config = read_config(file)
    check_tokenizer(file, config["vocab_size"])
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
        model_name, claims, set_latest = claimed_name(store, model_name, parameters, requested=name)
        notes += claims
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

            total, done = sum(s.nbytes for s in specs), 0
            nonfinite: dict[str, int] = {}
            try:
                for p in plan:
                    arrays = _converted(file, p, dtype)
                    bad = _count_nonfinite(arrays)
                    if bad:
                        _refuse_nonfinite(file, p.gguf_name, bad, force)
                        nonfinite[p.gguf_name] = bad
                    for spec, array in zip(p.specs, arrays, strict=True):
                        writer.write(spec.name, array)
                        done += spec.nbytes
                    progress(Progress("convert", done, total, p.gguf_name))
                weights_sha = writer.close()
            except BaseException:
                writer.abort()
                raise
            if nonfinite:
                named = ", ".join(list(nonfinite)[:3]) + (", ..." if len(nonfinite) > 3 else "")
                some = f"{len(nonfinite)} tensors hold" if len(nonfinite) > 1 else "1 tensor holds"
                notes.append(
                    f"{some} NaN or infinite values ({named}); imported because of --force, "
                    "but its replies will be NaN or nonsense"
                )
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
        became_latest = store.register(final, manifest, event="imported", set_latest=set_latest)
    finally:
        store.close()
    return GGUFImport(final, manifest, became_latest, requantized, tuple(notes))
