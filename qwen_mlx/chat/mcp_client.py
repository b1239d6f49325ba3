"""Tools from MCP servers: `ChatSession(model, tools=[MCPServer.stdio(...)])`.

An `MCPServer` connects to one Model Context Protocol server, over stdio (a command we
start) or streamable HTTP (a URL), through the official `mcp` SDK. Its tools become our
`Tool`s: the MCP input schema is already JSON schema (we drop pydantic's `title` noise),
and each call goes through `run_tool_call` like a Python tool's, so the arguments are
validated against it, the session's approval callback is asked, and a failure (a tool
error, a server that died, a timeout) is an error message the model reads.

The SDK is async; each server's client runs on its own event loop in a background
thread, which `close()` (or leaving `with`) ends, stopping a stdio server's process.

Connecting has one deadline (`connect_timeout`) for starting the server, the handshake
and every page of its tool list, and caps on pages and tools: a server that hangs in its
handshake or pages without end is given up on, and what we started is stopped. The SDK
starts a stdio server in a process group of its own and, when its client is closed or
cancelled, ends it: stdin closed, then SIGTERM and SIGKILL to the whole group.

Which servers to connect to comes from a config file's `mcp` section (mcp_config.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from ..errors import ToolServerError
from .mcp_config import CALL_TIMEOUT, CONNECT_TIMEOUT, MCPServerConfig
from .tools import Tool

MAX_TOOL_PAGES = 64  # pages of a server's tool list (its `nextCursor`s)
MAX_TOOLS = 256  # tools one server may offer: more would not fit a model's prompt
STOP_WAIT = 15.0  # seconds to wait for a server's shutdown (the SDK's is bounded by ~7 s)


class MCPToolError(RuntimeError):
    """An MCP tool answered with an error (`isError`): its text is the message."""


# -- one server ---------------------------------------------------------------------------


class MCPServer:
    """A connection to one MCP server. `tools()` connects on first use; `close()` (or
    leaving `with`) disconnects. Pass it in `ChatSession(..., tools=[...])`."""

    def __init__(self, config: MCPServerConfig, *, errlog: IO[str] | None = None) -> None:
        self.config = config
        self._errlog = errlog
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None
        self._scope: Any = None  # anyio CancelScope around the client: cancelling it stops all
        self._client: Any = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._tools: list[Tool] | None = None

    @classmethod
    def stdio(
        cls,
        command: str,
        args: Iterable[str] = (),
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        trusted: bool = False,
        timeout: float = CALL_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        errlog: IO[str] | None = None,
    ) -> MCPServer:
        """A server started as `command args...`, spoken to over its stdin and stdout;
        its stderr goes to `errlog` (default: ours)."""
        config = MCPServerConfig(
            name=name or Path(command).name,
            command=command,
            args=tuple(args),
            env=env,
            cwd=None if cwd is None else str(cwd),
            trusted=trusted,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )
        return cls(config, errlog=errlog)

    @classmethod
    def http(
        cls,
        url: str,
        *,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        trusted: bool = False,
        timeout: float = CALL_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> MCPServer:
        """A server at a streamable HTTP endpoint (`http://host:port/mcp`)."""
        config = MCPServerConfig(
            name=name or url,
            url=url,
            headers=dict(headers or {}),
            trusted=trusted,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )
        return cls(config)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def trusted(self) -> bool:
        return self.config.trusted

    @property
    def connected(self) -> bool:
        return self._client is not None and self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> MCPServer:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MCPServer({self.name!r}, {self.config.transport}: {self.config.target})"

    # -- connecting -------------------------------------------------------------------------

    def connect(self) -> MCPServer:
        """Start (or reach) the server and list its tools, all within `connect_timeout`;
        ToolServerError if it cannot (and a server we started is stopped)."""
        _require_sdk()
        deadline = time.monotonic() + self.config.connect_timeout
        with self._lock:
            if self.connected:
                return self
            self._ready.clear()
            self._failure = None
            self._thread = threading.Thread(
                target=asyncio.run,
                args=(self._hold(),),
                name=f"qwen-mlx-mcp-{self.name}",
                daemon=True,
            )
            self._thread.start()
            started = self._ready.wait(self.config.connect_timeout)
            if not started or self._client is None:
                self._stop_thread(cancel=True)
                why = (
                    _reason(self._failure)
                    if started
                    else f"no answer in {self.config.connect_timeout:g} s, so it was stopped"
                )
                raise ToolServerError(
                    f"Cannot connect to the MCP server {self.name!r} "
                    f"({self.config.transport}: {self.config.target}): {why}. Check that it "
                    "runs on its own, and its command or url in the config (a slow start "
                    'may need a longer "connect_timeout").'
                )
        try:
            self._tools = self._list_tools(deadline)
        except BaseException:
            self.close(cancel=True)
            raise
        return self

    async def _hold(self) -> None:
        """The background loop's one long task: open the client, wait until told to
        close, close it (in this task, as the SDK's cancel scopes require). Cancelling
        `_scope` stops it wherever it is, the handshake included."""
        import anyio
        from mcp import Client
        from mcp.types import Implementation

        from .._version import __version__

        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        try:
            with anyio.CancelScope() as self._scope:
                async with self._transport() as transport:
                    client = Client(
                        transport,
                        read_timeout_seconds=self.config.timeout,
                        client_info=Implementation(name="qwen-mlx", version=__version__),
                    )
                    async with client:
                        self._client = client
                        self._ready.set()
                        await self._closing.wait()
        except BaseException as e:  # a start that failed, or a connection that broke
            self._failure = e
        finally:
            self._client = None
            self._ready.set()

    def _transport(self) -> Any:
        """An async context giving the transport: a stdio client, or an HTTP client
        whose headers go with every request."""
        from contextlib import asynccontextmanager

        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client
        from mcp.client.streamable_http import streamable_http_client

        c = self.config

        @asynccontextmanager
        async def opened() -> Any:
            if c.command is not None:
                params = StdioServerParameters(
                    command=c.command, args=list(c.args), env=dict(c.env or {}) or None, cwd=c.cwd
                )
                yield stdio_client(params, errlog=self._errlog or _stderr())
                return
            import httpx2

            timeout = httpx2.Timeout(30.0, read=max(300.0, c.timeout))
            async with httpx2.AsyncClient(headers=dict(c.headers), timeout=timeout) as http:
                yield streamable_http_client(c.url, http_client=http)

        return opened()

    def close(self, timeout: float = STOP_WAIT, *, cancel: bool = False) -> None:
        """Disconnect (a stdio server's process ends with it). Safe to call twice.
        `cancel` stops the client at once instead of letting it finish what it does;
        `timeout` is how long each of the two ways may take."""
        with self._lock:
            self._stop_thread(timeout, cancel=cancel)
            self._tools = None

    def _stop_thread(self, timeout: float = STOP_WAIT, *, cancel: bool = False) -> None:
        """End the client's loop, and with it the server we started: politely first
        (unless `cancel`), then by cancelling the client wherever it is."""
        loop, thread = self._loop, self._thread
        for how in ("close", "cancel") if not cancel else ("cancel",):
            if loop is None or loop.is_closed() or thread is None or not thread.is_alive():
                break
            with suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(self._wind_down, how)
            if thread is threading.current_thread():
                break
            thread.join(timeout)
        self._thread = self._loop = self._closing = self._scope = None

    def _wind_down(self, how: str) -> None:
        """On the client's loop: let `_hold` leave its wait, or cancel all it does."""
        if how == "close" and self._closing is not None:
            self._closing.set()
        elif how == "cancel" and self._scope is not None:
            self._scope.cancel()

    def _run(self, make: Callable[[Any], Any], timeout: float) -> Any:
        """Run the coroutine `make(client)` on the server's loop; its result."""
        loop, client = self._loop, self._client
        if loop is None or client is None or not self.connected:
            why = f": {_reason(self._failure)}" if self._failure is not None else ""
            raise ToolServerError(f"The MCP server {self.name!r} is not connected{why}.")
        future = asyncio.run_coroutine_threadsafe(make(client), loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no answer from {self.name!r} in {timeout:g} s") from None

    # -- tools --------------------------------------------------------------------------------

    def tools(self) -> list[Tool]:
        """The server's tools as Tools that call it (connecting first if need be)."""
        if self._tools is None or not self.connected:
            self.connect()
        return list(self._tools or [])

    def _list_tools(self, deadline: float) -> list[Tool]:
        """Every page of the server's tool list, by `deadline`, within the caps."""
        found: list[Any] = []
        cursor = None
        for _ in range(MAX_TOOL_PAGES):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ToolServerError(self._gave_up("its tools were not listed in time"))
            try:
                page = self._run(lambda client, c=cursor: client.list_tools(cursor=c), left)
            except TimeoutError:
                raise ToolServerError(self._gave_up("its tools were not listed in time")) from None
            found.extend(page.tools)
            if len(found) > MAX_TOOLS:
                raise ToolServerError(
                    f"The MCP server {self.name!r} offers more than {MAX_TOOLS} tools, more "
                    "than a model can choose among in its prompt; use a server with fewer "
                    "(or one of its options that narrows them)."
                )
            cursor = page.next_cursor
            if not cursor:
                return [self._tool(t) for t in found]
        raise ToolServerError(
            f"The MCP server {self.name!r} kept paging its tool list past {MAX_TOOL_PAGES} "
            "pages (a `nextCursor` without end); it was stopped."
        )

    def _gave_up(self, why: str) -> str:
        return (
            f"Cannot connect to the MCP server {self.name!r} ({self.config.transport}: "
            f"{self.config.target}): {why} (connect_timeout {self.config.connect_timeout:g} "
            "s), so it was stopped."
        )

    def _tool(self, spec: Any) -> Tool:
        def call(**arguments: Any) -> str:
            return self.call(spec.name, arguments)

        call.mcp_server = self  # type: ignore[attr-defined]  # see server_of
        description = spec.description or getattr(spec, "title", None) or ""
        return Tool(spec.name, description, tool_schema(spec.input_schema), call)

    def call(self, name: str, arguments: Mapping[str, Any]) -> str:
        """Call tool `name`; the text it returns. MCPToolError when the tool reports an
        error, ToolServerError or TimeoutError when the server does not answer."""
        timeout = self.config.timeout
        try:
            result = self._run(
                lambda client: client.call_tool(
                    name, dict(arguments), read_timeout_seconds=timeout
                ),
                timeout + 5,
            )
        except (ToolServerError, TimeoutError):
            raise
        except Exception as e:  # the SDK's: a connection that closed, a protocol error
            raise ToolServerError(
                f"the MCP server {self.name!r} failed the call ({_reason(e)}); if it "
                "stopped, reconnect it"
            ) from e
        text = result_text(result)
        if result.is_error:
            raise MCPToolError(text or "the tool failed without saying why")
        return text


def server_of(tool: Tool) -> MCPServer | None:
    """The MCP server a tool calls, or None for a Python tool."""
    return getattr(tool.function, "mcp_server", None)


def connect_all(
    configs: Iterable[MCPServerConfig], *, errlog: IO[str] | None = None
) -> list[MCPServer]:
    """Connect to every enabled server; on any failure close those already connected
    and raise."""
    servers: list[MCPServer] = []
    try:
        for config in configs:
            if config.enabled:
                servers.append(MCPServer(config, errlog=errlog).connect())
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers


# -- conversions --------------------------------------------------------------------------


def tool_schema(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """An MCP input schema as our tools' parameters: an object schema, without the
    `title` annotations pydantic writes on every level (tokens the model need not read)."""
    cleaned = _untitled(dict(schema or {}))
    cleaned.setdefault("type", "object")
    if cleaned["type"] == "object":
        cleaned.setdefault("properties", {})
    return cleaned


def _untitled(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_untitled(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(
            value, dict
        ):
            out[key] = {name: _untitled(s) for name, s in value.items()}  # names stay
        elif key in ("default", "const", "enum", "examples"):
            out[key] = value  # values, not schemas
        else:
            out[key] = _untitled(value)
    return out


def result_text(result: Any) -> str:
    """What the model reads of a tool result: its text blocks, a note for each image or
    audio block, resources' text; the structured content when there is no text."""
    parts: list[str] = []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} ({block.mime_type}) left out: this model reads text only]")
        elif kind == "resource":
            resource = block.resource
            text = getattr(resource, "text", None)
            parts.append(text if text is not None else f"[binary resource {resource.uri}]")
        elif kind == "resource_link":
            parts.append(f"[resource {block.uri}]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


def _require_sdk() -> None:
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise ToolServerError(
            "Tools from MCP servers need the mcp package: pip install 'qwen-mlx[mcp]'."
        ) from None


def _reason(e: BaseException | None) -> str:
    """The first real error inside (exception groups nest what anyio's tasks raised)."""
    while getattr(e, "exceptions", None):  # an ExceptionGroup (or 3.10's backport)
        e = e.exceptions[0]
    if e is None:
        return "it stopped"
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if not isinstance(e, OSError) else text


def _stderr() -> IO[str]:
    """Where a stdio server's stderr goes by default: ours, when it is a real file
    (a terminal app's replaced stderr is not), else nowhere."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return open(os.devnull, "w")  # lives as long as the process
