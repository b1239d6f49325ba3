#!/usr/bin/env python3
"""An agent session replayed through `qwen-mlx serve` on each protocol and through
`mlx_lm server` on /v1/chat/completions: what each turn prefills, and its time to first
token; then the same with 4 other clients decoding; then a long agent turn after a
restart, read from `--cache-dir` against a full re-prefill.

The session is a recorded one (`--session FILE`, from `serve --record`; replayed as it is
through the protocol it was recorded on, and through mlx_lm when that is chat), or by
default a synthetic one in the shape of Claude Code's and Codex's traffic (never captured
prompts): a long system prompt and ten tools, a tool loop of `--turns` steps whose
results vary from a line to a page, each request carrying the whole conversation (Codex's
`store: false`), and a sub-agent with its own system prompt whose requests interleave with
the main conversation's (Claude Code's Agent tool). Each protocol's session opens with its
own words so no protocol starts from another's cache. Replies are capped at
`--max-tokens`; the session carries its own (recorded) replies, as a replay does.

Model: by default a narrow random Qwen3 (2 layers, hidden 64, bf16, 32K context) with the
trained tiny's tokenizer and Qwen3-4B-Instruct-2507's chat template (from
../shared/models/qwen3-tiny-trained), so a 20K-token prompt is read in seconds on a CPU;
`--source` converts another Hugging Face checkpoint instead (the real model on a Mac).

"new" is what a turn adds to the last request of its conversation; "prefilled" is read
from each protocol's usage (`qwen-mlx replay`). Ollama's usage has no prompt total: its
"new" comes from rendering the messages with the model's template here. Targets: tokens
prefilled per turn <= 1.05x the tokens new that turn, on every protocol; TTFT of turn 10
<= 1.3x turn 2 (of the main conversation, whose turns 2 and 10 add tool results of the
same size); the same with 4 other clients decoding.

    python scripts/bench_agent.py [--turns 12] [--session FILE] [--source HF_FOLDER]
    python scripts/bench_agent.py --smoke     # seconds: tiny sessions, no mlx_lm peer
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _bench import free_port, start_server

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TRAINED = ROOT.parent / "shared" / "models" / "qwen3-tiny-trained" / "target"
PROTOCOLS = ("chat", "anthropic", "responses", "ollama")
PATHS = {
    "chat": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "responses": "/v1/responses",
    "ollama": "/api/chat",
}
KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WORDS = [
    *("the", "server", "reads", "each", "request", "file", "module", "function", "value"),
    *("cache", "token", "prompt", "turn", "agent", "tool", "result", "line", "test"),
    *("build", "path", "error", "return", "class", "import", "config", "option"),
]


# -- the synthetic session -----------------------------------------------------------------


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _tools(rng: random.Random, n: int) -> list[dict[str, Any]]:
    tools = []
    for i in range(n):
        props = {f"arg{j}": {"type": "string", "description": _text(rng, 12)} for j in range(3)}
        tools.append(
            {
                "name": f"tool_{i}",
                "description": _text(rng, 60),
                "parameters": {"type": "object", "properties": props, "required": ["arg0"]},
            }
        )
    return tools


def _steps(rng: random.Random, turns: int, tools: int) -> list[tuple[str, dict, str]]:
    """(tool name, arguments, result) per step; results from a line to a page. The main
    conversation's turns 2 and 10 add results of one size, so their TTFTs differ by what
    the conversation's length costs, not by what the turn adds."""
    sizes = [40, 8, 120, 300, 20, 60, 500, 10, 40, 200]
    return [
        (
            f"tool_{i % tools}",
            {"arg0": f"src/file_{i}.py", "arg1": _text(rng, 3)},
            f"step {i}: " + _text(rng, sizes[i % len(sizes)]),
        )
        for i in range(turns)
    ]


def _request(protocol: str, system: str, task: str, tools, steps, max_tokens: int) -> dict:
    """One request of `protocol` holding the conversation so far: the task, then each
    step's tool call (the reply the client echoes) and its result."""
    if protocol == "chat":
        messages: list[dict] = [
            {"role": "system", "content": system},
            {"role": "user", "content": task},
        ]
        for i, (name, args, result) in enumerate(steps):
            call = {"id": f"call_{i}", "type": "function"}
            call["function"] = {"name": name, "arguments": json.dumps(args)}
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": result})
        body = {
            "messages": messages,
            "tools": [{"type": "function", "function": t} for t in tools],
            "max_tokens": max_tokens,
        }
    elif protocol == "anthropic":
        messages = [{"role": "user", "content": [{"type": "text", "text": task}]}]
        for i, (name, args, result) in enumerate(steps):
            use = {"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": args}
            messages.append({"role": "assistant", "content": [use]})
            done = {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": result}
            messages.append({"role": "user", "content": [done]})
        body = {
            "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
            "messages": messages,
            "tools": [
                {
                    "name": t["name"],
                    "description": t["description"],
                    "input_schema": t["parameters"],
                }
                for t in tools
            ],
            "max_tokens": max_tokens,
        }
    elif protocol == "responses":
        items: list[dict] = [
            {"type": "message", "role": "developer", "content": system},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": task}]},
        ]
        for i, (name, args, result) in enumerate(steps):
            items.append(
                {"type": "function_call", "call_id": f"call_{i}", "name": name,
                 "arguments": json.dumps(args), "status": "completed"}
            )  # fmt: skip
            items.append({"type": "function_call_output", "call_id": f"call_{i}", "output": result})
        body = {
            "input": items,
            "tools": [{"type": "function", **t} for t in tools],
            "store": False,
            "max_output_tokens": max_tokens,
        }
    else:  # ollama
        messages = [{"role": "system", "content": system}, {"role": "user", "content": task}]
        for name, args, result in steps:
            call = {"function": {"name": name, "arguments": args}}
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            messages.append({"role": "tool", "content": result, "tool_name": name})
        body = {
            "messages": messages,
            "tools": [{"type": "function", "function": t} for t in tools],
            "options": {"num_predict": max_tokens},
        }
    return {"method": "POST", "path": PATHS[protocol], "body": {**body, "stream": True}}


def synthetic_session(
    protocol: str,
    tag: str,
    *,
    turns: int,
    system_words: int,
    max_tokens: int,
    n_tools: int = 10,
    seed: int = 0,
) -> list[dict]:
    """The requests of a synthetic agent session on `protocol` (see the module
    docstring): the main conversation's `turns` requests, with a sub-agent's three
    requests interleaved after its second and fourth."""
    rng = random.Random(seed)
    tools = _tools(rng, n_tools)
    system = f"Session {tag}. You are a coding agent. " + _text(rng, system_words)
    steps = _steps(rng, turns, len(tools))
    sub_system = f"Session {tag}. You are a sub-agent that searches code. " + _text(
        rng, system_words // 4
    )
    sub_steps = _steps(random.Random(seed + 1), 3, 1)
    main = [_request(protocol, system, "Fix the failing test.", tools, steps[:i], max_tokens)
            for i in range(turns)]  # fmt: skip
    sub = [_request(protocol, sub_system, "Find the callers.", tools[:1], sub_steps[:i], max_tokens)
           for i in range(3)]  # fmt: skip
    session = []
    for i, request in enumerate(main):  # the sub-agent's after main requests 2, 4 and 6
        session.append(request)
        if i in (1, 3, 5) and sub:
            session.append(sub.pop(0))
    return session


# -- servers -------------------------------------------------------------------------------


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM: a graceful stop (ours then writes its pool to --cache-dir)."""
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


def ours(folder: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qwen_mlx", "serve", "--model", str(folder), "--port",
            str(port), "--api-key", KEY, "--log-level", "warning", *extra]  # fmt: skip


def theirs(folder: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "mlx_lm", "server", "--model", str(folder), "--port",
            str(port), "--log-level", "WARNING"]  # fmt: skip


@contextlib.contextmanager
def serving(folder: Path, log: Path, cache_dir: Path | None = None, model: Any = None):
    """`qwen-mlx serve` on `folder` (with `--cache-dir`), yielding its URL: a process of
    its own, or with `model` (--smoke) an app in this process (a restart is then a new
    app on the same cache folder). Stopped gracefully either way."""
    extra = ("--cache-dir", str(cache_dir)) if cache_dir is not None else ()
    if model is None:
        port = free_port()
        proc = start_server(ours(folder, port, *extra), port, log, AUTH)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(proc)
        return
    import uvicorn

    from qwen_mlx.server import Engine, create_app, server_config

    engine = Engine(model, cache_dir=cache_dir)
    app = create_app(engine, api_key=KEY)
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        engine.close()


class Others:
    """`n` other clients streaming long chat replies until stopped."""

    def __init__(self, url: str, model: str, n: int) -> None:
        self.url, self.model, self.n = url, model, n
        self.done = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)
        ]

    def __enter__(self) -> Others:
        for t in self.threads:
            t.start()
        time.sleep(1.0)  # they are decoding
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for t in self.threads:
            t.join(timeout=60)

    def _run(self, i: int) -> None:
        import httpx

        ask = [{"role": "user", "content": f"Client {i}: write a long story."}]
        body = {"model": self.model, "stream": True, "max_tokens": 2000, "messages": ask}
        headers = {"Authorization": f"Bearer {KEY}"}
        while not self.done.is_set():
            try:
                with httpx.stream("POST", self.url + "/v1/chat/completions", json=body,
                                  headers=headers, timeout=600) as r:  # fmt: skip
                    for _ in r.iter_lines():
                        if self.done.is_set():
                            break
            except httpx.HTTPError:
                time.sleep(0.2)


# -- measuring -------------------------------------------------------------------------------


def run_session(url: str, requests: list[dict], model: str, tokens_of) -> list:
    from dataclasses import replace

    from qwen_mlx.cli.replay import replay

    turns = replay(requests, url, api_key=KEY, model=model)
    fixed = []
    last: dict[str, int] = {}
    for turn, request in zip(turns, requests, strict=True):
        if turn.prompt_tokens is None and turn.prefilled is not None:  # Ollama: count here
            prompt = tokens_of(request)
            previous = last.get(turn.conversation)
            new = prompt - previous if previous is not None else prompt
            turn = replace(turn, prompt_tokens=prompt, new=new)
        if turn.prompt_tokens is not None:
            last[turn.conversation] = turn.prompt_tokens
        if turn.error:
            raise SystemExit(f"turn {turn.index} failed ({turn.status}): {turn.error}")
        fixed.append(turn)
    return fixed


def ollama_tokens(model):
    """Prompt tokens of an Ollama request, rendered here with the model's template."""

    def count(request: dict) -> int:
        body = request["body"]
        messages = []
        for m in body["messages"]:
            m = dict(m)
            calls = m.pop("tool_calls", None)
            m.pop("tool_name", None)
            if calls:
                m["tool_calls"] = [{"type": "function", "function": c["function"]} for c in calls]
            messages.append(m)
        tools = [t["function"] for t in body.get("tools") or []]
        specs = [{"type": "function", "function": t} for t in tools] or None
        return len(model.render_tokens(messages, tools=specs))

    return count


def print_table(title: str, rows: list[list[str]]) -> None:
    print(f"\n{title}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def protocol_table(name: str, turns: list, peer: list | None) -> tuple[list[list[str]], dict]:
    head = ["turn", "conv", "prompt", "new", "prefilled", "pre/new", "TTFT ms"]
    if peer is not None:
        head += ["mlx_lm prefilled", "mlx_lm TTFT ms", "TTFT ours/mlx_lm"]
    rows = [head]
    convs: dict[str, str] = {}
    worst = 0.0
    main_ttft: list[float] = []
    for k, t in enumerate(turns):
        conv = convs.setdefault(t.conversation, "main" if not convs else f"sub{len(convs)}")
        ratio = t.prefilled / t.new if t.new and t.prefilled is not None else None
        first_of_conv = t.new == t.prompt_tokens
        if ratio is not None and not first_of_conv:
            worst = max(worst, ratio)
        if conv == "main" and t.ttft is not None:
            main_ttft.append(t.ttft)
        row = [str(t.index), conv, f"{t.prompt_tokens:,}", f"{t.new:,}", f"{t.prefilled:,}",
               "-" if ratio is None or first_of_conv else f"{ratio:.2f}",
               f"{t.ttft * 1000:.0f}" if t.ttft is not None else "-"]  # fmt: skip
        if peer is not None:
            p = peer[k]
            row += [
                f"{p.prefilled:,}" if p.prefilled is not None else "-",
                f"{p.ttft * 1000:.0f}" if p.ttft is not None else "-",
                f"{t.ttft / p.ttft:.2f}" if t.ttft and p.ttft else "-",
            ]
        rows.append(row)
    growth = main_ttft[9] / main_ttft[1] if len(main_ttft) >= 10 else None
    return rows, {"protocol": name, "worst_ratio": worst, "ttft_growth": growth}


def summary(results: list[dict], label: str) -> None:
    print(f"\ntargets {label}: prefilled/new <= 1.05 per turn, TTFT main turn 10 / turn 2 <= 1.3")
    for r in results:
        growth = r["ttft_growth"]
        grown = "n/a (fewer than 10 turns)" if growth is None else f"{growth:.2f}"
        met = r["worst_ratio"] <= 1.05 and (growth is None or growth <= 1.3)
        print(f"  {r['protocol']:<10} worst prefilled/new {r['worst_ratio']:.2f}, "
              f"TTFT turn 10 / turn 2 {grown}: {'met' if met else 'NOT met'}")  # fmt: skip


def long_turn(system_words: int, max_tokens: int, n_tools: int) -> tuple[dict, list[dict]]:
    """A long chat agent turn and the tool result that follows it."""
    rng = random.Random(7)
    tools = _tools(rng, n_tools)
    system = "Session restart. You are a coding agent. " + _text(rng, system_words)
    steps = _steps(rng, 6, n_tools)
    request = _request("chat", system, "Fix the failing test.", tools, steps, max_tokens)
    return request, steps


def restart_bench(
    folder: Path, tmp: Path, model: str, words: int, max_tokens: int, n_tools: int, loaded: Any
) -> None:
    """TTFT of the next turn of a long conversation after a restart: read from
    --cache-dir, against a full re-prefill (another, empty cache folder)."""
    import httpx

    from qwen_mlx.cli.replay import replay

    request, _ = long_turn(words, max_tokens, n_tools)
    cache_dir = tmp / "kv"
    with serving(folder, tmp / "r1.log", cache_dir, loaded) as url:  # writes its pool at the end
        body = {**request["body"], "model": model, "stream": False}
        reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=1800,
                           headers={"Authorization": f"Bearer {KEY}"}).json()  # fmt: skip
    message = {k: v for k, v in reply["choices"][0]["message"].items() if v is not None}
    follow = json.loads(json.dumps(request))
    follow["body"]["messages"] += [message, {"role": "user", "content": "Now run the tests."}]
    rows = [["run", "prompt", "prefilled", "TTFT s"]]
    timings = {}
    for name, folder_used in (("from disk", cache_dir), ("full re-prefill", tmp / "empty")):
        with serving(folder, tmp / "r2.log", folder_used, loaded) as url:
            (turn,) = replay([follow], url, api_key=KEY, model=model)
        timings[name] = turn.ttft
        rows.append([name, f"{turn.prompt_tokens:,}", f"{turn.prefilled:,}", f"{turn.ttft:.2f}"])
    print_table(
        f"a {rows[1][1]}-token agent turn after a restart (qwen-mlx serve --cache-dir)", rows
    )
    print(
        f"  full re-prefill / from disk: {timings['full re-prefill'] / timings['from disk']:.1f}x"
    )


def build_model(tmp: Path, source: Path | None, smoke: bool) -> Path:
    from qwen_mlx.convert import convert
    from qwen_mlx.convert.tiny import TinyConfig, build_tiny_checkpoint

    if source is None:
        tokenizer = None if smoke or not (TRAINED / "tokenizer.json").is_file() else TRAINED
        source = build_tiny_checkpoint(
            tmp / "Qwen3-1M-Narrow-2507", TinyConfig(max_position_embeddings=32768),
            tokenizer_from=tokenizer,
        )  # fmt: skip
        print(f"model: narrow random Qwen3 (2 layers, hidden 64, bf16), tokenizer "
              f"{'the trained tiny' if tokenizer else 'a small BPE trained here'}")  # fmt: skip
    import mlx.core as mx

    quantize = mx.metal.is_available()
    return convert(str(source), mlx_path=tmp / "model", quantize=quantize, home=tmp / "home").path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--session", type=Path, help="a recorded session (serve --record)")
    p.add_argument("--source", type=Path, help="a Hugging Face checkpoint to convert and serve")
    p.add_argument("--turns", type=int, default=12, help="main-conversation requests")
    p.add_argument("--system-words", type=int, default=1500, help="the system prompt's size")
    p.add_argument("--max-tokens", type=int, default=16, help="each reply's cap")
    p.add_argument("--tools", type=int, default=10, help="tools in the session")
    p.add_argument("--others", type=int, default=4, help="clients decoding in the second table")
    p.add_argument("--restart-words", type=int, default=14000,
                   help="the long turn's system prompt in words (about 20K tokens)")  # fmt: skip
    p.add_argument("--no-peer", action="store_true", help="skip mlx_lm server")
    p.add_argument("--smoke", action="store_true", help="seconds: tiny sessions, no peer")
    args = p.parse_args(argv)
    if args.smoke:
        args.turns, args.system_words, args.others, args.restart_words = 4, 60, 1, 150
        args.max_tokens, args.no_peer, args.tools = 4, True, 1
    from qwen_mlx import load

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = build_model(tmp, args.source, args.smoke)
        model = load(folder)
        name = model.name
        sessions: dict[str, list[dict]] = {}
        if args.session is not None:
            from qwen_mlx.cli.replay import read_session

            recorded = read_session(args.session)
            for protocol, path in PATHS.items():
                picked = [r for r in recorded if r["path"] == path]
                if picked:
                    sessions[protocol] = picked
        else:
            for protocol in PROTOCOLS:
                sessions[protocol] = synthetic_session(
                    protocol, protocol, turns=args.turns, system_words=args.system_words,
                    max_tokens=args.max_tokens, n_tools=args.tools,
                )  # fmt: skip
        count = ollama_tokens(model)
        for busy in (0, args.others):
            label = f"with {busy} other clients decoding" if busy else "alone"
            # fresh conversations for the busy run: their own opening words
            if busy:
                sessions = {k: _retag(v, "busy") for k, v in sessions.items()}
            results = {}
            inside = model if args.smoke else None
            with (
                serving(folder, tmp / "ours.log", None, inside) as url,
                Others(url, name, busy) if busy else contextlib.nullcontext(),
            ):
                for protocol, requests in sessions.items():
                    results[protocol] = run_session(url, requests, name, count)
            peer = None
            if not args.no_peer and "chat" in sessions:
                port = free_port()
                proc = start_server(theirs(folder, port), port, tmp / "mlx_lm.log", AUTH)
                url = f"http://127.0.0.1:{port}"
                try:
                    with Others(url, str(folder), busy) if busy else contextlib.nullcontext():
                        peer = run_session(url, sessions["chat"], str(folder), count)
                finally:
                    stop(proc)
            checks = []
            for protocol, turns in results.items():
                rows, check = protocol_table(protocol, turns, peer if protocol == "chat" else None)
                print_table(f"{protocol} ({PATHS[protocol]}), {label}", rows)
                checks.append(check)
            summary(checks, label)
        restart_bench(
            folder, tmp, name, args.restart_words, args.max_tokens, args.tools,
            model if args.smoke else None,
        )  # fmt: skip
    return 0


def _retag(requests: list[dict], tag: str) -> list[dict]:
    """The same session as fresh conversations: each system prompt starts with `tag`."""
    text = json.dumps(requests).replace("Session ", f"Session {tag} ")
    return json.loads(text)


if __name__ == "__main__":
    raise SystemExit(main())
