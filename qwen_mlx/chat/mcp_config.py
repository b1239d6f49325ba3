"""MCP server configs: the `mcp` section of a config file (the chat app's chat.json, or
the file `generate --mcp` reads), parsed into `MCPServerConfig`s, and the one change front
ends write back (a server switched on or off).

    {"mcp": {"weather": {"command": "python", "args": ["weather.py"], "trusted": true},
             "docs": {"url": "http://127.0.0.1:8000/mcp", "headers": {...}, "enabled": false,
                      "timeout": 60, "connect_timeout": 30}}}

A file of Claude Desktop's and other apps' `mcpServers` is read too, their
`"disabled": true` included and their other settings ignored; our own section is strict,
so a misspelt setting is an error, not a silent default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_json

CALL_TIMEOUT = 60.0  # seconds a tool call may take, unless its config says otherwise
CONNECT_TIMEOUT = 30.0  # seconds to start a server, shake hands and list its tools
CONFIG_KEYS = ("mcp", "mcpServers")
_FIELDS = {"command", "args", "env", "cwd", "url", "headers", "type", "trusted", "enabled"}
_SECONDS = ("timeout", "connect_timeout")


@dataclass(frozen=True)
class MCPServerConfig:
    """How to reach one MCP server: a `command` (stdio) or a `url` (streamable HTTP).
    Calls to a `trusted` server's tools need no approval; `enabled` says whether a front
    end connects to it at all. `timeout` bounds each tool call, `connect_timeout` the
    whole connection (starting it, the handshake, every page of its tool list)."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    trusted: bool = False
    enabled: bool = True
    timeout: float = CALL_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT

    def __post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise ValueError(
                f"The MCP server {self.name!r} needs either a command (stdio) or a url "
                "(streamable HTTP), not both or neither."
            )
        for key in _SECONDS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{key} must be a number of seconds above 0, not {value!r}.")

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"

    @property
    def target(self) -> str:
        """The command line or the URL, for people to read."""
        return " ".join([self.command, *self.args]) if self.command else str(self.url)


def parse_mcp_config(data: Any, source: str = "the MCP config") -> list[MCPServerConfig]:
    """The servers a config names: its `mcp` (or `mcpServers`) section, a mapping of
    name to server. ValueError saying what is wrong, and where."""
    if not isinstance(data, dict):
        raise ValueError(f"{source} must be a JSON object with an `mcp` section.")
    key = next((k for k in CONFIG_KEYS if k in data), None)
    section = data[key] if key else {}
    foreign = key == "mcpServers"  # another app's file: its own settings are left alone
    if isinstance(section, dict) and isinstance(section.get("servers"), dict):
        section = section["servers"]
    if not isinstance(section, dict):
        raise ValueError(f"{source}: `mcp` must map server names to their settings.")
    servers = []
    for name, entry in section.items():
        where = f"{source}: mcp server {name!r}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object with a command or a url.")
        unknown = set(entry) - _FIELDS - {*_SECONDS, "disabled"}
        if unknown and not foreign:
            raise ValueError(f"{where} has unknown settings: {', '.join(sorted(unknown))}.")
        kind = entry.get("type", "stdio" if "command" in entry else "http")
        if kind not in ("stdio", "http", "streamable-http", "streamableHttp"):
            raise ValueError(f"{where}: type {kind!r} is not supported; use stdio or http.")
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError(f"{where}: args must be a list of strings.")
        for key in ("env", "headers"):
            value = entry.get(key) or {}
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ValueError(f"{where}: {key} must map names to strings.")
        for flag in ("trusted", "enabled", "disabled"):
            if not isinstance(entry.get(flag, False), bool):
                raise ValueError(f"{where}: {flag} must be true or false.")
        try:
            servers.append(
                MCPServerConfig(
                    name=str(name),
                    command=entry.get("command"),
                    args=tuple(args),
                    env=entry.get("env"),
                    cwd=entry.get("cwd"),
                    url=entry.get("url"),
                    headers=entry.get("headers") or {},
                    trusted=entry.get("trusted", False),
                    enabled=entry.get("enabled", not entry.get("disabled", False)),
                    timeout=entry.get("timeout", CALL_TIMEOUT),
                    connect_timeout=entry.get("connect_timeout", CONNECT_TIMEOUT),
                )
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
    return servers


def read_mcp_config(path: str | Path) -> list[MCPServerConfig]:
    """The servers in a config file (see the module docstring); none if it has no
    `mcp` section. FileNotFoundError or ValueError say what to fix."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"There is no MCP config file at {path}.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}).") from None
    return parse_mcp_config(data, str(path))


def set_server_enabled(path: str | Path, name: str, enabled: bool) -> None:
    """Mark server `name` in the config file enabled or not, keeping everything else."""
    path = Path(path)
    data = json.loads(path.read_text())
    key = next(k for k in CONFIG_KEYS if k in data)
    section = data[key]
    servers = section["servers"] if isinstance(section.get("servers"), dict) else section
    servers[name]["enabled"] = enabled
    servers[name].pop("disabled", None)  # another app's spelling of the same switch
    atomic_write_json(path, data)
