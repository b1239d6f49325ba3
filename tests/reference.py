"""An independent plain-numpy Qwen3 forward pass over a Hugging Face checkpoint folder.

It shares no code with MLX or mlx-lm: it reads safetensors bytes itself and follows the
architecture as published (RMSNorm, per-head q/k RMSNorm, rotate-half RoPE with the
config's rope_theta, grouped-query attention, SwiGLU, tied or untied output head).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        chunk = data[begin:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(chunk, dtype=np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif info["dtype"] == "F32":
            array = np.frombuffer(chunk, dtype=np.float32)
        else:
            raise ValueError(f"unsupported dtype {info['dtype']}")
        out[name] = array.reshape(info["shape"]).astype(np.float64)
    return out


def load_weights(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    config = json.loads((folder / "config.json").read_text())
    weights: dict[str, np.ndarray] = {}
    for file in sorted(folder.glob("model*.safetensors")):
        weights |= read_safetensors(file)
    return config, weights


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, theta: float) -> np.ndarray:
    """x: (heads, T, d). Rotate-half RoPE as in Hugging Face's Qwen3."""
    _, t, d = x.shape
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    angles = np.arange(t, dtype=np.float64)[:, None] * inv_freq[None, :]
    emb = np.concatenate([angles, angles], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    half = d // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def forward(folder: Path, tokens: list[int]) -> np.ndarray:
    """Logits (T, vocab) for `tokens`, in float64."""
    cfg, w = load_weights(folder)
    eps = cfg["rms_norm_eps"]
    n_heads, n_kv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    t = len(tokens)
    x = w["model.embed_tokens.weight"][tokens]
    mask = np.triu(np.full((t, t), -np.inf), k=1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        h = _rms_norm(x, w[f"{p}.input_layernorm.weight"], eps)
        q = (h @ w[f"{p}.self_attn.q_proj.weight"].T).reshape(t, n_heads, hd)
        k = (h @ w[f"{p}.self_attn.k_proj.weight"].T).reshape(t, n_kv, hd)
        v = (h @ w[f"{p}.self_attn.v_proj.weight"].T).reshape(t, n_kv, hd)
        q = _rms_norm(q, w[f"{p}.self_attn.q_norm.weight"], eps).transpose(1, 0, 2)
        k = _rms_norm(k, w[f"{p}.self_attn.k_norm.weight"], eps).transpose(1, 0, 2)
        v = v.transpose(1, 0, 2)
        q, k = _rope(q, cfg["rope_theta"]), _rope(k, cfg["rope_theta"])
        groups = n_heads // n_kv
        k, v = np.repeat(k, groups, axis=0), np.repeat(v, groups, axis=0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        attn = (probs @ v).transpose(1, 0, 2).reshape(t, n_heads * hd)
        x = x + attn @ w[f"{p}.self_attn.o_proj.weight"].T
        h = _rms_norm(x, w[f"{p}.post_attention_layernorm.weight"], eps)
        gate = h @ w[f"{p}.mlp.gate_proj.weight"].T
        up = h @ w[f"{p}.mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[f"{p}.mlp.down_proj.weight"].T
    x = _rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b||."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))
