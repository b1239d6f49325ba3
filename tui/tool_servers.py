"""The chat app's MCP servers (`ToolServers`): the `mcp` section of its config file
($QWEN_MLX_HOME/chat.json), `/mcp` to list, enable and disable servers, a question
before each call to a server not marked trusted, and each call said to the app.

A widget without a look of its own, so it lives and dies with the app: servers connect in
the background when it mounts, so a slow one never holds up the first message, and close
when it unmounts; their stderr goes to $QWEN_MLX_HOME/logs/mcp.log, not over the screen.
It tells the app when the tools change (`ToolsChanged`: the app gives the open chat's
session to `equip`) and when a tool was called (`Called`: the app shows it).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.message import Message
from textual.widget import Widget

from .screens import ConfirmScreen

if TYPE_CHECKING:
    from qwen_mlx.chat.mcp_client import MCPServer
    from qwen_mlx.chat.mcp_config import MCPServerConfig
    from qwen_mlx.chat.session import ChatSession
    from qwen_mlx.chat.tools import Tool, ToolCall

CONFIG_NAME = "chat.json"
MCP_USAGE = "/mcp lists the MCP servers; /mcp enable NAME and /mcp disable NAME switch one."
_EXAMPLE = '{"mcp": {"notes": {"command": "python", "args": ["notes_server.py"]}}}'
CLOSE_WAIT = 3  # seconds a server gets to close when the app quits


class ToolServers(Widget):
    """MCP servers for the chat app: connecting, `/mcp`, approval and the calls made."""

    DEFAULT_CSS = "ToolServers { display: none; }"

    class ToolsChanged(Message):
        """A server connected or was switched off: the open chat gets the tools now."""

    @dataclass
    class Called(Message):
        """A tool call was answered (posted from the model thread)."""

        server: str
        name: str
        arguments: Any
        result: str

    def __init__(self, home: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = Path(home) / CONFIG_NAME
        self.logs = Path(home) / "logs"
        self.servers: dict[str, MCPServer] = {}  # name -> connected server
        self.failed: dict[str, str] = {}  # name -> why it did not connect
        self._tools: dict[str, list[Tool]] = {}  # name -> its tools, as listed
        self._quitting = threading.Event()
        self._errfile: Any = None
        self._warned: set[str] = set()  # servers left out for a name clash, said so

    def on_mount(self) -> None:
        self.connect()

    def on_unmount(self) -> None:
        self._quitting.set()  # a question waiting on the model thread gets "no"
        for server in self.servers.values():
            server.close(timeout=CLOSE_WAIT)
        if self._errfile is not None:
            self._errfile.close()

    # -- config and connections ------------------------------------------------------------

    def configs(self) -> list[MCPServerConfig]:
        """The servers the config file names; none (and a notice) if it is unusable."""
        from qwen_mlx.chat.mcp_config import read_mcp_config

        if not self.config_path.is_file():
            return []
        try:
            return read_mcp_config(self.config_path)
        except ValueError as e:
            self.notify(f"MCP servers not loaded: {e}", severity="error", timeout=10)
            return []

    def _errlog(self) -> Any:
        if self._errfile is None:
            self.logs.mkdir(parents=True, exist_ok=True)
            self._errfile = (self.logs / "mcp.log").open("a")
        return self._errfile

    @work(group="mcp")
    async def connect(self, only: str | None = None) -> None:
        """Connect the enabled servers (or just `only`), each on a worker thread; then the
        open chat gets their tools (ToolsChanged)."""
        from qwen_mlx.chat.mcp_client import MCPServer
        from qwen_mlx.errors import ToolServerError

        for config in self.configs():
            if not config.enabled or config.name in self.servers:
                continue
            if only is not None and config.name != only:
                continue
            server = MCPServer(config, errlog=self._errlog())
            try:
                tools = await asyncio.to_thread(server.tools)
            except ToolServerError as e:
                self.failed[config.name] = str(e)
                self.notify(str(e), title="MCP", severity="error", timeout=10)
                continue
            if self._quitting.is_set():  # the app quit meanwhile
                await asyncio.to_thread(server.close)
                return
            self.failed.pop(config.name, None)
            self.servers[config.name] = server
            self._tools[config.name] = tools
            if only is not None:
                self.notify(f"MCP server {config.name}: {len(tools)} tools.", title="MCP")
        self.post_message(self.ToolsChanged())

    def equip(self, session: ChatSession) -> ChatSession:
        """`session`, given the connected servers' tools, approval and the calls said. A
        server whose tool names another server already gives is left out (and said so)."""
        tools: list[Tool] = []
        names: set[str] = set()
        for server, listed in self._tools.items():
            clash = names.intersection(t.name for t in listed)
            if clash:
                if server in self._warned:
                    continue
                self._warned.add(server)
                self.notify(
                    f"MCP server {server} left out: another server has a tool named "
                    f"{', '.join(sorted(clash))}.",
                    severity="warning",
                )
                continue
            tools.extend(listed)
            names.update(t.name for t in listed)
        if not tools and not session.tools:
            return session
        session.set_tools(tools)
        session.approve = lambda call: self._approve(session, call)
        session.on_tool_call = lambda call, result: self._called(session, call, result)
        return session

    # -- calls (on the model thread) ---------------------------------------------------------

    def _approve(self, session: ChatSession, call: ToolCall) -> bool:
        """Run a trusted server's call; ask about the others (and wait for the answer)."""
        from qwen_mlx.chat.mcp_client import server_of

        server = server_of(session.tools[call.name]) if call.name in session.tools else None
        if server is None or server.trusted:
            return True
        answer: Future[bool] = Future()
        arguments = json.dumps(call.arguments, ensure_ascii=False, indent=1)
        question = f"Run the tool {call.name} of the MCP server “{server.name}”?\n\n{arguments}"
        screen = ConfirmScreen(question, "Run", "Decline", default=False)
        try:
            self.app.call_from_thread(self.app.push_screen, screen, answer.set_result)
        except RuntimeError:  # the app is gone
            return False
        while not answer.done():
            if self._quitting.is_set():
                return False
            wait([answer], timeout=0.1)
        return bool(answer.result())

    def _called(self, session: ChatSession, call: ToolCall, result: str) -> None:
        from qwen_mlx.chat.mcp_client import server_of

        tool = session.tools.get(call.name or "")
        server = server_of(tool) if tool is not None else None
        name = server.name if server is not None else ""
        self.post_message(self.Called(name, call.name or "?", call.arguments, result))

    # -- /mcp --------------------------------------------------------------------------------

    def command(self, arg: str, *, may_change: Callable[[], bool]) -> None:
        """`/mcp [list]`, `/mcp enable NAME`, `/mcp disable NAME`. `may_change()` says
        (and says why not) whether the open chat's tools may change now."""
        verb, _, name = arg.partition(" ")
        name = name.strip()
        if verb in ("", "list"):
            self._list()
        elif verb in ("enable", "disable") and name:
            self._switch(name, verb == "enable", may_change)
        else:
            self.notify(MCP_USAGE, severity="warning")

    def _list(self) -> None:
        configs = self.configs()
        if not configs:
            self.notify(
                f"No MCP servers. Add an `mcp` section to {self.config_path}, e.g.\n{_EXAMPLE}",
                title="MCP",
                timeout=15,
            )
            return
        lines = []
        for c in configs:
            if c.name in self.servers:
                state = f"on, {len(self._tools.get(c.name, []))} tools"
            elif not c.enabled:
                state = "off"
            elif c.name in self.failed:
                state = "failed to connect"
            else:
                state = "connecting"
            trust = ", trusted" if c.trusted else ""
            lines.append(f"{c.name} ({c.transport}: {c.target}): {state}{trust}")
        self.notify("\n".join([*lines, MCP_USAGE]), title="MCP servers", timeout=15)

    def _switch(self, name: str, enabled: bool, may_change: Callable[[], bool]) -> None:
        from qwen_mlx.chat.mcp_config import set_server_enabled

        configs = {c.name: c for c in self.configs()}
        if name not in configs:
            known = ", ".join(configs) or "none"
            self.notify(f"No MCP server {name!r} in {self.config_path} (known: {known}).")
            return
        if not may_change():
            return
        try:
            set_server_enabled(self.config_path, name, enabled)
        except OSError as e:
            self.notify(f"Could not update {self.config_path}: {e.strerror}", severity="error")
            return
        self._warned.clear()
        if enabled:
            self.notify(f"Enabling MCP server {name}…", title="MCP")
            self.connect(name)
            return
        server = self.servers.pop(name, None)
        self._tools.pop(name, None)
        self.failed.pop(name, None)
        self.post_message(self.ToolsChanged())
        if server is not None:
            threading.Thread(target=server.close, daemon=True).start()
        self.notify(f"MCP server {name} disabled.", title="MCP")
