"""Model references: `resolve` turns a store name, a family id (its latest), a folder or
a Hugging Face repo id into a folder."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelNotFoundError
from . import naming
from .versions import Store

MLX_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.jinja", "LICENSE")


def resolve(
    ref: str | os.PathLike, *, home: str | Path | None = None, revision: str | None = None
) -> Path:
    """Turn a model reference into a folder: an existing path, a store name or family id
    (its latest), or a Hugging Face repo id of an MLX model (downloaded to the HF cache)."""
    from . import hub

    text = os.fspath(ref)
    local = Path(text).expanduser()
    if local.is_dir():
        return local
    store = Store(home)
    try:
        if (naming.is_name(text) or naming.is_family_id(text)) and store.models_dir.is_dir():
            found = store.find(text)
            if found is not None:
                return found
    finally:
        store.close()
    if hub.looks_like_repo_id(text):
        return hub.fetch(text, revision=revision, allow_patterns=MLX_PATTERNS).path
    if naming.is_name(text) or naming.is_family_id(text):
        raise ModelNotFoundError(
            f"No model {text} in the store at {store.root}.{store.did_you_mean(text)} "
            "Convert one with "
            "`qwen-mlx convert --hf-path Qwen/Qwen3-4B-Instruct-2507`, see what is there with "
            "`qwen-mlx models list`, or try `qwen-mlx demo`."
        )
    raise ModelNotFoundError(
        f"No model {text!r}: it is not a folder, a store name (like qwen3-4b-instruct) "
        "or a Hugging Face repo id (like mlx-community/Qwen3-4B-Instruct-2507-4bit)."
        f"{store.did_you_mean(text)}"
    )
