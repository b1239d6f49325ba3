"""MCP tools in the chat app, driven with Pilot: servers from the `mcp` section of
$QWEN_MLX_HOME/chat.json (tests/mcp_notes.py over stdio and streamable HTTP), `/mcp`, each
call shown, and a question before calls to a server that is not trusted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from types import SimpleNamespace

import pytest

from tui.app import ChatApp
from tui.screens import ConfirmScreen
from tui.widgets import MessageView

from .helpers import MCP_NOTES
from .tool_cases import ScriptedReplies, tool_call
from .tui_pilot import driving, exchange, notices, ready, type_and_send, wait_for


@pytest.fixture
def config(home, notes_url):
    """Writes chat.json naming these of `notes` (stdio, trusted), `web` (HTTP, not
    trusted) and `docs` (HTTP, trusted); all serve the same three tools."""
    servers = {
        "notes": {"command": sys.executable, "args": [str(MCP_NOTES)], "trusted": True},
        "web": {"url": notes_url},
        "docs": {"url": notes_url, "trusted": True},
    }

    def write(*names: str):
        path = home / "chat.json"
        path.write_text(json.dumps({"mcp": {name: servers[name] for name in names}}))
        return path

    return write


def script(monkeypatch, tiny_model, replies: list[str]) -> ScriptedReplies:
    return ScriptedReplies(monkeypatch, SimpleNamespace(model=tiny_model), replies)


@contextlib.asynccontextmanager
async def running(home, tiny_mlx, *servers: str):
    """The app with its model loaded and these MCP servers connected."""
    app = ChatApp(home=home, model=str(tiny_mlx))
    async with driving(app) as pilot:
        await ready(pilot)
        await wait_for(pilot, lambda: set(servers) <= set(app.tool_servers.servers))
        yield app, pilot


async def listing(pilot) -> str:
    """What /mcp says, once it has said it."""
    app = pilot.app
    before = sum(n.title == "MCP servers" for n in app._notifications)
    app.run_command("/mcp")
    await wait_for(
        pilot, lambda: sum(n.title == "MCP servers" for n in app._notifications) > before
    )
    return [n.message for n in app._notifications if n.title == "MCP servers"][-1]


async def said(pilot, text: str) -> None:
    await wait_for(pilot, lambda: any(text in n for n in notices(pilot.app)))


def tool_views(app) -> list[str]:
    return [v.content for v in app.query(MessageView) if v.role == "tool"]


def test_a_trusted_servers_call_runs_without_asking_and_is_shown(
    home, tiny_mlx, tiny_model, monkeypatch, config
):
    config("notes")
    script(monkeypatch, tiny_model, [tool_call("add", a=2, b=40), "It is 42."])

    async def run():
        async with running(home, tiny_mlx, "notes") as (app, pilot):
            await wait_for(pilot, lambda: "add" in app.session.tools)
            await exchange(pilot, "Sum")
            assert not isinstance(app.screen, ConfirmScreen)
            assert [m["role"] for m in app.session.messages] == [
                "user",
                "assistant",
                "tool",
                "assistant",
            ]
            assert app.session.messages[2]["content"] == "42"
            await wait_for(pilot, lambda: tool_views(app))
            (shown,) = tool_views(app)
            assert "notes.add" in shown and "42" in shown
            views = [v.role for v in app.query(MessageView)]
            assert views == ["user", "tool", "assistant"]  # the call above the reply

    asyncio.run(run())


def test_an_untrusted_servers_call_asks_first(home, tiny_mlx, tiny_model, monkeypatch, config):
    config("web")
    replies = [tool_call("shout", text="hi"), "Done.", tool_call("shout", text="no"), "Fine."]
    script(monkeypatch, tiny_model, replies)

    async def run():
        async with running(home, tiny_mlx, "web") as (app, pilot):
            await wait_for(pilot, lambda: "shout" in app.session.tools)
            await type_and_send(pilot, "Shout")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert "shout" in app.screen.question and "“web”" in app.screen.question
            await pilot.press("y")
            await wait_for(pilot, lambda: len(app.session.messages) == 4 and not app.streaming)
            assert app.session.messages[2]["content"] == "HI"
            await type_and_send(pilot, "Again")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("escape")
            await wait_for(pilot, lambda: len(app.session.messages) == 8 and not app.streaming)
            assert "declined" in app.session.messages[6]["content"]

    asyncio.run(run())


def test_mcp_lists_disables_and_enables_servers(home, tiny_mlx, config):
    path = config("docs", "web")  # HTTP: quicker to start than a process

    async def run():
        async with running(home, tiny_mlx, "docs", "web") as (app, pilot):
            await wait_for(pilot, lambda: len(app.session.tools) == 3)  # both list the same
            await said(pilot, "MCP server web left out")
            shown = await listing(pilot)
            assert "docs (http:" in shown and "on, 3 tools, trusted" in shown
            assert "web (http:" in shown
            app.run_command("/mcp disable docs")
            await wait_for(pilot, lambda: "docs" not in app.tool_servers.servers)
            assert json.loads(path.read_text())["mcp"]["docs"]["enabled"] is False
            # with docs off, web's tools (the same names) are the chat's now
            from qwen_mlx.chat.mcp_client import server_of

            await wait_for(pilot, lambda: server_of(app.session.tools["add"]).name == "web")
            shown = await listing(pilot)
            assert "docs (http:" in shown and "): off" in shown
            app.run_command("/mcp enable docs")
            await wait_for(pilot, lambda: "docs" in app.tool_servers.servers)
            assert json.loads(path.read_text())["mcp"]["docs"]["enabled"] is True
            app.run_command("/mcp enable nope")
            await said(pilot, "No MCP server 'nope'")

    asyncio.run(run())


def test_mcp_without_a_config_says_how_to_add_servers(home, tiny_mlx):
    async def run():
        async with running(home, tiny_mlx) as (app, pilot):
            app.run_command("/mcp")
            await said(pilot, "Add an `mcp` section to")
            assert app.session.tools == {}

    asyncio.run(run())
