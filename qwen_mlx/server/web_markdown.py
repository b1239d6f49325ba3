"""Model text as safe HTML for the web chat: Markdown with tables and highlighted code.

Rendering happens on the server, with markdown-it-py (CommonMark plus GFM tables and
strikethrough) and Pygments, the two libraries Textual already brings for the terminal
app's Markdown. Raw HTML in the text is never passed through (`html=False`: `<script>`
comes out as `&lt;script&gt;`), and markdown-it refuses `javascript:` and other unsafe
link targets. So whatever the model writes, the page only ever receives markup we made.
"""

from __future__ import annotations

import functools
import html
from typing import Any

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

from ..runtime import Message

CODE_STYLE = "default"  # Pygments' style for code blocks (its CSS is served with the page)


def _highlight(code: str, lang: str, _attrs: str) -> str:
    """Pygments' spans for a fenced block in a language it knows, else "" (markdown-it
    then escapes the code itself). Pygments escapes what it highlights."""
    if not lang:
        return ""
    try:
        lexer = get_lexer_by_name(lang.split()[0], stripnl=False, ensurenl=False)
    except ClassNotFound:
        return ""
    return highlight(code, lexer, HtmlFormatter(nowrap=True))


@functools.cache
def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "highlight": _highlight})
    return md.enable(["table", "strikethrough"])


def render_markdown(text: str) -> str:
    """`text` (a reply, possibly cut mid-stream) as HTML: an open code fence renders as a
    code block up to the end, so a reply can be shown again after every few tokens."""
    return _parser().render(text)


def render_plain(text: str) -> str:
    """`text` exactly as typed (a user's message), escaped."""
    return html.escape(text)


@functools.cache
def code_css() -> str:
    """The CSS for highlighted code, scoped to the reply bodies."""
    return HtmlFormatter(style=CODE_STYLE).get_style_defs(".md pre code")


def message_view(index: int, message: Message) -> dict[str, Any]:
    """A message as the page shows it: replies as Markdown, the rest as typed."""
    shown = render_markdown if message.role == "assistant" else render_plain
    return {
        "index": index,
        "role": message.role,
        "html": shown(message.content),
        "stopped": message.stopped,
    }


def message_views(messages: list[Message]) -> list[dict[str, Any]]:
    """What the page shows of a conversation: every message but the system prompt, each
    with its index in the conversation (what edit-and-resend names)."""
    return [message_view(i, m) for i, m in enumerate(messages) if m.role != "system"]
