"""Ollama's API over the same engine, so apps that speak only Ollama work unchanged: its
request bodies (schemas.py), their translation into the shared request (translate.py),
its replies and errors (encode.py), the model's description (models.py) and its routes
(routes.py).

`/api/chat` and `/api/generate` (streamed as NDJSON, one JSON object a line, unless
`"stream": false`), `/api/tags`, `/api/show`, `/api/ps` and `/api/version`. A request is
turned into the shared request it means (`..prompt`) and prepared by `prepare.py`, so
templates, tool calls, JSON schemas and sampling work as they do on
`/v1/chat/completions`.

Ollama's `options` map onto our sampling parameters (temperature, top_p, top_k, min_p,
num_predict, stop, seed, repeat_penalty, presence and frequency penalties); `num_ctx`
caps the request's context (prompt plus reply); options that steer Ollama's own runner
(num_gpu, num_thread, mirostat, ...) are accepted and have no effect. `keep_alive` is
accepted: the model stays loaded for the life of the server. Errors come back as
Ollama's `{"error": "..."}`, mid-stream ones as such a line; so do those of every other
path under /api/ (an unknown route, a wrong method, an oversized body).
"""

from __future__ import annotations

from ...guard import KeySource, bearer_token
from ...protocol import Protocol
from .encode import ollama_error
from .routes import install

PROTOCOL = Protocol(
    name="ollama",
    prefixes=("/api/",),
    install=install,
    error_body=ollama_error,
    key=KeySource(bearer_token, "Set OLLAMA_API_KEY to it."),  # its clients send a Bearer
)
