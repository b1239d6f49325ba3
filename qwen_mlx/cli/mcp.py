"""The CLI's side of MCP tools (`generate --mcp CONFIG`): connect the servers a config
file names, show each call on stderr, and ask before running a tool of a server that is
not marked trusted (on the terminal; without one, the call is declined)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..chat.tools import ToolCall

SHOWN_RESULT = 200  # characters of a tool's result shown on stderr


class MCPTools:
    """Connected servers, and the session hooks that go with them."""

    def __init__(self, servers: list[Any], config: Path, *, interactive: bool) -> None:
        self.servers = servers
        self.config = config
        self.interactive = interactive
        self._owner = {t.name: s for s in servers for t in s.tools()}

    def session_kwargs(self) -> dict[str, Any]:
        return {"tools": self.servers, "approve": self.approve}

    def approve(self, call: ToolCall) -> bool:
        server = self._owner.get(call.name or "")
        if server is None or server.trusted:
            return True
        what = f"{server.name}.{call.name} {json.dumps(call.arguments, ensure_ascii=False)}"
        if not self.interactive:
            print(
                f"mcp: declined {what}: {server.name} is not trusted and there is no terminal "
                f'to ask on (set "trusted": true for it in {self.config} to allow its calls).',
                file=sys.stderr,
            )
            return False
        print(f"mcp: run {what}? [y/N] ", end="", file=sys.stderr, flush=True)
        return sys.stdin.readline().strip().lower() in ("y", "yes")

    def show(self, call: ToolCall, result: str) -> None:
        server = self._owner.get(call.name or "")
        name = f"{server.name}.{call.name}" if server else str(call.name)
        shown = result if len(result) <= SHOWN_RESULT else result[:SHOWN_RESULT] + "…"
        arguments = json.dumps(call.arguments, ensure_ascii=False)
        print(f"tool: {name} {arguments} -> {shown}", file=sys.stderr)


@contextmanager
def mcp_tools(config: Path | None, *, interactive: bool) -> Iterator[MCPTools | None]:
    """The servers `config` names, connected (and closed on the way out); None without
    a config."""
    if config is None:
        yield None
        return
    from ..chat.mcp_client import connect_all
    from ..chat.mcp_config import read_mcp_config

    enabled = [c for c in read_mcp_config(config) if c.enabled]
    if not enabled:
        raise ValueError(
            f"{config} names no enabled MCP servers: add them to its `mcp` section "
            '({"mcp": {"NAME": {"command": ..., "args": [...]}}}, or "url" for HTTP).'
        )
    print(f"mcp: connecting to {', '.join(c.name for c in enabled)}…", file=sys.stderr)
    servers = connect_all(enabled)
    try:
        tools = MCPTools(servers, config, interactive=interactive)
        count = sum(len(s.tools()) for s in servers)
        print(f"mcp: {count} tools from {len(servers)} servers", file=sys.stderr)
        yield tools
    finally:
        for server in servers:
            server.close()
