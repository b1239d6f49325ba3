"""`Message`: one turn of a conversation, as every layer keeps it.

The public API speaks OpenAI-style dicts (`{"role": ..., "content": ...}`); inside, a
message is this dataclass, which also carries what only we know: the exact token ids the
model produced for a reply (so rendering the history gives back the cached tokens), whether
a reply was stopped, and the sampling parameters it was generated with. One conversion at
each edge: `Message.from_dict` in, `to_openai` (public) or `to_dict` (storage) out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
# Keys earlier versions stored with a leading underscore (session files, the chat store).
_LEGACY = {"_token_ids": "token_ids", "_sampling": "sampling"}


@dataclass(frozen=True)
class Message:
    role: str
    content: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()  # OpenAI-style entries of an assistant reply
    tool_call_id: str | None = None  # a tool result answers this call
    name: str | None = None  # the tool's name, on a tool result
    token_ids: tuple[int, ...] | None = field(default=None, compare=False)
    stopped: bool = False  # a reply ended early on request
    sampling: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Unknown role {self.role!r}; a message is one of {', '.join(ROLES)}.")
        if not isinstance(self.content, str):
            raise TypeError(f"A message's content is text, not {type(self.content).__name__}.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        """From an OpenAI-style dict, or one `to_dict` wrote (earlier versions' keys too).
        Token ids that are not a list of ints are dropped: they are a shortcut for
        rendering only, the text is the truth."""
        if not isinstance(data, Mapping):
            raise TypeError(f"A message is a dict, not {type(data).__name__}.")
        values = {_LEGACY.get(k, k): v for k, v in data.items()}
        ids = values.get("token_ids")
        return cls(
            role=values.get("role"),
            content=values.get("content") or "",
            tool_calls=tuple(values.get("tool_calls") or ()),
            tool_call_id=values.get("tool_call_id"),
            name=values.get("name"),
            token_ids=tuple(ids) if _int_list(ids) else None,
            stopped=bool(values.get("stopped")),
            sampling=values.get("sampling") if isinstance(values.get("sampling"), dict) else None,
        )

    @classmethod
    def of(cls, message: Message | Mapping[str, Any]) -> Message:
        return message if isinstance(message, Message) else cls.from_dict(message)

    def to_openai(self) -> dict[str, Any]:
        """The public view: OpenAI's keys (and `"stopped": True` on a stopped reply)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [dict(c) for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        if self.stopped:
            out["stopped"] = True
        return out

    def template(self) -> dict[str, Any]:
        """What the chat template renders."""
        out = self.to_openai()
        out.pop("stopped", None)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready, for a front end or a file that keeps conversations."""
        out = self.to_openai()
        if self.token_ids is not None:
            out["token_ids"] = list(self.token_ids)
        if self.sampling is not None:
            out["sampling"] = dict(self.sampling)
        return out

    def short(self) -> str:
        """The message as JSON, shortened, for an error message."""
        shown = json.dumps(self.to_openai(), ensure_ascii=False)
        return shown if len(shown) <= 60 else shown[:57] + "..."


def _int_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )
