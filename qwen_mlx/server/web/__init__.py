"""The web chat at `/` of `qwen-mlx serve`: the same chats as the terminal app, in a browser.

- `routes.py`: the page and its JSON API (`install`: how the server registers it).
- `chats.py`: its chats: the terminal app's chat store and saved KV caches, a ChatSession
  on the model thread per open chat, a busy chat refused to a second tab.
- `replies.py`: replies streamed as server-sent events of rendered HTML.
- `markdown.py`: server-side Markdown (markdown-it-py with raw HTML off, Pygments), only
  the open block re-rendered as a reply grows.
- `auth.py`: the API key's session cookie, the CSRF token and the Origin check.
- `static/`: the page's HTML, CSS and JavaScript, served by us (no CDN, no build step).
"""

from __future__ import annotations

from ..protocol import Protocol
from .routes import install

# Its errors are in OpenAI's shape, the server's default; it checks the API key itself
# (a session cookie from signing in once, or a Bearer header: auth.py).
PROTOCOL = Protocol(name="web", prefixes=("/web/",), install=install, key=None)

__all__ = ["PROTOCOL"]
