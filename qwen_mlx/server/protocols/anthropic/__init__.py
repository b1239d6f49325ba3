"""Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`), for Claude Code
and the Anthropic SDKs: its request bodies (schemas.py), their translation into the
shared request (translate.py), its replies and errors (encode.py) and its routes
(routes.py).

The key is accepted as `x-api-key` (what Anthropic's SDKs and Claude Code send) or as
`Authorization: Bearer`. Every error on these paths, including validation, auth and
body-size refusals, is in Anthropic's shape.
"""

from __future__ import annotations

from ...guard import KeySource
from ...protocol import Protocol
from .encode import anthropic_error
from .routes import PREFIX, install, x_api_key_or_bearer

PROTOCOL = Protocol(
    name="anthropic",
    prefixes=(PREFIX,),
    install=install,
    error_body=anthropic_error,
    key=KeySource(
        x_api_key_or_bearer,
        "Send it as `x-api-key: <key>` (ANTHROPIC_API_KEY) or `Authorization: Bearer <key>`.",
    ),
)
