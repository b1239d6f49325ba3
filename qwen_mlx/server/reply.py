"""The model's text as a reply: `<tool_call>` blocks taken out of the content as it
streams and parsed into tool calls when it ends (`Reply`), and how it ends (`Outcome`),
which every protocol shapes into its own reply.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..chat.tools import CallFilter, ToolCall, cut_call, parse_tool_calls

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How a reply ends: `tail`, the content still to show (what the stream held back
    until it knew whether a call began there), `content`, the whole content (None when
    the reply is only calls), the tool calls, and the finish reason in OpenAI's words
    ("stop", "length", "tool_calls")."""

    tail: str
    content: str | None
    calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"


class Reply:
    """Shapes the model's text into an OpenAI assistant message: `<tool_call>` blocks come
    out of the content and become `tool_calls` (malformed ones are logged and dropped).

    A forced call (`forced`: the names it may call; the server opened it with `prefix`)
    cut off by max_tokens comes back as what each API returns for one: the call, with its
    arguments as far as they were written (`ToolCall.partial`), finish reason "length",
    never the text of our call wrapper. A call the model opened itself and max_tokens cut
    is not a call: its text as written becomes the content, finish reason "length", never
    an empty message. `parses_calls` says whether shaping does real work (the app then
    runs it off the event loop).
    """

    def __init__(
        self,
        *,
        parse_calls: bool,
        prefix: str = "",
        suffix: str = "",
        forced: Sequence[str] = (),
    ) -> None:
        self._filter = CallFilter() if parse_calls else None
        self._parts: list[str] = []
        self._shown: list[str] = []
        self._prefix, self._suffix = prefix, suffix
        self._forced = tuple(forced)
        self.feed(prefix)

    @property
    def parses_calls(self) -> bool:
        return self._filter is not None

    def feed(self, text: str) -> str:
        """Text from the model; returns the content to show now."""
        self._parts.append(text)
        shown = self._filter.feed(text) if self._filter else text
        self._shown.append(shown)
        return shown

    def finish(self, reason: str) -> Outcome:
        """How the reply ends, given the engine's finish reason (see `Outcome`)."""
        tail = self.feed(self._suffix) if self._suffix and reason == "stop" else ""
        text = "".join(self._parts)
        if self._filter is None:
            return Outcome(tail, text, [], reason)
        held, unterminated = self._filter.finish()
        tail += held
        cut_off = reason == "length" and unterminated is not None
        if cut_off and self._forced and unterminated.startswith(self._prefix):
            call = cut_call(unterminated[len(self._prefix) :], self._forced)
            if call is not None and call.partial is None:  # only the closing brace was cut
                return Outcome(tail, tail or None, [call], "tool_calls")
            return Outcome(tail, tail or None, [call] if call is not None else [], reason)
        if cut_off:
            tail += unterminated
        prose, calls = parse_tool_calls(text)
        valid = [c for c in calls if c.error is None]
        for bad in (c for c in calls if c.error is not None and not cut_off):
            logger.warning("dropped a malformed tool call (%s): %.200s", bad.error, bad.raw)
        if cut_off:
            content = ("".join(self._shown) + tail).strip()
            return Outcome(tail, content or None, valid, reason)
        if not calls:
            return Outcome(tail, text, [], reason)
        reason = "tool_calls" if valid and reason == "stop" else reason
        return Outcome(tail, prose or None, valid, reason)
