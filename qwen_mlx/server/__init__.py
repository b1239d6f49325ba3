"""An OpenAI-compatible HTTP API for one loaded model: chat completions, completions, models.

- `app.py`: the FastAPI app (`create_app`): routes, API key check, responses and streams.
- `engine.py`: the generation queue (`Engine`): one job at a time on the model thread,
  each reusing the pooled KV cache that shares the longest prefix with its prompt.
- `prepare.py`: requests into jobs (template, tokens, tools, response format, sampling),
  and the model's text into replies with tool calls.
- `schemas.py`: the request bodies, as pydantic models.
- `errors.py`: errors in OpenAI's shape, the body-size limit and the catch-all for the rest.
- `web.py`: the web chat at `/` (its page and JSON API); `web_chats.py` its chats (the
  terminal app's store, ChatSession on the model thread), `web_replies.py` its streamed
  replies, `web_auth.py` its API-key session and CSRF checks, `web_markdown.py` its
  server-side Markdown; the page's files are in `web/`.
- `connections.py`: the uvicorn configuration: header and keep-alive timeouts, and a
  connection limit (`server_config`).
"""

from __future__ import annotations

from .app import DEFAULT_MAX_BODY_BYTES, create_app
from .connections import DEFAULT_MAX_CONNECTIONS, server_config
from .engine import DEFAULT_MAX_TOKENS_CAP, Engine, Finished, Job
from .errors import APIError
from .schemas import ChatRequest, CompletionRequest

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_TOKENS_CAP",
    "APIError",
    "ChatRequest",
    "CompletionRequest",
    "Engine",
    "Finished",
    "Job",
    "create_app",
    "server_config",
]
