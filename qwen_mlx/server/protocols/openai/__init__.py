"""OpenAI's API: chat completions, completions and models (routes.py), their replies
(encode.py). The Responses API, OpenAI's too, is a protocol of its own (`responses`)."""

from __future__ import annotations

from ...protocol import Protocol
from .routes import install

PROTOCOL = Protocol(name="openai", prefixes=("/v1/",), install=install)
