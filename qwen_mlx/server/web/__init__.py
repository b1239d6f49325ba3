"""The web chat at `/` of `qwen-mlx serve`: the same chats as the terminal app, in a browser.

- `routes.py`: the page and its JSON API (`mount_web`).
- `chats.py`: its chats: the terminal app's chat store and saved KV caches, a ChatSession
  on the model thread per open chat, a busy chat refused to a second tab.
- `replies.py`: replies streamed as server-sent events of rendered HTML.
- `markdown.py`: server-side Markdown (markdown-it-py with raw HTML off, Pygments), only
  the open block re-rendered as a reply grows.
- `auth.py`: the API key's session cookie, the CSRF token and the Origin check.
- `static/`: the page's HTML, CSS and JavaScript, served by us (no CDN, no build step).
"""

from __future__ import annotations

from .routes import mount_web

__all__ = ["mount_web"]
