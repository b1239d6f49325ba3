"""The qwen-mlx terminal chat app (Textual). Run it with `qwen-mlx chat` or `python -m tui`."""

from __future__ import annotations

__all__ = ["ChatApp", "main"]


def __getattr__(name: str):
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'tui' has no attribute {name!r}")
