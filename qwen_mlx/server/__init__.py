"""HTTP APIs for one loaded model: OpenAI (chat completions, completions, models),
OpenAI's Responses, Anthropic Messages, Ollama, Prometheus metrics and the web chat, side
by side over shared parts.

The app (`app.py`: `create_app`) only assembles: the request guards, then each protocol,
registered the same way (`protocol.py`: a `Protocol` names its paths, adds its routes
over a `ServerContext`, says where its clients send the API key and writes its errors).

The protocols, one place each (its request schemas, their translation into the shared
request, its encoder of replies whole and streamed, its routes):
- `protocols/openai/`: chat completions, completions and models.
- `protocols/responses/`: OpenAI's Responses API, with its store of responses.
- `protocols/anthropic/`: Anthropic's Messages API and token counts.
- `protocols/ollama/`: Ollama's API (chat, generate, tags, show, ps, version).
- `protocols/health.py` (`/health`, no key), `protocols/prometheus.py` (`/metrics`).
- `web/`: the web chat at `/` (its routes, chats, streamed replies, Markdown, auth and
  static page).

The shared parts they stand on:
- `guard.py`: the API key (one comparison), the JSON body whatever its Content-Type,
  and `limits.py`'s per-request caps (messages, content blocks, tools, valid Unicode,
  characters that could fit the context), checked before the schema.
- `schemas.py`: what request schemas share (the base model, finite numbers, function
  tools, the server's sampling fields and bounds, `validated`).
- `prompt.py`: the shared request (`ChatPrompt`, `TextPrompt`) and the helpers that
  say a message, a tool call, a tool or content parts the same way for every protocol.
- `prepare.py`: a shared request into a job (template, tokens, tools, response schema,
  sampling, context checks), on the engine's preparation threads.
- `reply.py`: the model's text as a reply (tool calls out of the content) and how it
  ends (`Outcome`). `logprobs.py`: OpenAI's `logprobs` shapes (chat, completions,
  Responses).
- `relay.py`: the event loop's side of a generation: the engine's events whole or
  streamed through a protocol's `Encoder`, disconnects, cancellation, the 500 inside a
  stream, the streaming headers.
- `errors.py`: `APIError`, and one mechanism writing every error in the shape of the
  protocol whose path the request took (`ErrorShapes`), before routing too.
- `engine.py`: the generation engine (`Engine`): jobs on the model thread, each reusing
  the pooled KV cache that shares the longest prefix with its prompt (`cache_pool.py`).
- `scheduler.py`: continuous batching: concurrent jobs decode together, admitted by the
  memory planner; the queue limit (503) and recovery from a crashed step.
- `jobs.py`: what the engine and the scheduler pass around (`Job`, `Text`, `Finished`).
- `metrics.py`: the counters `/metrics` serves, and the middleware counting requests.
- `connections.py`: how many requests run at once (`RequestLimit`: 503 in the protocol's
  shape past it, a reserve for /health and other reads), the body's size and time
  (`BodyLimit`: 413, 408) and the uvicorn configuration: header and keep-alive timeouts,
  a bound on open sockets (`server_config`).
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
