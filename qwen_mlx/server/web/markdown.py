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
import re
from typing import Any

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

from ...runtime import Message

CODE_STYLE = "default"  # Pygments' style for code blocks (its CSS is served with the page)


def _highlight(code: str, lang: str, _attrs: str) -> str:
    """Pygments' spans for a fenced block in a language it knows, else "" (markdown-it
    then escapes the code itself). Pygments escapes what it highlights."""
    lexer = _lexer(lang.split()[0]) if lang.strip() else None
    return highlight(code, lexer, _FORMATTER) if lexer is not None else ""


_FORMATTER = HtmlFormatter(nowrap=True)


@functools.lru_cache(maxsize=64)
def _lexer(name: str) -> Any:
    """Pygments' lexer for a fence's language (looking one up scans its plugins: slow)."""
    try:
        return get_lexer_by_name(name, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return None


@functools.cache
def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "highlight": _highlight})
    return md.enable(["table", "strikethrough"])


def render_markdown(text: str) -> str:
    """`text` (a reply, possibly cut mid-stream) as HTML: an open code fence renders as a
    code block up to the end, so a reply can be shown again after every few tokens."""
    return _parser().render(text)


class MarkdownStream:
    """A reply rendered as it grows, in time linear in its length: the blocks that are
    complete (before a blank line outside any code fence) are rendered once and sent
    once; only the open block after them is rendered again on each update. Splitting
    there can render a loose list as two; the whole reply is rendered again at its end."""

    def __init__(self) -> None:
        self.text = ""
        self._stable = 0  # text[:_stable] is rendered and sent

    def feed(self, piece: str) -> tuple[str, str]:
        """Add `piece`; return (HTML of the blocks completed since the last call, HTML of
        the open block)."""
        self.text += piece
        cut = _last_block_end(self.text, self._stable)
        done = ""
        if cut > self._stable:
            done = render_markdown(self.text[self._stable : cut])
            self._stable = cut
        return done, render_markdown(self.text[self._stable :])


_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def _last_block_end(text: str, start: int) -> int:
    """The end of the last blank line after `start` that is outside a code fence and
    followed by an unindented line (so not inside an indented block), else `start`."""
    cut, fence, pos = start, None, start
    while True:
        end = text.find("\n", pos)
        if end < 0:
            return cut  # the last line may still grow: never judged
        line = text[pos:end]
        opened = _FENCE.match(line)
        if fence is None and opened:
            fence = opened[1]
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)):
            if line.strip() == line.strip()[0] * len(line.strip()):
                fence = None
        elif fence is None and not line.strip():
            after = end + 1
            if after < len(text) and text[after] not in " \t\n":
                cut = after
        pos = end + 1


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
