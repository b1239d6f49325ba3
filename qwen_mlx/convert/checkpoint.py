"""Inspect a Hugging Face checkpoint folder and reject a broken one before any heavy work.

Only headers are read: config, tokenizer file names, safetensors headers (through the
`safetensors` library, which also notices truncated files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidCheckpointError, ModelNotFoundError, UnsupportedModelError
from .tensorfile import TensorSpec

SUPPORTED_MODEL_TYPES = ("qwen3",)
INDEX_FILE = "model.safetensors.index.json"
# Copied next to the converted weights; the tokenizer set follows Qwen's repos.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)
EXTRA_FILES = ("generation_config.json", "LICENSE")


@dataclass
class Checkpoint:
    """What a checkpoint folder holds, read from headers only."""

    path: Path
    config: dict[str, Any]
    weight_files: list[str]
    tensors: dict[str, TensorSpec] = field(repr=False)
    tensor_files: dict[str, str] = field(repr=False)
    tokenizer_files: list[str]
    extra_files: list[str]

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    @property
    def parameters(self) -> int:
        """Parameter count, without a duplicate lm_head when embeddings are tied."""
        return sum(
            _numel(s.shape)
            for n, s in self.tensors.items()
            if not (self.tied_embeddings and n == "lm_head.weight")
        )

    def all_files(self) -> list[str]:
        extra = [INDEX_FILE] if (self.path / INDEX_FILE).is_file() else []
        return ["config.json", *extra, *self.weight_files, *self.tokenizer_files, *self.extra_files]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def read_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        raise InvalidCheckpointError(
            f"{path} has no config.json: it is not a Hugging Face model folder."
        )
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidCheckpointError(f"{file} is not valid JSON ({e}).") from e
    if not isinstance(config, dict) or "model_type" not in config:
        raise InvalidCheckpointError(f"{file} has no model_type.")
    return config


def _weight_files(path: Path) -> list[str]:
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InvalidCheckpointError(f"{index} is damaged ({e}).") from e
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise InvalidCheckpointError(
                f"{path}: shards listed in {INDEX_FILE} are missing: {', '.join(missing)}. "
                "The download is incomplete; fetch the model again."
            )
        return files
    files = sorted(p.name for p in path.glob("model*.safetensors"))
    if not files:
        raise InvalidCheckpointError(f"{path} has no model*.safetensors weight files.")
    return files


def _read_specs(path: Path, files: list[str]) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    specs: dict[str, TensorSpec] = {}
    where: dict[str, str] = {}
    for name in files:
        try:
            with safe_open(path / name, framework="numpy") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    sl = f.get_slice(key)
                    specs[key] = TensorSpec(key, sl.get_dtype(), tuple(sl.get_shape()))
                    where[key] = name
        except (SafetensorError, OSError, ValueError) as e:
            raise InvalidCheckpointError(
                f"{path / name} is truncated or corrupt ({e}). Download it again."
            ) from e
    return specs, where


def _check_tensors(path: Path, config: dict[str, Any], specs: dict[str, TensorSpec]) -> None:
    """Every tensor the architecture needs is there, with the embedding shape it implies."""
    layers = config.get("num_hidden_layers", 0)
    needed = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(layers):
        p = f"model.layers.{i}"
        needed += [f"{p}.self_attn.{m}.weight" for m in ("q_proj", "k_proj", "v_proj", "o_proj")]
        needed += [f"{p}.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")]
    if not config.get("tie_word_embeddings", False):
        needed.append("lm_head.weight")
    missing = [n for n in needed if n not in specs]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise InvalidCheckpointError(f"{path}: weights are missing tensors: {shown}.")
    if "model.embed_tokens.scales" in specs:
        return  # packed by quantization: the shape no longer reads as vocab x hidden
    embed = specs["model.embed_tokens.weight"].shape
    expected = (config.get("vocab_size"), config.get("hidden_size"))
    if embed != expected:
        raise InvalidCheckpointError(
            f"{path}: model.embed_tokens.weight has shape {list(embed)} but config.json "
            f"says vocab_size x hidden_size = {list(expected)}."
        )


def _tokenizer_files(path: Path) -> list[str]:
    present = [f for f in TOKENIZER_FILES if (path / f).is_file()]
    has_model = "tokenizer.json" in present or {"vocab.json", "merges.txt"} <= set(present)
    missing = []
    if "tokenizer_config.json" not in present:
        missing.append("tokenizer_config.json")
    if not has_model:
        missing.append("tokenizer.json (or vocab.json and merges.txt)")
    if missing:
        raise InvalidCheckpointError(f"{path} is missing tokenizer files: {', '.join(missing)}.")
    return present


def inspect_checkpoint(path: str | Path, *, require_tokenizer: bool = True) -> Checkpoint:
    """Read and validate a checkpoint folder; raise a clear error for anything broken."""
    path = Path(path)
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is not a folder.")
    config = read_config(path)
    if config["model_type"] not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{path} holds a {config['model_type']!r} model; supported model types: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    files = _weight_files(path)
    specs, where = _read_specs(path, files)
    _check_tensors(path, config, specs)
    tokenizer = _tokenizer_files(path) if require_tokenizer else []
    extra = [f for f in EXTRA_FILES if (path / f).is_file()]
    return Checkpoint(path, config, files, specs, where, tokenizer, extra)
