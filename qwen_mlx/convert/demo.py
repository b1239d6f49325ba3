"""The demo model: a tiny random Qwen3 built on the spot and converted into the store
exactly as a real model is (manifest, registry, latest), for `qwen-mlx demo`, the chat
app's first run and tests. Its weights are random: it talks nonsense."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEMO_SOURCE = "qwen3-3m-demo-0000"
DEMO_MODEL = f"{DEMO_SOURCE}-mlx-q4-g64"


def demo_config() -> Any:
    from .tiny import TinyConfig

    # ~3M parameters: big enough to look like a model, small enough for any CPU.
    return TinyConfig(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=32,
        intermediate_size=768,
    )


def ensure_demo_model(
    *, rebuild: bool = False, progress: Callable[[Any], None] | None = None
) -> str:
    """Build and convert the demo model into the store unless it is there; return its name."""
    from ..store import Store, naming
    from . import convert
    from .tiny import build_tiny_checkpoint

    store = Store()
    if store.path_for(naming.parse(DEMO_MODEL)).is_dir() and not rebuild:
        return DEMO_MODEL
    with tempfile.TemporaryDirectory(prefix="qwen-mlx-demo-") as tmp:
        source = build_tiny_checkpoint(
            Path(tmp) / DEMO_SOURCE, demo_config(), tokenizer_vocab_size=1024
        )
        convert(str(source), force=rebuild, progress=progress)
    return DEMO_MODEL
