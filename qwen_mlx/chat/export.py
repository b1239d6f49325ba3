"""A conversation as a Markdown document: a header with model and parameters, then one
section per message with its text exactly as it was (code blocks intact), each reply
followed by the sampling parameters it was generated with."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ..runtime.messages import Message

HEADINGS = {"user": "User", "assistant": "Assistant", "system": "System", "tool": "Tool"}


def to_markdown(
    *,
    title: str,
    model: str,
    params: dict[str, Any],
    policy: str,
    messages: Sequence[Message | dict[str, Any]],
    exported: datetime | None = None,
) -> str:
    """`params` are the chat's settings now; a reply's own (`Message.sampling`, recorded
    by ChatSession) can differ when they were changed during the chat."""
    when = (exported or datetime.now()).strftime("%Y-%m-%d %H:%M")
    shown = _params_text(params)
    lines = [
        f"# {title}",
        "",
        f"- Model: `{model}`",
        f"- Parameters: {shown or 'model defaults'}",
        f"- Context policy: {policy}",
        f"- Exported: {when}",
        "",
    ]
    for message in map(Message.of, messages):
        role = message.role
        heading = HEADINGS.get(role, role.title())
        if role == "tool" and message.name:
            heading += f" (`{message.name}`)"
        lines += [f"## {heading}", ""]
        content = message.content
        if role == "tool":
            lines += ["```", content, "```"]
        elif content:
            lines.append(content)
        for call in message.tool_calls:
            fn = call.get("function", call)
            args = fn.get("arguments", {})
            if isinstance(args, str):
                with contextlib.suppress(json.JSONDecodeError):
                    args = json.loads(args)
            lines += [
                "",
                f"Called `{fn.get('name')}` with:",
                "",
                "```json",
                json.dumps(args, indent=2, ensure_ascii=False),
                "```",
            ]
        if message.stopped:
            lines += ["", "_(stopped)_"]
        if role == "assistant" and message.sampling is not None:
            lines += ["", f"_Sampling: {_params_text(message.sampling) or 'not recorded'}_"]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"  # the last message keeps its own text


def _params_text(params: dict[str, Any]) -> str:
    """`temperature 0.7, top_p 0.8, ...`, leaving out what is unset."""
    return ", ".join(f"{k} {_value(v)}" for k, v in params.items() if v not in (None, (), []))


def _value(value: Any) -> str:
    if isinstance(value, list | tuple):  # stop strings
        return ", ".join(json.dumps(v, ensure_ascii=False) for v in value)
    return str(value)


def default_export_path(title: str, folder: Path | None = None) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "chat"
    return (folder or Path.cwd()) / f"{slug}-{datetime.now():%Y%m%d-%H%M}.md"
