"""A small MCP server for the tests, written with the SDK's MCPServer (mcp 1.x's FastMCP):
`python tests/mcp_notes.py` serves it over stdio; `serve_http()` over streamable HTTP."""

from __future__ import annotations

import threading
import time

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

notes = MCPServer("notes", log_level="CRITICAL")  # a failing tool is the tests' business


@notes.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@notes.tool()
def shout(text: str, times: int = 1) -> str:
    """Say a text loudly.

    Args:
        text: what to say
        times: how many times
    """
    return " ".join([text.upper()] * times)


@notes.tool()
def fail(reason: str) -> str:
    """Always fails."""
    raise ToolError(reason)  # the SDK passes a ToolError's text on; other errors it hides


def serve_http() -> tuple[str, object, threading.Thread]:
    """The server over streamable HTTP on a free port: (its URL, the uvicorn server, the
    thread it runs in)."""
    import uvicorn

    config = uvicorn.Config(
        notes.streamable_http_app(), host="127.0.0.1", port=0, log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the MCP server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}/mcp", server, thread


if __name__ == "__main__":
    notes.run()
