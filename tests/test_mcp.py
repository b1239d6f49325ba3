"""Tools from MCP servers in a ChatSession: a small server written with the SDK's MCPServer
(tests/mcp_notes.py), reached over stdio (a subprocess) and streamable HTTP (uvicorn on a
free port), through the official `mcp` client."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen_mlx import ChatSession, MCPServer
from qwen_mlx.chat.mcp_client import server_of, tool_schema
from qwen_mlx.chat.mcp_config import parse_mcp_config, read_mcp_config, set_server_enabled
from qwen_mlx.errors import ToolServerError

from .helpers import MCP_NOTES
from .tool_cases import ScriptedReplies, tool_call


@pytest.fixture(scope="module")
def stdio_server() -> Iterator[MCPServer]:
    with MCPServer.stdio(sys.executable, [str(MCP_NOTES)], name="notes") as server:
        yield server


def test_stdio_tools_are_listed_with_their_schemas(stdio_server):
    tools = {t.name: t for t in stdio_server.tools()}
    assert set(tools) == {"add", "shout", "fail"}
    assert tools["add"].description == "Add two integers."
    assert tools["shout"].parameters == {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "times": {"type": "integer", "default": 1},
        },
        "required": ["text"],
    }
    assert '"title"' not in json.dumps([t.parameters for t in tools.values()])
    assert all(server_of(t) is stdio_server for t in tools.values())


def test_schema_conversion_keeps_properties_named_title():
    schema = {
        "title": "Args",
        "type": "object",
        "properties": {"title": {"title": "Title", "type": "string", "default": "x"}},
        "$defs": {"title": {"title": "T", "enum": ["title"]}},
    }
    assert tool_schema(schema) == {
        "type": "object",
        "properties": {"title": {"type": "string", "default": "x"}},
        "$defs": {"title": {"enum": ["title"]}},
    }
    assert tool_schema(None) == {"type": "object", "properties": {}}


def test_a_session_runs_stdio_tools_and_reads_their_results(tiny_model, monkeypatch, stdio_server):
    session = ChatSession(tiny_model, tools=[stdio_server])
    script = ScriptedReplies(monkeypatch, session, [tool_call("add", a=2, b=40), "It is 42."])
    assert "".join(c.text for c in session.send("2 + 40?")) == "It is 42."
    assert [m["role"] for m in session.messages] == ["user", "assistant", "tool", "assistant"]
    assert session.messages[2]["content"] == "42"
    assert '"name": "shout"' in script.prompts[0]  # the server's tools in the system turn
    assert "<tool_response>\n42" in script.prompts[1]


def test_mcp_calls_get_the_validation_approval_and_errors_python_tools_get(
    tiny_model, monkeypatch, stdio_server
):
    asked = []

    def approve(c):
        asked.append((c.name, server_of(session.tools[c.name]).name))
        return c.name != "shout"

    session = ChatSession(tiny_model, tools=[stdio_server], approve=approve)
    replies = [
        tool_call("add", a="two", b=1)
        + tool_call("shout", text="hi")
        + tool_call("fail", reason="broken"),
        "Sorry.",
    ]
    ScriptedReplies(monkeypatch, session, replies)
    "".join(c.text for c in session.send("Go"))
    results = [m["content"] for m in session.messages if m["role"] == "tool"]
    assert "do not match its schema" in results[0]  # refused before reaching the server
    assert "declined" in results[1]
    assert results[2].startswith("error: fail raised MCPToolError") and "broken" in results[2]
    assert asked == [("shout", "notes"), ("fail", "notes")]


def test_a_session_runs_tools_over_streamable_http(tiny_model, monkeypatch, notes_url):
    with MCPServer.http(notes_url, name="notes-http") as server:
        session = ChatSession(tiny_model, tools=[server])
        ScriptedReplies(monkeypatch, session, [tool_call("shout", text="hey", times=2), "Done."])
        "".join(c.text for c in session.send("Shout"))
        assert session.messages[2]["content"] == "HEY HEY"
    assert not server.connected
    result = server.call  # a call after close says so, as a tool error the model reads
    with pytest.raises(ToolServerError, match="not connected"):
        result("add", {"a": 1, "b": 2})


def test_unreachable_servers_raise_a_clear_error(tmp_path):
    with pytest.raises(ToolServerError, match="Cannot connect to the MCP server 'gone'"):
        MCPServer.stdio(str(tmp_path / "no-such-server"), name="gone").connect()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(ToolServerError, match="Cannot connect"):
        MCPServer.http(f"http://127.0.0.1:{port}/mcp", name="down").connect()


def test_config_files_name_servers_in_an_mcp_section(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(
        json.dumps(
            {
                "theme": "dark",
                "mcp": {
                    "notes": {"command": "python", "args": ["notes.py"], "trusted": True},
                    "docs": {"url": "http://127.0.0.1:9/mcp", "headers": {"X-Key": "k"}},
                },
            }
        )
    )
    notes, docs = read_mcp_config(path)
    assert (notes.name, notes.transport, notes.args, notes.trusted) == (
        "notes",
        "stdio",
        ("notes.py",),
        True,
    )
    assert (docs.transport, docs.headers, docs.trusted, docs.enabled) == (
        "http",
        {"X-Key": "k"},
        False,
        True,
    )
    set_server_enabled(path, "docs", False)
    assert [c.enabled for c in read_mcp_config(path)] == [True, False]
    assert json.loads(path.read_text())["theme"] == "dark"  # the rest is kept
    other = {
        "mcpServers": {
            "n": {"command": "uvx", "args": ["server"], "autoApprove": []},
            "off": {"url": "http://h/mcp", "disabled": True},
        }
    }
    n, off = parse_mcp_config(other)
    assert (n.command, n.enabled, off.enabled) == ("uvx", True, False)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({}, "either a command"),
        ({"command": "x", "url": "http://h/mcp"}, "not both"),
        ({"command": "x", "args": "one two"}, "list of strings"),
        ({"url": "http://h/mcp", "type": "sse"}, "not supported"),
        ({"command": "x", "trusted": "yes"}, "true or false"),
        ({"command": "x", "comand": "y"}, "unknown settings: comand"),
        ({"command": "x", "connect_timeout": 0}, "connect_timeout must be a number of seconds"),
        ({"command": "x", "timeout": "soon"}, "timeout must be a number of seconds"),
    ],
)
def test_bad_config_entries_say_what_is_wrong(entry, problem):
    with pytest.raises(ValueError, match=problem):
        parse_mcp_config({"mcp": {"s": entry}}, "chat.json")


# -- qwen-mlx generate --mcp --------------------------------------------------------------------


def write_config(path: Path, servers: dict) -> Path:
    path.write_text(json.dumps({"mcp": servers}))
    return path


def test_generate_runs_a_trusted_servers_tools_and_shows_each_call(
    tiny_mlx, tiny_model, monkeypatch, capsys, tmp_path
):
    from types import SimpleNamespace

    from qwen_mlx.cli.generate import main as generate_main

    config = write_config(
        tmp_path / "tools.json",
        {"notes": {"command": sys.executable, "args": [str(MCP_NOTES)], "trusted": True}},
    )
    script = ScriptedReplies(
        monkeypatch, SimpleNamespace(model=tiny_model), [tool_call("add", a=2, b=40), "It is 42."]
    )
    argv = ["--model", str(tiny_mlx), "--prompt", "2 + 40?", "--mcp", str(config)]
    assert generate_main(argv) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "It is 42."
    assert 'tool: notes.add {"a": 2, "b": 40} -> 42' in err
    assert "<tool_response>\n42" in script.prompts[1]


def test_generate_declines_an_untrusted_servers_calls_without_a_terminal(
    tiny_mlx, tiny_model, monkeypatch, capsys, tmp_path, notes_url
):
    from types import SimpleNamespace

    from qwen_mlx.cli.generate import main as generate_main

    config = write_config(tmp_path / "tools.json", {"web": {"url": notes_url}})
    script = ScriptedReplies(
        monkeypatch,
        SimpleNamespace(model=tiny_model),
        [tool_call("shout", text="hi"), "Not allowed."],
    )
    argv = ["--model", str(tiny_mlx), "--prompt", "Shout", "--mcp", str(config)]
    assert generate_main(argv) == 0
    err = capsys.readouterr().err
    assert "declined web.shout" in err and '"trusted": true' in err
    assert "declined the call to shout" in script.prompts[1]


def test_generate_refuses_a_bad_mcp_config_before_loading(tiny_mlx, capsys, tmp_path):
    from qwen_mlx.cli.generate import main as generate_main

    base = ["--model", str(tiny_mlx), "--prompt", "x", "--mcp"]
    assert generate_main([*base, str(tmp_path / "none.json")]) == 1
    assert "There is no MCP config file" in capsys.readouterr().err
    bad = write_config(tmp_path / "bad.json", {"s": {"args": ["x"]}})
    assert generate_main([*base, str(bad)]) == 1
    assert "needs either a command" in capsys.readouterr().err
    off = write_config(tmp_path / "off.json", {"s": {"command": "x", "enabled": False}})
    assert generate_main([*base, str(off)]) == 1
    assert "no enabled MCP servers" in capsys.readouterr().err
    gone = write_config(tmp_path / "gone.json", {"gone": {"command": str(tmp_path / "nope")}})
    assert generate_main([*base, str(gone)]) == 1
    assert "Cannot connect to the MCP server 'gone'" in capsys.readouterr().err


def test_generate_asks_on_the_terminal_before_an_untrusted_call(
    tiny_mlx, tiny_model, monkeypatch, capsys, tmp_path, notes_url
):
    import io
    from types import SimpleNamespace

    from qwen_mlx.cli.generate import main as generate_main

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    config = write_config(tmp_path / "tools.json", {"web": {"url": notes_url}})
    script = ScriptedReplies(
        monkeypatch, SimpleNamespace(model=tiny_model), [tool_call("shout", text="hi"), "Loud."]
    )
    argv = ["--model", str(tiny_mlx), "--prompt", "Shout", "--mcp", str(config)]
    assert generate_main(argv) == 0
    err = capsys.readouterr().err
    assert 'mcp: run web.shout {"text": "hi"}? [y/N]' in err
    assert "<tool_response>\nHI" in script.prompts[1]


def test_a_server_that_dies_mid_call_becomes_an_error_the_model_reads(tiny_model, tmp_path):
    from qwen_mlx.chat.tools import ToolCall, run_tool_call

    script = tmp_path / "crashy.py"
    script.write_text(
        "import os\n"
        "from mcp.server.mcpserver import MCPServer\n"
        "server = MCPServer('crashy', log_level='CRITICAL')\n"
        "@server.tool()\n"
        "def crash() -> str:\n"
        "    '''Ends the process.'''\n"
        "    os._exit(3)\n"
        "server.run()\n"
    )
    with MCPServer.stdio(sys.executable, [str(script)], name="crashy") as server:
        tools = ChatSession(tiny_model, tools=[server]).tools
        for _ in range(2):  # and again, once it is gone
            result = run_tool_call(ToolCall("crash", {}, ""), tools)
            assert result.startswith("error: crash raised ToolServerError: the MCP server")


# -- hostile servers ------------------------------------------------------------------------

# Answers nothing: reads its stdin without end, ignores SIGTERM, and starts a child of its
# own; writes both pids to the file named by its argument.
HANGS_IN_HANDSHAKE = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
for line in sys.stdin:
    pass
time.sleep(600)
"""

# A server whose tool list is served by `list_tools` (pages and cursors); writes its pid.
SERVER_WITH_TOOL_LIST = """
import os, sys
import anyio
from mcp.server.mcpserver import MCPServer
from mcp_types import ListToolsResult, Tool

with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))

def tool(name):
    return Tool(name=name, input_schema={"type": "object", "properties": {}})

class Hostile(MCPServer):
    async def _handle_list_tools(self, ctx, params):
        cursor = int(params.cursor) if params is not None and params.cursor else 0
        return await list_tools(cursor)

HOW
Hostile("hostile", log_level="CRITICAL").run()
"""
LIST_TOOLS = {
    "endless pages": "async def list_tools(cursor):\n"
    "    return ListToolsResult(tools=[tool(f't{cursor}')], next_cursor=str(cursor + 1))",
    "too many tools": "async def list_tools(cursor):\n"
    "    return ListToolsResult(tools=[tool(f't{i}') for i in range(300)])",
    "no answer": "async def list_tools(cursor):\n    await anyio.sleep_forever()",
}


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, killed but not yet reaped, does not)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def wait_until_gone(pids: list[int]) -> list[int]:
    """The pids still running after a grace period (the kill is sent, death is async)."""
    import time

    deadline = time.monotonic() + 15
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def test_generate_gives_up_on_a_server_that_hangs_in_its_handshake_and_stops_it(
    tiny_mlx, capsys, tmp_path
):
    from qwen_mlx.cli.generate import main as generate_main

    script, pids = tmp_path / "hang.py", tmp_path / "pids"
    script.write_text(HANGS_IN_HANDSHAKE)
    server = {"command": sys.executable, "args": [str(script), str(pids)], "connect_timeout": 2}
    config = write_config(tmp_path / "tools.json", {"hang": server})
    argv = ["--model", str(tiny_mlx), "--prompt", "x", "--mcp", str(config)]
    assert generate_main(argv) == 1
    err = capsys.readouterr().err
    assert "Cannot connect to the MCP server 'hang'" in err
    assert "no answer in 2 s, so it was stopped" in err
    started = [int(p) for p in pids.read_text().split()]
    assert wait_until_gone(started) == []  # the server and its child: the whole group


@pytest.mark.parametrize("how", LIST_TOOLS.values(), ids=LIST_TOOLS.keys())
def test_generate_gives_up_on_a_tool_list_without_end_and_stops_the_server(
    tiny_mlx, capsys, tmp_path, how
):
    from qwen_mlx.cli.generate import main as generate_main

    script, pid = tmp_path / "hostile.py", tmp_path / "pid"
    script.write_text(SERVER_WITH_TOOL_LIST.replace("HOW", how))
    server = {"command": sys.executable, "args": [str(script), str(pid)], "connect_timeout": 10}
    config = write_config(tmp_path / "tools.json", {"hostile": server})
    argv = ["--model", str(tiny_mlx), "--prompt", "x", "--mcp", str(config)]
    assert generate_main(argv) == 1
    err = capsys.readouterr().err
    expected = {
        LIST_TOOLS["endless pages"]: "kept paging its tool list past 64 pages",
        LIST_TOOLS["too many tools"]: "offers more than 256 tools",
        LIST_TOOLS["no answer"]: "its tools were not listed in time (connect_timeout 10 s)",
    }[how]
    assert expected in err
    assert wait_until_gone([int(pid.read_text())]) == []
