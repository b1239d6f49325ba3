"""Checks on a request's JSON body before it is validated, prepared or rendered, so that a
body built to be slow is refused in time proportional to its size (200,000 one-character
messages took 16 s to refuse when validation, the Unicode walk and the chat template came
first):

- counts: at most `MAX_MESSAGES` messages (or Responses input items), `MAX_CONTENT_BLOCKS`
  content blocks in all (parts, Anthropic blocks and the blocks inside tool results) and
  `MAX_TOOLS` tools, limits no real client meets (a context holds at most a few tens of
  thousands of turns), checked by looking at list lengths only;
- text: every string valid Unicode (JSON's `\\ud800` escapes can spell lone surrogates,
  which no tokenizer or file takes: a 400 naming the field), and no more characters of
  text that goes into the prompt (message contents, system prompts, instructions, the
  prompt) than the context could hold whatever they say.

The guard (guard.py) runs them on every body a protocol's route reads.
"""

from __future__ import annotations

from typing import Any

from .defaults import MAX_CONTENT_BLOCKS, MAX_MESSAGES, MAX_TOOLS
from .errors import APIError

TURNS = ("messages", "input")  # where each protocol keeps its turns
_BLOCKS = ("content", "output")  # where a turn (or a tool result) keeps its blocks


def check_counts(body: Any) -> None:
    """Refuse a body with more turns, content blocks or tools than any request needs."""
    if not isinstance(body, dict):
        return
    for key in (*TURNS, "tools"):
        items = body.get(key)
        limit = MAX_TOOLS if key == "tools" else MAX_MESSAGES
        if isinstance(items, list) and len(items) > limit:
            raise _too_long(key, len(items), limit)
    blocks = _blocks(body.get("system"))
    for key in TURNS:
        turns = body.get(key)
        if isinstance(turns, list):
            blocks += sum(_blocks(t.get(k)) for t in turns if isinstance(t, dict) for k in _BLOCKS)
    if blocks > MAX_CONTENT_BLOCKS:
        key = next((k for k in TURNS if k in body), "messages")
        raise APIError(
            400,
            f"Invalid '{key}': too many content blocks. Expected at most "
            f"{MAX_CONTENT_BLOCKS:,} in all, but got {blocks:,} instead.",
            param=key,
            code="array_above_max_length",
        )


def _blocks(content: Any) -> int:
    """The blocks in a turn's content, and those inside its blocks (tool results)."""
    if not isinstance(content, list):
        return 0
    inner = (b.get("content") for b in content if isinstance(b, dict))
    return len(content) + sum(len(c) for c in inner if isinstance(c, list))


def _too_long(key: str, got: int, limit: int) -> APIError:
    return APIError(
        400,
        f"Invalid '{key}': array too long. Expected an array with maximum length {limit:,}, "
        f"but got an array with length {got:,} instead.",
        param=key,
        code="array_above_max_length",
    )


_TEXT_BLOCKS = (None, "text", "input_text", "output_text")


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of the text a body puts in the prompt as it is (the template adds its
    own around it): a lower bound on what the prompt holds, whatever else the body has."""
    total = sum(_text_chars(body.get(k)) for k in ("system", "instructions", "prompt"))
    for key in TURNS:
        turns = body.get(key)
        if isinstance(turns, str):
            total += len(turns)
        elif isinstance(turns, list):
            total += sum(
                _text_chars(t.get(k)) for t in turns if isinstance(t, dict) for k in _BLOCKS
            )
    return total


def _text_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for block in content:
        if isinstance(block, dict):
            if block.get("type") in _TEXT_BLOCKS and isinstance(block.get("text"), str):
                total += len(block["text"])
            if block.get("type") == "tool_result":
                total += _text_chars(block.get("content"))
    return total


def check_text(body: Any) -> None:
    """A 400 naming the field when a string in `body` (a key too) is not valid Unicode.
    One pass without paths; the path is found only for an error."""
    stack = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if not _valid(value):
                _locate(body)
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _valid(key):
                    _locate(body)
                stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)


def _valid(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _locate(body: Any) -> None:
    """Raise the 400 for the first string in `body` that is not valid Unicode."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            _check_string(value, path)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_string(key, path)
                stack.append((item, f"{path}.{key}" if path else str(key)))
        elif isinstance(value, list):
            stack.extend((item, f"{path}.{i}" if path else str(i)) for i, item in enumerate(value))


def _check_string(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        where = f"{path}: " if path else ""
        raise APIError(
            400,
            f"{where}the text is not valid Unicode (a lone surrogate, "
            f"{text[e.start]!r}, at character {e.start:,}). Send UTF-8 text.",
            param=path or None,
            code="invalid_unicode",
        ) from None
