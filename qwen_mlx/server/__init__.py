"""HTTP APIs for one loaded model: OpenAI (chat completions, completions, responses,
models), Anthropic Messages, Ollama, Prometheus metrics and the web chat.

- `app.py`: the FastAPI app (`create_app`): routes, API key check, responses and streams.
- `ollama.py`: Ollama's API (`/api/chat`, `/api/generate`, tags, show, ps, version) over
  the same engine and preparation, for apps that speak only Ollama.
- `engine.py`: the generation engine (`Engine`): jobs on the model thread, each reusing
  the pooled KV cache that shares the longest prefix with its prompt.
- `scheduler.py`: continuous batching: concurrent jobs decode together, admitted by the
  memory planner; disconnects, the queue limit (503) and recovery from a crashed step.
- `prepare.py`: requests into jobs (template, tokens, tools, response format, sampling),
  and the model's text into replies with tool calls.
- `schemas.py`: the request bodies, as pydantic models.
- `limits.py`: what a body may hold, checked before validation (messages, content blocks,
  tools, valid Unicode, characters that could fit the context).
- `errors.py`: errors in OpenAI's shape, the body-size limit and the catch-all for the rest.
- `anthropic.py`: Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`).
- `responses.py`: OpenAI's Responses API (`/v1/responses`), with stored responses.
- `logprobs.py`: OpenAI's `logprobs` shapes for chat completions and completions.
- `metrics.py`: `GET /metrics` in Prometheus' format.
- `web/`: the web chat at `/` (its routes, chats, streamed replies, Markdown, auth and
  static page).
- `connections.py`: how many requests run at once (`RequestLimit`: 503 in the protocol's
  shape past it, a reserve for /health and other reads) and the uvicorn configuration:
  header and keep-alive timeouts, a bound on open sockets (`server_config`).
- `net.py`: loopback addresses and the Host header check. `defaults.py`: the limits'
  defaults, defined once (the CLI's flags show them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_MAX_BODY_BYTES": "defaults",
    "DEFAULT_MAX_TOKENS_CAP": "defaults",
    "APIError": "errors",
    "ChatRequest": "protocols.openai.schemas",
    "CompletionRequest": "protocols.openai.schemas",
    "Engine": "engine",
    "Finished": "jobs",
    "Job": "jobs",
    "create_app": "app",
    "server_config": "connections",
}

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
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

if TYPE_CHECKING:
    from .app import create_app
    from .connections import server_config
    from .defaults import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TOKENS_CAP
    from .engine import Engine
    from .errors import APIError
    from .jobs import Finished, Job
    from .protocols.openai.schemas import ChatRequest, CompletionRequest

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
