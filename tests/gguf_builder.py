"""A GGUF written the way llama.cpp's `convert_hf_to_gguf.py` writes a Qwen3, for the import
tests: transformers' tokenizer for the vocabulary (`get_vocab_base`), gguf-py's name map,
SpecialVocab, writer and quantizers. Independent of `qwen_mlx.convert.gguf_export`, so an
import test does not only read back what our own exporter wrote.

`types` picks a tensor type per GGUF tensor name (default F16; norms always F32). Q4_K and
Q6_K, which gguf-py cannot quantize, are filled with random blocks (a valid tensor whose
values are whatever its blocks say), enough to exercise the re-quantizing import path.
`metadata` replaces metadata values (None deletes the key), for damaged-file tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def write_llama_style_gguf(
    hf: Path,
    out: Path,
    *,
    pre: str = "qwen2",
    types: Callable[[str, tuple[int, ...]], str] | None = None,
    arch: str = "qwen3",
    seed: int = 0,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    import gguf
    import mlx.core as mx
    from transformers import AutoTokenizer

    config = json.loads((hf / "config.json").read_text())
    q = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(out, arch)
    n_layers = config["num_hidden_layers"]
    w.add_name("Qwen3 Tiny")
    w.add_block_count(n_layers)
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    rope = config.get("rope_parameters") or {}
    w.add_rope_freq_base(config.get("rope_theta") or rope["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_key_length(config["head_dim"])
    w.add_value_length(config["head_dim"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokenizer = AutoTokenizer.from_pretrained(hf)
    vocab_size = config["vocab_size"]
    reverse = {i: t for t, i in tokenizer.vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, toktypes = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            special = decoder[i].special or (token.startswith("<|") and token.endswith("|>"))
            toktypes.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    gguf.SpecialVocab(hf, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, n_layers)
    rng = np.random.default_rng(seed)
    weights = mx.load(str(hf / "model.safetensors"))
    for hf_name in sorted(weights):
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        data = np.array(weights[hf_name].astype(mx.float32))
        if data.ndim == 1 or name.endswith("_norm.weight"):
            w.add_tensor(name, data.astype(np.float32))
            continue
        kind = q[(types or (lambda _n, _s: "F16"))(name, data.shape)]
        if kind == q.F16:
            w.add_tensor(name, data.astype(np.float16))
        elif kind in (q.Q8_0, q.Q4_0, q.BF16):
            w.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
        elif kind in (q.Q4_K, q.Q6_K):  # random blocks with a small scale
            block, size = gguf.GGML_QUANT_SIZES[kind]
            raw = rng.integers(0, 256, size=(data.size // block, size), dtype=np.uint8)
            if kind == q.Q6_K:  # ql, qh, int8 scales, then the fp16 `d`
                raw[:, -2:] = np.array([1e-4], np.float16).view(np.uint8)
            else:  # fp16 `d` and `dmin` first
                raw[:, 0:2] = raw[:, 2:4] = np.array([2e-3], np.float16).view(np.uint8)
            w.add_tensor(name, raw.reshape(data.shape[0], -1), raw_dtype=kind)
        else:
            raise ValueError(f"no way to write {kind.name} here")
    for key, value in (metadata or {}).items():
        if value is None:
            w.kv_data[0].pop(key, None)
        else:
            kind = gguf.GGUFValueType.get_type(value)
            old = w.kv_data[0].get(key)
            if old is not None and type(value) is type(old.value):
                kind = old.type  # the same type as llama.cpp writes it
            sub = gguf.GGUFValueType.get_type(value[0]) if isinstance(value, list) else None
            if old is not None and isinstance(value, list):
                sub = old.sub_type
            w.kv_data[0][key] = gguf.GGUFValue(value, kind, sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
