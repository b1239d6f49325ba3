"""OpenAI's API: chat completions, completions and models: their request bodies
(schemas.py), their translation into the shared request (translate.py), their replies,
whole and streamed (encode.py), and the routes (routes.py). The Responses API, OpenAI's
too, is a protocol of its own (`responses`)."""

from __future__ import annotations

from ...protocol import Protocol
from .routes import install

PROTOCOL = Protocol(name="openai", prefixes=("/v1/",), install=install)
