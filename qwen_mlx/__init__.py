"""qwen-mlx: run Qwen3-4B-Instruct-2507 on Apple Silicon with MLX.

    from qwen_mlx import load, generate, stream_generate, batch_generate, ChatSession
    model = load("qwen3-4b-instruct")

Conversion lives in `qwen_mlx.convert` (`from qwen_mlx.convert import convert`).
Names are imported on first use, so `import qwen_mlx` (and `qwen-mlx --help`) stays
instant and does not load MLX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

_EXPORTS = {
    "__version__": "_version",
    "load": "runtime",
    "generate": "runtime",
    "batch_generate": "runtime",
    "BatchResult": "runtime",
    "stream_generate": "runtime",
    "Model": "runtime",
    "SamplingParams": "runtime",
    "GenerationChunk": "runtime",
    "Store": "store",
    "ModelName": "store.naming",
    "ChatSession": "chat.session",
    "ContextPolicy": "chat.policy",
    "MCPServer": "chat.mcp_client",
    "Message": "runtime.messages",
    "TurnStats": "chat.session",
    "MemoryPlanner": "runtime.memory",
}

__all__ = [
    "BatchResult",
    "ChatSession",
    "ContextPolicy",
    "GenerationChunk",
    "MCPServer",
    "MemoryPlanner",
    "Message",
    "Model",
    "ModelName",
    "SamplingParams",
    "Store",
    "TurnStats",
    "__version__",
    "batch_generate",
    "generate",
    "load",
    "stream_generate",
]

if TYPE_CHECKING:
    from ._version import __version__
    from .chat.mcp_client import MCPServer
    from .chat.policy import ContextPolicy
    from .chat.session import ChatSession, TurnStats
    from .runtime import (
        BatchResult,
        GenerationChunk,
        Model,
        SamplingParams,
        batch_generate,
        generate,
        load,
        stream_generate,
    )
    from .runtime.memory import MemoryPlanner
    from .runtime.messages import Message
    from .store import Store
    from .store.naming import ModelName


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
