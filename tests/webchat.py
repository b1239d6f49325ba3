"""Helpers for the web chat's tests: a real server on a free port, a client that behaves
like the page (CSRF token, same Origin), scripted model behaviours and an SSE reader."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from qwen_mlx.server import Engine
from qwen_mlx.server.web.chats import WebChats

from .served import serving

HOSTS = ["127.0.0.1", "localhost"]
MARKDOWN_REPLY = (
    "Here is a **table** and some code:\n\n"
    "| river | length (km) |\n|---|---|\n| Nile | 6650 |\n| Amazon | 6400 |\n\n"
    "```python\ndef longest(rivers):\n    return max(rivers, key=rivers.get)\n```\n"
)
SCRIPT_REPLY = '<script>window.pwned = 1</script><img src="x" onerror="window.pwned = 2"> done'


@dataclass
class Web:
    url: str  # ends in /
    engine: Engine
    chats: WebChats
    home: Path
    port: int


@contextmanager
def serve_web(model: Any, home: Path, *, api_key: str | None = None) -> Iterator[Web]:
    """`qwen-mlx serve`'s app (loopback Host check, optional key) on a free port."""
    app = {"allowed_hosts": HOSTS, "web_home": home}
    with serving(
        model, key=api_key, app=app, max_context=2048, max_tokens_cap=256, cache_bytes=16 << 20
    ) as served:
        port = int(served.base.rsplit(":", 1)[1])
        yield Web(served.base + "/", served.engine, served.app.state.web, home, port)


@contextmanager
def page_client(web: Web, **kwargs: Any) -> Iterator[httpx.Client]:
    """An httpx client that does what the page does: load `/`, then send its CSRF token
    and its own Origin with every API call."""
    with httpx.Client(base_url=web.url, timeout=60, **kwargs) as client:
        page = client.get("/")
        token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
        assert token, page.text[:400]
        client.headers.update({"X-CSRF-Token": token[1], "Origin": web.url.rstrip("/")})
        yield client


def events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of a whole reply."""
    out = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        name = re.search(r"^event: (.*)$", block, re.M)[1]
        data = re.search(r"^data: (.*)$", block, re.M)[1]
        out.append((name, json.loads(data)))
    return out


def streamed_html(got: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The reply as the page shows it after each `reply` event: the completed blocks sent
    so far, then the open one."""
    shown, stable = [], ""
    for name, data in got:
        if name == "reply":
            stable += data["append"]
            shown.append(stable + data["tail"])
    return shown


def attach(client: httpx.Client, chat_id: str, name: str, content: bytes) -> dict[str, Any]:
    """Attach a file as the page does; the `done` event's data (the conversation, its
    context, `read_tokens`)."""
    response = client.post(
        f"/web/api/chats/{chat_id}/attach", params={"name": name}, content=content
    )
    assert response.status_code == 200, response.text
    got = events(response)
    assert got[-1][0] == "done", got
    return got[-1][1]


def new_chat(client: httpx.Client, **settings: Any) -> str:
    response = client.post("/web/api/chats", json={"settings": settings})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def endless(script: Any) -> None:
    """The model writes "tick " until stopped (or out of tokens), 20 ms a token."""
    script.reply("tick ", repeat=True)
    script.delay = 0.02


def slow_read(script: Any, monkeypatch: Any) -> None:
    """The model reads its prompt a token a step, 0.1 s a step, with its progress: a long
    re-read on a slow machine, which a stop ends between steps."""
    import qwen_mlx.chat.session as session_module

    monkeypatch.setattr(session_module, "timely_chunk", lambda *args, **kwargs: 1)
    script.delay = 0.1


def raw_request(web: Web, client: httpx.Client, path: str, body: dict[str, Any]) -> Any:
    """A request sent on a bare socket, as a tab does, which the test can close (the tab
    closed) before any answer: the socket."""
    import socket

    data = json.dumps(body).encode()
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{web.port}",
        f"X-CSRF-Token: {client.headers['X-CSRF-Token']}",
        f"Origin: {client.headers['Origin']}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
    ]
    raw = socket.create_connection(("127.0.0.1", web.port))
    raw.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    return raw


async def in_terminal(model_path: Path, home: Path, chat_id: str | None, text: str, *commands: str):
    """Run the terminal app (Textual's Pilot) on chat `chat_id` (None: a new one): type
    each of `commands`, then send `text` and wait for the reply. Returns (chat id, the
    turn's stats)."""
    from tui.app import ChatApp
    from tui.widgets import PromptInput

    app = ChatApp(model=str(model_path), chat_id=chat_id, home=home)
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(600):
            if app.session is not None and not app.busy and (chat_id is None or app.chat):
                break
            await pilot.pause(0.05)
        assert not app.session.notices, app.session.notices  # its saved cache was usable
        for command in commands:
            app.query_one(PromptInput).load_text(command)
            await pilot.press("enter")
        before = len(app.session.messages)
        app.query_one(PromptInput).load_text(text)
        await pilot.press("enter")
        for _ in range(600):
            if len(app.session.messages) > before + 1 and not app.streaming and not app.busy:
                break
            await pilot.pause(0.05)
        assert len(app.session.messages) == before + 2, "the terminal app did not reply"
        return app.chat.id, app.session.last_stats


def write_pdf_pages(path: Path, pages: int) -> None:
    """A PDF of `pages` blank pages."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(612, 792)
    with open(path, "wb") as f:
        writer.write(f)


def write_pdf_over_limit(path: Path) -> None:
    """A PDF whose cross-reference table declares a billion entries: pypdf refuses it
    with its LimitReachedError (not a PdfReadError)."""
    write_pdf_pages(path, 1)
    data = re.sub(rb"xref\n0 \d+", b"xref\n0 999999999", path.read_bytes())
    path.write_bytes(data)
