"""The agent clients of the interop tier (tests/test_agents_*.py): a test model whose
context holds their long prompts, `qwen-mlx serve` started as a user starts it, a proxy
that makes the model call a tool, and where the installed client programs are.

Agent clients send long prompts (Claude Code about 12,000 tokens, Codex about 8,600), and
MLX's attention on a CPU is slow: the test model has the real Qwen3 tokenizer and chat
template but one narrow attention head in each of two layers, so that a 12,000-token
prefill takes seconds and a 28,000-token one about half a minute, not many minutes.

A random model never calls a tool by itself, and agent clients never send `tool_choice`.
`ForcingProxy` sits between a client and the server: it narrows the parameters of its
script's tools to the calls' constant arguments in every request (so the prompt's tool
definitions stay the same from turn to turn, as a client's do), and while a conversation
holds fewer tool results than the script has calls, it adds `tool_choice` naming the next
call's tool: the server's schema-constrained decoding writes exactly that call. Otherwise
the model writes a constant reply, which ends (see `settle`).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .helpers import ROOT, SHARED_MODEL, child_env

MODEL = "qwen3-4b-instruct"  # the name the README tells users to give their clients
README_PORT = "127.0.0.1:8080"
# Sizes of the test model: the real tokenizer's 151,936-token vocabulary over a 64-wide
# model with one 16-wide attention head per layer. Measured on two shared CPU cores: 12,000
# tokens prefill in 6 to 14 s, 28,000 in 32 to 53 s (quadratic attention dominates; a
# 4-bit copy is twice as slow, MLX's CPU quantized matmuls being the slow ones).
AGENT_SHAPE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "intermediate_size": 128,
    "max_position_embeddings": 32768,
}
# Where .ci/run installs the npm clients (Claude Code, Codex CLI): QWEN_MLX_AGENT_CLIENTS,
# else `.agents` in the checkout (git ignores it).
CLIENTS_DIR = Path(os.environ.get("QWEN_MLX_AGENT_CLIENTS") or ROOT / ".agents")
NODE_MODULES = CLIENTS_DIR / "node_modules"
# What the model writes when not calling a tool: a JSON string (so that it ends), which
# is its text as clients show it. Not a JSON object: some clients (LiteLLM's Ollama routes)
# hold back a streamed reply that starts like one, in case it is a tool call.
REPLY = "Hello from qwen-mlx."
REPLY_TEXT = json.dumps(REPLY)
CALL_TOKENS = 200  # room for a forced call's or the reply's JSON


def build_agent_model(home: Path, scratch: Path) -> str:
    """Build the long-context test model and convert it (unquantized: MLX's quantized
    matmuls are the slow ones on a CPU) into the store at `home`, under the name a
    download of Qwen3-4B-Instruct-2507 gets; returns that name."""
    from qwen_mlx.convert import convert
    from qwen_mlx.convert.tiny import TinyConfig, build_tiny_checkpoint

    source = build_tiny_checkpoint(
        scratch / "Qwen3-4B-Instruct-2507",
        TinyConfig(**AGENT_SHAPE),
        tokenizer_from=SHARED_MODEL,
        overwrite=True,
    )
    return convert(str(source), quantize=False, home=home).manifest.name


# -- the server ---------------------------------------------------------------------------------


class ServeProcess:
    """`qwen-mlx serve --port 0 ARGS` in a child process, on the store at `home`; `url` is
    its base (no `/v1`), `log` what it printed."""

    def __init__(self, home: Path, user_home: Path, *args: str) -> None:
        env = child_env(QWEN_MLX_HOME=str(home), HOME=str(user_home), HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qwen_mlx", "serve", "--port", "0", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: deque[str] = deque(maxlen=400)
        port = None
        deadline = time.monotonic() + 180
        for line in self.proc.stderr:
            self.log.append(line)
            found = re.search(r"serving \S+ at http://127\.0\.0\.1:(\d+)/v1", line)
            if found:
                port = int(found.group(1))
                break
            if time.monotonic() > deadline:
                break
        if port is None:
            self.stop()
            raise RuntimeError("qwen-mlx serve did not start:\n" + "".join(self.log))
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        threading.Thread(target=self._drain, daemon=True).start()
        self._wait_until_it_answers()

    def _wait_until_it_answers(self) -> None:
        """Until GET /health answers: the line above is printed before uvicorn accepts."""
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("qwen-mlx serve does not answer:\n" + self.tail())
            time.sleep(0.1)

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    def tail(self, lines: int = 40) -> str:
        return "".join(list(self.log)[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the proxy that forces tool calls -----------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A tool call the proxy makes the model write: the client's tool `name` with these
    constant `arguments`."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class Exchange:
    """One request as the proxy forwarded it, and the server's status."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    forced: str | None
    status: int = 0
    content_type: str = ""


def constant_schema(arguments: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema that only `arguments` satisfy."""
    return {
        "type": "object",
        "properties": {k: {"const": v} for k, v in arguments.items()},
        "required": list(arguments),
        "additionalProperties": False,
    }


def _count(items: Any, test) -> int:
    return sum(1 for item in items or [] if isinstance(item, dict) and test(item))


def tool_results(path: str, body: dict[str, Any]) -> int | None:
    """How many tool results the conversation in a request holds (None: a route the proxy
    cannot force a call on)."""
    if path == "/v1/messages":

        def results(m):
            content = m.get("content")
            return _count(content, lambda b: b.get("type") == "tool_result") if m else 0

        return sum(results(m) for m in body.get("messages") or [] if isinstance(m, dict))
    if path == "/v1/chat/completions":
        return _count(body.get("messages"), lambda m: m.get("role") == "tool")
    if path == "/v1/responses":
        items = body.get("input")
        return _count(items, lambda i: i.get("type") == "function_call_output")
    return None


def _tool(path: str, body: dict[str, Any], name: str) -> tuple[dict[str, Any], str] | None:
    """The request's definition of the tool `name`, and the key of its parameters."""
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        function = tool.get("function") if isinstance(tool.get("function"), dict) else {}
        if path == "/v1/messages" and tool.get("name") == name:
            return tool, "input_schema"
        if path == "/v1/chat/completions" and function.get("name") == name:
            return function, "parameters"
        if path == "/v1/responses" and tool.get("type") == "function" and tool.get("name") == name:
            return tool, "parameters"
    return None


def narrow(path: str, body: dict[str, Any], call: Call) -> bool:
    """Narrow the parameters of `call`'s tool in the request to its arguments. False when
    the request has no such tool."""
    found = _tool(path, body, call.name)
    if found is not None:
        definition, key = found
        definition[key] = constant_schema(call.arguments)
    return found is not None


def force(path: str, body: dict[str, Any], call: Call) -> bool:
    """Make the request force `call`: `tool_choice` naming its tool, whose parameters
    `narrow` made constant (on Ollama's generate, for LiteLLM's JSON tool replies,
    `format` narrowed to the call). False when the request has no such tool."""
    if path == "/api/generate":
        body["format"] = constant_schema({"name": call.name, "arguments": call.arguments})
        return True
    if not narrow(path, body, call):
        return False
    if path == "/v1/messages":
        body["tool_choice"] = {"type": "tool", "name": call.name}
    elif path == "/v1/chat/completions":
        body["tool_choice"] = {"type": "function", "function": {"name": call.name}}
    else:
        body["tool_choice"] = {"type": "function", "name": call.name}
    return True


def settle(path: str, body: dict[str, Any], reply: str, tokens: int) -> None:
    """Make the reply end on its own: the model writes `reply` as a JSON string (through
    the route's structured-output field), within `tokens`. A random model never writes its
    end-of-turn token, and an agent client takes a reply cut at its length limit for an
    error (Claude Code asks the model to go on, three times, then fails the turn)."""
    schema = {"type": "string", "const": reply}
    if path == "/v1/messages":
        config = body.get("output_config") if isinstance(body.get("output_config"), dict) else {}
        body["output_config"] = {**config, "format": {"type": "json_schema", "schema": schema}}
    elif path == "/v1/chat/completions":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema},
        }
    elif path == "/v1/responses":
        text = body.get("text") if isinstance(body.get("text"), dict) else {}
        body["text"] = {
            **text,
            "format": {"type": "json_schema", "name": "reply", "schema": schema},
        }
    elif path in ("/api/chat", "/api/generate"):
        body["format"] = schema
    cap_reply(path, body, tokens)


def cap_reply(path: str, body: dict[str, Any], tokens: int) -> None:
    """Lower the reply's length to `tokens` in the route's own field."""
    if path == "/v1/messages":
        body["max_tokens"] = tokens
    elif path in ("/v1/chat/completions", "/v1/completions"):
        body.pop("max_completion_tokens", None)
        body["max_tokens"] = tokens
    elif path == "/v1/responses":
        body["max_output_tokens"] = tokens
    elif path in ("/api/chat", "/api/generate"):
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        body["options"] = {**options, "num_predict": tokens}


_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}


class ForcingProxy:
    """A relay from `url` to the server at `upstream` that forces the calls of `script`
    (see the module's docstring) and records each request (`exchanges`)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.script: list[Call] = []
        self.reply = REPLY
        self.exchanges: list[Exchange] = []
        self._server = None
        self._thread = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self, script: list[Call] | None = None) -> None:
        """A new script (calls of one tool all with the same arguments: its definition is
        narrowed to them in every request) and no exchanges."""
        self.script = list(script or [])
        for call in self.script:
            same = {repr(c.arguments) for c in self.script if c.name == call.name}
            assert len(same) == 1, f"the calls of {call.name} differ in their arguments"
        self.exchanges = []

    def rewrite(self, path: str, body: Any) -> tuple[Any, str | None]:
        """The body to forward, and the tool it forces (None: none)."""
        if not isinstance(body, dict):
            return body, None
        step = tool_results(path, body)
        if path == "/api/generate" and body.get("format") == "json":
            # LiteLLM's `ollama/` writes the tools into its prompt and reads a JSON reply
            # {"name", "arguments"} as a call; its conversation is text, so the steps are
            # the calls forced on this route so far.
            step = sum(1 for e in self.exchanges if e.path == path and e.forced)
        # Every request of the conversation carries the same narrowed tools, as a client's
        # never change between turns (the prompt, and the server's cached prefix, keep
        # them); the next call is forced while the script has one.
        for each in self.script:
            narrow(path, body, each)
        call = None
        if step is not None and step < len(self.script):
            call = self.script[step]
            if not force(path, body, call):
                call = None
        if call:
            cap_reply(path, body, CALL_TOKENS)
        else:
            settle(path, body, self.reply, CALL_TOKENS)
        return body, call.name if call else None

    def app(self):
        import httpx
        from starlette.applications import Starlette
        from starlette.responses import StreamingResponse
        from starlette.routing import Route

        client = httpx.AsyncClient(base_url=self.upstream, timeout=None)

        async def relay(request):
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            forced = None
            if body is not None:
                body, forced = self.rewrite(request.url.path, body)
                raw = json.dumps(body).encode()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
            exchange = Exchange(request.method, request.url.path, headers, body, forced)
            self.exchanges.append(exchange)
            upstream = client.build_request(
                request.method,
                request.url.path,
                params=request.query_params,
                headers=headers,
                content=raw,
            )
            reply = await client.send(upstream, stream=True)
            exchange.status = reply.status_code
            exchange.content_type = reply.headers.get("content-type", "")
            kept = {
                k: v
                for k, v in reply.headers.items()
                if k.lower() not in _HOP_HEADERS | {"content-encoding"}
            }
            return StreamingResponse(
                reply.aiter_raw(),
                status_code=reply.status_code,
                headers=kept,
                background=_closer(reply),
            )

        methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]
        return Starlette(routes=[Route("/{path:path}", relay, methods=methods)])

    def start(self) -> ForcingProxy:
        import uvicorn

        config = uvicorn.Config(self.app(), host="127.0.0.1", port=0, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "proxy did not start"
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


def _closer(reply):
    from starlette.background import BackgroundTask

    return BackgroundTask(reply.aclose)


# -- the clients --------------------------------------------------------------------------------


def _platform() -> str:
    system = {"Darwin": "darwin", "Linux": "linux"}.get(platform.system(), "")
    machine = {"x86_64": "x64", "AMD64": "x64", "arm64": "arm64", "aarch64": "arm64"}.get(
        platform.machine(), ""
    )
    return f"{system}-{machine}"


def claude_binary() -> Path | None:
    """Claude Code's native binary: what its postinstall links as `claude`, or the
    platform package's own copy when the postinstall did not run."""
    linked = NODE_MODULES / "@anthropic-ai" / "claude-code" / "bin" / "claude.exe"
    if linked.is_file() and linked.stat().st_size > 1_000_000:  # not the placeholder
        return linked
    native = NODE_MODULES / "@anthropic-ai" / f"claude-code-{_platform()}" / "claude"
    return native if native.is_file() else None


def codex_binary() -> Path | None:
    """Codex CLI's launcher (`bin/codex.js` runs the platform package's binary)."""
    launcher = NODE_MODULES / "@openai" / "codex" / "bin" / "codex.js"
    return launcher if launcher.is_file() and shutil.which("node") else None


def readme_section(title: str = "Use it from your tools") -> str:
    """The README's section `## title`, up to the next `## ` heading."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def readme_blocks(language: str, after: str) -> list[str]:
    """The `language` code blocks of the README's tools section under the heading that
    contains `after` (up to the next heading of any level)."""
    section = readme_section()
    start = section.index(after)
    nxt = re.search(r"^#{2,4} ", section[start + len(after) :], flags=re.M)
    part = section[start : start + len(after) + nxt.start() if nxt else None]
    return re.findall(rf"^```{language}\n(.*?)^```", part, flags=re.S | re.M)


def exports(block: str, port: int) -> dict[str, str]:
    """The `export NAME=value` lines of a README shell block, the port made the test's."""
    found = {}
    for name, value in re.findall(r"^export (\w+)=(\S+)", block, flags=re.M):
        found[name] = value.replace(README_PORT, f"127.0.0.1:{port}")
    return found


def run_client(
    argv: list[str | Path], *, env: dict[str, str], cwd: Path, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """A client program run to its end, with nothing on stdin."""
    return subprocess.run(
        [str(a) for a in argv],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines output (other lines left out)."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


# -- Claude Code and Codex CLI, set up as the README says --------------------------------------

NOTES = "line one of notes\n"


@dataclass
class Workspace:
    """A user's folders for one client run: HOME, the project (with notes.txt), a folder of
    the client programs to put first on PATH."""

    home: Path
    project: Path
    bin: Path

    @classmethod
    def make(cls, root: Path) -> Workspace:
        home, project, bin_dir = root / "home", root / "project", root / "bin"
        for folder in (home, project, bin_dir):
            folder.mkdir(parents=True, exist_ok=True)
        (project / "notes.txt").write_text(NOTES)
        for name, program in (("claude", claude_binary()), ("codex", codex_binary())):
            if program is not None and not (bin_dir / name).exists():
                (bin_dir / name).symlink_to(program)
        return cls(home, project, bin_dir)

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: PATH (the clients first), HOME, and `extra`; nothing else
        of this process's (no keys, no proxies) reaches the client."""
        return {
            "PATH": os.pathsep.join([str(self.bin), os.environ.get("PATH", "")]),
            "HOME": str(self.home),
            "TERM": "dumb",
            "LANG": "C.UTF-8",
            **extra,
        }


def readme_commands(program: str, after: str) -> list[list[str]]:
    """The command lines of the README's shell blocks (under `after`) that run `program`."""
    import shlex

    lines = [line for block in readme_blocks("sh", after) for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith(f"{program} ")]


def readme_command(program: str, after: str, flag: str) -> list[str]:
    """The README's command line of `program` that has `flag`."""
    found = [argv for argv in readme_commands(program, after) if flag in argv]
    assert len(found) == 1, f"the README shows one `{program} ... {flag}` line under {after!r}"
    return found[0]


def claude_env(space: Workspace, port: int) -> dict[str, str]:
    """Claude Code's environment: the README's exports (to the test's port). Run as root,
    as CI does, Claude Code runs its tools unasked only in a sandbox it is told of."""
    (settings,) = [b for b in readme_blocks("sh", "### Claude Code") if "export " in b]
    extra = {"IS_SANDBOX": "1"} if os.geteuid() == 0 else {}
    return space.env(**exports(settings, port), **extra)


def codex_env(space: Workspace, port: int) -> dict[str, str]:
    """Codex's environment: CODEX_HOME holding the README's config.toml (to the test's
    port)."""
    (config,) = readme_blocks("toml", "### Codex CLI")
    codex_home = space.home / ".codex"
    codex_home.mkdir(exist_ok=True)
    config = config.replace(README_PORT, f"127.0.0.1:{port}")
    (codex_home / "config.toml").write_text(config)
    return space.env(CODEX_HOME=str(codex_home))


def claude(space: Workspace, port: int, argv: list[str]) -> str:
    """Claude Code run with `argv` (a README command line) in the project; its output."""
    done = run_client(argv, env=claude_env(space, port), cwd=space.project)
    assert done.returncode == 0, _failed("claude", done)
    return done.stdout


def _failed(name: str, done: subprocess.CompletedProcess[str]) -> str:
    return f"{name} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


def codex(space: Workspace, port: int, argv: list[str]) -> list[dict[str, Any]]:
    """Codex CLI run with `argv` (a README command line) in the project; its JSON lines."""
    done = run_client(argv, env=codex_env(space, port), cwd=space.project)
    assert done.returncode == 0, _failed("codex", done)
    return json_lines(done.stdout)


def claude_session(proxy: ForcingProxy, space: Workspace, steps: int = 5) -> str:
    """A Claude Code session of `steps` tool steps through `proxy`: Read of notes.txt and
    Bash's `echo step` taking turns (forced), then a text reply. Its output."""
    read = Call("Read", {"file_path": str(space.project / "notes.txt")})
    echo = Call("Bash", {"command": "echo step", "description": "Say step"})
    proxy.reset([read if i % 2 else echo for i in range(1, steps + 1)])
    argv = readme_command("claude", "### Claude Code", "bypassPermissions")
    return claude(space, proxy.port, argv)


def codex_session(proxy: ForcingProxy, space: Workspace, steps: int = 5) -> list[dict[str, Any]]:
    """A Codex session of `steps` tool steps through `proxy`: `echo step` commands and
    `get_goal` calls taking turns (forced), then a text reply. Its JSON lines."""
    echo, goal = Call("exec_command", {"cmd": "echo step"}), Call("get_goal")
    proxy.reset([echo if i % 2 else goal for i in range(1, steps + 1)])
    argv = readme_command("codex", "### Codex CLI", "exec")
    return codex(space, proxy.port, argv)
