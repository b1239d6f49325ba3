"""The chat app's tools from MCP servers: the `mcp` section of its config file
($QWEN_MLX_HOME/chat.json), `/mcp` to list, enable and disable servers, each call shown
in the conversation, and a question before each call to a server not marked trusted.
A mixin of ChatApp (Textual runs its on_mount and on_unmount after the app's own).

Servers connect in the background when the app starts, so a slow one never holds up
the first message; their stderr goes to $QWEN_MLX_HOME/logs/mcp.log, not over the screen.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

from textual import work
from textual.message import Message

from .screens import ConfirmScreen
from .widgets import MessageView

CONFIG_NAME = "chat.json"
MCP_USAGE = "/mcp lists the MCP servers; /mcp enable NAME and /mcp disable NAME switch one."
_EXAMPLE = '{"mcp": {"notes": {"command": "python", "args": ["notes_server.py"]}}}'


class ToolShown(Message):
    """A tool call was answered (posted from the model thread)."""

    def __init__(self, server: str, name: str, arguments: Any, result: str) -> None:
        super().__init__()
        self.server, self.name, self.arguments, self.result = server, name, arguments, result


class MCPCommands:
    """MCP servers for ChatApp: connecting, `/mcp`, approval and showing calls."""

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mcp_servers: dict[str, Any] = {}  # name -> connected MCPServer
        self.mcp_failed: dict[str, str] = {}  # name -> why it did not connect
        self._mcp_tools: dict[str, list[Any]] = {}  # name -> its Tools, as listed
        self._mcp_closing = threading.Event()
        self._mcp_log: Any = None
        self._mcp_warned: set[str] = set()  # servers left out for a name clash, said so

    def on_mount(self) -> None:
        self._connect_mcp()

    def on_unmount(self) -> None:
        self._mcp_closing.set()  # a question waiting on the model thread gets "no"
        for server in self.mcp_servers.values():
            server.close(timeout=3)
        if self._mcp_log is not None:
            self._mcp_log.close()

    # -- config and connections ------------------------------------------------------------

    def _mcp_configs(self) -> list[Any]:
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
        if self._mcp_log is None:
            logs = self.home / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            self._mcp_log = (logs / "mcp.log").open("a")
        return self._mcp_log

    @work(group="mcp")
    async def _connect_mcp(self, only: str | None = None) -> None:
        """Connect the enabled servers (or just `only`), each on a worker thread, then
        give the chat their tools."""
        from qwen_mlx.chat.mcp_client import MCPServer
        from qwen_mlx.errors import ToolServerError

        for config in self._mcp_configs():
            if not config.enabled or config.name in self.mcp_servers:
                continue
            if only is not None and config.name != only:
                continue
            server = MCPServer(config, errlog=self._errlog())
            try:
                tools = await asyncio.to_thread(server.tools)
            except ToolServerError as e:
                self.mcp_failed[config.name] = str(e)
                self.notify(str(e), title="MCP", severity="error", timeout=10)
                continue
            if self._mcp_closing.is_set():  # the app quit meanwhile
                await asyncio.to_thread(server.close)
                return
            self.mcp_failed.pop(config.name, None)
            self.mcp_servers[config.name] = server
            self._mcp_tools[config.name] = tools
            if only is not None:
                self.notify(f"MCP server {config.name}: {len(tools)} tools.", title="MCP")
        self._equip_session()

    def _equip_session(self) -> None:
        """Give the current chat the connected servers' tools (when it is idle)."""
        session = self.session
        if session is None:
            return
        if session.busy:
            self.set_timer(0.5, self._equip_session)
            return
        self.with_mcp_tools(session)

    def with_mcp_tools(self, session: Any) -> Any:
        """`session`, given the connected servers' tools, approval and the calls shown."""
        tools: list[Any] = []
        names: set[str] = set()
        for server, listed in self._mcp_tools.items():
            clash = names.intersection(t.name for t in listed)
            if clash:
                if server in self._mcp_warned:
                    continue
                self._mcp_warned.add(server)
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

    # -- calls -------------------------------------------------------------------------------

    def _approve(self, session: Any, call: Any) -> bool:
        """On the model thread: run a trusted server's call; ask about the others."""
        from qwen_mlx.chat.mcp_client import server_of

        server = server_of(session.tools[call.name]) if call.name in session.tools else None
        if server is None or server.trusted:
            return True
        answer: Future[bool] = Future()
        arguments = json.dumps(call.arguments, ensure_ascii=False, indent=1)
        question = f"Run the tool {call.name} of the MCP server “{server.name}”?\n\n{arguments}"
        screen = ConfirmScreen(question, "Run", "Decline", default=False)
        try:
            self.call_from_thread(self.push_screen, screen, answer.set_result)
        except RuntimeError:  # the app is gone
            return False
        while not answer.done():
            if self._mcp_closing.is_set():
                return False
            wait([answer], timeout=0.1)
        return bool(answer.result())

    def _called(self, session: Any, call: Any, result: str) -> None:
        from qwen_mlx.chat.mcp_client import server_of

        tool = session.tools.get(call.name or "")
        server = server_of(tool) if tool is not None else None
        name = server.name if server is not None else ""
        self.post_message(ToolShown(name, call.name or "?", call.arguments, result))

    def on_tool_shown(self, message: ToolShown) -> None:
        """The call and its result, above the reply being written."""
        where = f"{message.server}." if message.server else ""
        arguments = json.dumps(message.arguments, ensure_ascii=False)
        result = message.result if len(message.result) <= 600 else message.result[:600] + "…"
        view = MessageView("tool", f"`{where}{message.name}` `{arguments}`\n\n```\n{result}\n```")
        container = self.query_one("#messages")
        reply = self._reply.view if self._reply is not None else None
        if reply is not None and reply.parent is container:
            container.mount(view, before=reply)
        else:
            container.mount(view)

    # -- /mcp --------------------------------------------------------------------------------

    def mcp_command(self, arg: str) -> None:
        verb, _, name = arg.partition(" ")
        name = name.strip()
        if verb in ("", "list"):
            self._list_mcp()
        elif verb in ("enable", "disable") and name:
            self._switch_mcp(name, verb == "enable")
        else:
            self.notify(MCP_USAGE, severity="warning")

    def _list_mcp(self) -> None:
        configs = self._mcp_configs()
        if not configs:
            self.notify(
                f"No MCP servers. Add an `mcp` section to {self.config_path}, e.g.\n{_EXAMPLE}",
                title="MCP",
                timeout=15,
            )
            return
        lines = []
        for c in configs:
            if c.name in self.mcp_servers:
                state = f"on, {len(self._mcp_tools.get(c.name, []))} tools"
            elif not c.enabled:
                state = "off"
            elif c.name in self.mcp_failed:
                state = "failed to connect"
            else:
                state = "connecting"
            trust = ", trusted" if c.trusted else ""
            lines.append(f"{c.name} ({c.transport}: {c.target}): {state}{trust}")
        self.notify("\n".join([*lines, MCP_USAGE]), title="MCP servers", timeout=15)

    def _switch_mcp(self, name: str, enabled: bool) -> None:
        from qwen_mlx.chat.mcp_config import set_server_enabled

        configs = {c.name: c for c in self._mcp_configs()}
        if name not in configs:
            known = ", ".join(configs) or "none"
            self.notify(f"No MCP server {name!r} in {self.config_path} (known: {known}).")
            return
        if not self._can_change():
            return
        try:
            set_server_enabled(self.config_path, name, enabled)
        except OSError as e:
            self.notify(f"Could not update {self.config_path}: {e.strerror}", severity="error")
            return
        self._mcp_warned.clear()
        if enabled:
            self.notify(f"Enabling MCP server {name}…", title="MCP")
            self._connect_mcp(name)
            return
        server = self.mcp_servers.pop(name, None)
        self._mcp_tools.pop(name, None)
        self.mcp_failed.pop(name, None)
        self.with_mcp_tools(self.session)
        if server is not None:
            threading.Thread(target=server.close, daemon=True).start()
        self.notify(f"MCP server {name} disabled.", title="MCP")
