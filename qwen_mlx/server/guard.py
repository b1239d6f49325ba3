"""The guard in front of every protocol's routes: the API key, and the JSON body.

- The key: one comparison (`same_key`, in constant time) for every protocol, each saying
  where its clients put the key (`KeySource`: `Authorization: Bearer`, or Anthropic's
  `x-api-key` first) and what a refusal tells them. The web chat asks for the key once
  and keeps a session (web/auth.py), comparing with the same function.
- The body (`Guard.read`): JSON whatever its Content-Type says (none, `text/plain`: the
  servers these protocols come from read those too, and clients such as litellm send
  them); a body that is not JSON is a 400 saying so. Before it is validated against the
  route's schema it is held to the per-request caps (limits.py): how many turns,
  content blocks and tools it has, that its text is valid Unicode, and that it has no
  more characters than the context could hold, so a body built to be slow is refused
  in time proportional to its size. A schema's refusal is a 400 naming the field.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel

from .errors import APIError, not_json
from .limits import TURNS, check_counts, check_text, prompt_chars
from .schemas import validated

if TYPE_CHECKING:
    from .engine import Engine

B = TypeVar("B", bound=BaseModel)


@dataclass(frozen=True)
class KeySource:
    """Where a protocol's clients send the API key (`read`: the key a request gives, None
    for none), and what a refusal tells them to do (`hint`)."""

    read: Callable[[Request], str | None]
    hint: str


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


BEARER = KeySource(bearer_token, "Send it as `Authorization: Bearer <key>`.")


def same_key(given: str | None, key: str) -> bool:
    """Whether `given` is `key`, compared in constant time (no timing tells how much of a
    guess was right)."""
    return given is not None and hmac.compare_digest(given.encode(), key.encode())


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, whatever its Content-Type said; a 400 when it is not JSON."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise not_json(e.msg) from None
    except UnicodeDecodeError:
        raise not_json("it is not UTF-8 text") from None


class Guard:
    """The API key check (`key_check`, a route dependency) and body reading (`read`) of a
    server answering for `engine`, with `api_key` (None: every request may pass)."""

    def __init__(self, engine: Engine, api_key: str | None) -> None:
        self.engine = engine
        self.api_key = api_key

    def key_check(self, source: KeySource | None) -> list[Any]:
        """The dependencies checking the key where `source` says clients send it (none
        for a protocol that checks it itself or needs none, or a server without a key)."""
        if source is None or self.api_key is None:
            return []
        key = self.api_key

        async def check(request: Request) -> None:
            if not same_key(source.read(request), key):
                raise APIError(
                    401, f"Incorrect or missing API key. {source.hint}", code="invalid_api_key"
                )

        return [Depends(check)]

    async def read(self, request: Request, schema: type[B]) -> B:
        """The request's body, checked (see the module docstring) and validated."""
        raw = await request.body()
        body = parse_json(raw) if raw.strip() else None
        check_counts(body)
        check_text(body)
        if isinstance(body, dict):
            param = next((k for k in (*TURNS, "prompt") if k in body), None)
            self.engine.check_characters(prompt_chars(body), param)
        return validated(schema, body)
