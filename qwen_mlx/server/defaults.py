"""The server's defaults, defined once: the routes, the engine, uvicorn's configuration
and `qwen-mlx serve`'s flags all take them from here (a light module: `serve --help`
shows them without importing FastAPI)."""

from __future__ import annotations

DEFAULT_MAX_TOKENS_CAP = 16384  # Qwen's model card: enough output for most queries
DEFAULT_MAX_BODY_BYTES = 16 << 20
DEFAULT_BODY_TIMEOUT = 60.0  # seconds: 16 MiB at 0.3 MB/s
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds for a request's headers to arrive
DEFAULT_KEEP_ALIVE = 5  # seconds an idle connection stays open between requests
# What `serve --cache-dir` may fill by default: a few long agent conversations (a
# 20,000-token prompt of Qwen3-4B's bf16 KV cache is about 3 GB).
DEFAULT_CACHE_DIR_BYTES = 20 * 10**9
RETRY_AFTER = 2  # seconds a client turned away by a full server is asked to wait
# Requests in progress at most, by default: --max-batch + --max-queue and this many more
# (being read, prepared, or not generating; see connections.py).
CONNECTION_HEADROOM = 16
# What one request may hold (server/limits.py): far more than any client sends, far less
# than it takes to make validation and the chat template slow.
MAX_MESSAGES = 10_000  # messages, or Responses input items
MAX_CONTENT_BLOCKS = 10_000  # content parts and blocks in all, tool results' included
MAX_TOOLS = 1_000
