"""OpenAI's `logprobs` shapes, from the per-token log probabilities the engine reports.

Chat completions give `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`;
completions give the older parallel lists (`tokens`, `token_logprobs`, `top_logprobs`,
`text_offset`). A token's text is its own bytes, decoded: Qwen's byte-level vocabulary
spells each byte as one character (GPT-2's table), so a token holding half of a UTF-8
character still has exact `bytes`. A log probability of minus infinity (a token a JSON
schema rules out) is written as -9999.0, as OpenAI does, since JSON has no infinity.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from ..runtime import Model, TokenLogprob

_FLOOR = -9999.0


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet backwards: the character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


def token_bytes(model: Model, token: int) -> bytes:
    """The bytes token id `token` stands for."""
    spelled = model.tokenizer.convert_ids_to_tokens(token)
    table = _byte_decoder()
    if isinstance(spelled, str) and spelled and all(c in table for c in spelled):
        return bytes(table[c] for c in spelled)
    return model.tokenizer.decode([token]).encode()  # a special token, or another vocabulary


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else _FLOOR


def _entry(model: Model, token: int, logprob: float) -> dict[str, Any]:
    raw = token_bytes(model, token)
    text = raw.decode("utf-8", errors="replace")
    return {"token": text, "logprob": _finite(logprob), "bytes": list(raw)}


def scored(parts: Iterable[str]) -> list[TokenLogprob]:
    """The token log probabilities the engine attached to these pieces of text."""
    return [lp for part in parts for lp in getattr(part, "logprobs", ())]


def chat_logprobs(model: Model, tokens: list[TokenLogprob]) -> dict[str, Any]:
    """A chat completion choice's `logprobs`."""
    content = [
        dict(
            _entry(model, t.token, t.logprob),
            top_logprobs=[_entry(model, i, lp) for i, lp in t.top],
        )
        for t in tokens
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(
    model: Model, tokens: list[TokenLogprob], *, offset: int = 0
) -> dict[str, Any]:
    """A completion choice's `logprobs`; `offset` is where this text starts in the reply."""
    texts = [_entry(model, t.token, 0.0)["token"] for t in tokens]
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [_finite(t.logprob) for t in tokens],
        "top_logprobs": [
            {_entry(model, i, 0.0)["token"]: _finite(lp) for i, lp in t.top} for t in tokens
        ],
        "text_offset": offsets,
    }
