"""Tiny random Qwen3 checkpoints in Hugging Face format, for tests and the demo.

The folder looks like a real `Qwen/Qwen3-*` download: `config.json`,
`generation_config.json`, bf16 safetensors (or float16, or float32 like a full-precision
fine-tune; one file or shards with an index) and a tokenizer. The tokenizer is a
byte-level BPE trained on the spot with Qwen's special tokens and a ChatML chat template in
Qwen3's format, or a real tokenizer folder copied in.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .checkpoint import TOKENIZER_FILES

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Added, but not "special": they must survive decode(skip_special_tokens=True).
MARKUP_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
# Qwen2/Qwen3's pre-tokenizer split: contractions, words, single digits, punctuation runs.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


INIT_STD = 0.02


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of a tiny Qwen3. Defaults give a ~0.1M-parameter model that runs in ms on CPU;
    head_dim 32 keeps 4-bit KV caches possible (their group size is 32 or 64)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 128
    vocab_size: int | None = None  # None: the tokenizer's size rounded up to 64
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6


def chat_template() -> str:
    """The ChatML template (Qwen3 format, tools included) shipped with the package."""
    return resources.files("qwen_mlx.data").joinpath("chatml_template.jinja").read_text()


def training_corpus() -> list[str]:
    """Text the tiny tokenizer learns its merges from: prose, code and chat markup."""
    text = resources.files("qwen_mlx.data").joinpath("calibration.txt").read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    chat = [
        "You are a helpful assistant.",
        "What is the capital of France? The capital of France is Paris.",
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
        "# Tools\n\nYou may call one or more functions to assist with the user query.",
        "Summarize the following document in three sentences.",
        "1234567890 + - * / = < > ( ) [ ] { } , . ; : ! ? ' \" ` ~ @ # $ % ^ & _ |",
    ]
    return lines + chat


def train_tokenizer(vocab_size: int = 512):
    """Train a byte-level BPE with Qwen's pre-tokenizer and special tokens appended last."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    return tok


def _write_trained_tokenizer(out: Path, vocab_size: int, max_length: int) -> dict[str, int]:
    tok = train_tokenizer(vocab_size)
    tok.save(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS + MARKUP_TOKENS}
    added = {
        str(ids[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t in SPECIAL_TOKENS,
        }
        for t in SPECIAL_TOKENS + MARKUP_TOKENS
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": chat_template(),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"size": tok.get_vocab_size(), **ids}


def _copy_tokenizer(out: Path, source: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    if not (source / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{source} has no tokenizer.json to copy.")
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    tok = Tokenizer.from_file(str(source / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    size = tok.get_vocab_size()
    if (source / "config.json").is_file():
        size = max(size, json.loads((source / "config.json").read_text())["vocab_size"])
    return {"size": size, **ids}


def _random_weights(cfg: TinyConfig, vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, hd, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q_out = cfg.num_attention_heads * hd
    kv_out = cfg.num_key_value_heads * hd

    # Hugging Face's initialisation (normal, std = initializer_range), as config.json says;
    # norms get some spread so that a forward pass that ignored them would show it.
    def dense(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0.0, INIT_STD, size=(rows, cols)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.normal(size=(n,))).astype(np.float32)

    weights = {"model.embed_tokens.weight": dense(vocab, h)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        weights |= {
            f"{p}.input_layernorm.weight": norm(h),
            f"{p}.self_attn.q_proj.weight": dense(q_out, h),
            f"{p}.self_attn.k_proj.weight": dense(kv_out, h),
            f"{p}.self_attn.v_proj.weight": dense(kv_out, h),
            f"{p}.self_attn.o_proj.weight": dense(h, q_out),
            f"{p}.self_attn.q_norm.weight": norm(hd),
            f"{p}.self_attn.k_norm.weight": norm(hd),
            f"{p}.post_attention_layernorm.weight": norm(h),
            f"{p}.mlp.gate_proj.weight": dense(inter, h),
            f"{p}.mlp.up_proj.weight": dense(inter, h),
            f"{p}.mlp.down_proj.weight": dense(h, inter),
        }
    weights["model.norm.weight"] = norm(h)
    if not cfg.tie_word_embeddings:
        weights["lm_head.weight"] = dense(vocab, h)
    return weights


def _write_weights(out: Path, weights: dict[str, np.ndarray], shards: int, dtype: str) -> None:
    import mlx.core as mx

    names = sorted(weights)
    groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    total = 0
    weight_map = {}
    for index, group in enumerate(groups, start=1):
        file = (
            "model.safetensors" if shards == 1 else f"model-{index:05d}-of-{shards:05d}.safetensors"
        )
        arrays = {n: mx.array(weights[n]).astype(getattr(mx, dtype)) for n in group}
        mx.save_safetensors(str(out / file), arrays, metadata={"format": "pt"})
        total += sum(a.nbytes for a in arrays.values())
        weight_map |= dict.fromkeys(group, file)
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def build_tiny_checkpoint(
    path: str | Path,
    config: TinyConfig | None = None,
    *,
    shards: int = 1,
    seed: int = 0,
    tokenizer_from: str | Path | None = None,
    tokenizer_vocab_size: int = 512,
    dtype: str = "bfloat16",
    overwrite: bool = False,
) -> Path:
    """Write a random Qwen3 checkpoint in Hugging Face format to `path` and return it.

    Args:
        config: model sizes; `TinyConfig()` by default.
        shards: number of safetensors files; more than one adds an index file.
        tokenizer_from: a real tokenizer folder (e.g. Qwen3-4B-Instruct-2507's) to copy
            instead of training a small BPE.
        dtype: the weights' float type (`bfloat16`, `float16` or `float32`, a full-precision
            fine-tune's), which config.json's `torch_dtype` records.
        overwrite: replace a non-empty `path` (otherwise FileExistsError).
    """
    cfg = config or TinyConfig()
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads.")
    if shards < 1:
        raise ValueError("shards must be at least 1.")
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype must be bfloat16, float16 or float32, not {dtype!r}.")
    out = Path(path)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True to replace it.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is not None:
        tok = _copy_tokenizer(out, Path(tokenizer_from))
    else:
        tok = _write_trained_tokenizer(out, tokenizer_vocab_size, cfg.max_position_embeddings)
    vocab = cfg.vocab_size or -(-tok["size"] // 64) * 64
    if vocab < tok["size"]:
        raise ValueError(f"vocab_size {vocab} is smaller than the tokenizer ({tok['size']}).")

    eos, eot = tok["<|im_end|>"], tok["<|endoftext|>"]
    model_config = {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": eot,
        "eos_token_id": eos,
        "hidden_act": "silu",
        "initializer_range": INIT_STD,
        "max_window_layers": cfg.num_hidden_layers,
        "model_type": "qwen3",
        "rope_scaling": None,
        "sliding_window": None,
        "torch_dtype": dtype,
        "use_cache": True,
        "use_sliding_window": False,
        **asdict(cfg),
        "vocab_size": vocab,
    }
    (out / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
    generation_config = {
        "bos_token_id": eot,
        "do_sample": True,
        "eos_token_id": [eos, eot],
        "pad_token_id": eot,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
    }
    (out / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
    _write_weights(out, _random_weights(cfg, vocab, seed), shards, dtype)
    return out
